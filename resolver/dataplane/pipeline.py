"""The per-query function: identify, repeat, parse, decide, cache, forward, inspect, count; every failure -> one rcode here.

`Pipeline.handle` is the data plane.  It is synchronous for everything that can be answered
at once (malformed input, unknown clients, blocked names, cache hits) and returns the
answer bytes directly.  Only a cache miss returns a `Later`: the transport calls it with the
function that sends its answer, and the upstream room calls back when the answer arrives
(no task, future or coroutine per miss; see upstream._Question).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from resolver.dataplane import cache, metrics, upstream, wire
from resolver.filtering import domains, policy, schools

log = logging.getLogger(__name__)

# Answers kept for repeats: all are dropped at once when either bound is reached (a full table is
# rebuilt by the queries that follow). A blocked answer is kept for at most a minute.
REPEAT_MAX = 65_536
REPEAT_MAX_BYTES = 24 * 2**20  # estimated: key and answer bytes plus REPEAT_OVERHEAD_BYTES each
REPEAT_OVERHEAD_BYTES = 200  # the repeat tuple, its float and the dict's share (~150-200 with tracemalloc, 50k repeats)
# A repeat of a cached answer has its TTLs re-aged ahead, by at most this many seconds and at most
# 1/16 of the shortest TTL left, so that its bytes hold for up to 5 s instead of 1: a TTL served
# is never above the exact one, and at most that much below. Re-aging was every query's cost when a
# name is asked about once a second (measured: docs/performance.md, "Repeats re-aged ahead").
REPEAT_AGE_AHEAD_SECONDS = 4
BLOCKED_REPEAT_SECONDS = 60.0  # a kept blocked answer is made again after this (staggered per name)

Deliver = Callable[[bytes | None], None]  # where an answer made later goes (None: no answer, drop)
Later = Callable[[Deliver], None]  # a cache miss: call it once with its Deliver, which it calls once
Reply = bytes | None | Later

_EDE_BY_AUTHORITY = {"province": wire.EDE_CENSORED, "school": wire.EDE_FILTERED, "deny": wire.EDE_BLOCKED}


class Forwarder(Protocol):
    """What the pipeline needs from the upstream room (a fake in unit tests)."""

    def ask(self, query: wire.Query, done: upstream.Done) -> None:
        """Call done(answer, None) or done(None, error) once, now or later."""


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the control plane can change, installed with one assignment.

    A query reads `pipeline.snapshot` once, so it never mixes two list or policy generations.
    """

    generation: int
    index: domains.DomainIndex
    directory: schools.SchoolDirectory
    default_school: policy.SchoolPolicy | None
    province: policy.Province
    policies: policy.Policies
    categories: tuple[str, ...]  # bit i of an index mask is categories[i]
    entry_counts: dict[str, int]
    loaded_at: float
    from_last_good: bool = False  # built from state_dir's last good copy: the files failed at start


# Repeats (stage 2 of handle) are kept per school under the query bytes after the ID. A repeat is a
# plain tuple of atomic values, so the garbage collector stops tracking it and a full table adds
# nothing to its pauses (a NamedTuple would stay tracked):
#   (tail, until, verdict, stored_at, aged_for, expires_at, ttl_offsets)
# tail: the answer without its 2-byte ID; until: clock() time when the tail stops holding;
# verdict: (segment, counted, blocked, from_cache), one tuple shared by every repeat with the same:
#   segment: the school's schedule segment of the decision (see _segment); counted / blocked:
#   Counters keys; from_cache: a repeat of a cached answer counts as a cache hit;
# the rest: for a replayed cache entry, what re-ages the tail at `until` (else None: the repeat
# ends there).
_Verdict = tuple[int, tuple[str, str, str], tuple[str, str] | None, bool]
_Repeat = tuple[bytes, float, _Verdict, float | None, int, float | None, tuple[int, ...] | None]


class Pipeline:
    """Answers one query's bytes with answer bytes (or None: drop) for one client address."""

    def __init__(
        self,
        snapshot: Snapshot,
        answers: cache.AnswerCache,
        forwarder: Forwarder,
        counters: metrics.Counters,
        clock: Any = time.monotonic,
        wall_clock: Any = time.time,
    ):
        self.snapshot = snapshot
        self.cache = answers
        self.forwarder = forwarder
        self.counters = counters
        self.clock = clock
        self.wall_clock = wall_clock
        self._segments: dict[str, tuple[int, int]] = {}  # school id -> (minute, schedule segment)
        self._repeats: dict[str, dict[bytes, _Repeat]] = {}  # school id -> query bytes after the ID -> repeat
        self._repeat_count = 0
        self._repeat_bytes = 0
        self._verdicts: dict[_Verdict, _Verdict] = {}

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (control plane); answers made with the old one are dropped."""
        self._segments = {}
        self._drop_repeats()
        self.snapshot = snapshot

    # -----------------------------------------------------------------------------------
    # The data plane, top to bottom.

    def handle(self, data: bytes, client: str | bytes, transport: str) -> Reply:
        """Answer bytes now, None to drop, or a coroutine that will produce the answer.

        `client` is the sender's IP address, as text or packed (see SchoolDirectory.lookup).
        """
        counters = self.counters
        snapshot = self.snapshot
        # 1. Identify the school by client address (first, because a repeat is per school).
        school = snapshot.directory.lookup(client) or snapshot.default_school
        # The moment of this query for its school's policy: decisions and repeats made in the
        # same schedule segment hold (see _segment). Read once, so both agree.
        wall = self.wall_clock()
        segment = self._segment(school, wall) if school is not None else 0

        # 2. Repeat: a UDP query whose bytes after the ID equal an earlier one from the same school
        #    gets that answer with its own ID, while its decision holds (same schedule segment) and
        #    its cached answer lives.
        repeat = None
        if transport == "udp" and school is not None:
            repeats = self._repeats.get(school.id)
            if repeats is not None:
                repeat_key = data[2:]
                repeat = repeats.get(repeat_key)
        if repeat is not None:
            tail, until, verdict, _, _, _, _ = repeat
            kept_segment, counted, blocked, from_cache = verdict
            if kept_segment == segment:
                now = self.clock()
                if now >= until:
                    tail = self._renew(repeats, repeat_key, repeat, now)
                if tail is not None:
                    counters.recount(counted, blocked)
                    if from_cache:
                        self.cache.hits += 1
                    return data[:2] + tail

        # 2b. Otherwise parse the question.
        try:
            query = wire.parse_query(data)
        except wire.WireError as exc:
            counters.malformed += 1
            return self._error_answer(exc, None)
        limit = query.payload if transport == "udp" else 65535
        if school is None:
            counters.count("unknown", transport, "refused")
            return wire.make_error(
                query.id,
                query.flags,
                wire.REFUSED,
                query,
                wire.ede_option(wire.EDE_PROHIBITED, "client not in any school network") if query.edns else b"",
            )

        # 3. Decide: policy x domain index.
        now = self.clock()
        decision = self._decide(snapshot, school, query.name, wall)
        if decision is not policy.ALLOW:
            if isinstance(decision, policy.Block):
                reply = self._blocked(query, decision, snapshot)
                return self._answered(
                    data, transport, school, segment, reply, now + BLOCKED_REPEAT_SECONDS, decision.category
                )
            return self._rewrite(data, query, decision.target, school, segment, transport, limit, now)

        # 4. Cache lookup (raw bytes: ID, question and TTLs patched).
        entry = self.cache.lookup(query.key, now)
        if entry is not None:
            if entry.targets:  # 6 (on a hit): the cached chain is checked for this school
                block = self._inspect(query, entry.targets, school, snapshot, wall)
                if block is not None:
                    reply = self._blocked(query, block, snapshot)
                    return self._answered(
                        data, transport, school, segment, reply, entry.expires_at, block.category, entry
                    )
            reply = wire.replay(entry.message, entry.question_length, query, limit)
            return self._answered(data, transport, school, segment, reply, entry.exact_until, None, entry, "cached")

        # 5.-7. Forward upstream, then cache, inspect, count (_forwarded): the only stage that waits.
        return functools.partial(
            self._ask, query, query, functools.partial(self._forwarded, query, school, snapshot, transport, limit)
        )

    def _ask(
        self,
        question: wire.Query,
        query: wire.Query,
        then: Callable[[wire.Answer | None, Exception | None], bytes | None],
        deliver: Deliver,
    ) -> None:
        """Ask upstream the question (for the client's query); deliver what `then` makes of the outcome.

        The client is always answered: a failure in `then` becomes an rcode like any other.
        """

        def answered(answer: wire.Answer | None, error: Exception | None) -> None:
            try:
                reply = then(answer, error)
            except Exception as exc:  # a bug: answer SERVFAIL rather than leave the client waiting
                reply = self._error_answer(exc, query)
            deliver(reply)

        self.forwarder.ask(question, answered)

    def _forwarded(
        self,
        query: wire.Query,
        school: policy.SchoolPolicy,
        snapshot: Snapshot,
        transport: str,
        limit: int,
        answer: wire.Answer | None,
        error: Exception | None,
    ) -> bytes | None:
        if answer is None:
            if isinstance(error, upstream.UpstreamError):
                stale = self.cache.lookup_stale(query.key, self.clock())
                if stale is not None:
                    self.counters.count(school.id, transport, "stale")
                    return wire.replay(stale[0], stale[1], query, limit)
                self.counters.count(school.id, transport, "servfail")
            return self._error_answer(error, query)  # type: ignore[arg-type]
        self.cache.store(query.key, answer, self.clock())
        if answer.targets:
            block = self._inspect(query, answer.targets, school, snapshot, self.wall_clock())  # arrived now
            if block is not None:
                self.counters.count_block(school.id, transport, block.category)
                return self._blocked(query, block, snapshot)
        self.counters.count(school.id, transport, "forwarded")
        return wire.replay(answer.message, answer.question_length, query, limit)

    # -----------------------------------------------------------------------------------
    # Stages' helpers.

    def _segment(self, school: policy.SchoolPolicy, now: float) -> int:
        """The school's schedule segment at wall-clock `now` (see SchoolPolicy.schedule_segment).

        Decisions and repeats hold while it stays the same: for a school without schedules, until
        the next snapshot; else until the next schedule boundary. Computed once per school and
        minute (boundaries are whole minutes), because it converts the time to the local week.
        """
        if not school.schedules:
            return 0
        minute = int(now // 60)
        known = self._segments.get(school.id)
        if known is None or known[0] != minute:
            known = self._segments[school.id] = (minute, school.schedule_segment(now))
        return known[1]

    @staticmethod
    def _decide(snapshot: Snapshot, school: policy.SchoolPolicy, name: str, wall: float) -> policy.Decision:
        """policy.decide at wall-clock `wall`: the school's rules over the name's categories in the index.

        Not memoised: repeats already keep the answers of names asked again (a memo per school and
        name cost ~220 bytes per name and saved nothing on the hot path).
        """
        return policy.decide(school, name, snapshot.index.lookup(name), wall)

    def _answered(
        self,
        data: bytes,
        transport: str,
        school: policy.SchoolPolicy,
        segment: int,
        reply: bytes,
        until: float,
        category: str | None,
        entry: cache.CacheEntry | None = None,
        result: str = "blocked",
    ) -> bytes:
        """Count an answer made at once and, for UDP, keep it for repeats (see _Repeat above).

        `segment` is the schedule segment its decision was made in; `until` is when the reply stops
        holding (a TTL in it would be above the exact one); `entry` the cache entry it came from. A full
        replay of an entry (result cached or rewritten, not truncated) is re-aged at `until`.
        """
        counted = (school.id, transport, result)
        blocked = (school.id, category) if category is not None else None
        self.counters.recount(counted, blocked)
        if transport == "udp":
            verdict = (segment, counted, blocked, entry is not None)
            verdict = self._verdicts.setdefault(verdict, verdict)
            tail = reply[2:]
            if entry is not None and category is None and not reply[2] & 0x02:  # TC clear: re-age it
                repeat = (tail, until, verdict, entry.stored_at, entry.aged_for, entry.expires_at, entry.ttl_offsets)
            else:
                repeat = (tail, until, verdict, None, 0, None, None)
            repeats = self._repeats.get(school.id)
            if repeats is None:
                repeats = self._repeats[school.id] = {}
            key = data[2:]
            if key not in repeats:
                if self._repeat_count >= REPEAT_MAX or self._repeat_bytes >= REPEAT_MAX_BYTES:
                    self._drop_repeats()
                    repeats = self._repeats[school.id] = {}
                self._repeat_count += 1
                self._repeat_bytes += len(key) + len(tail) + REPEAT_OVERHEAD_BYTES
            repeats[key] = repeat
        return reply

    def _renew(self, repeats: dict[bytes, _Repeat], key: bytes, repeat: _Repeat, now: float) -> bytes | None:
        """The tail of a repeat past `until`, its TTLs aged to `now` and ahead, while its cached answer lives; else None."""
        tail, _, verdict, stored_at, aged_for, expires_at, offsets = repeat
        if stored_at is None or now >= expires_at:
            return None
        age = int(now - stored_at)
        ahead = int(expires_at - now) >> 4  # at most 1/16 of the shortest TTL left
        if ahead > REPEAT_AGE_AHEAD_SECONDS:
            ahead = REPEAT_AGE_AHEAD_SECONDS
        age += ahead
        tail = wire.reduce_ttls(tail, offsets, age - aged_for, 2)
        until = stored_at + age + 1
        if until > expires_at:  # not min(): a call costs more than the comparison
            until = expires_at
        repeats[key] = (tail, until, verdict, stored_at, age, expires_at, offsets)
        return tail

    def _drop_repeats(self) -> None:
        self._repeats = {}
        self._repeat_count = self._repeat_bytes = 0
        self._verdicts = {}

    def _inspect(
        self, query: wire.Query, targets: tuple[str, ...], school: policy.SchoolPolicy, snapshot: Snapshot, wall: float
    ) -> policy.Block | None:
        """CNAME cloaking: an answer whose chain (or HTTPS/SVCB target) reaches a blocked name."""
        if policy.is_explicitly_allowed(school, query.name):
            return None
        for target in targets:
            decision = self._decide(snapshot, school, target, wall)
            if isinstance(decision, policy.Block):
                return decision
        return None

    def _blocked(self, query: wire.Query, block: policy.Block, snapshot: Snapshot) -> bytes:
        province = snapshot.province
        ttl = int(province.blocked_ttl_seconds)
        ede = b""
        if query.edns:
            text = f"category={block.category}; authority={block.authority}"
            if province.info_url:
                text += f"; info={province.info_url}"
            ede = wire.ede_option(_EDE_BY_AUTHORITY.get(block.authority, wire.EDE_BLOCKED), text)
        action = block.action
        if action is policy.Action.REFUSED:
            return wire.make_error(query.id, query.flags, wire.REFUSED, query, ede)
        if action is policy.Action.NXDOMAIN:
            return wire.make_local_answer(query, wire.NXDOMAIN, [], ttl, ede)
        records: list[tuple[int, int, bytes]] = []
        if action is policy.Action.NULL_IP:
            if query.qtype == wire.TYPE_A:
                records = [(wire.TYPE_A, ttl, bytes(4))]
            elif query.qtype == wire.TYPE_AAAA:
                records = [(wire.TYPE_AAAA, ttl, bytes(16))]
        elif action is policy.Action.BLOCKPAGE and province.blockpage is not None:
            page = province.blockpage
            if query.qtype == wire.TYPE_A and page.ipv4:
                records = [(wire.TYPE_A, ttl, socket.inet_pton(socket.AF_INET, page.ipv4))]
            elif query.qtype == wire.TYPE_AAAA and page.ipv6:
                records = [(wire.TYPE_AAAA, ttl, socket.inet_pton(socket.AF_INET6, page.ipv6))]
        # NODATA, and null_ip / blockpage for other query types: NOERROR, no records, SOA.
        return wire.make_local_answer(query, wire.NOERROR, records, ttl, ede)

    def _rewritten(
        self,
        query: wire.Query,
        target: str,
        school: policy.SchoolPolicy,
        transport: str,
        limit: int,
        key: bytes,
        target_answer: wire.Answer | None,
        error: Exception | None,
    ) -> bytes | None:
        """The safe-search answer, once the target's addresses came from upstream."""
        if target_answer is None:
            if isinstance(error, upstream.UpstreamError):
                self.counters.count(school.id, transport, "servfail")
            return self._error_answer(error, query)  # type: ignore[arg-type]
        if target_answer.rcode != wire.NOERROR:
            return self._error_answer(upstream.UpstreamError("safe-search target did not resolve"), query)
        answer = wire.make_rewrite(query, target, target_answer, max(target_answer.ttl, 1))
        self.cache.store(key, answer, self.clock())
        self.counters.count(school.id, transport, "rewritten")
        return wire.replay(answer.message, answer.question_length, query, limit)

    def _rewrite(
        self,
        data: bytes,
        query: wire.Query,
        target: str,
        school: policy.SchoolPolicy,
        segment: int,
        transport: str,
        limit: int,
        now: float,
    ) -> Reply:
        """Safe search: CNAME to the engine's safe host, plus that host's addresses (cached)."""
        key = query.key + b"\x00safe\x00" + target.encode()
        entry = self.cache.lookup(key, now)
        if entry is not None:
            reply = wire.replay(entry.message, entry.question_length, query, limit)
            return self._answered(data, transport, school, segment, reply, entry.exact_until, None, entry, "rewritten")
        target_query = wire.make_synthetic_query(target, query.qtype, query.do)
        return functools.partial(
            self._ask,
            target_query,
            query,
            functools.partial(self._rewritten, query, target, school, transport, limit, key),
        )

    def _error_answer(self, exc: Exception, query: wire.Query | None) -> bytes | None:
        """The one place failures become answers."""
        match exc:
            case wire.Unanswerable():
                return None  # no header worth answering, or a response: drop
            case wire.FormError():
                return wire.make_error(exc.query_id, exc.flags, wire.FORMERR)
            case wire.NotImplementedOpcode():
                return wire.make_error(exc.query_id, exc.flags, wire.NOTIMP)
            case wire.BadVersion():
                q = exc.query
                return wire.make_error(q.id, q.flags, wire.BADVERS, q)
            case upstream.UpstreamError() if query is not None:
                ede = wire.ede_option(exc.ede_code, str(exc) or "upstream unavailable") if query.edns else b""
                return wire.make_error(query.id, query.flags, wire.SERVFAIL, query, ede)
        log.exception("internal error answering a query", exc_info=exc)
        self.counters.internal_errors += 1
        if query is None:
            return None
        return wire.make_error(query.id, query.flags, wire.SERVFAIL, query)
