"""Bounded TTL cache of upstream answers, CLOCK eviction (LRU approximated), negative caching and serve-stale."""

from __future__ import annotations

import array
import struct
import sys
from typing import Final, NamedTuple

from resolver.dataplane import wire

STALE_ANSWER_TTL: Final = 30  # RFC 8767 4: TTL of a stale answer served when every upstream fails
# RFC 8767 5's failure recheck timer: once a refresh of an expired answer failed, its question is
# answered stale at once, without asking upstream, for this long (the RFC suggests 30 s). The
# config's cache.stale_failure_recheck_seconds sets it.
FAILURE_RECHECK_SECONDS = 30.0
# Memory of one cached answer beyond the length of its key and stored bytes: the two objects' own
# (~70), the dict's share (~52 with 100,000 answers: a table for 174,000, kept so by _compact) and
# a CLOCK ring slot (~10). Tracemalloc with 100,000 answers: 128, filled and after 200,000 more.
ENTRY_OVERHEAD_BYTES: Final = 130
# Every this many new answers, the dict is copied into a compact one if it has grown since the last
# copy and evicted half its entries since (see AnswerCache._compact).
_COMPACT_EVERY: Final = 4096
_SHAPES_MAX: Final = 4096  # distinct TTL-offset tuples shared between the entries handed out (see _offsets)


class CacheEntry(NamedTuple):
    """One cached answer as `lookup` hands it out, aged to a whole second of its age.

    `message` is the upstream answer with every TTL reduced by `aged_for` seconds; it stays exact
    until `exact_until`.
    """

    message: bytes
    question_length: int
    ttl_offsets: tuple[int, ...]
    targets: tuple[str, ...]  # CNAME / SVCB / HTTPS targets, checked against each school's policy
    stored_at: float
    expires_at: float
    aged_for: int

    @property
    def exact_until(self) -> float:
        """When `message` stops being exact: the next whole second of age, or expiry."""
        return min(self.stored_at + self.aged_for + 1, self.expires_at)


# What the cache stores per key: ONE bytes object, so an entry is its key, this value, the dict's
# share and a slot of the CLOCK ring (see AnswerCache). A tuple of the CacheEntry fields with its
# two floats cost ~140 bytes more per entry, and a bytes object is never tracked by the garbage
# collector (full collections visit every tracked object: with 100k+ cached answers as objects they
# paused the event loop for ~100-200 ms).
#   _HEAD: stored_at, expires_at (the pipeline's clock), aged_for, question length, the number of
#          TTL offsets, the length of the targets' text, the entry's slot in the CLOCK ring
#   the TTL offsets (2 bytes each in the machine's order, counted in the whole message)
#   the targets' text (each name ended by a NUL byte, which a name holds only escaped)
#   the message without its question: header and records. The question is the key's first
#   `question length` bytes (every key begins with the lower-cased question), so it is not kept twice.
# Only the aged message is kept: aging it further from the last whole second gives the same TTLs as
# aging the original (TTLs stop at zero either way).
_HEAD: Final = struct.Struct("=ddIHHII")
_HEAD_SIZE: Final = _HEAD.size
_OFFSET: Final = struct.Struct("=H")  # the one TTL offset of most answers (array("H") packs the same way)


class AnswerCache:
    """Answers keyed by question (see wire.Query.key); knows nothing of schools or policy.

    Bounded twice: by `max_entries` and by `max_bytes`, the estimated memory of keys, stored
    bytes and per-entry overhead. Eviction is CLOCK (second chance), an approximation of least
    recently used that costs a few bytes per entry where an OrderedDict's order cost ~50-75: every
    key has a slot in a ring (a list of keys, the slot's number in its stored bytes' head) and a
    "used" byte. A hit sets that byte; an eviction moves the hand round the ring, clearing set
    bytes (a second chance), and evicts the first entry whose byte is clear. A new entry takes
    the slot an eviction freed, just behind the hand, with its byte clear: answers never asked
    again leave in the order they came, those asked again stay a turn longer each time. Hot
    path: a hit is a dict lookup, one byte set, the message put together again and, at most once
    per second of age, a TTL rewrite of the stored bytes.
    """

    def __init__(
        self,
        max_entries: int,
        stale_seconds: float = 0.0,
        max_bytes: float = float("inf"),
        failure_recheck_seconds: float = FAILURE_RECHECK_SECONDS,
    ):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes  # the worker passes cache.max_megabytes; unbounded by default
        self.stale_seconds = stale_seconds
        self.failure_recheck_seconds = failure_recheck_seconds
        self._entries: dict[bytes, bytes] = {}
        # The CLOCK ring: slot -> key (None: free), its "used" bytes, free slots, and the hand (the
        # next slot an eviction looks at). A plain dict's order will not do: evicting from its
        # front rescans the deleted slots before it until the dict is resized.
        self._ring: list[bytes | None] = []
        self._used = bytearray()
        self._free: list[int] = []
        self._hand = 0
        self._added = 0  # new keys stored: every _COMPACT_EVERY, _compact
        self._compacted_size = self._compacted_evictions = 0  # sys.getsizeof of the dict after _compact, evictions then
        # key -> until when its refresh is not tried again (it failed): only keys of _entries, so
        # it never holds more than the cache does; a new answer or the entry's eviction removes it.
        self._failed: dict[bytes, float] = {}
        self._shapes: dict[bytes, tuple[int, ...]] = {}
        self.bytes = 0  # estimated memory of what is stored now
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, now: float) -> CacheEntry | None:
        """The entry of a fresh answer, aged for `now`; or None."""
        stored = self._entries.get(key)
        if stored is None:
            self.misses += 1
            return None
        stored_at, expires_at, aged_for, question_length, count, text_length, slot = _HEAD.unpack_from(stored)
        if now >= expires_at:
            self.misses += 1
            return None
        self._used[slot] = 1
        self.hits += 1
        offsets_end = _HEAD_SIZE + 2 * count
        body_at = offsets_end + text_length
        offsets = self._shapes.get(stored[_HEAD_SIZE:offsets_end]) or self._offsets(stored, count)
        age = int(now - stored_at)
        body = stored[body_at:]
        if age > aged_for:
            body = wire.reduce_ttls(body, offsets, age - aged_for, question_length)
            stored = self._entries[key] = (  # the same layout: offsets_end and body_at hold
                _HEAD.pack(stored_at, expires_at, age, question_length, count, text_length, slot)
                + stored[_HEAD_SIZE:body_at]
                + body
            )
            aged_for = age
        return CacheEntry(
            body[:12] + key[:question_length] + body[12:],
            question_length,
            offsets,
            _targets(stored, offsets_end, body_at) if text_length else (),
            stored_at,
            expires_at,
            aged_for,
        )

    def has_stale(self, key: bytes, now: float) -> bool:
        """Whether lookup_stale would find an answer now (it is not counted as served)."""
        stored = self._entries.get(key)
        if stored is None:
            return False
        expires_at: float = _HEAD.unpack_from(stored)[1]
        return expires_at <= now < expires_at + self.stale_seconds

    def refresh_failed(self, key: bytes, now: float) -> None:
        """Upstream failed to refresh the expired answer of `key`: its question waits failure_recheck_seconds."""
        if self.failure_recheck_seconds > 0 and key in self._entries:
            self._failed[key] = now + self.failure_recheck_seconds

    def rechecking(self, key: bytes, now: float) -> float:
        """Until when `key` is answered stale without asking upstream (0.0: not now): a refresh of it
        failed less than failure_recheck_seconds ago, and its stale answer is there until then or
        until the stale window ends, whichever is first."""
        failed = self._failed
        if not failed:  # every miss asks this: nothing failed, one test
            return 0.0
        until = failed.get(key)
        if until is None:
            return 0.0
        if now >= until:
            del failed[key]
            return 0.0
        stored = self._entries.get(key)
        if stored is None:
            return 0.0
        expires_at: float = _HEAD.unpack_from(stored)[1]
        if not expires_at <= now < expires_at + self.stale_seconds:
            return 0.0
        return min(until, expires_at + self.stale_seconds)

    def lookup_stale(self, key: bytes, now: float) -> CacheEntry | None:
        """An expired answer still inside the stale window, with TTLs set to 30 s (RFC 8767)."""
        stored = self._entries.get(key)
        if stored is None:
            return None
        stored_at, expires_at, aged_for, question_length, count, text_length, _ = _HEAD.unpack_from(stored)
        if now >= expires_at + self.stale_seconds:
            return None
        self.stale_served += 1
        body_at = _HEAD_SIZE + 2 * count + text_length
        buf = bytearray(stored[body_at : body_at + 12] + key[:question_length] + stored[body_at + 12 :])
        offsets = self._offsets(stored, count)
        ttl = STALE_ANSWER_TTL.to_bytes(4, "big")
        for offset in offsets:
            buf[offset : offset + 4] = ttl
        targets = _targets(stored, body_at - text_length, body_at)
        return CacheEntry(bytes(buf), question_length, offsets, targets, stored_at, expires_at, aged_for)

    def store(self, key: bytes, answer: wire.Answer, now: float) -> None:
        """Keep an answer for its TTL; answers with TTL 0 (errors, truncated) are not kept."""
        if answer.ttl <= 0 or self.max_entries == 0:
            return
        entries = self._entries
        used = self._used
        old = entries.get(key)
        if old is not None:
            self.bytes -= len(key) + len(old) + ENTRY_OVERHEAD_BYTES
            if self._failed:
                self._failed.pop(key, None)  # refreshed
            slot: int = _HEAD.unpack_from(old)[6]
        else:
            self._added += 1
            if self._added % _COMPACT_EVERY == 0:
                self._compact()
                entries = self._entries
            if self._free:
                slot = self._free.pop()
                self._ring[slot] = key
            else:
                slot = len(self._ring)
                self._ring.append(key)
                used.append(0)
        offsets = answer.ttl_offsets
        text = "".join([target + "\x00" for target in answer.targets]).encode()
        message, question_length = answer.message, answer.question_length
        stored = entries[key] = b"".join(
            (
                _HEAD.pack(now, now + answer.ttl, 0, question_length, len(offsets), len(text), slot),
                _OFFSET.pack(offsets[0]) if len(offsets) == 1 else array.array("H", offsets).tobytes(),
                text,
                message[:12],
                message[12 + question_length :],
            )
        )
        self.bytes += len(key) + len(stored) + ENTRY_OVERHEAD_BYTES
        used[slot] = 0 if old is None else 1  # a new answer is not used yet: the first to go if never asked again
        while len(entries) > 1 and (len(entries) > self.max_entries or self.bytes > self.max_bytes):
            self._evict(slot)  # (never the answer stored now)
        if self.bytes > self.max_bytes:  # it alone is over the bound
            self._remove(slot)

    def _compact(self) -> None:
        """Copy the dict into a new one sized for its entries, if it has grown since the last copy
        after as many evictions as half its entries.

        A dict that deletes as much as it adds fills its table with deleted slots, and then
        regrows it to three times its entries (CPython's rule): a cache of 100,000 answers that
        has evicted 75,000 holds a table for 350,000 (~104 bytes an answer, 10 MB), where a copy
        needs one for 175,000 (~52 bytes). The copy takes 5-17 ms for 100,000 answers, about as
        long as the dict's own regrowth, and comes at most once per half a cache of new answers.
        """
        entries = self._entries
        if (
            sys.getsizeof(entries) > self._compacted_size
            and self.evictions - self._compacted_evictions >= len(entries) // 2
        ):
            compact: dict[bytes, bytes] = {}
            compact.update(entries)  # (not dict.copy(), nor dict() compiled: they keep the table's size)
            self._entries = entries = compact
            self._compacted_size, self._compacted_evictions = sys.getsizeof(entries), self.evictions

    def _evict(self, keep: int) -> None:
        """Evict the entry at the hand whose "used" byte is clear, clearing those set on the way (CLOCK);
        not the one in slot `keep`."""
        ring, used = self._ring, self._used
        hand, end = self._hand, len(ring)
        while True:
            if hand >= end:
                hand = 0
            if ring[hand] is not None and hand != keep:
                if not used[hand]:
                    break
                used[hand] = 0
            hand += 1
        self._hand = hand + 1
        self._remove(hand)

    def _remove(self, slot: int) -> None:
        key = self._ring[slot]
        assert key is not None
        self._ring[slot] = None
        self._used[slot] = 0
        self._free.append(slot)
        evicted = self._entries.pop(key)
        self.bytes -= len(key) + len(evicted) + ENTRY_OVERHEAD_BYTES
        self.evictions += 1
        if self._failed:
            self._failed.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._failed.clear()
        self._ring = []
        self._used = bytearray()
        self._free = []
        self._hand = 0
        self._compacted_size, self._compacted_evictions = 0, self.evictions
        self.bytes = 0

    def renewal(self, key: bytes, stored_at: float) -> tuple[float, tuple[int, ...]] | None:
        """(expires_at, TTL offsets) of the entry of `key` if it is still the answer stored at `stored_at`
        (CacheEntry.stored_at), marked used (its answer was repeated: see repeats); else None."""
        stored = self._entries.get(key)
        if stored is None:
            return None
        at, expires_at, _, _, count, _, slot = _HEAD.unpack_from(stored)
        if at != stored_at:
            return None  # another answer since
        self._used[slot] = 1
        return expires_at, self._offsets(stored, count)

    def _offsets(self, stored: bytes, count: int) -> tuple[int, ...]:
        """The TTL offsets of a stored answer, as one tuple shared by every answer of the same shape."""
        raw = stored[_HEAD_SIZE : _HEAD_SIZE + 2 * count]
        shapes = self._shapes
        offsets = shapes.get(raw)
        if offsets is None:
            if len(shapes) >= _SHAPES_MAX:
                shapes.clear()
            offsets = shapes[raw] = tuple(array.array("H", raw))
        return offsets


def _targets(stored: bytes, start: int, end: int) -> tuple[str, ...]:
    return tuple(stored[start : end - 1].decode().split("\x00")) if end > start else ()
