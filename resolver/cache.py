"""Bounded TTL + LRU cache of upstream answers, with negative caching and serve-stale."""

from __future__ import annotations

import collections

from resolver import wire

STALE_ANSWER_TTL = 30  # RFC 8767 4: TTL of a stale answer served when every upstream fails


class CacheEntry:
    """One cached answer and the aged copy last made from it (one per whole second of age).

    Read-only outside this module. `aged_message` is `answer.message` with every TTL reduced by
    `aged_for` seconds; it stays exact until `exact_until`.
    """

    __slots__ = ("answer", "stored_at", "expires_at", "aged_for", "aged_message")

    def __init__(self, answer: wire.Answer, now: float):
        self.answer = answer
        self.stored_at = now
        self.expires_at = now + answer.ttl
        self.aged_for = 0
        self.aged_message = answer.message

    @property
    def exact_until(self) -> float:
        """When the aged copy stops being exact: the next whole second of age, or expiry."""
        return min(self.stored_at + self.aged_for + 1, self.expires_at)


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
        self._entries: collections.OrderedDict[bytes, CacheEntry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.stale_served = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, now: float) -> CacheEntry | None:
        """The entry of a fresh answer, its aged copy made for `now`; or None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires_at:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        age = int(now - entry.stored_at)
        if age != entry.aged_for:
            entry.aged_message = wire.age_answer(entry.answer, age)
            entry.aged_for = age
        return entry

    def lookup_stale(self, key: bytes, now: float) -> tuple[bytes, int] | None:
        """An expired answer still inside the stale window, with TTLs set to 30 s (RFC 8767)."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires_at + self.stale_seconds:
            return None
        self.stale_served += 1
        answer = entry.answer
        buf = bytearray(answer.message)
        for offset in answer.ttl_offsets:
            buf[offset:offset + 4] = STALE_ANSWER_TTL.to_bytes(4, "big")
        return bytes(buf), answer.question_length

    def store(self, key: bytes, answer: wire.Answer, now: float) -> None:
        """Keep an answer for its TTL; answers with TTL 0 (errors, truncated) are not kept."""
        if answer.ttl <= 0 or self.max_entries == 0:
            return
        entries = self._entries
        entries[key] = CacheEntry(answer, now)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
