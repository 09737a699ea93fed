"""The compiled domain index: name -> category bitmask of the name and its parents, compact and shareable."""

from __future__ import annotations

import mmap
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from resolver.errors import ResolverError

__all__ = [
    "DomainIndex",
    "IndexFormatError",
    "Match",
    "build_index",
    "write_index",
]

# ---------------------------------------------------------------------------------------------
# Image format (version 1). Every integer is little-endian; every section starts 8-byte aligned.
#
#   header   64 bytes: magic, version, header size, counts, blob size, crc32 of everything after it
#   slots    u64[slot_count]     open-addressing table (linear probing), slot_count a power of two;
#                                0 = empty, else (crc32(name) << 32) | (entry number + 1)
#   masksets u64[4 * maskset_count]  distinct (block_exact, block_subtree, allow_exact, allow_subtree)
#   offsets  u32[entry_count]    per entry: offset of its name in the image (NUL-terminated ASCII)
#   masksetn u32[entry_count]    per entry: index of its mask quadruple in `masksets`
#   names    blob_size bytes     every listed name followed by b"\0", entries sorted by name
#
# Entries (one per distinct listed name) keep only a 4-byte reference to their masks: real lists
# have a few hundred distinct mask combinations for a million names, so this is far smaller than
# four u64 per name. The image is deterministic: the same entries always give the same bytes.
# ---------------------------------------------------------------------------------------------

MAGIC = b"SDNSIDX\x00"
FORMAT_VERSION = 2
# magic, version, header size, entries, slots, masksets, blob, crc, flags
_HEADER = struct.Struct("<8sIIIIIIII24x")
_FLAG_SINGLE_LABELS = 1  # some listed name is a single label (lists never produce one; tests may)
_SINGLE_LABEL = re.compile(rb"(?:^|\0)[^.\0]+\0")  # in the name section
_HEADER_SIZE = _HEADER.size  # 64
_EMPTY_SLOT = 0
# Slots per entry, rounded up to a power of two: the table is 1/4 to 1/2 full, so most probes for an
# unlisted suffix ("com", "vn", ...) stop at the first slot, which is most of the work of a lookup.
_SLOTS_PER_ENTRY = 3
_MAX_ENTRIES = 2**32 - 2
_MAX_IMAGE_BYTES = 2**32 - 1  # name offsets are u32

_MATCHES = ("exact", "subtree")
_KINDS = ("block", "allow")
# (kind, match) -> position in the mask quadruple
_COLUMN = {("block", "exact"): 0, ("block", "subtree"): 1, ("allow", "exact"): 2, ("allow", "subtree"): 3}


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
    """
    quads_by_name: dict[str, list[int]] = {}
    last_bit = last_match = last_kind = None
    column = value = 0
    for name, bit, match, kind in entries:
        # Entries come in long runs from one source: check and map (bit, match, kind) once per run.
        if bit is not last_bit or match is not last_match or kind is not last_kind:
            column = _COLUMN.get((kind, match))
            if column is None:
                raise ValueError(f"entry {name!r}: kind must be one of {_KINDS} and match one of {_MATCHES}, got {kind!r}/{match!r}")
            if type(bit) is not int or not 0 <= bit < 64:
                raise ValueError(f"entry {name!r}: category bit must be an int in 0..63, got {bit!r}")
            last_bit, last_match, last_kind, value = bit, match, kind, 1 << bit
        quad = quads_by_name.get(name)
        if quad is None:
            quad = quads_by_name[name] = [0, 0, 0, 0]
        quad[column] |= value

    names = sorted(quads_by_name)
    entry_count = len(names)
    if entry_count > _MAX_ENTRIES:
        raise ValueError(f"too many names for one index: {entry_count}")
    blob = _encode_listed_names(names)

    # One pass: each entry's mask-set number, its hash slot and the offset of its name.
    slot_count = _slot_count_for(entry_count)
    slot_mask = slot_count - 1
    maskset_ids: dict[tuple[int, ...], int] = {}
    entry_masksets = array("I", bytes(4 * entry_count))
    entry_offsets = array("I", bytes(4 * entry_count))
    slots = array("Q", bytes(8 * slot_count))
    offset = 0  # within the name section; made absolute once the section's start is known
    crc32 = zlib.crc32
    for entry, name in enumerate(names):
        quad = tuple(quads_by_name[name])
        maskset = maskset_ids.get(quad)
        if maskset is None:
            maskset = maskset_ids[quad] = len(maskset_ids)
        entry_masksets[entry] = maskset
        entry_offsets[entry] = offset
        name_bytes = blob[offset:offset + len(name)]
        offset += len(name) + 1
        name_hash = crc32(name_bytes)
        slot = name_hash & slot_mask
        while slots[slot] != _EMPTY_SLOT:
            slot = (slot + 1) & slot_mask
        slots[slot] = (name_hash << 32) | (entry + 1)
    masksets = array("Q", [mask for quad in maskset_ids for mask in quad])

    names_start = _HEADER_SIZE + 8 * slot_count + 32 * len(maskset_ids) + 8 * entry_count
    if names_start + len(blob) > _MAX_IMAGE_BYTES:
        raise ValueError(f"index image would exceed {_MAX_IMAGE_BYTES} bytes")
    entry_offsets = array("I", [names_start + relative for relative in entry_offsets])

    if sys.byteorder != "little":
        for table in (slots, masksets, entry_offsets, entry_masksets):
            table.byteswap()
    body = b"".join((slots.tobytes(), masksets.tobytes(), entry_offsets.tobytes(), entry_masksets.tobytes(), blob))
    flags = _FLAG_SINGLE_LABELS if _SINGLE_LABEL.search(blob) else 0
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, _HEADER_SIZE, entry_count, slot_count, len(maskset_ids), len(blob), zlib.crc32(body),
        flags,
    )
    return header + body


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

    __slots__ = ("_image", "_mmap", "_slots", "_slot_mask", "_offsets", "_entry_masksets",
                 "_own_masks", "_parent_masks", "_quads", "_single_labels", "entry_count", "size_bytes")

    def __init__(self, image: bytes | mmap.mmap, file_map: mmap.mmap | None = None) -> None:
        """Validate `image` and view it in place (no copy). Prefer `from_bytes`, `load` or `empty`."""
        layout = _check_image(image)
        view = memoryview(image)
        self._image = image
        self._mmap = file_map
        self._slots = view[layout.slots_start : layout.masksets_start].cast("Q")
        self._slot_mask = layout.slot_count - 1
        self._offsets = view[layout.offsets_start : layout.entry_masksets_start].cast("I")
        self._entry_masksets = view[layout.entry_masksets_start : layout.names_start].cast("I")
        # The distinct mask quadruples are few (one per combination of categories), so they are
        # decoded once into small Python tuples; the per-name data stays in the shared image.
        with view[layout.masksets_start : layout.offsets_start].cast("Q") as quads:
            self._quads = [tuple(quads[i : i + 4]) for i in range(0, len(quads), 4)]
        # Per mask set: (block, allow) when the entry is the looked-up name itself (exact and
        # subtree apply), and when it is a parent of the looked-up name (subtree only).
        self._own_masks = [(be | bs, ae | als) for be, bs, ae, als in self._quads]
        self._parent_masks = [(bs, als) for _, bs, _, als in self._quads]
        self.entry_count = layout.entry_count  # distinct listed names
        self._single_labels = layout.single_labels
        self.size_bytes = len(view)

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
        try:
            return cls(file_map, file_map)
        except IndexFormatError as exc:
            file_map.close()
            raise IndexFormatError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def empty(cls) -> DomainIndex:
        """An index with no entries: every lookup returns 0."""
        return cls(build_index(()))

    def close(self) -> None:
        """Release the file mapping (only needed before the process ends; lookups then fail)."""
        for view in (self._slots, self._offsets, self._entry_masksets):
            view.release()
        if self._mmap is not None:
            self._mmap.close()

    def lookup(self, name: str) -> int:
        """Effective category mask of `name`: block bits of it and its parents minus their allow bits."""
        # Hot path. Walk the suffixes of the name at label boundaries ("a.b.c", "b.c", "c"); for
        # each, probe the hash table with crc32 of the suffix. A slot holds the suffix's full
        # 32-bit hash next to its entry number, so an occupied slot for another name is usually
        # rejected by one integer compare; only on a hash match are the stored name bytes compared.
        key = name.encode()
        slots = self._slots
        slot_mask = self._slot_mask
        masks = self._own_masks  # the name itself: exact + subtree entries apply
        block = allow = 0
        start = 0
        # Lists never hold a bare TLD, so the last label is not probed unless this index has one.
        last = len(key) if self._single_labels else key.rfind(b".")
        while start <= last:
            suffix = key[start:]
            suffix_hash = zlib.crc32(suffix)
            slot = suffix_hash & slot_mask
            value = slots[slot]
            while value:
                if value >> 32 == suffix_hash:
                    entry = (value & 0xFFFFFFFF) - 1
                    offset = self._offsets[entry]
                    end = offset + len(suffix)
                    if self._image[offset:end] == suffix and self._image[end] == 0:
                        entry_block, entry_allow = masks[self._entry_masksets[entry]]
                        block |= entry_block
                        allow |= entry_allow
                        break
                slot = (slot + 1) & slot_mask
                value = slots[slot]
            start = key.find(b".", start) + 1
            if not start:
                break
            masks = self._parent_masks  # parents: only subtree entries apply
        return block & ~allow

    def explain(self, name: str) -> list[Match]:
        """Every listed entry that applies to `name`, from the name itself up to its root-most parent.

        For one listed name, exact comes before subtree and block before allow.
        """
        matches: list[Match] = []
        labels = name.split(".")
        for depth in range(len(labels)):
            listed = ".".join(labels[depth:])
            maskset = self._find(listed.encode())
            if maskset < 0:
                continue
            block_exact, block_subtree, allow_exact, allow_subtree = self._quads[maskset]
            candidates = [(block_subtree, "subtree", "block"), (allow_subtree, "subtree", "allow")]
            if depth == 0:
                candidates[0:0] = [(block_exact, "exact", "block"), (allow_exact, "exact", "allow")]
            matches.extend(Match(listed, bits, match, kind) for bits, match, kind in candidates if bits)
        return matches

    def iter_entries(self) -> Iterator[tuple[str, int, str, str]]:
        """Every (name, category_bit, match, kind) entry in the index, names in sorted order."""
        for entry, offset in enumerate(self._offsets):
            end = self._image.find(b"\0", offset)
            name = bytes(self._image[offset:end]).decode("ascii")
            quad = self._quads[self._entry_masksets[entry]]
            for (kind, match), column in _COLUMN.items():
                for bit in range(64):
                    if quad[column] >> bit & 1:
                        yield (name, bit, match, kind)

    def _find(self, key: bytes) -> int:
        """Mask-set number of the listed name `key`, or -1 (the probe loop of `lookup`, unrolled there)."""
        key_hash = zlib.crc32(key)
        slot = key_hash & self._slot_mask
        while value := self._slots[slot]:
            if value >> 32 == key_hash:
                entry = (value & 0xFFFFFFFF) - 1
                offset = self._offsets[entry]
                end = offset + len(key)
                if self._image[offset:end] == key and self._image[end] == 0:
                    return self._entry_masksets[entry]
            slot = (slot + 1) & self._slot_mask
        return -1


def _encode_listed_names(names: list[str]) -> bytes:
    """The name section: every name + NUL, checked in bulk for what `lookup` could never match."""
    text = "\0".join(names) + "\0" if names else ""
    if not text.isascii():
        bad = next(name for name in names if not name.isascii())
        raise ValueError(f"listed name must be a non-empty ASCII (A-label) string, got {bad!r}")
    if not all(names):
        raise ValueError("listed name must be a non-empty ASCII (A-label) string, got ''")
    if text.lower() != text or ".." in text or ".\0" in text or "\0." in text or text.startswith("."):
        bad = next(name for name in names if name.lower() != name or ".." in name
                   or name.startswith(".") or name.endswith("."))
        raise ValueError(f"listed name must be lower-case, without empty labels or a trailing dot: {bad!r}")
    return text.encode("ascii")


def _slot_count_for(entry_count: int) -> int:
    """Power of two with at least _SLOTS_PER_ENTRY slots per entry (never full, so probes end)."""
    return max(8, 1 << (_SLOTS_PER_ENTRY * entry_count - 1).bit_length())


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each section of a checked image starts."""

    entry_count: int
    slot_count: int
    slots_start: int
    masksets_start: int
    offsets_start: int
    entry_masksets_start: int
    names_start: int
    single_labels: bool


def _check_image(image: bytes | mmap.mmap) -> _Layout:
    """Check magic, version, sizes, checksum and entry references; return the section layout."""
    if sys.byteorder != "little":
        raise IndexFormatError("domain index images are little-endian; this host is big-endian")
    size = len(image)
    if size < _HEADER_SIZE:
        raise IndexFormatError(f"domain index truncated: {size} bytes, shorter than the {_HEADER_SIZE}-byte header")
    magic, version, header_size, entry_count, slot_count, maskset_count, blob_size, body_crc, flags = \
        _HEADER.unpack_from(image)
    if magic != MAGIC:
        raise IndexFormatError(f"not a domain index (magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"domain index format version {version} is not supported (expected {FORMAT_VERSION})")
    if header_size != _HEADER_SIZE:
        raise IndexFormatError(f"domain index header size {header_size}, expected {_HEADER_SIZE}")
    if slot_count & (slot_count - 1) or slot_count <= entry_count:
        raise IndexFormatError(f"domain index slot count {slot_count} is invalid for {entry_count} entries")
    layout = _Layout(
        single_labels=bool(flags & _FLAG_SINGLE_LABELS),
        entry_count=entry_count,
        slot_count=slot_count,
        slots_start=_HEADER_SIZE,
        masksets_start=_HEADER_SIZE + 8 * slot_count,
        offsets_start=_HEADER_SIZE + 8 * slot_count + 32 * maskset_count,
        entry_masksets_start=_HEADER_SIZE + 8 * slot_count + 32 * maskset_count + 4 * entry_count,
        names_start=_HEADER_SIZE + 8 * slot_count + 32 * maskset_count + 8 * entry_count,
    )
    expected_size = layout.names_start + blob_size
    if size != expected_size:
        problem = "truncated" if size < expected_size else "has trailing bytes"
        raise IndexFormatError(f"domain index {problem}: {size} bytes, header says {expected_size}")
    with memoryview(image) as view:
        actual_crc = zlib.crc32(view[_HEADER_SIZE:])
        if actual_crc != body_crc:
            raise IndexFormatError(
                f"domain index checksum mismatch: body crc32 is {actual_crc:#010x}, header says {body_crc:#010x}"
            )
        # Past the checksum the image is what some build wrote; these checks keep a buggy or
        # hand-made image from sending a lookup outside its sections.
        if blob_size and image[size - 1] != 0:
            raise IndexFormatError("domain index name section does not end with a NUL")
        if entry_count:
            with (
                view[layout.offsets_start : layout.entry_masksets_start].cast("I") as offsets,
                view[layout.entry_masksets_start : layout.names_start].cast("I") as entry_masksets,
            ):
                if min(offsets) < layout.names_start or max(offsets) >= size:
                    raise IndexFormatError("domain index entry name offset points outside the name section")
                if max(entry_masksets) >= maskset_count:
                    raise IndexFormatError("domain index entry refers to a mask set past the end of the table")
    return layout
