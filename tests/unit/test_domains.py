"""domains: the compiled index (exact/subtree, allow, categories), its file and its integrity checks."""

import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import domains
from resolver.domains import DomainIndex, IndexFormatError, Match, build_index, write_index

HEADER = struct.Struct("<8sIIIIIII28x")
HEADER_FIELDS = 36  # bytes of the header that carry data; the rest up to 64 is padding


def index_of(*entries):
    return DomainIndex.from_bytes(build_index(entries))


def naive_lookup(entries, name):
    """Reference semantics: entries for the name itself (exact or subtree) and subtree entries of
    its parents contribute; allow bits remove block bits of the same category."""
    labels = name.split(".")
    block = allow = 0
    for depth in range(len(labels)):
        suffix = ".".join(labels[depth:])
        for listed, bit, match, kind in entries:
            if listed != suffix or (depth and match == "exact"):
                continue
            if kind == "block":
                block |= 1 << bit
            else:
                allow |= 1 << bit
    return block & ~allow


# --- lookup semantics ------------------------------------------------------------------------


def test_subtree_covers_the_name_and_everything_under_it():
    index = index_of(("example.com", 0, "subtree", "block"))
    assert index.lookup("example.com") == 1
    assert index.lookup("www.example.com") == 1
    assert index.lookup("a.b.c.example.com") == 1
    assert index.lookup("com") == 0
    assert index.lookup("example.org") == 0


def test_exact_covers_only_the_name_itself():
    index = index_of(("example.com", 0, "exact", "block"))
    assert index.lookup("example.com") == 1
    assert index.lookup("www.example.com") == 0
    assert index.lookup("com") == 0


@pytest.mark.parametrize("name", [
    "notexample.com", "xexample.com", "example.com.evil.net", "example.co", "example.comm",
    "www.notexample.com", "ample.com",
])
def test_matches_only_at_label_boundaries(name):
    index = index_of(("example.com", 0, "subtree", "block"))
    assert index.lookup(name) == 0


def test_allow_subtree_removes_block_bits_under_it():
    index = index_of(
        ("example.com", 0, "subtree", "block"),
        ("safe.example.com", 0, "subtree", "allow"),
    )
    assert index.lookup("example.com") == 1
    assert index.lookup("www.example.com") == 1
    assert index.lookup("safe.example.com") == 0
    assert index.lookup("a.safe.example.com") == 0
    assert index.lookup("unsafe.example.com") == 1


def test_allow_exact_removes_block_bits_of_the_name_only():
    index = index_of(
        ("example.com", 0, "subtree", "block"),
        ("safe.example.com", 0, "exact", "allow"),
    )
    assert index.lookup("safe.example.com") == 0
    assert index.lookup("www.safe.example.com") == 1


def test_allow_wins_over_a_more_specific_block_of_the_same_category():
    # Within one category an allow entry anywhere on the name's path wins (no precedence by depth).
    index = index_of(
        ("example.com", 0, "subtree", "allow"),
        ("bad.example.com", 0, "exact", "block"),
    )
    assert index.lookup("bad.example.com") == 0


def test_categories_are_ored():
    index = index_of(
        ("example.com", 0, "subtree", "block"),
        ("example.com", 3, "exact", "block"),
        ("www.example.com", 5, "subtree", "block"),
        ("com", 63, "subtree", "block"),
    )
    assert index.lookup("example.com") == 1 | 1 << 3 | 1 << 63
    assert index.lookup("www.example.com") == 1 | 1 << 5 | 1 << 63
    assert index.lookup("x.www.example.com") == 1 | 1 << 5 | 1 << 63
    assert index.lookup("other.com") == 1 << 63


def test_allow_of_one_category_does_not_unblock_another():
    index = index_of(
        ("example.com", 0, "subtree", "block"),
        ("example.com", 1, "subtree", "block"),
        ("www.example.com", 1, "subtree", "allow"),
    )
    assert index.lookup("www.example.com") == 1  # category 0 still blocks
    assert index.lookup("example.com") == 0b11


def test_repeated_names_merge():
    index = index_of(
        ("example.com", 0, "subtree", "block"),
        ("example.com", 0, "subtree", "block"),
        ("example.com", 1, "exact", "block"),
    )
    assert index.entry_count == 1
    assert index.lookup("example.com") == 0b11
    assert index.lookup("www.example.com") == 0b01


def test_unlisted_and_odd_names_give_zero():
    index = index_of(("example.com", 0, "subtree", "block"))
    for name in ["", "com", ".", "example", "xn--bcher-kva.example", "bücher.example"]:
        assert index.lookup(name) == 0


def test_empty_index():
    index = DomainIndex.empty()
    assert index.entry_count == 0
    assert index.lookup("example.com") == 0
    assert index.lookup("com") == 0
    assert index.explain("example.com") == []
    assert list(index.iter_entries()) == []
    assert build_index(()) == build_index([])


def test_many_names_with_probe_collisions():
    rng = random.Random(7)
    names = {f"{rng.randrange(10**9):x}.{rng.choice(['com', 'vn', 'com.vn', 'net'])}" for _ in range(4000)}
    entries = [(name, i % 64, "exact", "block") for i, name in enumerate(sorted(names))]
    index = index_of(*entries)
    assert index.entry_count == len(names)
    for name, bit, _, _ in entries:
        assert index.lookup(name) == 1 << bit
        assert index.lookup("www." + name) == 0
    assert index.lookup("absent.com") == 0


# --- explain, iter_entries, determinism ------------------------------------------------------


def test_explain_lists_every_entry_that_applies():
    index = index_of(
        ("com", 2, "subtree", "block"),
        ("example.com", 0, "subtree", "block"),
        ("example.com", 1, "exact", "block"),
        ("www.example.com", 0, "exact", "allow"),
        ("www.example.com", 3, "subtree", "block"),
        ("www.example.com", 4, "exact", "block"),
    )
    assert index.explain("www.example.com") == [
        Match("www.example.com", 1 << 4, "exact", "block"),
        Match("www.example.com", 1 << 0, "exact", "allow"),
        Match("www.example.com", 1 << 3, "subtree", "block"),
        Match("example.com", 1 << 0, "subtree", "block"),  # the exact entry (bit 1) does not apply here
        Match("com", 1 << 2, "subtree", "block"),
    ]
    assert index.lookup("www.example.com") == 1 << 2 | 1 << 3 | 1 << 4
    assert index.explain("unlisted.org") == []


def test_iter_entries_returns_what_was_built():
    entries = [
        ("b.example", 0, "subtree", "block"),
        ("a.example", 63, "exact", "allow"),
        ("a.example", 1, "exact", "block"),
        ("a.example", 1, "subtree", "allow"),
    ]
    index = index_of(*entries)
    listed = list(index.iter_entries())
    assert sorted(listed) == sorted(entries)
    assert [name for name, *_ in listed] == sorted(name for name, *_ in listed)


def test_image_is_deterministic():
    entries = [(f"n{i}.example", i % 7, ("exact", "subtree")[i % 2], ("block", "allow")[i % 3 == 0])
               for i in range(200)]
    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    assert build_index(entries) == build_index(shuffled)


@pytest.mark.parametrize("entry, message", [
    (("example.com", 0, "prefix", "block"), "kind must be one of"),
    (("example.com", 0, "exact", "deny"), "kind must be one of"),
    (("example.com", 64, "exact", "block"), "category bit must be an int in 0..63"),
    (("example.com", -1, "exact", "block"), "category bit must be an int in 0..63"),
    (("example.com", True, "exact", "block"), "category bit must be an int in 0..63"),
    (("Example.com", 0, "exact", "block"), "must be lower-case"),
    (("example.com.", 0, "exact", "block"), "trailing dot"),
    ((".example.com", 0, "exact", "block"), "lower-case"),
    (("a..example", 0, "exact", "block"), "empty labels"),
    (("", 0, "exact", "block"), "non-empty ASCII"),
    (("bücher.example", 0, "exact", "block"), "non-empty ASCII"),
])
def test_build_rejects_malformed_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        build_index([entry])


# --- property: lookup == naive reference -----------------------------------------------------

LABELS = st.sampled_from(["a", "b", "c", "xn--bcher-kva", "www", "com"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
ENTRIES = st.lists(
    st.tuples(NAMES, st.sampled_from([0, 1, 2, 63]), st.sampled_from(["exact", "subtree"]),
              st.sampled_from(["block", "allow"])),
    max_size=12,
)


@settings(max_examples=200, deadline=None, database=None)
@given(entries=ENTRIES, queries=st.lists(NAMES, min_size=1, max_size=10))
def test_lookup_matches_reference(entries, queries):
    index = index_of(*entries)
    for name in queries + [listed for listed, *_ in entries]:
        assert index.lookup(name) == naive_lookup(entries, name), name
        block = allow = 0
        for match in index.explain(name):
            if match.kind == "block":
                block |= match.bits
            else:
                allow |= match.bits
        assert block & ~allow == index.lookup(name)
    assert sorted(set(index.iter_entries())) == sorted(set(entries))


# --- files -----------------------------------------------------------------------------------


def test_load_maps_a_file_written_by_write_index(tmp_path):
    path = tmp_path / "index.bin"
    image = build_index([("example.com", 2, "subtree", "block"), ("ok.example.com", 2, "exact", "allow")])
    write_index(path, image)
    assert path.read_bytes() == image
    assert [p.name for p in tmp_path.iterdir()] == ["index.bin"]  # no temp file left behind
    index = DomainIndex.load(path)
    try:
        assert index.entry_count == 2
        assert index.size_bytes == len(image)
        assert index.lookup("www.example.com") == 4
        assert index.lookup("ok.example.com") == 0
    finally:
        index.close()


def test_write_index_replaces_atomically_and_old_mappings_keep_reading(tmp_path):
    path = tmp_path / "index.bin"
    write_index(path, build_index([("old.example", 0, "subtree", "block")]))
    old = DomainIndex.load(path)
    write_index(path, build_index([("new.example", 1, "subtree", "block")]))
    new = DomainIndex.load(path)
    try:
        assert old.lookup("old.example") == 1 and old.lookup("new.example") == 0
        assert new.lookup("new.example") == 2 and new.lookup("old.example") == 0
    finally:
        old.close()
        new.close()


def test_load_of_an_empty_file_names_it(tmp_path):
    path = tmp_path / "index.bin"
    path.write_bytes(b"")
    with pytest.raises(IndexFormatError, match="index.bin: cannot map"):
        DomainIndex.load(path)


def test_load_of_a_corrupted_file_names_it(tmp_path):
    path = tmp_path / "index.bin"
    path.write_bytes(b"not an index at all, but long enough to hold the 64-byte header ......")
    with pytest.raises(IndexFormatError, match=r"index\.bin: not a domain index"):
        DomainIndex.load(path)


# --- integrity -------------------------------------------------------------------------------

SAMPLE = build_index([
    ("example.com", 0, "subtree", "block"),
    ("www.example.com", 1, "exact", "allow"),
    ("xn--bng--8na8hpj.vn", 5, "subtree", "block"),
])


def with_header(image, **changes):
    fields = dict(zip(["magic", "version", "header_size", "entries", "slots", "masksets", "blob", "crc"],
                      HEADER.unpack_from(image)))
    fields.update(changes)
    return HEADER.pack(*fields.values()) + image[HEADER.size:]


def test_sample_is_valid():
    index = DomainIndex.from_bytes(SAMPLE)
    assert index.lookup("a.example.com") == 1
    assert index.lookup("www.example.com") == 1  # the allow entry is for another category (bit 1)
    assert index.lookup("x.xn--bng--8na8hpj.vn") == 1 << 5
    assert DomainIndex.from_bytes(bytearray(SAMPLE)).lookup("example.com") == 1  # any bytes-like image


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, len(SAMPLE) // 2, len(SAMPLE) - 1])
def test_truncated_image(size):
    with pytest.raises(IndexFormatError, match="truncated"):
        DomainIndex.from_bytes(SAMPLE[:size])


def test_every_truncation_is_detected():
    for size in range(len(SAMPLE)):
        with pytest.raises(IndexFormatError):
            DomainIndex.from_bytes(SAMPLE[:size])


def test_trailing_bytes():
    with pytest.raises(IndexFormatError, match="trailing bytes"):
        DomainIndex.from_bytes(SAMPLE + b"\0")


def test_wrong_magic():
    with pytest.raises(IndexFormatError, match="not a domain index"):
        DomainIndex.from_bytes(with_header(SAMPLE, magic=b"SDNSIDY\0"))


def test_wrong_version():
    with pytest.raises(IndexFormatError, match="format version 3 is not supported"):
        DomainIndex.from_bytes(with_header(SAMPLE, version=3))


def test_checksum_mismatch():
    image = bytearray(SAMPLE)
    image[-3] ^= 0x01  # a bit in the name section
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        DomainIndex.from_bytes(bytes(image))


def test_every_single_bit_flip_is_detected():
    # Every byte is covered: header fields by their own checks, the body by its crc32. Only the
    # header padding carries nothing: a flip there is either refused or changes no lookup.
    for position in range(len(SAMPLE)):
        for bit in range(8):
            image = bytearray(SAMPLE)
            image[position] ^= 1 << bit
            if HEADER_FIELDS <= position < HEADER.size:
                try:
                    index = DomainIndex.from_bytes(bytes(image))
                except IndexFormatError:
                    continue
                assert list(index.iter_entries()) == list(DomainIndex.from_bytes(SAMPLE).iter_entries())
                continue
            with pytest.raises(IndexFormatError):
                DomainIndex.from_bytes(bytes(image))


def test_structural_checks_behind_a_valid_checksum():
    # An image whose checksum is right but whose entries point outside the image (a buggy writer).
    image = bytearray(SAMPLE)
    _, _, _, entries, slots, masksets, _, _ = HEADER.unpack_from(image)
    offsets_start = HEADER.size + 8 * slots + 32 * masksets
    struct.pack_into("<I", image, offsets_start, len(image) + 100)
    body = bytes(image[HEADER.size:])
    with pytest.raises(IndexFormatError, match="outside the name section"):
        DomainIndex.from_bytes(with_header(bytes(image), crc=zlib.crc32(body)))

    image = bytearray(SAMPLE)
    struct.pack_into("<I", image, offsets_start + 4 * entries, masksets)
    body = bytes(image[HEADER.size:])
    with pytest.raises(IndexFormatError, match="mask set past the end"):
        DomainIndex.from_bytes(with_header(bytes(image), crc=zlib.crc32(body)))


def test_bad_slot_count():
    with pytest.raises(IndexFormatError, match="slot count"):
        DomainIndex.from_bytes(with_header(SAMPLE, slots=12))


def test_format_constants():
    assert domains.MAGIC == b"SDNSIDX\x00"
    assert domains.FORMAT_VERSION == 2
    assert SAMPLE[:8] == domains.MAGIC


def test_single_label_entries_are_probed_only_when_the_index_has_them():
    with_tld = domains.DomainIndex.from_bytes(domains.build_index([("zip", 1, "subtree", "block")]))
    assert with_tld.lookup("evil.zip") == 2 and with_tld.lookup("zip") == 2
    without = domains.DomainIndex.from_bytes(domains.build_index([("a.zip", 1, "subtree", "block")]))
    assert without.lookup("x.a.zip") == 2 and without.lookup("zip") == 0 and without.lookup("b.zip") == 0
