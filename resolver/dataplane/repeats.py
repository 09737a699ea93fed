"""Repeats: answers made at once for repeated queries, kept per transport and school under the query bytes after the ID.

A client asks the same question again, byte for byte apart from the ID. `Repeats.answer` gives
it the kept answer with its own ID, without parse, decision or replay, and counts it like the
answer it repeats (a repeat of a cache hit is a cache hit, of a stale answer a stale answer
served). A query that differs only in the letter case of its name (DNS 0x20) is a repeat too:
answers are kept under the bytes with the name in lower case, and such a repeat gets the
question back in its own letter case. So is a query whose OPT record's only option is a client
COOKIE (RFC 7873): schooldns sends no server cookie and answers the query as if the option were
not there, so it is kept under the bytes without it. A replayed cache entry is kept once for a
question asked without EDNS and with a plain OPT record (no option, no DNSSEC OK bit): without
the record, under the bytes without it, and a query with the record gets it with one added. A
kept answer holds while its decision does (the school's schedule segment it was made in) and
until `drop_all` (a new snapshot, or a late refresh of a name in its failure recheck); a
replayed cache entry is re-aged in the kept bytes until the cached answer expires, a blocked or
stale answer until the `until` it was kept with (see docs/architecture.md, "Repeats patch two
bytes").
"""

from __future__ import annotations

from typing import Any, Final, cast

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
REPEAT_OVERHEAD_BYTES = (
    180  # the repeat tuple, its two floats and the dict's share (~172 with tracemalloc, 50k repeats)
)
# A repeat of a cached answer has its TTLs re-aged ahead, by at most this many seconds and at most
# 1/16 of the shortest TTL left, so that its bytes hold for up to 5 s instead of 1: a TTL served
# is never above the exact one, and at most that much below. Re-aging was every query's cost when a
# name is asked about once a second (measured: docs/performance-history.md, "Repeats re-aged ahead").
REPEAT_AGE_AHEAD_SECONDS: Final = 4
BLOCKED_REPEAT_SECONDS: Final = 60.0  # a blocked answer decided now is kept for this long

# Inside this room only, a repeat is a plain tuple of atomic values, so the garbage collector stops
# tracking it and a full table adds nothing to its pauses (a NamedTuple or a dataclass would stay
# tracked):
#   (tail, until, verdict, stored_at)
# tail: the answer without its 2-byte ID; until: clock() time when the tail stops holding;
# verdict: (segment, counted, blocked, from_cache, edns_too, cache_suffix), one tuple shared by every
# repeat with the same:
#   segment: the school's schedule segment of the decision; counted / blocked: Counters keys;
#   from_cache: a repeat of a cached answer counts as a cache hit (FROM_CACHE), of a stale one as a
#   stale answer served (STALE), of anything else as neither (0);
#   edns_too: the tail is a replayed cache entry without an OPT record, kept under the query bytes
#   without one, short enough that the same with a plain OPT record fits any client: it answers a
#   query with a plain OPT record as well (see _plain_form);
#   cache_suffix: for a replayed cache entry that is re-aged, what follows the question in its key
#   in the cache (the DO and CD bytes, and a forward zone's or safe-search target's part); else None,
#   and the repeat ends at `until`.
# stored_at: for a replayed cache entry, CacheEntry.stored_at: the cache entry under the question
# and cache_suffix is re-aged from while it is the one stored then (not a reference to the cache's
# bytes: an evicted entry would stay in memory as long as its repeats). The tail's TTLs were reduced
# by until - stored_at - 1 seconds of age, unless `until` is its expiry, and the repeat ends there.
_Verdict = tuple[int, tuple[str, str, str], tuple[str, str, str] | None, int, bool, bytes | None]
FROM_CACHE, STALE = 1, 2
# The verdict is held as `object`: compiled (mypyc), a tuple of a fixed shape is a C struct, and
# each repeat would hold a new copy of it (and of its counters' keys), ~150 bytes, not the shared one.
_Repeat = tuple[bytes, float, object, float]
_Tables = dict[str, dict[bytes, _Repeat]]  # school id -> query bytes after the ID -> repeat

# Constants are Final: compiled, they are then C constants, not module attributes read per query.
# The last 14 bytes of a query whose OPT record (its last record) holds a client cookie alone:
# RDLENGTH 12, option COOKIE (10) of length 8, then the 8-byte client cookie.
_LONE_COOKIE: Final = b"\x00\x0c\x00\x0a\x00\x08"
_ONE_QUESTION_AND_OPT: Final = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 1
_ONE_QUESTION: Final = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QDCOUNT 1, and no record
_OPT_RECORD_SIZE: Final = 23  # root name, type, class, TTL, RDLENGTH, and the cookie option
# A plain OPT record's last 6 bytes (no extended RCODE, version 0, no DO bit nor other flag, no
# option), and the one an answer to it ends with (wire.replay: payload 1232, no DO bit).
_PLAIN_OPT_END: Final = b"\x00\x00\x00\x00\x00\x00"
_ANSWER_OPT: Final = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
_PLAIN_OPT_SIZE: Final = 11
_NO_OPT_FLAGS: Final = b"\x00\x00\x00\x00"  # an OPT record's TTL: no extended RCODE, version 0, no flag
_NO_RECORD: Final = b"\x00\x00"  # an ARCOUNT of 0
# An answer kept for both forms is at most this long without its OPT record and ID: with both it
# fits the 512 bytes of a query without EDNS, so neither form is ever cut to fit.
_EDNS_TOO_MAX: Final = wire.MIN_UDP_PAYLOAD - 2 - _PLAIN_OPT_SIZE
# bytes.lower() as a table (compiled, translate() is a native call, lower() a generic one): A-Z to a-z
_LOWER: Final = bytes(range(65)) + bytes(range(97, 123)) + bytes(range(91, 256))
_COUNTS: Final = tuple(count.to_bytes(2, "big") for count in range(64))  # an ARCOUNT of such an answer, and one more


def _lone_cookie(data: bytes) -> bool:
    """Whether this query is a question and one OPT record holding nothing but an 8-byte client cookie.

    Its repeats are kept under its bytes with the option left out (`key[:-14] + b"\\x00\\x00"`: the
    OPT record's RDLENGTH 0). The labels of the name are walked to find where the OPT record starts.
    """
    opt = len(data) - _OPT_RECORD_SIZE
    if data[-14:-8] != _LONE_COOKIE or data[4:12] != _ONE_QUESTION_AND_OPT or opt < 17:
        return False
    return _question_end(data, 12) == opt and data[opt] == 0 and data[opt + 1] == 0 and data[opt + 2] == wire.TYPE_OPT


def _question_end(data: bytes, pos: int) -> int:
    """Where the question starting at `pos` ends: after its name's labels (walked), type and class; -1 if none."""
    end = len(data)
    while pos < end:
        length = data[pos]
        if length == 0:
            return pos + 5
        if length > 63:
            return -1
        pos += length + 1
    return -1


def _both_forms(repeat: _Repeat | None) -> _Repeat | None:
    """The repeat if it answers queries with a plain OPT record as well (edns_too); else None."""
    if repeat is None or not cast(_Verdict, repeat[2])[4]:
        return None
    return repeat


def _plain_form(key: bytes) -> bytes | None:
    """The key (query bytes after the ID) without its OPT record, if it ends with a plain OPT record; else None.

    A plain OPT record: the root name, any payload, no extended RCODE, version 0, no flag (DNSSEC
    OK) and no option, after one question and nothing else. The name's labels are not walked
    here: a repeat kept with edns_too is kept under a question without trailing bytes (_keep
    walks it), so when this key finds one, the OPT record begins where the question ends.
    """
    # (Slices and indexes, not startswith(x, start): compiled, that one is a slow generic call.)
    opt = len(key) - _PLAIN_OPT_SIZE
    if opt < 15 or not key.endswith(_PLAIN_OPT_END) or key[2:10] != _ONE_QUESTION_AND_OPT:
        return None  # (a question is 5 bytes at least: the root name, type and class)
    if key[opt] or key[opt + 1] or key[opt + 2] != wire.TYPE_OPT:
        return None
    return key[:8] + _NO_RECORD + key[10:opt]


class Repeats:
    """The answers kept for repeats of one worker's queries by one transport: two generations, each bounded by
    REPEAT_MAX and REPEAT_MAX_BYTES, divided by `share`.

    A transport's answers are its own (over UDP they may be cut to the client's size; over a
    stream never), and a repeat is counted under its `transport`. `enabled=False` keeps nothing
    (for measurements of what repeats are worth; not a setting).
    """

    __slots__ = (
        "_answers",
        "_bytes",
        "_count",
        "_counters",
        "_previous",
        "_previous_count",
        "_share",
        "_tables",
        "_verdicts",
        "discarded",
        "enabled",
        "hits",
        "transport",
    )

    def __init__(
        self,
        counters: metrics.Counters,
        answers: cache.AnswerCache,
        enabled: bool = True,
        transport: str = "udp",
        share: int = 1,
    ):
        self._counters = counters
        self._answers = answers  # a repeat of a cache hit adds to its hits
        self.enabled = enabled
        self.transport = transport  # the transport its queries came by: what a repeat is counted under
        self._share = share  # held to 1/share of REPEAT_MAX and REPEAT_MAX_BYTES
        self._tables: _Tables = {}  # the current generation
        self._previous: _Tables = {}  # the previous generation, read until the current one is full
        self._verdicts: dict[object, object] = {}
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
        """The kept answer to this query with its ID and its letter case, counted; None when none holds.

        `segment` is the school's schedule segment now, `now` the pipeline's clock.
        """
        table = self._tables.get(school)
        key = data[2:]
        repeat = None if table is None else table.get(key)
        name = None
        with_opt = False  # the answer is the kept one with an OPT record added
        if repeat is None:  # not byte for byte: kept in lower case, without a lone cookie or an OPT, or earlier?
            lowered = key.translate(_LOWER)
            if lowered != key:  # a capital letter somewhere: the same question in other letter case (DNS 0x20)?
                end = _question_end(key, 10) - 5  # where its name ends (compiled, find() is a slow generic call)
                if end > 10:
                    name = key[10:end]
                    folded = lowered[10:end]
                    if folded == name:  # the capital was elsewhere
                        name = None
                    else:
                        key = key[:10] + folded + key[end:]
                        if table is not None:
                            repeat = table.get(key)
            # With a plain OPT record (a lone cookie left out): first the answer kept for both forms,
            # under the bytes without the OPT record; then one kept for this form alone.
            plain = None
            cookie = repeat is None and data[-14:-8] == _LONE_COOKIE and _lone_cookie(data)
            if cookie:
                opt = len(key) - _OPT_RECORD_SIZE
                if key[opt + 5 : opt + 9] == _NO_OPT_FLAGS:
                    plain = key[:8] + _NO_RECORD + key[10:opt]
            elif repeat is None and key.endswith(_PLAIN_OPT_END):
                plain = _plain_form(key)
            if plain is not None and table is not None:
                repeat = _both_forms(table.get(plain))
                if repeat is not None:
                    key, with_opt = plain, True
            if cookie and repeat is None:
                key = key[:-14] + b"\x00\x00"
                if table is not None:
                    repeat = table.get(key)
            if repeat is None:
                earlier = self._previous.get(school)
                if earlier is None:
                    return None
                if plain is not None and _both_forms(earlier.get(plain)) is not None:
                    key, with_opt = plain, True
                repeat = earlier.pop(key, None)
                if repeat is None:
                    return None
                self._previous_count -= 1
                table = self._put(school, key, repeat)
        tail, until, kept, _ = repeat
        # Read as a tuple of objects: compiled, a _Verdict would be unpacked into a C struct, and
        # its counters' keys packed again into new tuples for the counters' dicts. (Declared, not
        # cast(): uncompiled, each cast() is a call.)
        verdict: tuple[Any, ...] = kept  # type: ignore[assignment]
        kept_segment: int = verdict[0]
        if kept_segment != segment:
            return None
        if now >= until:
            renewed = self._renew(table, key, repeat, now)  # type: ignore[arg-type]
            if renewed is None:
                return None
            tail = renewed
        self._counters.recount(verdict[1], verdict[2])
        self.hits += 1
        from_cache: int = verdict[3]
        if from_cache:
            if from_cache == FROM_CACHE:
                self._answers.hits += 1
            else:
                self._answers.stale_served += 1
        if with_opt:  # (concatenation: compiled, it is quicker than b"".join)
            if name is None:
                return data[:2] + tail[:8] + _COUNTS[(tail[8] << 8 | tail[9]) + 1] + tail[10:] + _ANSWER_OPT
            tail = tail[:8] + _COUNTS[(tail[8] << 8 | tail[9]) + 1] + tail[10:] + _ANSWER_OPT
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
        """Keep a blocked answer to a query until `until`; from_cache: it came from a cached answer's chain."""
        blocked = (school, block.category, block.authority)
        self._keep(school, data, segment, reply, "blocked", blocked, FROM_CACHE if from_cache else 0, until)

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
        """Keep a cache entry (`cache_key` in the cache) replayed for a query (result: its label); re-aged with it.

        A truncated replay (TC set, or without its additional records) is not re-aged: it holds
        until the entry's next second of age.
        """
        # A replay without the entry's additional records (cut to fit the client's size) has its
        # TTLs elsewhere than the entry's offsets say: like a truncated one, it is not re-aged.
        whole = reply[10] << 8 | reply[11] == (entry.message[10] << 8 | entry.message[11]) + (data[10] | data[11] > 0)
        suffix = cache_key[entry.question_length :] if whole and not reply[2] & 0x02 else None
        self._keep(school, data, segment, reply, result, None, FROM_CACHE, entry.exact_until, entry.stored_at, suffix)

    def keep_stale(self, school: str, data: bytes, segment: int, reply: bytes, until: float) -> None:
        """Keep a stale answer (TTL 30, EDE 3) to a query until `until`, the end of its failure recheck."""
        self._keep(school, data, segment, reply, "stale", None, STALE, until)

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
        stored_at: float = 0.0,
        cache_suffix: bytes | None = None,
    ) -> None:
        if not self.enabled:
            return
        key = data[2:]
        tail = reply[2:]
        if data[-14:-8] == _LONE_COOKIE and _lone_cookie(data):
            key = key[:-14] + b"\x00\x00"
        lowered = key.translate(_LOWER)
        if lowered != key:  # a capital letter somewhere: kept with the name in lower case
            end = _question_end(key, 10) - 5  # (the name's labels walked: as answer() finds them)
            if end > 10:
                folded = lowered[10:end]
                key = key[:10] + folded + key[end:]
                tail = tail[:10] + folded + tail[end:]
        edns_too = False
        if cache_suffix is not None:  # a whole replay of a cache entry: kept for both forms if it is short enough
            if key[2:10] == _ONE_QUESTION:
                edns_too = len(tail) <= _EDNS_TOO_MAX and _question_end(key, 10) == len(key)
            elif key.endswith(_PLAIN_OPT_END) and tail.endswith(_ANSWER_OPT):
                plain = _plain_form(key)
                if (
                    plain is not None
                    and len(tail) - _PLAIN_OPT_SIZE <= _EDNS_TOO_MAX
                    and _question_end(plain, 10) == len(plain)
                ):
                    key, edns_too = plain, True
                    tail = tail[:8] + _COUNTS[(tail[8] << 8 | tail[9]) - 1] + tail[10:-_PLAIN_OPT_SIZE]
        verdict: object = (segment, (school, self.transport, result), blocked, from_cache, edns_too, cache_suffix)
        verdict = self._verdicts.setdefault(verdict, verdict)
        self._put(school, key, (tail, until, verdict, stored_at))

    def _put(self, school: str, key: bytes, repeat: _Repeat) -> dict[bytes, _Repeat]:
        """Keep a repeat in the current generation, the generations moved on first if it is full; its table."""
        table = self._tables.get(school)
        if table is None or key not in table:
            if self._count >= REPEAT_MAX // self._share or self._bytes >= REPEAT_MAX_BYTES // self._share:
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
        tail, until, verdict, stored_at = repeat
        cache_suffix = cast(_Verdict, verdict)[5]
        if cache_suffix is None:
            return None  # a blocked or stale answer, or a truncated replay
        # The cache key: the question (lower case, as in the key) and what follows it there.
        renewal = self._answers.renewal(key[10 : _question_end(key, 10)] + cache_suffix, stored_at)
        if renewal is None:
            return None  # evicted, or another answer since
        expires_at, offsets = renewal
        if now >= expires_at:
            return None  # its cached answer expired (then `until` was its expiry: no age to read from it)
        aged_for = round(until - stored_at) - 1
        age = int(now - stored_at)
        ahead = int(expires_at - now) >> 4  # at most 1/16 of the shortest TTL left
        if ahead > REPEAT_AGE_AHEAD_SECONDS:
            ahead = REPEAT_AGE_AHEAD_SECONDS
        age += ahead
        tail = wire.reduce_ttls(tail, offsets, age - aged_for, 2)
        until = stored_at + age + 1
        if until > expires_at:  # not min(): a call costs more than the comparison
            until = expires_at
        table[key] = (tail, until, verdict, stored_at)
        return tail
