"""The compiled domain index: name -> category bitmask of the name and its parents, compact and shareable."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, filterfalse
from typing import Final, cast

from resolver import durable
from resolver.errors import ResolverError

__all__ = [
    "DomainIndex",
    "IndexFormatError",
    "Match",
    "build_index",
    "build_index_runs",
    "write_index",
]

# ---------------------------------------------------------------------------------------------
# Image format (version 6). Every integer is little-endian; every section starts 8-byte aligned.
#
#   header   64 bytes: magic, version, header size, counts, flags, and the crc32 of the whole image
#            except that crc field (header, then everything after it)
#   slots    u64[slot_count]     open-addressing table (linear probing), slot_count a power of two;
#                                0 = empty, else field << 48 | fingerprint << 8 | check, where
#              check        crc32(name + NUL) >> 24; the node's home slot is crc32(name + NUL) & (slot_count - 1)
#              fingerprint  bytes 1..5 of blake2s(name + NUL), the 32-byte digest, as a little-endian
#                           40-bit number, for a listed name; 0 for an unlisted ancestor
#              field        mask-set number << 1 | 1 if some listed name lies below the node
#   masksets u64[4 * maskset_count]  distinct (block_here, block_below, allow_here, allow_below);
#                                mask set 0 is all zeros. `here` applies to the listed name itself,
#                                `below` to every name under it: an exact entry sets `here`, a
#                                below-only entry (RPZ's `*.d`) `below`, a subtree entry both
#                                (format 5 had exact and subtree columns; a below-only entry
#                                needed a column of its own meaning)
#
# The image holds no names: a listed name is recognised by its check byte and fingerprint, 48 bits
# from two independent hashes. A node costs one 8-byte slot and its share of the empty ones (16.8
# bytes per listed name for the bench's million, where the names alone took 18.6), and a lookup
# reads nothing but slots. The price is a false match: an unlisted name taken for a listed one when both its check
# byte and its fingerprint equal those of a listed slot on its probe path. A probe compares about
# two slots (the table is at most 2/3 full: five on average for an absent name at the fullest),
# so the chance for one name is below 2**-45 per suffix; across a billion distinct names looked up
# against one build, about 1 in 10,000 builds would block one name wrongly. Fingerprints are not
# chosen by anyone who could gain from a collision: they come from the province's own lists, and a
# collision only ever adds a block, never removes one.
#
# Nodes are the listed names and every proper ancestor of a listed name, down to two labels (down
# to the TLD when some listed name is a single label): listing a.b.example.com adds the nodes
# b.example.com and example.com, unless they are listed themselves. With every ancestor present,
# `lookup` walks a name top-down from its last two labels and stops at the first suffix that is
# absent or has nothing listed below it, so the typical (unlisted) name costs a single probe. A
# slot carries everything a probe needs.
#
# An unlisted ancestor has field 1 (no masks, something below it) and no fingerprint: the walk
# takes it on its check byte alone. That is exact because listed names are placed in the table
# before any ancestor: when a listed name was placed, every slot on its probe path was already
# taken by another listed name, so a probe for a listed name meets only listed names (compared by
# fingerprint) before its own slot. A check match on an ancestor slot is therefore that ancestor,
# an ancestor just like it, or a suffix that is not in the index, which only costs one probe more.
#
# Mask sets: real lists have a few hundred distinct mask combinations for a million names, so a
# 15-bit reference in the slot is all a name needs; they are numbered in order of first use.
# The image is deterministic: the same entries in the same order always give the same bytes.
# Names are placed in input order run by run (`build_index` makes one run per category, match
# and kind), then ancestors level by level in order of first appearance; there is no global
# sort, which would cost a fifth of a build. Another order of the same entries gives another
# layout with the same lookups.
#
# Building needs no dict of the names: the table is its own. A repeated name meets its own slot
# (check byte and fingerprint) on its probe path and ORs its masks into it; a parent is listed
# when its probe meets its own listed slot, which then gets the has-descendants bit, and is
# otherwise placed as an unlisted ancestor.
# ---------------------------------------------------------------------------------------------

MAGIC = b"SDNSIDX\x00"
FORMAT_VERSION = 6
# magic, version, header size, entries, nodes, slots, masksets, flags, crc
_HEADER = struct.Struct("<8sIIIIIIII24x")
_HEADER_SIZE = _HEADER.size  # 64
_CRC_AT = 36  # offset of the crc field in the header
_FLAG_SINGLE_LABELS = 1  # some listed name is a single label (lists never produce one; tests may)
_FIELD_SHIFT: Final = 48  # slot bits 48..63: mask-set number << 1 | has-descendants bit
_FINGERPRINT_MASK: Final = 2**40 - 1  # slot bits 8..47
_FINGERPRINT_BITS: Final = _FINGERPRINT_MASK << 8  # the same bits in place, in the slot and in a digest's first 8 bytes
_DIGESTS_PER_PASS = 65536  # names hashed per joined batch of digests (bounds the temporary bytes)
_DESCENDANTS_BIT: Final = 1 << _FIELD_SHIFT  # the field's has-descendants bit, in place
_ANCESTOR: Final = _DESCENDANTS_BIT  # an unlisted ancestor's slot, before its check byte
_KEY_BITS: Final = _FINGERPRINT_BITS | 0xFF  # what tells listed names apart: fingerprint and check byte
_DESCENDANTS_AND_KEY_BITS: Final = _DESCENDANTS_BIT | _KEY_BITS
_MAX_MASKSETS = 2**15  # mask-set numbers fit the 16-bit field with the descendants bit
# At least 1.5 slots per node, rounded up to a power of two: the table is 1/3 to 2/3 full (nodes
# are counted before placing them, a little over: listed parents twice, see _build_image). At 1/3
# (3 slots per node) lookups of the bench's mix took 1.39 us and the slots of a million names 34 MB;
# at 2/3, 1.79 us and 17 MB. Lookups are off the hot path of repeated queries; the memory is not.

_MATCHES = ("exact", "subtree", "below")
_KINDS = ("block", "allow")
# (kind, match) -> positions in the mask quadruple: here (the name itself) and below (names under it)
_COLUMNS = {
    ("block", "exact"): (0,),
    ("block", "subtree"): (0, 1),
    ("block", "below"): (1,),
    ("allow", "exact"): (2,),
    ("allow", "subtree"): (2, 3),
    ("allow", "below"): (3,),
}
_MASK64: Final = 2**64 - 1
# While building, a name's four masks are packed into one int (column c in bits 64c..64c+63).

# In names joined by "\0\n" (and ending with it): the parent + NUL of every name with at least
# three labels (two when single labels are listed). Starting at a literal dot lets the regex
# engine skip a name's first label with a fast search (35% less time than scanning it).
_PARENT = re.compile(rb"\.([^.\n]*+\.[^\n]*+)\n")
_PARENT_OR_TLD = re.compile(rb"\.([^\n]++)\n")

_crc32 = zlib.crc32
_blake2s = hashlib.blake2s


def _fingerprint(key: bytes) -> int:
    """The 40-bit fingerprint of a name + NUL: from blake2s, independent of its crc32."""
    return int.from_bytes(_blake2s(key).digest()[1:6], "little")


def _fingerprints_in_place(keys: list[bytes]) -> Iterator[int]:
    """`_fingerprint(key) << 8` of every key plus other digest bits: mask with _FINGERPRINT_BITS.

    A build hashes a million names, so the digests are made in C-level passes, joined, and read
    back as the first 8 bytes of each: one unsigned 64-bit number per name, without a Python call
    per name. The default digest size is the fastest (a `digest_size` keyword costs 40% more).
    """
    batches = (keys[start : start + _DIGESTS_PER_PASS] for start in range(0, len(keys), _DIGESTS_PER_PASS))
    return chain.from_iterable(map(_first_digest_words, batches))


def _first_digest_words(keys: list[bytes]) -> memoryview | array[int]:
    """The first 8 bytes of every key's blake2s digest, as unsigned little-endian 64-bit numbers."""
    words: memoryview | array[int] = memoryview(b"".join(map(_blake2s.digest, map(_blake2s, keys)))).cast("Q")[::4]
    if sys.byteorder != "little":
        words = array("Q", words)
        words.byteswap()
    return words


class IndexFormatError(ResolverError):
    """A compiled index image is truncated, corrupted or of an unknown format."""


class IndexCapacityError(ResolverError):
    """The lists cannot be compiled into one index: a problem of the lists, said in one line, not a bug."""


@dataclass(frozen=True, slots=True)
class Match:
    """One listed name that applies to a looked-up name (for `explain`, not the hot path)."""

    name: str  # the listed name: the looked-up name itself or one of its parents
    bits: int  # category bitmask contributed by this entry
    match: str  # "exact" | "subtree" | "below" (the names under `name`, not `name` itself)
    kind: str  # "block" | "allow"


def build_index(entries: Iterable[tuple[str, int, str, str]]) -> bytes:
    """Compile (name, category_bit, match, kind) entries into a self-contained index image.

    Names must already be normalised (lower-case A-labels, no trailing dot); a malformed entry is a
    caller bug and raises ValueError. Repeated names merge: their bits are OR'ed per (kind, match).
    `build_index_runs` is the same for names that come in bulk.
    """
    # One run per (bit, match, kind), in order of first appearance: entries of many categories
    # mixed would otherwise make a run of almost every entry.
    runs: dict[int, list[str]] = {}  # packed bit -> names
    bit_values: dict[tuple[object, str, str], int] = {}
    last_bit = last_match = last_kind = None
    names: list[str] = []
    # The bit read as an object: compiled (mypyc), an item typed int would already be unboxed, True the int 1.
    for name, bit, match, kind in cast(Iterable[tuple[str, object, str, str]], entries):
        # Entries come in stretches of equal (bit, match, kind): look the bit up once per stretch.
        if bit is not last_bit or match is not last_match or kind is not last_kind:
            bit_value = bit_values.get((bit, match, kind), 0)
            if not bit_value or type(bit) is not int:  # new, or True where the table holds a 1
                bit_value = bit_values[(bit, match, kind)] = _packed_bits(name, bit, match, kind)
            last_bit, last_match, last_kind = bit, match, kind
            names = runs.setdefault(bit_value, [])
        names.append(name)
    return _build_image(list(runs.items()))


def build_index_runs(runs: Iterable[tuple[int, str, str, Sequence[str]]]) -> bytes:
    """Compile runs of (category_bit, match, kind, names) into an index image: `build_index` in bulk.

    A run is typically one list source's names for one (match, kind); the same name may appear in
    many runs and repeat within one. Same rules and ValueErrors as `build_index`.
    """
    objects = cast(Iterable[tuple[object, str, str, Sequence[str]]], runs)  # the bit as an object, as in build_index
    return _build_image(
        [(_packed_bits(names[0], bit, match, kind), names) for bit, match, kind, names in objects if names]
    )


def _packed_bits(name: str, bit: object, match: str, kind: str) -> int:
    """The category bit in the columns of (kind, match), packed; ValueError naming `name` if bit/match/kind is bad."""
    columns = _COLUMNS.get((kind, match))
    if columns is None:
        raise ValueError(
            f"entry {name!r}: kind must be one of {_KINDS} and match one of {_MATCHES}, got {kind!r}/{match!r}"
        )
    if type(bit) is not int or not 0 <= bit < 64:
        raise ValueError(f"entry {name!r}: category bit must be an int in 0..63, got {bit!r}")
    return sum(1 << (64 * column + bit) for column in columns)


def _build_image(runs: list[tuple[int, Sequence[str]]]) -> bytes:
    """The image of runs of (packed bit, names) (see the format above).

    The table itself merges repeated names and finds which parents are listed: there is no dict of
    a million names. Its size comes first, from counts: the distinct crc32s of the names (short
    of the distinct names by their crc32 twins, about 100 in a million) plus the distinct parents
    at every level (listed or not, so listed parents count twice). The table is then 2/3 full at
    most, give or take those twins, and roomier than the exact count would make it only when that
    count lies just under a power of two.
    """
    names = runs[0][1] if len(runs) == 1 else list(chain.from_iterable(names for _, names in runs))
    raw = _check_listed_names(names)  # every name + NUL, one per line
    single_labels = not all("." in name for name in names)
    parent_levels = _parents_by_level(raw, single_labels)
    keys = raw.splitlines()
    del raw
    hashes = list(map(_crc32, keys))
    slots = array("Q", bytes(8 * _slot_count_for(len(set(hashes)) + sum(map(len, parent_levels)))))
    masksets = _MaskSets()

    # Listed names first (see the format), run by run, then their parents level by level.
    position = 0
    for packed_bit, run_names in runs:
        end = position + len(run_names)
        _place_listed(slots, hashes[position:end], _fingerprints_in_place(keys[position:end]), packed_bit, masksets)
        position = end
    entry_count = len(slots) - slots.count(0)  # distinct listed names
    del keys, hashes
    for parents in parent_levels:
        _mark_or_place_parents(slots, parents)
    node_count = len(slots) - slots.count(0)

    maskset_table = array("Q", [masks >> shift & _MASK64 for masks in masksets.all for shift in (0, 64, 128, 192)])
    if sys.byteorder != "little":
        slots.byteswap()
        maskset_table.byteswap()
    flags = _FLAG_SINGLE_LABELS if single_labels else 0
    fields = (MAGIC, FORMAT_VERSION, _HEADER_SIZE, entry_count, node_count, len(slots), len(masksets.all), flags)
    sections = (slots, maskset_table)  # joined once, without an intermediate body copy
    header = _HEADER.pack(*fields, _checksum(_HEADER.pack(*fields, 0), *sections))
    return b"".join((header, *sections))


class _MaskSets:
    """Distinct mask quadruples, packed, numbered in order of first use after the all-zero set 0."""

    def __init__(self) -> None:
        self.all: list[int] = [0]
        self._numbers: dict[int, int] = {0: 0}

    def number(self, packed: int) -> int:
        """The number of a quadruple, a new one if it is new; IndexCapacityError past the 15 bits a slot has."""
        number = self._numbers.get(packed)
        if number is None:
            if len(self.all) == _MAX_MASKSETS:
                raise IndexCapacityError(
                    f"the lists do not compile: over {_MAX_MASKSETS} distinct combinations of categories "
                    "(block and allow) share names; one index holds at most that many"
                )
            number = self._numbers[packed] = len(self.all)
            self.all.append(packed)
        return number


def _checksum(header: bytes | memoryview, *body: bytes | memoryview | array[int]) -> int:
    """crc32 of an image without its crc field: the header before and after that field, then the body."""
    crc = zlib.crc32(header[_CRC_AT + 4 : _HEADER_SIZE], zlib.crc32(header[:_CRC_AT]))
    for part in body:
        crc = zlib.crc32(part, crc)
    return crc


def _check_listed_names(names: Sequence[str]) -> bytes:
    """Refuse names `lookup` could never match; return them as one text, each + NUL + newline, in bytes.

    Checked on the joined text with a few C-level searches: name by name, the checks were a
    noticeable part of a large reload. The name at fault is looked for only once the text has one.
    """
    if not names:
        return b""
    text = "\0\n".join(names) + "\0\n"
    if not text.isascii() or "" in names:
        bad = next(name for name in names if not name or not name.isascii())
        raise ValueError(f"listed name must be a non-empty ASCII (A-label) string, got {bad!r}")
    # The separators must be the only NULs and line breaks: hashing splits the names there.
    if text.count("\0") != len(names) or text.count("\n") != len(names) or "\r" in text:
        bad = next(name for name in names if "\0" in name or "\n" in name or "\r" in name)
        raise ValueError(f"listed name must not contain NUL or line breaks: {bad!r}")
    # Between separators, a leading dot follows a newline (or starts the text) and a trailing dot
    # precedes a NUL.
    if text.lower() != text or ".." in text or "\n." in text or ".\0" in text or text.startswith("."):
        bad = next(
            name for name in names if name.lower() != name or ".." in name or name.startswith(".") or name.endswith(".")
        )
        raise ValueError(f"listed name must be lower-case, without empty labels or a trailing dot: {bad!r}")
    return text.encode("ascii")


def _parents_by_level(names: bytes, single_labels: bool) -> list[list[bytes]]:
    """The distinct proper ancestors of the names (each + NUL), level by level: parents, grandparents, ...

    `names` is the text of the name section. Every ancestor comes once, at the first level that
    has it, in order of first appearance. A level costs a re.findall over the text of the level
    before and a dict.fromkeys. Whether an ancestor is listed is for the table to say.
    """
    parent = _PARENT_OR_TLD if single_labels else _PARENT
    levels: list[list[bytes]] = []
    seen: set[bytes] = set()
    text = names
    while text:
        parents = dict.fromkeys(parent.findall(text))
        new = list(filterfalse(seen.__contains__, parents)) if seen else list(parents)
        if not new:
            break
        seen.update(new)
        levels.append(new)
        text = b"\n".join(new) + b"\n"
    return levels


def _place_listed(
    slots: array[int], hashes: Sequence[int], digests: Iterator[int], packed_bit: int, masksets: _MaskSets
) -> None:
    """Put a run's names at the first free slot from their home slot (linear probing), or merge repeats.

    `digests` as from `_fingerprints_in_place`. A name is repeated when a slot on its probe path
    holds its check byte and fingerprint: its masks gain `packed_bit`. (Another name with the same
    48 bits on that path would merge too; a lookup could not tell them apart either.)
    """
    slot_mask = len(slots) - 1
    field = masksets.number(packed_bit) << (_FIELD_SHIFT + 1)
    for name_hash, digest in zip(hashes, digests, strict=True):
        key = digest & _FINGERPRINT_BITS | name_hash >> 24
        slot = name_hash & slot_mask
        while value := slots[slot]:
            if value & _KEY_BITS == key:
                packed = masksets.all[value >> (_FIELD_SHIFT + 1)] | packed_bit
                slots[slot] = masksets.number(packed) << (_FIELD_SHIFT + 1) | value & _DESCENDANTS_AND_KEY_BITS
                break
            slot = (slot + 1) & slot_mask
        else:
            slots[slot] = field | key


def _mark_or_place_parents(slots: array[int], parents: list[bytes]) -> None:
    """Set the has-descendants bit of every listed parent; place the others as unlisted ancestors.

    `parents` are distinct, each + NUL, none placed yet as an ancestor. Every listed name is in
    the table, so a parent is listed when its probe path has a listed slot with its check byte and
    fingerprint (the fingerprint is computed only on a check match, as in `lookup`); an ancestor
    slot with its check byte is another name.
    """
    slot_mask = len(slots) - 1
    for key, name_hash in zip(parents, map(_crc32, parents), strict=True):
        check = name_hash >> 24
        slot = name_hash & slot_mask
        fingerprint = -1
        while value := slots[slot]:
            if value & 0xFF == check and value >> _FIELD_SHIFT != 1:
                if fingerprint < 0:
                    fingerprint = _fingerprint(key) << 8
                if value & _FINGERPRINT_BITS == fingerprint:
                    slots[slot] = value | _DESCENDANTS_BIT
                    break
            slot = (slot + 1) & slot_mask
        else:
            slots[slot] = _ANCESTOR | check


def _slot_count_for(node_count: int) -> int:
    """Power of two with at least 1.5 slots per node (never full, so probes end)."""
    return max(8, 1 << (node_count + node_count // 2).bit_length())


def write_index(path: str | os.PathLike[str], image: bytes) -> None:
    """Atomically replace the index file at `path` with `image` (temp file, fsync, rename).

    Never rewrite a live index in place: processes that mapped the old file keep reading the old
    inode, and a new `DomainIndex.load` sees either the old image or the new one, never a mix.
    """
    durable.replace_synced(path, image)


class DomainIndex:
    """Read-only view of a compiled index image: `lookup(name)` -> effective category mask."""

    __slots__ = (
        "_mmap",
        "_own_masks",
        "_parent_masks",
        "_quads",
        "_single_labels",
        "_slot_mask",
        "_slots",
        "checksum",
        "entry_count",
        "file",
        "node_count",
        "size_bytes",
        "slot_count",
    )

    def __init__(
        self, image: bytes | mmap.mmap, file_map: mmap.mmap | None = None, file: tuple[str, int, int] | None = None
    ) -> None:
        """Validate `image` and view it in place (no copy). Prefer `from_bytes`, `load` or `empty`."""
        layout = _check_image(image)
        view = memoryview(image)
        self._mmap = file_map
        self._slots = view[layout.slots_start : layout.masksets_start].cast("Q")
        self._slot_mask = layout.slot_count - 1
        # The distinct mask quadruples are few (one per combination of categories), so they are
        # decoded once into small Python tuples; the per-name data stays in the shared image.
        with view[layout.masksets_start :].cast("Q") as quads:
            self._quads = [tuple(quads[i : i + 4]) for i in range(0, len(quads), 4)]
        # Indexed by a slot's field (mask-set number << 1 | has-descendants bit): (block, allow)
        # when the node is the looked-up name itself (the `here` columns), and when it is a
        # parent of the looked-up name (the `below` columns).
        self._own_masks = [masks for bh, _, ah, _ in self._quads for masks in ((bh, ah),) * 2]
        self._parent_masks = [masks for _, bb, _, ab in self._quads for masks in ((bb, ab),) * 2]
        self.entry_count = layout.entry_count  # distinct listed names
        self.node_count = layout.node_count  # listed names and their unlisted ancestors
        self.slot_count = layout.slot_count  # the `slot` of `layers` is below this
        self.checksum = layout.checksum  # the image's crc32, checked: tells two images apart without reading them
        self._single_labels = layout.single_labels
        self.size_bytes = len(view)
        self.file = file  # (path, st_dev, st_ino) of the mapped file; None for an image in memory

    @classmethod
    def from_bytes(cls, image: bytes | bytearray) -> DomainIndex:
        """View an in-memory image (from `build_index`) without copying it; a bytearray is copied once."""
        return cls(image if isinstance(image, bytes) else bytes(image))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DomainIndex:
        """Memory-map the index file at `path` read-only, so every worker process shares its pages."""
        with open(path, "rb") as file:
            try:
                file_map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # an empty file cannot be mapped
                raise IndexFormatError(f"{os.fspath(path)}: cannot map domain index: {exc}") from None
            stat = os.fstat(file.fileno())
        try:
            return cls(file_map, file_map, (os.fspath(path), stat.st_dev, stat.st_ino))
        except IndexFormatError as exc:
            file_map.close()
            raise IndexFormatError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def empty(cls) -> DomainIndex:
        """An index with no entries: every lookup returns 0."""
        return cls(build_index(()))

    def close(self) -> None:
        """Release the file mapping (only needed before the process ends; lookups then fail)."""
        self._slots.release()
        if self._mmap is not None:
            self._mmap.close()

    def lookup(self, name: str) -> int:
        """Effective category mask of `name`: block bits of it and its parents minus their allow bits."""
        # Hot path. Walk the suffixes of the name top-down at label boundaries, shortest first
        # ("example.com", "www.example.com", "a.www.example.com"); every ancestor of a listed name
        # is a node, so the walk stops at the first suffix that is absent or has nothing listed
        # below it, and an unlisted name usually costs one probe. A probe hashes the suffix with
        # its NUL (crc32) and scans slots from the home slot; an occupied slot of another name is
        # nearly always rejected by its check byte, and only a check match on a listed name
        # computes the suffix's fingerprint (an unlisted ancestor has none). Literal numbers below
        # are the slot layout.
        key = name.encode() + b"\0"
        start = key.rfind(b".")
        if self._single_labels:
            start += 1  # from the last label: this index lists single labels, and has TLD nodes
        elif start < 0:
            return 0  # a single label, and this index has none
        else:
            start = key.rfind(b".", 0, start) + 1  # from the last two labels
        slots = self._slots
        slot_mask = self._slot_mask
        block = allow = 0
        while True:
            suffix = key[start:]
            suffix_hash = _crc32(suffix)
            slot = suffix_hash & slot_mask
            value = slots[slot]
            while value:
                if value & 0xFF == suffix_hash >> 24:  # the check byte
                    field = value >> 48
                    if field == 1:
                        break  # an unlisted ancestor: taken on its check byte (see the format)
                    if value >> 8 & 0xFFFFFFFFFF == _fingerprint(suffix):
                        break
                slot = (slot + 1) & slot_mask
                value = slots[slot]
            else:
                return block & ~allow  # absent: nothing longer is listed either
            if field != 1:
                if not start:  # the name itself: its `here` masks (exact and subtree entries)
                    own_block, own_allow = self._own_masks[field]
                    return (block | own_block) & ~(allow | own_allow)
                parent_block, parent_allow = self._parent_masks[field]  # a parent: `below` (subtree, below)
                block |= parent_block
                allow |= parent_allow
                if not field & 1:
                    return block & ~allow  # nothing listed below this suffix
            elif not start:
                return block & ~allow
            start = key.rfind(b".", 0, start - 1) + 1

    def explain(self, name: str) -> list[Match]:
        """Every listed entry that applies to `name`, from the name itself up to its root-most parent.

        For one listed name, exact comes before subtree before below, and block before allow. A bit
        in both columns of a name is a subtree entry (an exact and a below entry of the same bit
        mean the same). Unlisted ancestor nodes have no entries, so they never appear.
        """
        matches: list[Match] = []
        labels = name.split(".")
        for depth in range(len(labels)):
            listed = ".".join(labels[depth:])
            slot = self._find(listed.encode() + b"\0")
            if slot < 0:
                continue
            block_here, block_below, allow_here, allow_below = self._quads[self._slots[slot] >> (_FIELD_SHIFT + 1)]
            candidates = [
                (block_here & block_below, "subtree", "block"),
                (allow_here & allow_below, "subtree", "allow"),
            ]
            if depth == 0:
                candidates[0:0] = [
                    (block_here & ~block_below, "exact", "block"),
                    (allow_here & ~allow_below, "exact", "allow"),
                ]
            else:
                candidates += [
                    (block_below & ~block_here, "below", "block"),
                    (allow_below & ~allow_here, "below", "allow"),
                ]
            matches.extend(Match(listed, bits, match, kind) for bits, match, kind in candidates if bits)
        return matches

    def layers(self, name: str) -> tuple[int, int, int, int]:
        """What the index decides around `name`: (slot, here, below, above), for the RPZ export.

        `here` is `lookup(name)`; `below` the mask of a name directly under `name` that is not
        listed itself; `above` the mask that the parents of `name` pass down (the `below` of its
        parent). `slot` is the listed name's slot, which no other listed name shares in this index,
        or -1 when `name` is not listed (then all three masks are `above`). Not the hot path: a
        probe per label.
        """
        labels = name.split(".")
        block = allow = 0
        for depth in range(len(labels) - 1, 0, -1):  # the proper ancestors, root-most first
            slot = self._find(".".join(labels[depth:]).encode() + b"\0")
            if slot >= 0:
                _, block_below, _, allow_below = self._quads[self._slots[slot] >> (_FIELD_SHIFT + 1)]
                block |= block_below
                allow |= allow_below
        above = block & ~allow
        slot = self._find(name.encode() + b"\0")
        if slot < 0:
            return -1, above, above, above
        block_here, block_below, allow_here, allow_below = self._quads[self._slots[slot] >> (_FIELD_SHIFT + 1)]
        return slot, (block | block_here) & ~(allow | allow_here), (block | block_below) & ~(allow | allow_below), above

    def _find(self, key: bytes) -> int:
        """Slot of the listed name `key` (name + NUL), or -1: the probe of `lookup`, skipping ancestors.

        The fingerprint is computed only when a listed slot has the key's check byte (most probes
        of unlisted suffixes end without it).
        """
        key_hash = _crc32(key)
        check = key_hash >> 24
        fingerprint = -1
        slot = key_hash & self._slot_mask
        while value := self._slots[slot]:
            if value & 0xFF == check and value >> _FIELD_SHIFT != 1:
                if fingerprint < 0:
                    fingerprint = _fingerprint(key)
                if value >> 8 & _FINGERPRINT_MASK == fingerprint:
                    return slot
            slot = (slot + 1) & self._slot_mask
        return -1


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each section of a checked image starts."""

    entry_count: int
    node_count: int
    slot_count: int
    slots_start: int
    masksets_start: int
    single_labels: bool
    checksum: int


def _check_image(image: bytes | mmap.mmap) -> _Layout:
    """Check magic, version, sizes, checksum and mask-set references; return the section layout."""
    if sys.byteorder != "little":
        raise IndexFormatError("domain index images are little-endian; this host is big-endian")
    size = len(image)
    if size < _HEADER_SIZE:
        raise IndexFormatError(f"domain index truncated: {size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    (magic, version, header_size, entry_count, node_count, slot_count, maskset_count, flags, stored_crc) = (
        _HEADER.unpack_from(image)
    )
    if magic != MAGIC:
        raise IndexFormatError(f"not a domain index (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"domain index format version {version} is not supported (expected {FORMAT_VERSION})")
    if header_size != _HEADER_SIZE:
        raise IndexFormatError(f"domain index header size {header_size}, expected {_HEADER_SIZE}")
    if slot_count & (slot_count - 1) or slot_count <= node_count:
        raise IndexFormatError(f"domain index slot count {slot_count} is invalid for {node_count} nodes")
    if entry_count > node_count:
        raise IndexFormatError(f"domain index has {entry_count} entries but only {node_count} nodes")
    masksets_start = _HEADER_SIZE + 8 * slot_count
    layout = _Layout(
        entry_count,
        node_count,
        slot_count,
        _HEADER_SIZE,
        masksets_start,
        bool(flags & _FLAG_SINGLE_LABELS),
        stored_crc,
    )
    expected_size = masksets_start + 32 * maskset_count
    if size != expected_size:
        problem = "truncated" if size < expected_size else "has trailing bytes"
        raise IndexFormatError(f"domain index {problem}: {size} bytes, header says {expected_size}")
    with memoryview(image) as view:
        actual_crc = _checksum(view[:_HEADER_SIZE], view[_HEADER_SIZE:])
        if actual_crc != stored_crc:
            raise IndexFormatError(
                f"domain index checksum mismatch: crc32 is {actual_crc:#010x}, header says {stored_crc:#010x}"
            )
        # Past the checksum the image is what some build wrote; this keeps a buggy or hand-made
        # image from sending a lookup outside its mask-set table.
        with view[_HEADER_SIZE:masksets_start].cast("Q") as slots:
            largest_field = max(slots, default=0) >> _FIELD_SHIFT
        if largest_field >= 2 * maskset_count:
            raise IndexFormatError("domain index slot refers to a mask set past the end of the table")
    return layout
