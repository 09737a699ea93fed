"""Bounded TTL + LRU cache of upstream answers, with negative caching and serve-stale."""

from __future__ import annotations

import collections
from typing import NamedTuple

from resolver import wire

STALE_ANSWER_TTL = 30  # RFC 8767 4: TTL of a stale answer served when every upstream fails


class CacheEntry(NamedTuple):
    """A view of one cached answer and the aged copy last made from it (one per whole second of age).

    `aged_message` is `answer.message` with every TTL reduced by `aged_for` seconds; it stays
    exact until `exact_until`.
    """

    answer: wire.Answer
    stored_at: float
    expires_at: float
    aged_for: int
    aged_message: bytes

    @property
    def exact_until(self) -> float:
        """When the aged copy stops being exact: the next whole second of age, or expiry."""
        return min(self.stored_at + self.aged_for + 1, self.expires_at)


# What the cache stores per key: a plain tuple of atomic values, so that CPython's garbage
# collector stops tracking it. Full collections visit every tracked object, and with 100k+ cached
# answers as objects they paused the event loop for ~100-200 ms (measured); a NamedTuple or a
# class instance would stay tracked. `lookup` hands out a CacheEntry view.
#   (answer fields as a plain tuple, stored_at, expires_at, aged_for, aged_message)
_Stored = tuple[tuple, float, float, int, bytes]


class AnswerCache:
    """Answers keyed by question (see wire.Query.key); knows nothing of schools or policy.

    Hot path: a hit is a dict lookup, an LRU move and, at most once per second of age, a
    TTL rewrite of the stored bytes; everything else reuses the aged copy.
    """

    def __init__(self, max_entries: int, stale_seconds: float = 0.0):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.stale_seconds = stale_seconds
        self._entries: collections.OrderedDict[bytes, _Stored] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, now: float) -> CacheEntry | None:
        """The entry of a fresh answer, its aged copy made for `now`; or None."""
        stored = self._entries.get(key)
        if stored is None or now >= stored[2]:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        fields, stored_at, expires_at, aged_for, aged_message = stored
        answer = wire.Answer(*fields)
        age = int(now - stored_at)
        if age != aged_for:
            aged_for, aged_message = age, wire.age_answer(answer, age)
            self._entries[key] = (fields, stored_at, expires_at, aged_for, aged_message)
        return CacheEntry(answer, stored_at, expires_at, aged_for, aged_message)

    def lookup_stale(self, key: bytes, now: float) -> tuple[bytes, int] | None:
        """An expired answer still inside the stale window, with TTLs set to 30 s (RFC 8767)."""
        stored = self._entries.get(key)
        if stored is None or now >= stored[2] + self.stale_seconds:
            return None
        self.stale_served += 1
        answer = wire.Answer(*stored[0])
        buf = bytearray(answer.message)
        for offset in answer.ttl_offsets:
            buf[offset:offset + 4] = STALE_ANSWER_TTL.to_bytes(4, "big")
        return bytes(buf), answer.question_length

    def store(self, key: bytes, answer: wire.Answer, now: float) -> None:
        """Keep an answer for its TTL; answers with TTL 0 (errors, truncated) are not kept."""
        if answer.ttl <= 0 or self.max_entries == 0:
            return
        entries = self._entries
        entries[key] = (tuple(answer), now, now + answer.ttl, 0, answer.message)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
