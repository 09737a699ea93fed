"""Bounded TTL + LRU cache of upstream answers, with negative caching and serve-stale."""

from __future__ import annotations

import collections
from typing import NamedTuple

from resolver.dataplane import wire

STALE_ANSWER_TTL = 30  # RFC 8767 4: TTL of a stale answer served when every upstream fails
# RFC 8767 5's failure recheck timer: once a refresh of an expired answer failed, its question is
# answered stale at once, without asking upstream, for this long (the RFC suggests 30 s). The
# config's cache.stale_failure_recheck_seconds sets it.
FAILURE_RECHECK_SECONDS = 30.0
# Memory of one cached answer beyond its key and message bytes: the stored tuple, its two floats
# and the LRU dict's share (tracemalloc on 42,500 answers: ~260; rounded up for dict growth).
ENTRY_OVERHEAD_BYTES = 300
_SHAPES_MAX = 4096  # distinct TTL-offset tuples shared between entries (see store)


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


# What the cache stores per key: the CacheEntry fields as a plain tuple of atomic values, so that
# CPython's garbage collector stops tracking it. Full collections visit every tracked object, and
# with 100k+ cached answers as objects they paused the event loop for ~100-200 ms (measured); a
# NamedTuple would stay tracked. Only the aged message is kept: aging it further from the last
# whole second gives the same TTLs as aging the original (TTLs stop at zero either way).
_Stored = tuple[bytes, int, tuple[int, ...], tuple[str, ...], float, float, int]


class AnswerCache:
    """Answers keyed by question (see wire.Query.key); knows nothing of schools or policy.

    Bounded twice, oldest use out first: by `max_entries` and by `max_bytes`, the estimated memory
    of keys, messages and per-entry overhead. Hot path: a hit is a dict lookup, an LRU move and, at
    most once per second of age, a TTL rewrite of the stored bytes.
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
        self._entries: collections.OrderedDict[bytes, _Stored] = collections.OrderedDict()
        # key -> until when its refresh is not tried again (it failed): only keys of _entries, so
        # it never holds more than the cache does; a new answer or the entry's eviction removes it.
        self._failed: dict[bytes, float] = {}
        self._shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
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
        if stored is None or now >= stored[5]:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        age = int(now - stored[4])
        aged_for = stored[6]
        if age > aged_for:
            message, question_length, offsets, targets, stored_at, expires_at, _ = stored
            message = wire.reduce_ttls(message, offsets, age - aged_for)
            stored = self._entries[key] = (message, question_length, offsets, targets, stored_at, expires_at, age)
        return CacheEntry(*stored)

    def has_stale(self, key: bytes, now: float) -> bool:
        """Whether lookup_stale would find an answer now (it is not counted as served)."""
        stored = self._entries.get(key)
        return stored is not None and stored[5] <= now < stored[5] + self.stale_seconds

    def refresh_failed(self, key: bytes, now: float) -> None:
        """Upstream failed to refresh the expired answer of `key`: its question waits failure_recheck_seconds."""
        if self.failure_recheck_seconds > 0 and key in self._entries:
            self._failed[key] = now + self.failure_recheck_seconds

    def rechecking(self, key: bytes, now: float) -> bool:
        """Whether a refresh of `key` failed less than failure_recheck_seconds ago and a stale answer is there."""
        failed = self._failed
        if not failed:  # every miss asks this: nothing failed, one test
            return False
        until = failed.get(key)
        if until is None:
            return False
        if now >= until:
            del failed[key]
            return False
        return self.has_stale(key, now)

    def lookup_stale(self, key: bytes, now: float) -> CacheEntry | None:
        """An expired answer still inside the stale window, with TTLs set to 30 s (RFC 8767)."""
        stored = self._entries.get(key)
        if stored is None or now >= stored[5] + self.stale_seconds:
            return None
        self.stale_served += 1
        buf = bytearray(stored[0])
        ttl = STALE_ANSWER_TTL.to_bytes(4, "big")
        for offset in stored[2]:
            buf[offset : offset + 4] = ttl
        return CacheEntry(bytes(buf), *stored[1:])

    def store(self, key: bytes, answer: wire.Answer, now: float) -> None:
        """Keep an answer for its TTL; answers with TTL 0 (errors, truncated) are not kept."""
        if answer.ttl <= 0 or self.max_entries == 0:
            return
        entries = self._entries
        old = entries.get(key)
        if old is not None:
            self.bytes -= _cost(key, old)
            if self._failed:
                self._failed.pop(key, None)  # refreshed
        # Answers of the same shape have the same TTL offsets: share one tuple between them.
        shapes = self._shapes
        offsets = shapes.get(answer.ttl_offsets)
        if offsets is None:
            if len(shapes) >= _SHAPES_MAX:
                shapes.clear()
            offsets = shapes[answer.ttl_offsets] = answer.ttl_offsets
        stored = entries[key] = (
            answer.message,
            answer.question_length,
            offsets,
            answer.targets,
            now,
            now + answer.ttl,
            0,
        )
        entries.move_to_end(key)
        self.bytes += _cost(key, stored)
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            evicted_key, evicted = entries.popitem(last=False)
            self.bytes -= _cost(evicted_key, evicted)
            self.evictions += 1
            if self._failed:
                self._failed.pop(evicted_key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._failed.clear()
        self.bytes = 0


def _cost(key: bytes, stored: _Stored) -> int:
    """Estimated memory of one stored answer (the aged message has the length of the original)."""
    return len(key) + len(stored[0]) + ENTRY_OVERHEAD_BYTES
