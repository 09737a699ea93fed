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
from functools import partial
from itertools import compress, filterfalse, repeat
from operator import methodcaller, not_, or_
from pathlib import Path

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
# Image format (version 4). Every integer is little-endian; every section starts 8-byte aligned.
#
#   header   64 bytes: magic, version, header size, counts, flags, and the crc32 of the whole image
#            except that crc field (header, then everything after it)
#   slots    u64[slot_count]     open-addressing table (linear probing), slot_count a power of two;
#                                0 = empty, else field << 48 | fingerprint << 8 | check, where
#              check        crc32(name + NUL) >> 24; the node's home slot is crc32(name + NUL) & (slot_count - 1)
#              fingerprint  40 bits of blake2s(name + NUL) for a listed name; 0 for an unlisted ancestor
#              field        mask-set number << 1 | 1 if some listed name lies below the node
#   masksets u64[4 * maskset_count]  distinct (block_exact, block_subtree, allow_exact, allow_subtree);
#                                mask set 0 is all zeros
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
# 15-bit reference in the slot is all a name needs. The image is deterministic: the same entries
# in the same order always give the same bytes. Names are placed in input order (first appearance,
# run by run), then ancestors level by level in order of first appearance; there is no global
# sort, which would cost a fifth of a build. Another order of the same entries gives another
# layout with the same lookups.
# ---------------------------------------------------------------------------------------------

MAGIC = b"SDNSIDX\x00"
FORMAT_VERSION = 4
# magic, version, header size, entries, nodes, slots, masksets, flags, crc
_HEADER = struct.Struct("<8sIIIIIIII24x")
_HEADER_SIZE = _HEADER.size  # 64
_CRC_AT = 36  # offset of the crc field in the header
_FLAG_SINGLE_LABELS = 1  # some listed name is a single label (lists never produce one; tests may)
_FIELD_SHIFT = 48  # slot bits 48..63: mask-set number << 1 | has-descendants bit
_FINGERPRINT_BYTES = 5  # slot bits 8..47
_FINGERPRINT_MASK = 2 ** (8 * _FINGERPRINT_BYTES) - 1
_ANCESTOR = 1 << _FIELD_SHIFT  # an unlisted ancestor's slot, before its check byte
_MAX_MASKSETS = 2**15  # mask-set numbers fit the 16-bit field with the descendants bit
# At least 1.5 slots per node, rounded up to a power of two: the table is 1/3 to 2/3 full. At 1/3
# (3 slots per node) lookups of the bench's mix took 1.39 us and the slots of a million names 34 MB;
# at 2/3, 1.79 us and 17 MB. Lookups are off the hot path of repeated queries; the memory is not.

_MATCHES = ("exact", "subtree")
_KINDS = ("block", "allow")
# (kind, match) -> position in the mask quadruple
_COLUMN = {("block", "exact"): 0, ("block", "subtree"): 1, ("allow", "exact"): 2, ("allow", "subtree"): 3}
_MASK64 = 2**64 - 1
# While building, a name's four masks are packed into one int (column c in bits 64c..64c+63),
# with one more bit for "a listed name lies below this one".
_ALL_MASKS = 2**256 - 1
_HAS_DESCENDANTS = 1 << 256

# In "\n" + names joined by "\0\n": the parent of every name with at least three labels (two when
# single labels are listed). The leading newline lets the regex engine jump from line to line.
_PARENT = re.compile(r"\n[^.\0]*+\.([^.\0]*+\.[^\0]*+)\0")
_PARENT_OR_TLD = re.compile(r"\n[^.\0]*+\.([^\0]++)\0")
_ALL_BUT_DOTS_AND_NEWLINES = bytes(set(range(256)) - set(b".\n"))

_crc32 = zlib.crc32
_new_fingerprint_hash = partial(hashlib.blake2s, digest_size=_FINGERPRINT_BYTES)


def _fingerprint(key: bytes) -> int:
    """The 40-bit fingerprint of a name + NUL: blake2s, independent of its crc32."""
    return int.from_bytes(_new_fingerprint_hash(key).digest(), "little")


def _fingerprints(keys: Iterable[bytes]) -> Iterator[int]:
    """`_fingerprint` of every key, in C-level passes (a build computes a million)."""
    return map(int.from_bytes, map(methodcaller("digest"), map(_new_fingerprint_hash, keys)), repeat("little"))


class IndexFormatError(ResolverError):
    """A compiled index image is truncated, corrupted or of an unknown format."""


@dataclass(frozen=True, slots=True)
class Match:
    """One listed name that applies to a looked-up name (for `explain`, not the hot path)."""

    name: str  # the listed name: the looked-up name itself or one of its parents
    bits: int  # category bitmask contributed by this entry
    match: str  # "exact" | "subtree"
    kind: str  # "block" | "allow"


def build_index(entries: Iterable[tuple[str, int, str, str]]) -> bytes:
    """Compile (name, category_bit, match, kind) entries into a self-contained index image.

    Names must already be normalised (lower-case A-labels, no trailing dot); a malformed entry is a
    caller bug and raises ValueError. Repeated names merge: their bits are OR'ed per (kind, match).
    `build_index_runs` is the same for names that come in bulk.
    """
    listed: dict[str, int] = {}  # name -> its packed masks (see _ALL_MASKS)
    get = listed.get
    bit_values: dict[tuple[int, str, str], int] = {}
    last_bit = last_match = last_kind = None
    bit_value = 0
    for name, bit, match, kind in entries:
        # Entries come in stretches of equal (bit, match, kind): look the bit up once per stretch.
        if bit is not last_bit or match is not last_match or kind is not last_kind:
            bit_value = bit_values.get((bit, match, kind), 0)
            if not bit_value or type(bit) is not int:  # new, or True where the table holds a 1
                bit_value = bit_values[(bit, match, kind)] = 1 << (64 * _column_of(name, bit, match, kind) + bit)
            last_bit, last_match, last_kind = bit, match, kind
        # One dict update per entry is the fastest merge measured: the second access to a name is
        # cache-hot, where grouping first and merging with C-level passes touches every name thrice.
        listed[name] = get(name, 0) | bit_value
    return _build_image(listed)


def build_index_runs(runs: Iterable[tuple[int, str, str, Sequence[str]]]) -> bytes:
    """Compile runs of (category_bit, match, kind, names) into an index image: `build_index` in bulk.

    A run is typically one list source's names for one (match, kind); the same name may appear in
    many runs and repeat within one. Same rules and ValueErrors as `build_index`. The first run is
    merged in one C-level pass; checks, ancestors and hashing are whole-list passes (str.join,
    re.findall, dict.fromkeys, map(zlib.crc32, ...)). Python loops remain where they measured
    faster on a million names: merging later runs, and placing nodes in their hash slots.
    """
    listed: dict[str, int] = {}  # name -> its packed masks (see _ALL_MASKS)
    for bit, match, kind, names in runs:
        if names:
            _merge_run(listed, names, 1 << (64 * _column_of(names[0], bit, match, kind) + bit))
    return _build_image(listed)


def _column_of(name: str, bit: int, match: str, kind: str) -> int:
    """Position of (kind, match) in the mask quadruple; ValueError naming `name` if bit/match/kind is bad."""
    column = _COLUMN.get((kind, match))
    if column is None:
        raise ValueError(f"entry {name!r}: kind must be one of {_KINDS} and match one of {_MATCHES}, got {kind!r}/{match!r}")
    if type(bit) is not int or not 0 <= bit < 64:
        raise ValueError(f"entry {name!r}: category bit must be an int in 0..63, got {bit!r}")
    return column


def _merge_run(listed: dict[str, int], names: Sequence[str], bit: int) -> None:
    """OR `bit` into listed[name] for every name."""
    if not listed:
        listed.update(dict.fromkeys(names, bit))  # nothing to OR with: one C-level pass
        return
    get = listed.get
    for name in names:  # faster than C-level passes that each touch every name (see build_index)
        listed[name] = get(name, 0) | bit


def _build_image(listed: dict[str, int]) -> bytes:
    """The image of listed names -> packed masks (see the format above)."""
    names = list(listed)
    entry_count = len(names)
    names_text = _check_listed_names(names, listed)  # every name + NUL, one per line
    names_bytes = names_text.encode("ascii")
    # A single label is a line without a dot: with everything but dots and newlines deleted, an
    # empty line (or an empty first line).
    dots = names_bytes.translate(None, _ALL_BUT_DOTS_AND_NEWLINES)
    single_labels = dots.startswith(b"\n") or b"\n\n" in dots
    ancestor_texts, ancestor_count, with_descendants = _ancestors(names_text, listed, single_labels)
    node_count = entry_count + ancestor_count
    listed.update(zip(with_descendants, map(or_, map(listed.__getitem__, with_descendants),
                                             repeat(_HAS_DESCENDANTS))))

    # Mask sets, numbered in order of first use after the all-zero set 0, and each distinct
    # packed value's slot field (number << 1 | has-descendants bit).
    maskset_numbers = {0: 0}
    field_of = {}
    for packed in dict.fromkeys(listed.values()):
        number = maskset_numbers.setdefault(packed & _ALL_MASKS, len(maskset_numbers))
        field_of[packed] = number << 1 | packed >> 256
    if len(maskset_numbers) > _MAX_MASKSETS:
        raise ValueError(f"too many distinct category combinations for one index: {len(maskset_numbers)}")
    masksets = array("Q", [masks >> shift & _MASK64 for masks in maskset_numbers for shift in (0, 64, 128, 192)])

    # Hashes of name + NUL, one per line of the name texts. Listed names first (see the format).
    slots = array("Q", bytes(8 * _slot_count_for(node_count)))
    keys = names_bytes.splitlines()
    _place_listed(slots, map(_crc32, keys), _fingerprints(keys), map(field_of.__getitem__, listed.values()))
    del keys
    for text in ancestor_texts:
        _place_ancestors(slots, map(_crc32, text.encode("ascii").splitlines()))

    if sys.byteorder != "little":
        slots.byteswap()
        masksets.byteswap()
    flags = _FLAG_SINGLE_LABELS if single_labels else 0
    fields = (MAGIC, FORMAT_VERSION, _HEADER_SIZE, entry_count, node_count, len(slots), len(maskset_numbers), flags)
    sections = (slots, masksets)  # joined once, without an intermediate body copy
    header = _HEADER.pack(*fields, _checksum(_HEADER.pack(*fields, 0), *sections))
    return b"".join((header, *sections))


def _checksum(header: bytes | memoryview, *body: bytes | memoryview | array) -> int:
    """crc32 of an image without its crc field: the header before and after that field, then the body."""
    crc = zlib.crc32(header[_CRC_AT + 4 : _HEADER_SIZE], zlib.crc32(header[:_CRC_AT]))
    for part in body:
        crc = zlib.crc32(part, crc)
    return crc


def _check_listed_names(names: list[str], listed: dict[str, int]) -> str:
    """Refuse names `lookup` could never match, checked in bulk; return them as one text, each + NUL + newline."""
    if not names:
        return ""
    text = "\0\n".join(names) + "\0\n"
    if not text.isascii():
        bad = next(name for name in names if not name.isascii())
        raise ValueError(f"listed name must be a non-empty ASCII (A-label) string, got {bad!r}")
    if "" in listed:
        raise ValueError("listed name must be a non-empty ASCII (A-label) string, got ''")
    # The separators must be the only NULs and line breaks: hashing splits the names there.
    if text.count("\0") != len(names) or text.count("\n") != len(names) or "\r" in text:
        bad = next(name for name in names if "\0" in name or "\n" in name or "\r" in name)
        raise ValueError(f"listed name must not contain NUL or line breaks: {bad!r}")
    if text.lower() != text or ".." in text or ".\0" in text or "\n." in text or text.startswith("."):
        bad = next(name for name in names if name.lower() != name or ".." in name
                   or name.startswith(".") or name.endswith("."))
        raise ValueError(f"listed name must be lower-case, without empty labels or a trailing dot: {bad!r}")
    return text


def _ancestors(names_text: str, listed: dict[str, int], single_labels: bool) -> tuple[list[str], int, list[str]]:
    """The unlisted ancestors of the listed names, and the listed names with a listed name below them.

    Ancestors come as texts like the name section, one per level (parents, grandparents, ...), in
    order of first appearance; with their total count. A level costs a re.findall over the text of
    the level before and one membership pass over the distinct parents.
    """
    parent = _PARENT_OR_TLD if single_labels else _PARENT
    texts: list[str] = []
    count = 0
    seen: set[str] = set()
    with_descendants: list[str] = []
    text = names_text
    while text:
        parents = list(dict.fromkeys(parent.findall("\n" + text)))
        is_listed = list(map(listed.__contains__, parents))
        with_descendants += compress(parents, is_listed)
        new = list(filterfalse(seen.__contains__, compress(parents, map(not_, is_listed))))
        seen.update(new)
        count += len(new)
        text = "\0\n".join(new) + "\0\n" if new else ""
        if text:
            texts.append(text)
    return texts, count, with_descendants


def _place_listed(slots: array, hashes: Iterator[int], fingerprints: Iterator[int], fields: Iterator[int]) -> None:
    """Put every listed name at the first free slot from its home slot (linear probing)."""
    slot_mask = len(slots) - 1
    for name_hash, fingerprint, field in zip(hashes, fingerprints, fields):
        slot = name_hash & slot_mask
        while slots[slot]:
            slot = (slot + 1) & slot_mask
        slots[slot] = field << _FIELD_SHIFT | fingerprint << 8 | name_hash >> 24


def _place_ancestors(slots: array, hashes: Iterator[int]) -> None:
    """Put unlisted ancestors in the free slots, after every listed name (see the format)."""
    slot_mask = len(slots) - 1
    for name_hash in hashes:
        slot = name_hash & slot_mask
        while slots[slot]:
            slot = (slot + 1) & slot_mask
        slots[slot] = _ANCESTOR | name_hash >> 24


def _slot_count_for(node_count: int) -> int:
    """Power of two with at least 1.5 slots per node (never full, so probes end)."""
    return max(8, 1 << (node_count + node_count // 2).bit_length())


def write_index(path: str | os.PathLike[str], image: bytes) -> None:
    """Atomically replace the index file at `path` with `image` (temp file, fsync, rename).

    Never rewrite a live index in place: processes that mapped the old file keep reading the old
    inode, and a new `DomainIndex.load` sees either the old image or the new one, never a mix.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as file:
            file.write(image)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class DomainIndex:
    """Read-only view of a compiled index image: `lookup(name)` -> effective category mask."""

    __slots__ = ("_mmap", "_slots", "_slot_mask", "_own_masks", "_parent_masks", "_quads",
                 "_single_labels", "entry_count", "node_count", "size_bytes", "file")

    def __init__(self, image: bytes | mmap.mmap, file_map: mmap.mmap | None = None,
                 file: tuple[str, int, int] | None = None) -> None:
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
        # when the node is the looked-up name itself (exact and subtree apply), and when it is a
        # parent of the looked-up name (subtree only).
        self._own_masks = [masks for be, bs, ae, als in self._quads for masks in ((be | bs, ae | als),) * 2]
        self._parent_masks = [masks for _, bs, _, als in self._quads for masks in ((bs, als),) * 2]
        self.entry_count = layout.entry_count  # distinct listed names
        self.node_count = layout.node_count  # listed names and their unlisted ancestors
        self._single_labels = layout.single_labels
        self.size_bytes = len(view)
        self.file = file  # (path, st_dev, st_ino) of the mapped file; None for an image in memory

    @classmethod
    def from_bytes(cls, image: bytes) -> DomainIndex:
        """View an in-memory image (from `build_index`) without copying it."""
        if not isinstance(image, bytes):
            image = bytes(image)
        return cls(image)

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
                if not start:  # the name itself: exact and subtree entries apply
                    own_block, own_allow = self._own_masks[field]
                    return (block | own_block) & ~(allow | own_allow)
                parent_block, parent_allow = self._parent_masks[field]  # a parent: subtree only
                block |= parent_block
                allow |= parent_allow
                if not field & 1:
                    return block & ~allow  # nothing listed below this suffix
            elif not start:
                return block & ~allow
            start = key.rfind(b".", 0, start - 1) + 1

    def explain(self, name: str) -> list[Match]:
        """Every listed entry that applies to `name`, from the name itself up to its root-most parent.

        For one listed name, exact comes before subtree and block before allow. Unlisted ancestor
        nodes have no entries, so they never appear.
        """
        matches: list[Match] = []
        labels = name.split(".")
        for depth in range(len(labels)):
            listed = ".".join(labels[depth:])
            field = self._find(listed.encode() + b"\0")
            if field < 0:
                continue
            block_exact, block_subtree, allow_exact, allow_subtree = self._quads[field >> 1]
            candidates = [(block_subtree, "subtree", "block"), (allow_subtree, "subtree", "allow")]
            if depth == 0:
                candidates[0:0] = [(block_exact, "exact", "block"), (allow_exact, "exact", "allow")]
            matches.extend(Match(listed, bits, match, kind) for bits, match, kind in candidates if bits)
        return matches

    def _find(self, key: bytes) -> int:
        """Slot field of the listed name `key` (name + NUL), or -1: the probe of `lookup`, skipping ancestors."""
        key_hash = _crc32(key)
        fingerprint = _fingerprint(key)
        slot = key_hash & self._slot_mask
        while value := self._slots[slot]:
            if (value & 0xFF == key_hash >> 24 and value >> _FIELD_SHIFT != 1
                    and value >> 8 & _FINGERPRINT_MASK == fingerprint):
                return value >> _FIELD_SHIFT
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


def _check_image(image: bytes | mmap.mmap) -> _Layout:
    """Check magic, version, sizes, checksum and mask-set references; return the section layout."""
    if sys.byteorder != "little":
        raise IndexFormatError("domain index images are little-endian; this host is big-endian")
    size = len(image)
    if size < _HEADER_SIZE:
        raise IndexFormatError(f"domain index truncated: {size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    (magic, version, header_size, entry_count, node_count, slot_count, maskset_count, flags,
     stored_crc) = _HEADER.unpack_from(image)
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
    layout = _Layout(entry_count, node_count, slot_count, _HEADER_SIZE, masksets_start,
                     bool(flags & _FLAG_SINGLE_LABELS))
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
            if max(slots) >> _FIELD_SHIFT >= 2 * maskset_count:
                raise IndexFormatError("domain index slot refers to a mask set past the end of the table")
    return layout
