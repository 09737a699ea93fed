"""The per-query path: identify, repeat, parse, decide, cache, forward, inspect, count; every failure -> one rcode here.

`Pipeline.handle(data, client, transport)` is the data plane, and all that a transport (UDP, TCP,
or a new one) needs of it. It returns one of these:

- `bytes`: the answer, to send now. Everything that needs no upstream is answered before
  `handle` returns: repeats, malformed input, unknown clients, blocked names, cache hits.
- `None`: send nothing (no header worth answering, or a response instead of a query).
- a `Pending`: a cache miss. The transport calls `pending.deliver_to(deliver)` once (or drops it
  unstarted), and `deliver(answer)` is then called exactly once, later or before `deliver_to`
  returns, with the answer bytes or None (send nothing). Nothing else is needed: every failure
  upstream becomes an answer here, and the transport need not know how the upstream is asked.
- `SHED`: the query's school is over its rate cap (`limits.queries_per_second_per_school`), and
  the query was counted as dropped: nothing is sent over DNS transports, DoH answers 429.
- a `Stream`, only for a stream transport ("tcp"), only when the server has `zones` (the RPZ
  feed): a zone transfer, many messages written in order.

`client` is the sender's IP address, as text or packed (see SchoolDirectory.lookup). `transport`
is the counting label ("udp", "tcp", "dot", "doh"); a "udp" answer is fitted to the client's UDP
size and kept for repeats, any other may be up to 65,535 bytes. A transport that identified the
school otherwise (a DoH token) passes its `school_id`: the query is then that school's, or
REFUSED if it has none, never the address's nor the default school's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from typing import Final, Protocol

from resolver.dataplane import cache, metrics, ratelimit, repeats, upstream, wire
from resolver.dataplane.streams import Stream as Stream  # handle() returns it: pipeline.Stream too
from resolver.errors import ResolverError
from resolver.filtering import domains, localzones, policy, schools

log = logging.getLogger(__name__)

Deliver = Callable[[bytes | None], None]  # where a Pending's answer goes (None: send nothing)

_EDE_BY_AUTHORITY = {"province": wire.EDE_CENSORED, "school": wire.EDE_FILTERED, "deny": wire.EDE_BLOCKED}
# RFC 8767's client response timer: a cache miss whose answer expired within the stale window gets
# that answer (TTL 30, EDE 3) when upstream has not answered by then; the question goes on and its
# answer refreshes the cache. 1.8 s is the RFC's suggestion: under the 2 s after which common stub
# resolvers ask again. The config's cache.stale_wait_seconds sets it.
STALE_WAIT_SECONDS = 1.8
# A stale answer's EDE text: the timer fired, or upstreams failed
_LATE_TEXT: Final = "upstreams did not answer in time"
_RECHECK_TEXT: Final = "upstreams failed to refresh it recently"  # ... or within the failure recheck timer
# Answers (REFUSED) a second to a client network (/24, /56) outside every school, over UDP. The
# config's limits.unknown_client_refusals_per_second sets it.
UNKNOWN_CLIENT_REFUSALS_PER_SECOND = 10
_ZONE_TRANSFERS = (wire.TYPE_AXFR, wire.TYPE_IXFR)
_CLASS_NAMES = {wire.CLASS_CH: "CH", 4: "HS", wire.CLASS_NONE: "NONE", wire.CLASS_ANY: "ANY"}
_ZONE_QTYPES = frozenset({wire.TYPE_SOA, wire.TYPE_AXFR, wire.TYPE_IXFR})  # what `Zones` may answer
# TTL of locally served answers (localhost's addresses, the empty zones' SOA): short enough that a
# school that starts forwarding such a zone is not kept from its names for long by clients' caches.
LOCAL_TTL_SECONDS: Final = 300
_LOCALHOST_ADDRESSES = {wire.TYPE_A: socket.inet_pton(socket.AF_INET, "127.0.0.1"), wire.TYPE_AAAA: bytes(15) + b"\x01"}
_LOCALHOST_PTR = wire.encode_name("localhost")


class Forwarder(Protocol):
    """What the pipeline needs from the upstream room (a fake in unit tests)."""

    def ask(self, query: wire.Query, done: upstream.Done) -> None:
        """Call done(answer, None) or done(None, error) once, now or later."""


class ForwardPools(Protocol):
    """What the pipeline needs of the forward zones' servers (upstream.ForwardPools; a fake in unit tests)."""

    def pool(self, servers: tuple[tuple[str, int], ...]) -> Forwarder:
        """The Forwarder that asks these servers (made when first asked)."""

    def retain(self, wanted: set[tuple[tuple[str, int], ...]]) -> None:
        """Close what serves no server list in `wanted`."""


class Timers(Protocol):
    """What the pipeline needs of a clock that calls back (the running event loop; a fake in unit tests)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> object: ...


class Shed:
    """The type of `SHED`: a query dropped at a bound in `handle` (a DNS transport sends nothing; DoH answers 429)."""

    __slots__ = ()


SHED = Shed()


class StreamBroken(ResolverError):
    """A Stream that cannot go on (what it is made from changed): the transport closes the connection."""


class Zones(Protocol):
    """Zones the server answers for itself (the RPZ feed): SOA and zone-transfer questions at their apexes."""

    def answer(self, query: wire.Query, data: bytes, client: str | bytes, transport: str) -> bytes | Stream | None:
        """The answer to an SOA, AXFR or IXFR query for one of its zones; None for any other name."""


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the control plane can change, installed with one assignment.

    A query reads `pipeline.snapshot` once, so it never mixes two list or policy generations.
    """

    generation: int
    index: domains.DomainIndex
    directory: schools.SchoolDirectory[policy.SchoolPolicy]
    default_school: policy.SchoolPolicy | None
    province: policy.Province
    policies: policy.Policies
    categories: tuple[str, ...]  # bit i of an index mask is categories[i]
    entry_counts: dict[str, int]
    loaded_at: float
    from_last_good: bool = False  # built from state_dir's last good copy: the files failed at start
    lists_updated_at: float = 0.0  # when the lists last changed (time.time()): how old the lists are


class Pending:
    """A cache miss: `deliver_to(deliver)` asks upstream, and `deliver` gets the answer (bytes or None) once.

    A plain object that the upstream room calls back, not a coroutine: a task, its frames and a
    future per waiting miss took 3.9 KB instead of 2.3 (docs/performance-history.md, "Cache misses without
    tasks"). It holds what the answer is made with; only `deliver_to` is for transports.
    """

    __slots__ = (
        "deliver",
        "forwarder",
        "key",
        "limit",
        "pipeline",
        "query",
        "question",
        "rewrite_key",
        "school",
        "snapshot",
        "started",
        "transport",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        query: wire.Query,
        school: policy.SchoolPolicy,
        snapshot: Snapshot,
        transport: str,
        limit: int,
        started: float,
        question: wire.Query | None = None,
        rewrite_key: bytes = b"",
        key: bytes = b"",
        forwarder: Forwarder | None = None,
    ):
        self.pipeline = pipeline
        self.query = query  # the client's
        self.key = key or query.key  # its answer's cache key (a forward zone's: the query's with the school)
        self.forwarder = forwarder or pipeline.forwarder  # a forward zone's servers, or the upstreams
        self.question = question or query  # what upstream is asked: the query, or a safe-search target
        self.rewrite_key = rewrite_key  # for a safe-search target: the cache key of the rewritten answer
        self.school = school
        self.snapshot = snapshot
        self.transport = transport
        self.limit = limit
        self.started = started  # the pipeline's clock when the query arrived
        self.deliver: Deliver | None = None

    def deliver_to(self, deliver: Deliver) -> None:
        """Ask upstream; call deliver(answer) exactly once, possibly before this returns. Call it once."""
        self.deliver = deliver
        pipe = self.pipeline
        self.forwarder.ask(self.question, self._answered)
        if self.deliver is not None and not self.rewrite_key and pipe.cache.has_stale(self.key, pipe.clock()):
            pipe._wait_for_stale(self)  # not answered yet, and an expired answer to fall back on

    def _answered(self, answer: wire.Answer | None, error: Exception | None) -> None:
        """The upstream outcome: the client is always answered (a failure here is an rcode like any other)."""
        pipe = self.pipeline
        deliver = self.deliver
        if deliver is None:  # answered stale already: the answer only refreshes the cache
            if answer is not None and answer.rcode != wire.SERVFAIL:
                pipe._store(self.key, answer, pipe.clock())
            else:  # the refresh failed: RFC 8767's failure recheck timer starts
                pipe.cache.refresh_failed(self.key, pipe.clock())
            return
        self.deliver = None
        try:
            reply = pipe._rewritten(self, answer, error) if self.rewrite_key else pipe._forwarded(self, answer, error)
        except Exception as exc:  # a bug: answer SERVFAIL rather than leave the client waiting
            reply = pipe._error_answer(exc, self.query)
        deliver(reply)

    def _stale_due(self) -> None:
        """The client response timer fired before upstream answered: the stale answer, if it is still there."""
        pipe = self.pipeline
        deliver = self.deliver
        if deliver is None:
            return
        try:
            reply = pipe._stale(self)
        except Exception as exc:  # a bug: answer SERVFAIL rather than leave the client waiting
            reply = pipe._error_answer(exc, self.query)
        if reply is not None:  # else evicted meanwhile: upstream's outcome answers
            self.deliver = None
            deliver(reply)


class Pipeline:
    """Answers one query's bytes with answer bytes, None (drop) or a Pending, for one client address."""

    def __init__(
        self,
        snapshot: Snapshot,
        answers: cache.AnswerCache,
        forwarder: Forwarder,
        counters: metrics.Counters,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        keep_repeats: bool = True,  # False only to measure what repeats are worth
        stale_wait_seconds: float = STALE_WAIT_SECONDS,
        timers: Timers | None = None,  # None: the running event loop, when a stale answer is first waited for
        unknown_client_refusals_per_second: int = UNKNOWN_CLIENT_REFUSALS_PER_SECOND,
        forward_pools: ForwardPools | None = None,  # the forward zones' servers
        school_queries_per_second: int = 0,  # each school's rate cap (limits.queries_per_second_per_school); 0: none
    ):
        self.snapshot = snapshot
        self.cache = answers
        self.forwarder = forwarder
        self.forward_pools = forward_pools or upstream.ForwardPools(policy.MAX_FORWARD_SERVERS)
        self.counters = counters
        self.clock = clock
        self.wall_clock = wall_clock
        self.repeats = repeats.Repeats(counters, answers, keep_repeats)  # UDP's
        # TCP's, DoT's and DoH's: each held to a quarter of UDP's bounds (most queries come by UDP).
        self.stream_repeats = {
            transport: repeats.Repeats(counters, answers, keep_repeats, transport, share=4)
            for transport in ("tcp", "dot", "doh")
        }
        self._segments: dict[str, tuple[float, float, int]] = {}  # school id -> (minute start, end, segment)
        self.stale_wait_seconds = stale_wait_seconds
        self._timers = timers
        # Misses with a stale answer to fall back on, in the order of their timers (all wait as long):
        # one timer for the first of them, not one per miss (a timer's creation and cancellation
        # cost the upstream room ~5% of a miss).
        self._stale_waiting: collections.deque[tuple[float, Pending]] = collections.deque()
        self._stale_timer_armed = False
        self.unknown_clients = ratelimit.PerNetworkLimit(unknown_client_refusals_per_second)
        self.school_rates = ratelimit.SchoolRates(school_queries_per_second) if school_queries_per_second else None
        self.zones: Zones | None = None  # the RPZ feed, set by the worker when configured

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (control plane); answers made with the old one are dropped."""
        self._segments = {}
        self._drop_repeats()
        if self.school_rates is not None:
            self.school_rates.forget()
        self.snapshot = snapshot
        self.forward_pools.retain(
            {zone.servers for school in snapshot.policies.schools for zone in school.forward_zones.values()}
        )

    # -----------------------------------------------------------------------------------
    # The data plane, top to bottom.

    def handle(
        self, data: bytes, client: str | bytes, transport: str, school_id: str | None = None
    ) -> bytes | Pending | Stream | Shed | None:
        """Answer bytes now, None to drop, or a Pending whose answer comes later (module docstring)."""
        snapshot = self.snapshot
        # 1. Identify the school by client address (first, because a repeat is per school), and
        #    the moment of this query for its policy: decisions and repeats made in the same
        #    schedule segment hold (see _segment). Both clocks read once, so every stage agrees; the
        #    wall clock only when first needed (a repeat for a school without schedules needs none).
        if school_id is None:
            school = snapshot.directory.lookup(client) or snapshot.default_school
        else:
            school = snapshot.policies.school(school_id)
        now = self.clock()
        wall = -1.0
        kept = None
        if school is not None:
            # The school's rate cap, before anything else is spent on the query (repeats included:
            # a flood of one repeated name takes the worker's reading as well). Off: one test.
            if self.school_rates is not None and not self.school_rates.allow(school.id, now):
                self.counters.dropped["school_rate_limit"] += 1
                return SHED
            segment = 0
            if school.schedules:  # the memo read here, not in a call: a call per query costs ~0.1 us
                wall = self.wall_clock()
                known = self._segments.get(school.id)
                if known is None or not known[0] <= wall < known[1]:
                    known = self._segment(school, wall)
                segment = known[2]
            # 2. Repeat: a query whose bytes after the ID equal an earlier one's from the same
            #    school by the same transport gets that answer with its own ID, while it holds.
            kept = self.repeats if transport == "udp" else self.stream_repeats.get(transport)  # inline: per query
            if kept is not None:
                reply = kept.answer(school.id, data, segment, now)
                if reply is not None:
                    return reply

        # 3. Parse the question.
        try:
            query = wire.parse_query(data)
        except wire.WireError as exc:
            self.counters.malformed += 1
            if school is None:
                return None  # an unknown client is sent a REFUSED to a query, and nothing else
            return self._error_answer(exc, None)
        # Zones served here (the RPZ feed) answer their SOA and transfers, to their own clients;
        # never kept as repeats.
        if self.zones is not None and query.qtype in _ZONE_QTYPES:
            zone_answer = self.zones.answer(query, data, client, transport)
            if zone_answer is not None:
                return zone_answer
        if school is None:
            return self._unknown_client(query, client, transport, now)
        limit = query.payload if transport == "udp" else 65535
        if wall < 0:
            wall = self.wall_clock()

        # 4. Decide: policy x domain index.
        decision = self._decide(snapshot, school, query.name, wall)
        if decision is not policy.ALLOW:
            if isinstance(decision, policy.Block):
                reply = self._blocked(query, decision, snapshot)
                self.counters.count_block(school.id, transport, decision.category, decision.authority)
                if kept is not None:
                    until = now + repeats.BLOCKED_REPEAT_SECONDS
                    kept.keep_blocked(school.id, data, segment, reply, decision, until, from_cache=False)
                return reply
            if isinstance(decision, policy.Rewrite) and query.qclass == wire.CLASS_IN:
                return self._rewrite(data, query, decision.target, school, segment, snapshot, transport, limit, now)

        # 5. Cache lookup (raw bytes: ID, question and TTLs patched). A name in one of the school's
        #    forward zones goes to its own servers, and its answer is cached under a key with the school.
        key = query.key
        forward = None
        if school.forward_suffixes and query.name.endswith(school.forward_suffixes):
            forward = school.forward_zone(query.name)
            if forward is not None:
                key += forward.cache_suffix
        entry = self.cache.lookup(key, now)
        if entry is not None:
            if entry.targets:  # 7 (on a hit): the cached chain is checked for this school
                block = self._inspect(query, entry.targets, school, snapshot, wall)
                if block is not None:
                    reply = self._blocked(query, block, snapshot)
                    self.counters.count_block(school.id, transport, block.category, block.authority)
                    if kept is not None:
                        kept.keep_blocked(school.id, data, segment, reply, block, entry.expires_at, from_cache=True)
                    return reply
            reply = wire.replay(entry.message, entry.question_length, query, limit)
            self.counters.count(school.id, transport, "cached")
            if kept is not None:
                kept.keep_replayed(school.id, data, segment, reply, "cached", entry, key)
            return reply

        # 6.-8. Forward upstream, then cache, inspect and count (_forwarded): the only stage that waits.
        #    Class IN only: CHAOS queries (version.bind, hostname.bind, id.server) would tell anyone
        #    the upstream's software and name; zone transfers are no resolver's business.
        if query.qclass != wire.CLASS_IN or query.qtype in _ZONE_TRANSFERS:
            return self._not_forwarded(query, school.id, transport)
        if forward is not None:
            pool = self.forward_pools.pool(forward.servers)
            miss = Pending(self, query, school, snapshot, transport, limit, now, key=key, forwarder=pool)
        else:
            # Locally served zones (RFC 6761, RFC 6303) are never asked upstream (never in the cache either).
            if query.name.endswith(localzones.SUFFIXES):
                zone = localzones.lookup(query.name)
                if zone is not None:
                    return self._local(query, zone, school.id, transport)
            miss = Pending(self, query, school, snapshot, transport, limit, now)
        # RFC 8767's failure recheck timer: a question whose refresh failed a moment ago is answered
        # stale at once, and upstream is not asked again until the timer ends; over UDP the stale
        # answer is kept as a repeat until then (the whole pipeline for each query of an outage
        # cost more than the repeats it replaced: the workers fell behind at half their capacity).
        recheck_until = self.cache.rechecking(key, now)
        if recheck_until:
            keep = (kept, data, segment, recheck_until) if kept is not None else None
            reply = self._stale(miss, _RECHECK_TEXT, keep)
            if reply is not None:
                return reply
        return miss

    def _forwarded(self, miss: Pending, answer: wire.Answer | None, error: Exception | None) -> bytes | None:
        """A miss's answer from upstream (or its failure): cached, inspected, counted."""
        query, school, transport = miss.query, miss.school, miss.transport
        now = self.clock()
        waits = self.counters.waits
        # Every upstream failed, or answered SERVFAIL: an expired answer is better (RFC 8767).
        failed = isinstance(error, upstream.UpstreamError) if answer is None else answer.rcode == wire.SERVFAIL
        if failed:
            reply = self._stale(miss)
            if reply is not None:
                self.cache.refresh_failed(miss.key, now)  # RFC 8767's failure recheck timer starts
                return reply
        if answer is None:
            if failed:
                self.counters.count(school.id, transport, "servfail")
                waits["servfail"].observe(now - miss.started)
            return self._error_answer(error, query)  # type: ignore[arg-type]
        self._store(miss.key, answer, now)
        if answer.targets:  # 7. inspect: the chain is decided now, when it arrived
            block = self._inspect(query, answer.targets, school, miss.snapshot, self.wall_clock())
            if block is not None:
                self.counters.count_block(school.id, transport, block.category, block.authority)
                waits["blocked"].observe(now - miss.started)
                return self._blocked(query, block, miss.snapshot)
        self.counters.count(school.id, transport, "forwarded")
        waits["forwarded"].observe(now - miss.started)
        return wire.replay(answer.message, answer.question_length, query, miss.limit)

    def _stale(
        self,
        miss: Pending,
        why: str = _LATE_TEXT,
        keep: tuple[repeats.Repeats, bytes, int, float] | None = None,
    ) -> bytes | None:
        """The expired answer to a miss (TTL 30, EDE 3 Stale Answer; RFC 8767), its chain inspected; None if none.

        keep: (its transport's repeats, the query's bytes, its schedule segment, until when): the
        stale answer (not a block of its chain) is kept there as a repeat until then.
        """
        query, school, transport = miss.query, miss.school, miss.transport
        entry = self.cache.lookup_stale(miss.key, self.clock())
        if entry is None:
            return None
        if entry.targets:
            block = self._inspect(query, entry.targets, school, miss.snapshot, self.wall_clock())
            if block is not None:
                self.counters.count_block(school.id, transport, block.category, block.authority)
                return self._blocked(query, block, miss.snapshot)
        self.counters.count(school.id, transport, "stale")
        self.counters.waits["stale"].observe(self.clock() - miss.started)
        ede = wire.ede_option(wire.EDE_STALE_ANSWER, why) if query.edns else b""
        reply = wire.replay(entry.message, entry.question_length, query, miss.limit, ede)
        if keep is not None:
            keep[0].keep_stale(school.id, keep[1], keep[2], reply, keep[3])
        return reply

    def _store(self, key: bytes, answer: wire.Answer, now: float) -> None:
        """Cache an upstream answer. Rare: if it refreshes one in its failure recheck (asked before
        the recheck began, it came late), the stale answers kept as repeats would outlive it: they go."""
        if self.cache.rechecking(key, now):
            self._drop_repeats()
        self.cache.store(key, answer, now)

    def _repeats_for(self, transport: str) -> repeats.Repeats | None:
        """The repeats of a transport's queries (None: a transport that keeps none)."""
        return self.repeats if transport == "udp" else self.stream_repeats.get(transport)

    def _drop_repeats(self) -> None:
        for kept in (self.repeats, *self.stream_repeats.values()):
            kept.drop_all()

    def repeats_discarded(self) -> int:
        """Answers forgotten with a previous generation at its bound, by every transport's repeats."""
        return self.repeats.discarded + sum(kept.discarded for kept in self.stream_repeats.values())

    def _wait_for_stale(self, miss: Pending) -> None:
        """Answer the miss stale when the client response timer fires, unless upstream answers first."""
        timers = self._timers
        if timers is None:
            timers = self._timers = asyncio.get_running_loop()
        due = timers.time() + self.stale_wait_seconds
        self._stale_waiting.append((due, miss))
        if not self._stale_timer_armed:
            self._stale_timer_armed = True
            timers.call_at(due, self._stale_timers_fired)

    def _stale_timers_fired(self) -> None:
        """Answer stale every miss whose timer is due (answered ones are skipped); arm the timer for the next."""
        timers = self._timers
        assert timers is not None
        now = timers.time()
        waiting = self._stale_waiting
        try:
            while waiting and waiting[0][0] <= now:
                waiting.popleft()[1]._stale_due()
        finally:  # armed again even if a transport's deliver raised
            if waiting:
                timers.call_at(waiting[0][0], self._stale_timers_fired)
            else:
                self._stale_timer_armed = False

    # -----------------------------------------------------------------------------------
    # Stages' helpers.

    def _segment(self, school: policy.SchoolPolicy, now: float) -> tuple[float, float, int]:
        """The school's schedule segment at wall-clock `now` (SchoolPolicy.schedule_segment), kept for its minute.

        Decisions and repeats hold while it stays the same: until the next schedule boundary (for a
        school without schedules it is 0 until the next snapshot, and handle() does not ask). It is
        worked out once per school and minute (boundaries are whole minutes), because that converts
        the time to the local week: handle() reads `_segments` while `now` is inside the minute.
        Returns and keeps (start of the minute, its end, segment).
        """
        start = now // 60 * 60
        known = self._segments[school.id] = (start, start + 60, school.schedule_segment(now))
        return known

    @staticmethod
    def _decide(snapshot: Snapshot, school: policy.SchoolPolicy, name: str, wall: float) -> policy.Decision:
        """policy.decide at wall-clock `wall`: the school's rules over the name's categories in the index.

        Not memoised: repeats already keep the answers of names asked again (a memo per school and
        name cost ~220 bytes per name and saved nothing on the hot path).
        """
        return policy.decide(school, name, snapshot.index.lookup(name), wall)

    def _inspect(
        self, query: wire.Query, targets: tuple[str, ...], school: policy.SchoolPolicy, snapshot: Snapshot, wall: float
    ) -> policy.Block | None:
        """CNAME cloaking: an answer whose chain (or HTTPS/SVCB target) reaches a blocked name.

        For a name the school allows, only the mandatory categories are checked: they bind on
        every name of the chain, allow entries or not.
        """
        if policy.is_explicitly_allowed(school, query.name):
            for target in targets:
                block = policy.mandatory_block(school, snapshot.index.lookup(target))
                if block is not None:
                    return block
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
        if query.qclass != wire.CLASS_IN:
            pass  # addresses are IN data: NODATA in the query's class
        elif action is policy.Action.NULL_IP:
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

    def _rewrite(
        self,
        data: bytes,
        query: wire.Query,
        target: str,
        school: policy.SchoolPolicy,
        segment: int,
        snapshot: Snapshot,
        transport: str,
        limit: int,
        now: float,
    ) -> bytes | Pending:
        """Safe search: CNAME to the engine's safe host, plus that host's addresses (cached)."""
        key = query.key + b"\x00safe\x00" + target.encode()
        entry = self.cache.lookup(key, now)
        if entry is not None:
            reply = wire.replay(entry.message, entry.question_length, query, limit)
            self.counters.count(school.id, transport, "rewritten")
            kept = self._repeats_for(transport)
            if kept is not None:
                kept.keep_replayed(school.id, data, segment, reply, "rewritten", entry, key)
            return reply
        target_query = wire.make_synthetic_query(target, query.qtype, query.do)
        return Pending(self, query, school, snapshot, transport, limit, now, target_query, key)

    def _rewritten(self, miss: Pending, target_answer: wire.Answer | None, error: Exception | None) -> bytes | None:
        """The safe-search answer, once the target's addresses came from upstream."""
        query, school, transport = miss.query, miss.school, miss.transport
        now = self.clock()
        if target_answer is None:
            if isinstance(error, upstream.UpstreamError):
                self.counters.count(school.id, transport, "servfail")
                self.counters.waits["servfail"].observe(now - miss.started)
            return self._error_answer(error, query)  # type: ignore[arg-type]
        if target_answer.rcode != wire.NOERROR:
            return self._error_answer(upstream.UpstreamError("safe-search target did not resolve"), query)
        answer = wire.make_rewrite(query, miss.question.name, target_answer, max(target_answer.ttl, 1))
        self.cache.store(miss.rewrite_key, answer, now)
        self.counters.count(school.id, transport, "rewritten")
        self.counters.waits["rewritten"].observe(now - miss.started)
        return wire.replay(answer.message, answer.question_length, query, miss.limit)

    def _local(self, query: wire.Query, zone: localzones.LocalZone, school_id: str, transport: str) -> bytes:
        """The answer of a locally served zone: localhost's addresses, the loopback PTR, the apex SOA, or none."""
        name, qtype = query.name, query.qtype
        rcode = wire.NOERROR
        records: list[tuple[int, bytes]] = []
        if zone.kind is localzones.Kind.LOCALHOST and qtype in _LOCALHOST_ADDRESSES:
            records = [(qtype, _LOCALHOST_ADDRESSES[qtype])]
        elif name in zone.loopback_names:
            if qtype == wire.TYPE_PTR:
                records = [(wire.TYPE_PTR, _LOCALHOST_PTR)]
        elif name == zone.zone:
            if qtype == wire.TYPE_SOA:
                records = [(wire.TYPE_SOA, wire.zone_soa_rdata(zone.zone, LOCAL_TTL_SECONDS))]
        elif zone.kind is not localzones.Kind.LOCALHOST:  # every name under localhost is the loopback (RFC 6761 6.3)
            rcode = wire.NXDOMAIN
        self.counters.count(school_id, transport, "local")
        return wire.make_zone_answer(query, rcode, records, zone.zone, LOCAL_TTL_SECONDS)

    def _unknown_client(self, query: wire.Query, client: str | bytes, transport: str, now: float) -> bytes | None:
        """REFUSED with EDE 18 for a client outside every school network, within its network's budget over UDP.

        Its address may be forged (UDP): the budget keeps a flood forged from a victim's addresses
        from being reflected at the victim. Over TCP the handshake proved the address.
        """
        if transport == "udp" and not self.unknown_clients.allow(client, now):
            self.counters.dropped["unknown_client_rate_limit"] += 1
            return None
        self.counters.count("unknown", transport, "refused")
        ede = wire.ede_option(wire.EDE_PROHIBITED, "client not in any school network") if query.edns else b""
        return wire.make_error(query.id, query.flags, wire.REFUSED, query, ede)

    def _not_forwarded(self, query: wire.Query, school_id: str, transport: str) -> bytes:
        """REFUSED, with EDE 21 Not Supported, for a query schooldns does not forward."""
        self.counters.count(school_id, transport, "refused")
        ede = b""
        if query.edns:
            qclass = query.qclass
            what = "zone transfers are" if qclass == wire.CLASS_IN else f"class {_CLASS_NAMES.get(qclass, qclass)} is"
            ede = wire.ede_option(wire.EDE_NOT_SUPPORTED, f"{what} not served; schooldns forwards class IN queries")
        return wire.make_error(query.id, query.flags, wire.REFUSED, query, ede)

    def _error_answer(self, exc: Exception, query: wire.Query | None) -> bytes | None:
        """The one place failures become answers."""
        match exc:
            case wire.Unanswerable():
                return None  # no header worth answering, or a response: drop
            case wire.FormError():
                return wire.make_error(exc.query_id, exc.flags, wire.FORMERR, exc.echo)
            case wire.NotImplementedOpcode():
                return wire.make_error(exc.query_id, exc.flags, wire.NOTIMP, exc.echo)
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
