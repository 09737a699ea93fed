"""Repeats: answers made at once for UDP queries, kept per school under the query bytes after the ID.

A client asks the same question again, byte for byte apart from the ID. `Repeats.answer` gives
it the kept answer with its own ID, without parse, decision or replay, and counts it like the
answer it repeats (a repeat of a cache hit is a cache hit, of a stale answer a stale answer
served). A query that differs only in the letter case of its name (DNS 0x20) is a repeat too:
answers are kept under the bytes with the name in lower case, and such a repeat gets the
question back in its own letter case. So is a query whose OPT record's only option is a client
COOKIE (RFC 7873): schooldns sends no server cookie and answers the query as if the option were
not there, so it is kept under the bytes without it. A kept answer holds while its decision does
(the school's schedule segment it was made in) and until `drop_all` (a new snapshot, or a late
refresh of a name in its failure recheck); a replayed cache entry is re-aged in the kept bytes until the
cached answer expires, a blocked or stale answer until the `until` it was kept with (see
docs/architecture.md, "Repeats patch two bytes").
"""

from __future__ import annotations

from resolver.dataplane import cache, metrics, wire
from resolver.filtering import policy

# Kept answers live in two generations, each held to both bounds (so twice each at most in all):
# when the current one is full, the previous one is dropped and the current one becomes the
# previous one; a repeat found in the previous generation moves to the current one. Answers asked
# for again outlive a flood of answers asked for once. Generations of half the bounds would keep
# the same total, but a query file cycling through more names than half (50,000 of them, as
# `make bench` asks) would then lose about half its repeats before they come round again.
REPEAT_MAX = 65_536
REPEAT_MAX_BYTES = 24 * 2**20  # estimated: key and answer bytes plus REPEAT_OVERHEAD_BYTES each
REPEAT_OVERHEAD_BYTES = 200  # the repeat tuple, its float and the dict's share (~150-200 with tracemalloc, 50k repeats)
# A repeat of a cached answer has its TTLs re-aged ahead, by at most this many seconds and at most
# 1/16 of the shortest TTL left, so that its bytes hold for up to 5 s instead of 1: a TTL served
# is never above the exact one, and at most that much below. Re-aging was every query's cost when a
# name is asked about once a second (measured: docs/performance-history.md, "Repeats re-aged ahead").
REPEAT_AGE_AHEAD_SECONDS = 4
BLOCKED_REPEAT_SECONDS = 60.0  # a blocked answer decided now is kept for this long

# Inside this room only, a repeat is a plain tuple of atomic values, so the garbage collector stops
# tracking it and a full table adds nothing to its pauses (a NamedTuple or a dataclass would stay
# tracked):
#   (tail, until, verdict, aged_for, stored, cache_key)
# tail: the answer without its 2-byte ID; until: clock() time when the tail stops holding;
# verdict: (segment, counted, blocked, from_cache), one tuple shared by every repeat with the same:
#   segment: the school's schedule segment of the decision; counted / blocked: Counters keys;
#   from_cache: a repeat of a cached answer counts as a cache hit (FROM_CACHE), of a stale one as a
#   stale answer served (STALE), of anything else as neither (0);
# aged_for, stored: for a replayed cache entry, the seconds of age the tail's TTLs were reduced by
# and what the cache kept for the entry (CacheEntry.stored: the same bytes object, so a repeat
# holds no times of its own), from which the tail is re-aged at `until`; else 0 and None: the
# repeat ends there. cache_key: the entry's key in the cache, made recent there at each re-aging (a
# name answered from repeats only would otherwise grow old in the cache's LRU order and be evicted
# first, and then have no stale answer to give in an upstream outage); else None.
_Verdict = tuple[int, tuple[str, str, str], tuple[str, str, str] | None, int]
FROM_CACHE, STALE = 1, 2
_Repeat = tuple[bytes, float, _Verdict, int, bytes | None, bytes | None]
_Tables = dict[str, dict[bytes, _Repeat]]  # school id -> query bytes after the ID -> repeat

# The last 14 bytes of a query whose OPT record (its last record) holds a client cookie alone:
# RDLENGTH 12, option COOKIE (10) of length 8, then the 8-byte client cookie.
_LONE_COOKIE = b"\x00\x0c\x00\x0a\x00\x08"
_ONE_QUESTION_AND_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 1
_OPT_RECORD_SIZE = 23  # root name, type, class, TTL, RDLENGTH, and the cookie option


def _lone_cookie(data: bytes) -> bool:
    """Whether this query is a question and one OPT record holding nothing but an 8-byte client cookie.

    Its repeats are kept under its bytes with the option left out (`key[:-14] + b"\\x00\\x00"`: the
    OPT record's RDLENGTH 0). The labels of the name are walked to find where the OPT record starts.
    """
    opt = len(data) - _OPT_RECORD_SIZE
    if data[-14:-8] != _LONE_COOKIE or data[4:12] != _ONE_QUESTION_AND_OPT or opt < 17:
        return False
    pos = 12
    while pos < opt:
        length = data[pos]
        if length == 0 or length > 63:
            break
        pos += length + 1
    # the name's last byte, then type and class, then the OPT record: root name and TYPE 41
    return pos + 5 == opt and data[pos] == 0 and data[opt : opt + 3] == b"\x00\x00\x29"


class Repeats:
    """The answers kept for repeats of one worker: two generations, each bounded by REPEAT_MAX and REPEAT_MAX_BYTES.

    `enabled=False` keeps nothing (for measurements of what repeats are worth; not a setting).
    """

    __slots__ = (
        "_answers",
        "_bytes",
        "_count",
        "_counters",
        "_previous",
        "_previous_count",
        "_tables",
        "_verdicts",
        "discarded",
        "enabled",
        "hits",
    )

    def __init__(self, counters: metrics.Counters, answers: cache.AnswerCache, enabled: bool = True):
        self._counters = counters
        self._answers = answers  # a repeat of a cache hit adds to its hits
        self.enabled = enabled
        self._tables: _Tables = {}  # the current generation
        self._previous: _Tables = {}  # the previous generation, read until the current one is full
        self._verdicts: dict[_Verdict, _Verdict] = {}
        self._count = self._previous_count = 0
        self._bytes = 0  # the current generation's only: it is the one that grows
        self.discarded = 0  # answers forgotten with a previous generation at its bound (not at drop_all)
        self.hits = 0  # queries answered here: not parsed, decided nor looked up

    def __len__(self) -> int:
        return self._count + self._previous_count

    def schools(self) -> int:
        """How many schools have answers kept."""
        return len(self._tables.keys() | self._previous.keys())

    def answer(self, school: str, data: bytes, segment: int, now: float) -> bytes | None:
        """The kept answer to this UDP query with its ID and its letter case, counted; None when none holds.

        `segment` is the school's schedule segment now, `now` the pipeline's clock.
        """
        table = self._tables.get(school)
        key = data[2:]
        repeat = None if table is None else table.get(key)
        name = None
        if repeat is None:  # not byte for byte: kept in lower case, without a lone cookie, or earlier?
            if not key.islower():  # a capital letter somewhere: the same question in other letter case (DNS 0x20)?
                end = key.find(b"\x00", 10)
                if end > 0:
                    name = key[10:end]
                    folded = name.lower()
                    if folded == name:  # the capital was elsewhere
                        name = None
                    else:
                        key = key[:10] + folded + key[end:]
                        if table is not None:
                            repeat = table.get(key)
            if repeat is None and data[-14:-8] == _LONE_COOKIE and _lone_cookie(data):
                key = key[:-14] + b"\x00\x00"
                if table is not None:
                    repeat = table.get(key)
            if repeat is None:
                earlier = self._previous.get(school)
                if earlier is None:
                    return None
                repeat = earlier.pop(key, None)
                if repeat is None:
                    return None
                self._previous_count -= 1
                table = self._put(school, key, repeat)
        tail, until, verdict, _, _, _ = repeat
        kept_segment, counted, blocked, from_cache = verdict
        if kept_segment != segment:
            return None
        if now >= until:
            renewed = self._renew(table, key, repeat, now)  # type: ignore[arg-type]
            if renewed is None:
                return None
            tail = renewed
        self._counters.recount(counted, blocked)
        self.hits += 1
        if from_cache:
            if from_cache == FROM_CACHE:
                self._answers.hits += 1
            else:
                self._answers.stale_served += 1
        if name is None:
            return data[:2] + tail
        return data[:2] + tail[:10] + name + tail[10 + len(name) :]  # the question in the client's letter case

    def keep_blocked(
        self,
        school: str,
        data: bytes,
        segment: int,
        reply: bytes,
        block: policy.Block,
        until: float,
        *,
        from_cache: bool,
    ) -> None:
        """Keep a blocked answer to a UDP query until `until`; from_cache: it came from a cached answer's chain."""
        blocked = (school, block.category, block.authority)
        self._keep(school, data, segment, reply, "blocked", blocked, FROM_CACHE if from_cache else 0, until, None)

    def keep_replayed(
        self,
        school: str,
        data: bytes,
        segment: int,
        reply: bytes,
        result: str,
        entry: cache.CacheEntry,
        cache_key: bytes,
    ) -> None:
        """Keep a cache entry (`cache_key` in the cache) replayed for a UDP query (result: its label); re-aged with it.

        A truncated replay (TC set, or without its additional records) is not re-aged: it holds
        until the entry's next second of age.
        """
        # A replay without the entry's additional records (cut to fit the client's size) has its
        # TTLs elsewhere than the entry's offsets say: like a truncated one, it is not re-aged.
        whole = reply[10] << 8 | reply[11] == (entry.message[10] << 8 | entry.message[11]) + (data[10] | data[11] > 0)
        renewal = entry if whole and not reply[2] & 0x02 else None
        self._keep(school, data, segment, reply, result, None, FROM_CACHE, entry.exact_until, renewal, cache_key)

    def keep_stale(self, school: str, data: bytes, segment: int, reply: bytes, until: float) -> None:
        """Keep a stale answer (TTL 30, EDE 3) to a UDP query until `until`, the end of its failure recheck."""
        self._keep(school, data, segment, reply, "stale", None, STALE, until, None)

    def drop_all(self) -> None:
        """Forget every kept answer (a new snapshot was installed, or a refresh outdated stale ones)."""
        self._tables = {}
        self._previous = {}
        self._verdicts = {}
        self._count = self._previous_count = self._bytes = 0

    def _keep(
        self,
        school: str,
        data: bytes,
        segment: int,
        reply: bytes,
        result: str,
        blocked: tuple[str, str, str] | None,
        from_cache: int,
        until: float,
        renewal: cache.CacheEntry | None,
        cache_key: bytes | None = None,
    ) -> None:
        if not self.enabled:
            return
        key = data[2:]
        tail = reply[2:]
        if data[-14:-8] == _LONE_COOKIE and _lone_cookie(data):
            key = key[:-14] + b"\x00\x00"
        if not key.islower():  # a capital letter somewhere: kept with the name in lower case
            end = key.find(b"\x00", 10)  # the end of the question's name (or of a label holding a 0 byte)
            name = key[10:end]
            if end > 0 and not name.islower():
                folded = name.lower()
                key = key[:10] + folded + key[end:]
                tail = tail[:10] + folded + tail[10 + len(folded) :]
        verdict = (segment, (school, "udp", result), blocked, from_cache)
        verdict = self._verdicts.setdefault(verdict, verdict)
        if renewal is None:
            self._put(school, key, (tail, until, verdict, 0, None, None))
        else:
            self._put(school, key, (tail, until, verdict, renewal.aged_for, renewal.stored, cache_key))

    def _put(self, school: str, key: bytes, repeat: _Repeat) -> dict[bytes, _Repeat]:
        """Keep a repeat in the current generation, the generations moved on first if it is full; its table."""
        table = self._tables.get(school)
        if table is None or key not in table:
            if self._count >= REPEAT_MAX or self._bytes >= REPEAT_MAX_BYTES:
                self.discarded += self._previous_count
                self._previous, self._previous_count = self._tables, self._count
                self._tables = {}
                self._verdicts = {}  # new ones are made as kept; the previous generation holds its own
                self._count = self._bytes = 0
                table = None
            if table is None:
                table = self._tables[school] = {}
            self._count += 1
            self._bytes += len(key) + len(repeat[0]) + REPEAT_OVERHEAD_BYTES
        table[key] = repeat
        return table

    def _renew(self, table: dict[bytes, _Repeat], key: bytes, repeat: _Repeat, now: float) -> bytes | None:
        """A repeat's tail past `until`, its TTLs aged to `now` and ahead, while its cached answer lives; else None."""
        tail, _, verdict, aged_for, stored, cache_key = repeat
        if stored is None or cache_key is None:
            return None  # a blocked answer
        answers = self._answers
        stored_at, expires_at, offsets = answers.renewal(stored)
        if now >= expires_at:
            return None  # its cached answer expired
        answers.touch(cache_key)
        age = int(now - stored_at)
        ahead = int(expires_at - now) >> 4  # at most 1/16 of the shortest TTL left
        if ahead > REPEAT_AGE_AHEAD_SECONDS:
            ahead = REPEAT_AGE_AHEAD_SECONDS
        age += ahead
        tail = wire.reduce_ttls(tail, offsets, age - aged_for, 2)
        until = stored_at + age + 1
        if until > expires_at:  # not min(): a call costs more than the comparison
            until = expires_at
        table[key] = (tail, until, verdict, age, stored, cache_key)
        return tail
