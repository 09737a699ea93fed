"""domains: the compiled index (exact/subtree/below, allow, categories), its file and its integrity checks."""

import hashlib
import random
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.filtering import domains
from resolver.filtering.domains import DomainIndex, IndexFormatError, Match, build_index, write_index

HEADER = struct.Struct("<8sIIIIIIII24x")
HEADER_NAMES = ["magic", "version", "header_size", "entries", "nodes", "slots", "masksets", "flags", "crc"]
CRC_AT = 36  # the crc32 covers the whole image except these 4 bytes


def index_of(*entries):
    return DomainIndex.from_bytes(build_index(entries))


def entries_of(index, names):
    """The (name, bit, match, kind) entries `index` holds for `names` (it stores no names to list)."""
    found = set()
    for name in names:
        for match in [*index.explain(name), *index.explain(f"x.{name}")]:  # below-only entries show from under
            if match.name == name:
                found.update((name, bit, match.match, match.kind) for bit in range(64) if match.bits >> bit & 1)
    return found


def canonical(entries):
    """What an index can tell apart of `entries`: a subtree entry is an exact and a below entry of the same bit."""
    columns = {}
    for name, bit, match, kind in entries:
        here, below = columns.get((name, bit, kind), (False, False))
        columns[(name, bit, kind)] = (here or match != "below", below or match != "exact")
    names = {(True, False): "exact", (True, True): "subtree", (False, True): "below"}
    return {(name, bit, names[column], kind) for (name, bit, kind), column in columns.items()}


def naive_lookup(entries, name):
    """Reference semantics: entries for the name itself (exact or subtree) and subtree or below
    entries of its parents contribute; allow bits remove block bits of the same category."""
    labels = name.split(".")
    block = allow = 0
    for depth in range(len(labels)):
        suffix = ".".join(labels[depth:])
        for listed, bit, match, kind in entries:
            if listed != suffix or (depth and match == "exact") or (not depth and match == "below"):
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


@pytest.mark.parametrize(
    "name",
    [
        "notexample.com",
        "xexample.com",
        "example.com.evil.net",
        "example.co",
        "example.comm",
        "www.notexample.com",
        "ample.com",
    ],
)
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


# --- ancestor nodes and the top-down walk ---------------------------------------------------


def test_ancestors_are_nodes_but_never_entries():
    index = index_of(("a.b.example.com", 0, "subtree", "block"))
    assert (index.entry_count, index.node_count) == (1, 3)  # + b.example.com, example.com; not com
    assert [index.lookup(name) for name in ["example.com", "b.example.com", "x.b.example.com", "com"]] == [0] * 4
    assert index.lookup("a.b.example.com") == index.lookup("x.y.a.b.example.com") == 1
    assert index.explain("b.example.com") == []
    assert index.explain("x.a.b.example.com") == [Match("a.b.example.com", 1, "subtree", "block")]
    assert entries_of(index, ["a.b.example.com", "b.example.com", "example.com"]) == {
        ("a.b.example.com", 0, "subtree", "block")
    }


def test_listed_ancestors_are_not_added_twice():
    index = index_of(
        ("a.b.example.com", 0, "subtree", "block"),
        ("example.com", 1, "exact", "block"),
        ("c.b.example.com", 2, "exact", "allow"),
    )
    assert (index.entry_count, index.node_count) == (3, 4)  # + b.example.com
    assert index.lookup("example.com") == 2
    assert index.lookup("b.example.com") == 0


def test_single_label_index_adds_tld_nodes():
    index = index_of(("zip", 1, "subtree", "block"), ("a.b.example.com", 0, "subtree", "block"))
    assert (index.entry_count, index.node_count) == (2, 5)  # + b.example.com, example.com, com
    assert index.lookup("x.a.b.example.com") == 1
    assert index.lookup("example.com") == index.lookup("com") == 0
    assert index.lookup("zip") == index.lookup("a.zip") == 2
    assert index.explain("com") == [] and index.explain("zip") == [Match("zip", 2, "subtree", "block")]


@pytest.fixture
def probes(monkeypatch):
    """The keys lookups probe, in order (one crc32 call per probe)."""
    calls = []

    def counting_crc32(data, *start):
        calls.append(bytes(data))
        return zlib.crc32(data, *start)

    monkeypatch.setattr(domains, "_crc32", counting_crc32)
    return calls


@pytest.mark.parametrize(
    "name, expected, probed",
    [
        ("x.y.z.unlisted.net", 0, ["unlisted.net"]),  # absent two-label suffix: one probe
        ("example.com", 0, ["example.com"]),  # an ancestor node, and the name itself
        ("q.example.com", 0, ["example.com", "q.example.com"]),  # absent below an ancestor
        ("b.example.com", 0, ["example.com", "b.example.com"]),
        ("a.b.example.com", 1, ["example.com", "b.example.com", "a.b.example.com"]),
        # a.b.example.com has nothing listed below it: the walk stops there, however deep the name
        ("z.y.x.a.b.example.com", 1, ["example.com", "b.example.com", "a.b.example.com"]),
        ("deep.www.other.org", 0, ["other.org", "www.other.org"]),  # exact entry: stop, no bits
        ("x.ok.www.another.org", 0, ["another.org", "www.another.org", "ok.www.another.org", "x.ok.www.another.org"]),
        ("z.ok.www.another.org", 2, ["another.org", "www.another.org", "ok.www.another.org", "z.ok.www.another.org"]),
        ("x.www.allowed.org", 0, ["allowed.org", "www.allowed.org"]),
        ("x.y.allowed.org", 1 << 2, ["allowed.org", "y.allowed.org"]),
    ],
)
def test_the_walk_stops_at_the_first_absent_suffix_or_a_node_without_descendants(probes, name, expected, probed):
    index = index_of(
        ("a.b.example.com", 0, "subtree", "block"),
        ("www.other.org", 1, "exact", "block"),
        ("z.ok.www.another.org", 1, "exact", "block"),
        ("allowed.org", 2, "subtree", "block"),
        ("www.allowed.org", 2, "subtree", "allow"),
    )
    probes.clear()
    assert index.lookup(name) == expected
    assert probes == [suffix.encode() + b"\0" for suffix in probed]


def test_single_label_index_walks_from_the_last_label(probes):
    index = index_of(("zip", 1, "subtree", "block"), ("bad.example.com", 0, "exact", "block"))
    probes.clear()
    assert index.lookup("x.y.example.org") == 0
    assert probes == [b"org\0"]
    probes.clear()
    assert index.lookup("x.bad.example.com") == 0
    assert probes == [b"com\0", b"example.com\0", b"bad.example.com\0"]


# Two names whose crc32 (with the terminating NUL) is the same; the same prefix keeps them equal.
TWIN, OTHER_TWIN = "fqb17i228u.example", "hh578ntdii.example"


def slots_of(index, name):
    """(slot number, field, fingerprint) of every slot on `name`'s probe path with its check byte."""
    name_hash = zlib.crc32(name.encode() + b"\0")
    found = []
    slot = name_hash & index._slot_mask
    while value := index._slots[slot]:
        if value & 0xFF == name_hash >> 24:
            found.append((slot, value >> 48, value >> 8 & 0xFFFFFFFFFF))
        slot = (slot + 1) & index._slot_mask
    return found


def test_twins_share_a_hash():
    for prefix in ["", "www."]:
        assert zlib.crc32(f"{prefix}{TWIN}\0".encode()) == zlib.crc32(f"{prefix}{OTHER_TWIN}\0".encode())


def test_twins_have_different_fingerprints():
    for prefix in ["", "www."]:
        assert domains._fingerprint(f"{prefix}{TWIN}\0".encode()) != domains._fingerprint(
            f"{prefix}{OTHER_TWIN}\0".encode()
        )


def test_listed_names_carry_a_fingerprint_and_unlisted_ancestors_none():
    index = index_of((f"www.{TWIN}", 1, "exact", "block"))
    (listed,) = slots_of(index, f"www.{TWIN}")
    assert listed[1] > 1 and listed[2] == domains._fingerprint(f"www.{TWIN}\0".encode())
    assert [field_and_fingerprint for _, *field_and_fingerprint in slots_of(index, TWIN)] == [[1, 0]]


def test_listed_twins_are_told_apart_by_their_fingerprints():
    index = index_of((TWIN, 0, "subtree", "block"), (OTHER_TWIN, 1, "exact", "block"))
    assert [field > 1 for _, field, _ in slots_of(index, TWIN)] == [True, True]
    assert index.lookup(TWIN) == index.lookup(f"x.{TWIN}") == 1
    assert index.lookup(OTHER_TWIN) == 2 and index.lookup(f"x.{OTHER_TWIN}") == 0
    assert index.explain(OTHER_TWIN) == [Match(OTHER_TWIN, 2, "exact", "block")]


def test_without_fingerprints_a_twin_would_be_taken_for_the_listed_name():
    # The control for the tests above: the check byte alone cannot tell twins apart, so it is the
    # fingerprint comparison that refuses them (see the format: a false match needs both to agree).
    # The listed slot is given the twin's fingerprint in the image itself (no function is replaced:
    # the compiled module calls its own).
    image = bytearray(build_index([(f"www.{TWIN}", 1, "exact", "block")]))
    index = DomainIndex.from_bytes(image)
    assert index.lookup(f"www.{OTHER_TWIN}") == 0
    ((slot, _, _),) = slots_of(index, f"www.{TWIN}")
    at = domains._check_image(bytes(image)).slots_start + 8 * slot
    value = int.from_bytes(image[at : at + 8], "little") & ~(0xFFFFFFFFFF << 8)
    twin = domains._fingerprint(f"www.{OTHER_TWIN}\0".encode())
    image[at : at + 8] = (value | twin << 8).to_bytes(8, "little")
    assert DomainIndex.from_bytes(resealed(image)).lookup(f"www.{OTHER_TWIN}") == 2


def test_listed_names_come_first_on_a_shared_probe_path():
    # The ancestor TWIN hashes like the listed OTHER_TWIN: the listed name holds the earlier slot,
    # so a probe for it compares its name before it could meet the ancestor.
    index = index_of((f"www.{TWIN}", 1, "exact", "block"), (OTHER_TWIN, 0, "subtree", "block"))
    (listed_slot, listed_field, _), (ancestor_slot, ancestor_field, ancestor_fingerprint) = slots_of(index, TWIN)
    assert listed_field > 1 and (ancestor_field, ancestor_fingerprint) == (1, 0)
    assert (ancestor_slot - listed_slot) & index._slot_mask > 0
    assert index.lookup(OTHER_TWIN) == index.lookup(f"x.{OTHER_TWIN}") == 1
    assert index.lookup(TWIN) == index.lookup(f"x.{TWIN}") == 0
    assert index.lookup(f"www.{TWIN}") == 2
    assert index.explain(TWIN) == [] and index.explain(f"x.{OTHER_TWIN}") == [Match(OTHER_TWIN, 1, "subtree", "block")]


def test_below_covers_the_names_under_the_name_but_not_the_name():
    index = index_of(("example.com", 0, "below", "block"))
    assert index.lookup("example.com") == 0
    assert index.lookup("www.example.com") == 1
    assert index.lookup("a.b.c.example.com") == 1
    assert index.explain("example.com") == []
    assert index.explain("www.example.com") == [Match("example.com", 1, "below", "block")]


def test_an_exact_and_a_below_entry_of_one_category_are_a_subtree():
    index = index_of(("example.com", 0, "exact", "block"), ("example.com", 0, "below", "block"))
    assert index.lookup("example.com") == index.lookup("www.example.com") == 1
    assert index.explain("www.example.com") == [Match("example.com", 1, "subtree", "block")]


def test_below_allow_keeps_the_name_itself_blocked():
    index = index_of(("example.com", 0, "subtree", "block"), ("example.com", 0, "below", "allow"))
    assert index.lookup("example.com") == 1
    assert index.lookup("www.example.com") == 0


def test_layers_say_what_is_decided_for_a_name_under_it_and_above_it():
    index = index_of(
        ("example.com", 0, "below", "block"),
        ("ok.example.com", 0, "exact", "allow"),
        ("ads.example.com", 1, "subtree", "block"),
    )
    slot, here, below, above = index.layers("ok.example.com")
    assert slot >= 0 and (here, below, above) == (0, 1, 1)
    assert index.layers("ads.example.com")[1:] == (3, 3, 1)
    assert index.layers("example.com")[1:] == (0, 1, 0)
    assert index.layers("unlisted.example.com") == (-1, 1, 1, 1)
    assert index.layers("elsewhere.org") == (-1, 0, 0, 0)
    slots = {index.layers(name)[0] for name in ("example.com", "ok.example.com", "ads.example.com")}
    assert len(slots) == 3


def test_ancestors_sharing_a_hash_are_interchangeable():
    index = index_of((f"a.{TWIN}", 0, "subtree", "block"), (f"b.{OTHER_TWIN}", 1, "subtree", "block"))
    assert [field for _, field, _ in slots_of(index, TWIN)] == [1, 1]
    assert index.lookup(f"x.a.{TWIN}") == 1 and index.lookup(f"x.b.{OTHER_TWIN}") == 2
    assert index.lookup(f"b.{TWIN}") == index.lookup(f"a.{OTHER_TWIN}") == 0


def test_an_absent_suffix_that_hashes_like_an_ancestor_only_walks_one_step_further(probes):
    # OTHER_TWIN is not in the index but hashes like the unlisted ancestor TWIN, and www.OTHER_TWIN
    # like the listed www.TWIN: the walk goes on, and the listed name's fingerprint refuses it.
    index = index_of((f"www.{TWIN}", 1, "exact", "block"))
    probes.clear()
    assert index.lookup(f"www.{OTHER_TWIN}") == 0
    assert probes == [f"{OTHER_TWIN}\0".encode(), f"www.{OTHER_TWIN}\0".encode()]
    assert index.lookup(f"www.{TWIN}") == 2


# --- explain, determinism -----------------------------------------------------------------------


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


def test_explain_returns_what_was_built():
    entries = [
        ("b.example", 0, "subtree", "block"),
        ("a.example", 63, "exact", "allow"),
        ("a.example", 1, "exact", "block"),
        ("a.example", 1, "subtree", "allow"),
    ]
    index = index_of(*entries)
    assert entries_of(index, ["a.example", "b.example", "example", "c.example"]) == set(entries)


def test_the_image_holds_no_names():
    image = build_index([("a-rather-distinctive-name.example", 0, "subtree", "block")])
    assert b"distinctive" not in image and b"example" not in image
    assert len(image) == 64 + 8 * 8 + 32 * 2  # header, 8 slots, mask sets 0 and 1


def test_image_is_deterministic():
    # The same entries in the same order give the same bytes; another order gives another layout
    # (node order follows the input) with the same contents.
    entries = [
        (
            f"n{i}.{('a.example', 'example', 'b.a.example')[i % 3]}",
            i % 7,
            ("exact", "subtree")[i % 2],
            ("block", "allow")[i % 3 == 0],
        )
        for i in range(200)
    ]
    assert build_index(entries) == build_index(list(entries))
    shuffled = entries[:]
    random.Random(3).shuffle(shuffled)
    index, other = index_of(*entries), index_of(*shuffled)
    assert entries_of(index, [name for name, *_ in entries]) == set(entries)
    assert entries_of(other, [name for name, *_ in entries]) == set(entries)
    assert (index.entry_count, index.node_count) == (other.entry_count, other.node_count)
    for name in ["n1.example", "x.n1.example", "n2.b.a.example", "a.example", "q.b.a.example", "example"]:
        assert index.lookup(name) == other.lookup(name)
        assert index.explain(name) == other.explain(name)


def test_bulk_runs_give_the_same_image_as_entries():
    entries = [
        ("a.example", 0, "subtree", "block"),
        ("b.example", 0, "subtree", "block"),
        ("a.example", 2, "exact", "allow"),
        ("c.a.example", 0, "subtree", "block"),
        ("b.example", 5, "subtree", "block"),
    ]
    runs = [
        (0, "subtree", "block", ["a.example", "b.example", "c.a.example"]),
        (2, "exact", "allow", ["a.example"]),
        (5, "subtree", "block", ["b.example"]),
        (7, "exact", "block", []),
    ]  # an empty run adds nothing
    assert domains.build_index_runs(runs) == build_index(entries)
    # Names may repeat within and across runs.
    again = domains.build_index_runs(
        [(0, "subtree", "block", ["a.example", "a.example"]), (0, "subtree", "block", ["a.example"])]
    )
    assert again == build_index([("a.example", 0, "subtree", "block")])


@pytest.mark.parametrize(
    "entry, message",
    [
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
    ],
)
def test_build_rejects_malformed_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        build_index([entry])
    name, bit, match, kind = entry
    with pytest.raises(ValueError, match=message):
        domains.build_index_runs([(bit, match, kind, [name])])
    with pytest.raises(ValueError, match=message):  # after good names: the bulk checks see it mid-text
        domains.build_index_runs([(0, "exact", "block", ["good.example", "z.example"]), (bit, match, kind, [name])])


@pytest.mark.parametrize("name", ["a\0b.example", "a.example\n", "a\r.example"])
def test_build_rejects_control_characters_that_would_break_the_image(name):
    with pytest.raises(ValueError, match="must not contain NUL or line breaks"):
        build_index([(name, 0, "exact", "block")])


def test_build_names_the_first_bad_entry_even_after_good_ones_of_its_group():
    # True == 1, but only an int is a category bit, also after entries with bit 1.
    with pytest.raises(ValueError, match=r"entry 'b.example': category bit must be an int in 0..63, got True"):
        build_index(
            [
                ("a.example", 1, "exact", "block"),
                ("c.example", 2, "exact", "block"),
                ("b.example", True, "exact", "block"),
            ]
        )


# --- property: lookup == naive reference -----------------------------------------------------

LABELS = st.sampled_from(["a", "b", "c", "xn--bcher-kva", "www", "com"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
ENTRIES = st.lists(
    st.tuples(
        NAMES,
        st.sampled_from([0, 1, 2, 63]),
        st.sampled_from(["exact", "subtree", "below"]),
        st.sampled_from(["block", "allow"]),
    ),
    max_size=12,
)


# Deeper names over fewer labels, at least two labels per entry (so no single-label flag): long
# chains of listed names and ancestors, allows below blocks and blocks below allows.
DEEP_LABELS = st.sampled_from(["a", "b", "www", "com"])
DEEP_ENTRY_NAMES = st.lists(DEEP_LABELS, min_size=2, max_size=6).map(".".join)
DEEP_QUERIES = st.lists(st.sampled_from(["a", "b", "c", "www", "com", "xn--bcher-kva"]), min_size=1, max_size=8).map(
    ".".join
)
DEEP_ENTRIES = st.lists(
    st.tuples(
        DEEP_ENTRY_NAMES,
        st.sampled_from([0, 1, 5]),
        st.sampled_from(["exact", "subtree", "below"]),
        st.sampled_from(["block", "block", "allow"]),
    ),
    max_size=16,
)


def check_against_reference(entries, queries):
    index = index_of(*entries)
    for name in queries + [listed for listed, *_ in entries]:
        for probe in (name, "x." + name, "x.y." + name):
            assert index.lookup(probe) == naive_lookup(entries, probe), probe
        block = allow = 0
        for match in index.explain(name):
            if match.kind == "block":
                block |= match.bits
            else:
                allow |= match.bits
        assert block & ~allow == index.lookup(name)
    assert entries_of(index, {listed for listed, *_ in entries}) == canonical(entries)
    assert index.entry_count == len({listed for listed, *_ in entries})
    listed_slots = set()
    for name in queries + [listed for listed, *_ in entries]:
        slot, here, below, above = index.layers(name)
        parent = name.partition(".")[2]
        expected_above = naive_lookup(entries, f"*.{parent}") if parent else 0
        assert (here, below, above) == (naive_lookup(entries, name), naive_lookup(entries, f"*.{name}"), expected_above)
        assert (slot >= 0) == any(listed == name for listed, *_ in entries)
        if slot >= 0:
            listed_slots.add((name, slot))
    assert len({slot for _, slot in listed_slots}) == len(listed_slots)  # a slot per listed name


@settings(max_examples=200, deadline=None, database=None)
@given(entries=ENTRIES, queries=st.lists(NAMES, min_size=1, max_size=10))
def test_lookup_matches_reference(entries, queries):
    check_against_reference(entries, queries)


@settings(max_examples=200, deadline=None, database=None)
@given(entries=DEEP_ENTRIES, queries=st.lists(DEEP_QUERIES, min_size=1, max_size=10))
def test_deep_lookup_matches_reference(entries, queries):
    check_against_reference(entries, queries)


@settings(max_examples=100, deadline=None, database=None)
@given(entries=DEEP_ENTRIES, tld=st.sampled_from(["com", "a", "zip"]), queries=st.lists(DEEP_QUERIES, max_size=10))
def test_single_label_index_matches_reference(entries, tld, queries):
    check_against_reference([*entries, (tld, 7, "subtree", "block")], [*queries, tld])


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
    with pytest.raises(IndexFormatError, match=r"index\.bin: cannot map"):
        DomainIndex.load(path)


def test_load_of_a_corrupted_file_names_it(tmp_path):
    path = tmp_path / "index.bin"
    path.write_bytes(b"not an index at all, but long enough to hold the 64-byte header ......")
    with pytest.raises(IndexFormatError, match=r"index\.bin: not a domain index"):
        DomainIndex.load(path)


# --- integrity -------------------------------------------------------------------------------

SAMPLE = build_index(
    [
        ("example.com", 0, "subtree", "block"),
        ("www.example.com", 1, "exact", "allow"),
        ("xn--bng--8na8hpj.vn", 5, "subtree", "block"),
    ]
)


def with_header(image, **changes):
    fields = dict(zip(HEADER_NAMES, HEADER.unpack_from(image), strict=True))
    fields.update(changes)
    return HEADER.pack(*fields.values()) + image[HEADER.size :]


def resealed(image):
    """`image` with its crc32 recomputed (everything but the crc field), as a buggy builder would write it."""
    image = bytes(image)
    crc = zlib.crc32(image[HEADER.size :], zlib.crc32(image[CRC_AT + 4 : HEADER.size], zlib.crc32(image[:CRC_AT])))
    return with_header(image, crc=crc)


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
    with pytest.raises(IndexFormatError, match=r"format version 4 is not supported \(expected 6\)"):
        DomainIndex.from_bytes(with_header(SAMPLE, version=4))


def test_a_format_5_image_is_refused_though_its_layout_is_the_same():
    # Format 5 kept exact-only and subtree masks where format 6 keeps `here` and `below`: read as
    # format 6, a format-5 subtree entry would no longer cover its own name.
    with pytest.raises(IndexFormatError, match=r"format version 5 is not supported \(expected 6\)"):
        DomainIndex.from_bytes(resealed(with_header(SAMPLE, version=5)))


def test_format_2_image_is_refused(tmp_path):
    # A format-2 file (no ancestor nodes, another layout) left on disk by an older schooldns: the
    # loader refuses it, and snapshots.load_index then compiles the lists again.
    old_header = struct.pack("<8sIIIIIIII24x", domains.MAGIC, 2, 64, 1, 8, 1, 12, 0, 0)
    path = tmp_path / "index.bin"
    path.write_bytes(old_header + bytes(8 * 8 + 32 + 8) + b"example.com\0")
    with pytest.raises(IndexFormatError, match=r"index\.bin: domain index format version 2 is not supported"):
        DomainIndex.load(path)


def test_format_3_image_is_refused(tmp_path):
    # Format 3 kept every listed name in the image (a third of its size); format 4 keeps fingerprints.
    old_header = struct.pack("<8sIIIIIIIII20x", domains.MAGIC, 3, 64, 1, 1, 8, 2, 13, 0, 0)
    path = tmp_path / "index.bin"
    path.write_bytes(old_header + bytes(8 * 8 + 2 * 32) + b"example.com\0\n")
    with pytest.raises(IndexFormatError, match=r"index\.bin: domain index format version 3 is not supported"):
        DomainIndex.load(path)


def test_checksum_mismatch():
    image = bytearray(SAMPLE)
    image[-3] ^= 0x01  # a bit in the last mask set
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        DomainIndex.from_bytes(bytes(image))


def test_every_single_bit_flip_is_detected():
    # Every byte is covered, header padding and flags included: the crc32 spans all but its own
    # field, and a flip there makes it disagree.
    for position in range(len(SAMPLE)):
        for bit in range(8):
            image = bytearray(SAMPLE)
            image[position] ^= 1 << bit
            with pytest.raises(IndexFormatError):
                DomainIndex.from_bytes(bytes(image))


def test_header_flags_and_counts_are_checksummed():
    # Since format 3 the single-label flag changes where lookups start, and the entry count no
    # longer sizes a section: both are covered by the checksum.
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        DomainIndex.from_bytes(with_header(SAMPLE, flags=1))
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        DomainIndex.from_bytes(with_header(SAMPLE, entries=2))
    assert DomainIndex.from_bytes(resealed(SAMPLE)).lookup("a.example.com") == 1


def test_structural_checks_behind_a_valid_checksum():
    # Images whose checksum is right but whose contents are not what a build writes (a buggy writer).
    fields = dict(zip(HEADER_NAMES, HEADER.unpack_from(SAMPLE), strict=True))
    slots = memoryview(SAMPLE)[HEADER.size : HEADER.size + 8 * fields["slots"]].cast("Q")
    used = next(number for number, value in enumerate(slots) if value >> 48 > 1)
    image = bytearray(SAMPLE)
    value = slots[used] & (2**48 - 1) | 2 * fields["masksets"] << 48  # a mask set past the table
    struct.pack_into("<Q", image, HEADER.size + 8 * used, value)
    with pytest.raises(IndexFormatError, match="mask set past the end"):
        DomainIndex.from_bytes(resealed(image))

    with pytest.raises(IndexFormatError, match="4 entries but only 3 nodes"):
        DomainIndex.from_bytes(resealed(with_header(SAMPLE, entries=4, nodes=3)))


def test_bad_slot_count():
    with pytest.raises(IndexFormatError, match="slot count"):
        DomainIndex.from_bytes(with_header(SAMPLE, slots=12))


def test_format_constants():
    assert domains.MAGIC == b"SDNSIDX\x00"
    assert domains.FORMAT_VERSION == 6
    assert SAMPLE[:8] == domains.MAGIC
    fields = dict(zip(HEADER_NAMES, HEADER.unpack_from(SAMPLE), strict=True))
    # example.com, www.example.com and xn--bng--8na8hpj.vn are listed; no ancestor is missing.
    assert (fields["version"], fields["header_size"], fields["entries"], fields["nodes"]) == (6, 64, 3, 3)
    assert fields["flags"] == 0


def test_a_listed_slot_holds_bytes_1_to_5_of_the_names_blake2s_digest():
    # The format says what a slot holds, for anyone reading an image without this module: the
    # fingerprint is bytes 1..5 of the 32-byte blake2s digest of name + NUL, little-endian, in
    # slot bits 8..47, beside the check byte (crc32 >> 24) and the field.
    index = index_of(("example.com", 0, "subtree", "block"))
    ((_, field, fingerprint),) = slots_of(index, "example.com")
    assert fingerprint == int.from_bytes(hashlib.blake2s(b"example.com\0").digest()[1:6], "little")
    assert fingerprint == domains._fingerprint(b"example.com\0") and field > 1


def test_single_label_entries_are_probed_only_when_the_index_has_them():
    with_tld = domains.DomainIndex.from_bytes(domains.build_index([("zip", 1, "subtree", "block")]))
    assert with_tld.lookup("evil.zip") == 2 and with_tld.lookup("zip") == 2
    without = domains.DomainIndex.from_bytes(domains.build_index([("a.zip", 1, "subtree", "block")]))
    assert without.lookup("x.a.zip") == 2 and without.lookup("zip") == 0 and without.lookup("b.zip") == 0
