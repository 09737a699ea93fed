"""Pipeline.handle over the real pipeline, one row per kind of query: rcode, answer, EDE and counters.

The upstream room is replaced at its Protocol boundary (pipeline.Forwarder) by a table of names;
everything else is the real thing: the test site's policies and lists compiled into a snapshot,
the answer cache, the repeats, the counters.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import ClassVar

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from resolver.control import config, snapshots
from resolver.dataplane import cache, metrics, pipeline, upstream, wire
from tests.support import harness

SCHOOL_A = (
    "127.0.0.1"  # primary: adult, games and bypass blocked; allows allowed.example.com, denies denied.example.org
)
SCHOOL_B = "127.0.0.2"  # upper_secondary: adult and bypass blocked; safe search on
NO_SCHOOL = "127.0.0.3"
INFO = "info=http://blocked.example.vn/"


class TableForwarder:
    """The pipeline's Forwarder protocol, answering from a table of names at once.

    A name not in the table has one A record, 192.0.2.10 with TTL 300.
    """

    FAILING = "fails.example.com"  # every upstream timed out
    CHAINS: ClassVar[dict[str, str]] = {
        "cloaked.example.net": "adult.example.com",
        "cdn.example.net": "edge.example.org",
        "gamecdn.example.net": "games.example.com",
        "cdn.allowed.example.com": "adult.example.com",
        "bad.allowed.example.com": "malware.example.com",
    }
    HTTPS_TARGETS: ClassVar[dict[str, str]] = {"svc.allowed.example.com": "malware.example.com"}
    NODATA = "v4only.example.com"  # no AAAA

    def __init__(self) -> None:
        self.asked: list[str] = []

    def ask(self, query: wire.Query, done: upstream.Done) -> None:
        self.asked.append(query.name)
        if query.name == self.FAILING:
            done(None, upstream.AllUpstreamsFailed("every upstream failed: timeout", wire.EDE_NO_REACHABLE_AUTHORITY))
            return
        response = dns.message.make_response(dns.message.make_query(query.name, query.qtype))
        name = query.name + "."
        if query.name == self.NODATA and query.qtype == wire.TYPE_AAAA:
            soa = "ns1.example.com. hostmaster.example.com. 1 7200 3600 1209600 60"
            response.authority.append(dns.rrset.from_text("example.com.", 60, "IN", "SOA", soa))
        elif query.qtype == wire.TYPE_HTTPS:
            target = self.HTTPS_TARGETS.get(query.name, ".")
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "HTTPS", f"1 {target}."))
        else:
            target = self.CHAINS.get(query.name)
            if target is not None:
                response.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", target + "."))
                name = target + "."
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.10"))
        done(wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600), None)


@dataclasses.dataclass(frozen=True)
class Row:
    """One query (asked `asks` times, each with a new ID) and what its last answer and the counters must be."""

    id: str
    name: str
    client: str = SCHOOL_A
    qtype: str = "A"
    transport: str = "udp"
    edns: bool = True
    qclass: str = "IN"
    cd: bool = False  # the query's CD bit (the answer's must be the same)
    raw: bytes | None = None  # sent instead of a query for `name`
    raw_edns: bool = False  # the answer to `raw` carries an OPT record
    asks: int = 1
    rcode: int = dns.rcode.NOERROR
    answer: tuple[str, ...] = ()  # the answer section, one "TYPE rdata" per record
    negative_soa: bool = False  # an SOA in the authority section
    ede: tuple[int, str] | None = None  # info code and text
    counted: tuple[tuple[tuple[str, str, str], int], ...] = ()  # Counters.queries after every ask
    blocked: tuple[tuple[tuple[str, str, str], int], ...] = ()  # Counters.blocked after every ask
    malformed: int = 0
    asked: tuple[str, ...] = ()  # names the forwarder was asked, in order
    cache_hits: int = 0


def _q(school: str, result: str, count: int = 1, transport: str = "udp") -> tuple[tuple[str, str, str], int]:
    return ((school, transport, result), count)


def _formerr_query() -> bytes:
    return struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0) + b"\x07example"  # the name runs past the end


def _notify(edns: bool = False) -> bytes:
    query = dns.message.make_query("example.com", "SOA", use_edns=0 if edns else False)
    query.set_opcode(dns.opcode.NOTIFY)
    return query.to_wire()


def _response() -> bytes:
    return dns.message.make_response(dns.message.make_query("example.com", "A")).to_wire()


ROWS = [
    Row(
        "allowed, forwarded",
        "www.example.com",
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded"),),
        asked=("www.example.com",),
    ),
    Row(
        "allowed, the client's letter case kept",
        "WWW.Example.COM",
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded"),),
        asked=("www.example.com",),
    ),
    Row(
        "blocked by the school's profile",
        "adult.example.com",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "adult", "school"), 1),),
    ),
    Row(
        "blocked below a listed name",
        "www.games.example.com",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=games; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "games", "school"), 1),),
    ),
    Row(
        "blocked by a mandatory category",
        "malware.example.com",
        client=SCHOOL_B,
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_CENSORED, f"category=malware; authority=province; {INFO}"),
        counted=(_q("school-b", "blocked"),),
        blocked=((("school-b", "malware", "province"), 1),),
    ),
    Row(
        "blocked over TCP, without EDNS: no EDE",
        "adult.example.com",
        transport="tcp",
        edns=False,
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        counted=(_q("school-a", "blocked", transport="tcp"),),
        blocked=((("school-a", "adult", "school"), 1),),
    ),
    Row(
        "a category another school's profile allows",
        "games.example.com",
        client=SCHOOL_B,
        answer=("A 192.0.2.10",),
        counted=(_q("school-b", "forwarded"),),
        asked=("games.example.com",),
    ),
    Row(
        "the school's allow list over a listed category",
        "allowed.example.com",
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded"),),
        asked=("allowed.example.com",),
    ),
    Row(
        "the school's deny list",
        "www.denied.example.org",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_BLOCKED, f"category=deny; authority=deny; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "deny", "deny"), 1),),
    ),
    Row(
        "bypass prevention: the DoH canary",
        "use-application-dns.net",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_CENSORED, f"category=bypass; authority=province; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "bypass", "province"), 1),),
    ),
    Row(
        "safe search rewritten to the engine's safe host",
        "www.google.com",
        client=SCHOOL_B,
        answer=("CNAME forcesafesearch.google.com.", "A 192.0.2.10"),
        counted=(_q("school-b", "rewritten"),),
        asked=("forcesafesearch.google.com",),
    ),
    Row(
        "safe search rewritten, then from the cache",
        "www.google.com",
        client=SCHOOL_B,
        asks=2,
        answer=("CNAME forcesafesearch.google.com.", "A 192.0.2.10"),
        counted=(_q("school-b", "rewritten", 2),),
        asked=("forcesafesearch.google.com",),
        cache_hits=1,
    ),
    Row(
        "a client in no school's network",
        "www.example.com",
        client=NO_SCHOOL,
        rcode=dns.rcode.REFUSED,
        ede=(wire.EDE_PROHIBITED, "client not in any school network"),
        counted=(_q("unknown", "refused"),),
    ),
    Row("a malformed question", "", raw=_formerr_query(), rcode=dns.rcode.FORMERR, malformed=1),
    Row("another opcode than QUERY", "", raw=_notify(), rcode=dns.rcode.NOTIMP, malformed=1),
    Row(
        "another opcode than QUERY, with EDNS: an OPT in the answer",
        "",
        raw=_notify(edns=True),
        raw_edns=True,
        rcode=dns.rcode.NOTIMP,
        malformed=1,
    ),
    *(
        Row(
            f"CHAOS {name}: refused here, never forwarded",
            name,
            qtype="TXT",
            qclass="CH",
            rcode=dns.rcode.REFUSED,
            ede=(wire.EDE_NOT_SUPPORTED, "class CH is not served; schooldns forwards class IN queries"),
            counted=(_q("school-a", "refused"),),
        )
        for name in ("version.bind", "hostname.bind", "id.server")
    ),
    Row(
        "a zone transfer: refused here, never forwarded",
        "example.com",
        qtype="AXFR",
        transport="tcp",
        rcode=dns.rcode.REFUSED,
        ede=(wire.EDE_NOT_SUPPORTED, "zone transfers are not served; schooldns forwards class IN queries"),
        counted=(_q("school-a", "refused", transport="tcp"),),
    ),
    Row(
        "a blocked name in class CH: blocked, in class CH",
        "adult.example.com",
        qtype="TXT",
        qclass="CH",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "adult", "school"), 1),),
    ),
    Row(
        "safe search in class CH: not rewritten, refused",
        "www.google.com",
        client=SCHOOL_B,
        qclass="CH",
        rcode=dns.rcode.REFUSED,
        ede=(wire.EDE_NOT_SUPPORTED, "class CH is not served; schooldns forwards class IN queries"),
        counted=(_q("school-b", "refused"),),
    ),
    Row(
        "checking disabled (CD): the client's bit in the answer",
        "www.example.com",
        cd=True,
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded"),),
        asked=("www.example.com",),
    ),
    Row(
        "checking disabled (CD) on a blocked name",
        "adult.example.com",
        cd=True,
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "adult", "school"), 1),),
    ),
    Row(
        "every upstream failing",
        TableForwarder.FAILING,
        rcode=dns.rcode.SERVFAIL,
        ede=(wire.EDE_NO_REACHABLE_AUTHORITY, "every upstream failed: timeout"),
        counted=(_q("school-a", "servfail"),),
        asked=(TableForwarder.FAILING,),
    ),
    Row(
        "a cache hit",
        "www.example.com",
        transport="tcp",
        asks=2,
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded", transport="tcp"), _q("school-a", "cached", transport="tcp")),
        asked=("www.example.com",),
        cache_hits=1,
    ),
    Row(
        "repeats of a cache hit, counted as cache hits",
        "www.example.com",
        asks=4,
        answer=("A 192.0.2.10",),
        counted=(_q("school-a", "forwarded"), _q("school-a", "cached", 3)),
        asked=("www.example.com",),
        cache_hits=3,
    ),
    Row(
        "repeats of a blocked answer",
        "adult.example.com",
        asks=3,
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked", 3),),
        blocked=((("school-a", "adult", "school"), 3),),
    ),
    Row(
        "a CNAME to a blocked name",
        "cloaked.example.net",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "adult", "school"), 1),),
        asked=("cloaked.example.net",),
    ),
    Row(
        "a CNAME to a blocked name, from the cache",
        "cloaked.example.net",
        asks=3,
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=adult; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked", 3),),
        blocked=((("school-a", "adult", "school"), 3),),
        asked=("cloaked.example.net",),
        cache_hits=2,
    ),
    Row(
        "a CNAME to an allowed name",
        "cdn.example.net",
        answer=("CNAME edge.example.org.", "A 192.0.2.10"),
        counted=(_q("school-a", "forwarded"),),
        asked=("cdn.example.net",),
    ),
    Row(
        "a CNAME to a name this school's profile allows",
        "gamecdn.example.net",
        client=SCHOOL_B,
        answer=("CNAME games.example.com.", "A 192.0.2.10"),
        counted=(_q("school-b", "forwarded"),),
        asked=("gamecdn.example.net",),
    ),
    Row(
        "a CNAME to a name another school's profile blocks",
        "gamecdn.example.net",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_FILTERED, f"category=games; authority=school; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "games", "school"), 1),),
        asked=("gamecdn.example.net",),
    ),
    Row(
        "a CNAME to a blocked name from a name the school allows: not inspected",
        "cdn.allowed.example.com",
        answer=("CNAME adult.example.com.", "A 192.0.2.10"),
        counted=(_q("school-a", "forwarded"),),
        asked=("cdn.allowed.example.com",),
    ),
    Row(
        "a CNAME into a mandatory category from a name the school allows: blocked",
        "bad.allowed.example.com",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_CENSORED, f"category=malware; authority=province; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "malware", "province"), 1),),
        asked=("bad.allowed.example.com",),
    ),
    Row(
        "a CNAME into a mandatory category from a name the school allows, from the cache",
        "bad.allowed.example.com",
        asks=2,
        transport="tcp",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_CENSORED, f"category=malware; authority=province; {INFO}"),
        counted=(_q("school-a", "blocked", 2, transport="tcp"),),
        blocked=((("school-a", "malware", "province"), 2),),
        asked=("bad.allowed.example.com",),
        cache_hits=1,
    ),
    Row(
        "an HTTPS target in a mandatory category from a name the school allows: blocked",
        "svc.allowed.example.com",
        qtype="HTTPS",
        rcode=dns.rcode.NXDOMAIN,
        negative_soa=True,
        ede=(wire.EDE_CENSORED, f"category=malware; authority=province; {INFO}"),
        counted=(_q("school-a", "blocked"),),
        blocked=((("school-a", "malware", "province"), 1),),
        asked=("svc.allowed.example.com",),
    ),
    Row(
        "NODATA from upstream",
        TableForwarder.NODATA,
        qtype="AAAA",
        negative_soa=True,
        counted=(_q("school-a", "forwarded"),),
        asked=(TableForwarder.NODATA,),
    ),
]


def _query(row: Row, query_id: int) -> bytes:
    if row.raw is not None:
        return row.raw
    query = dns.message.make_query(row.name, row.qtype, row.qclass, use_edns=0 if row.edns else False)
    query.id = query_id
    if row.cd:
        query.flags |= dns.flags.CD
    return query.to_wire()


def _answer(pipe: pipeline.Pipeline, data: bytes, client: str, transport: str) -> bytes | None:
    reply = pipe.handle(data, client, transport)
    if isinstance(reply, pipeline.Pending):
        delivered: list[bytes | None] = []
        reply.deliver_to(delivered.append)  # the table forwarder answers before deliver_to returns
        [reply] = delivered
    return reply


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_pipeline_answers(tmp_path, row: Row):
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"]))
    forwarder, counters, answers = TableForwarder(), metrics.Counters(), cache.AnswerCache(100)
    pipe = pipeline.Pipeline(snapshots.build_snapshot(cfg, 1), answers, forwarder, counters)

    for query_id in range(1, row.asks + 1):
        reply = _answer(pipe, _query(row, query_id), row.client, row.transport)
    assert reply is not None
    message = dns.message.from_wire(reply)
    if row.raw is None:
        assert message.id == row.asks and str(message.question[0].name) == row.name + "."
        assert message.flags & dns.flags.QR and message.flags & dns.flags.RD
        assert bool(message.flags & dns.flags.CD) is row.cd
    # Recursion available, not authoritative, for every QUERY; a NOTIMP says nothing of recursion.
    assert bool(message.flags & dns.flags.RA) is (message.opcode() == dns.opcode.QUERY)
    assert not message.flags & dns.flags.AA
    assert message.rcode() == row.rcode
    records = [f"{dns.rdatatype.to_text(rrset.rdtype)} {rdata}" for rrset in message.answer for rdata in rrset]
    assert tuple(records) == row.answer
    assert any(rrset.rdtype == dns.rdatatype.SOA for rrset in message.authority) is row.negative_soa
    ede = [(option.code, option.text) for option in message.options if option.otype == dns.edns.EDE]
    assert ede == ([row.ede] if row.ede else [])
    edns = row.raw_edns if row.raw is not None else row.edns
    assert (message.edns == 0) is edns  # an OPT record exactly when the client sent one (or a raw query had one)
    if row.raw is None:
        [question] = message.question
        assert dns.rdataclass.to_text(question.rdclass) == row.qclass
        assert all(rrset.rdclass == question.rdclass for rrset in (*message.answer, *message.authority))
    assert dict(counters.queries) == dict(row.counted)
    assert dict(counters.blocked) == dict(row.blocked)
    assert counters.malformed == row.malformed and counters.internal_errors == 0
    assert tuple(forwarder.asked) == row.asked
    assert answers.hits == row.cache_hits


def test_a_response_instead_of_a_query_is_dropped(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"]))
    counters = metrics.Counters()
    pipe = pipeline.Pipeline(snapshots.build_snapshot(cfg, 1), cache.AnswerCache(10), TableForwarder(), counters)
    assert pipe.handle(_response(), SCHOOL_A, "udp") is None
    assert pipe.handle(b"\x01\x02\x03", SCHOOL_A, "udp") is None  # shorter than a header
    assert counters.malformed == 2 and not counters.queries


def test_queries_that_waited_for_an_upstream_are_timed_by_result_and_the_others_are_not(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"]))
    counters, now = metrics.Counters(), [0.0]
    held: list[tuple[wire.Query, upstream.Done]] = []

    class Held:
        """The Forwarder protocol: each question waits here until the test answers it from the table."""

        def ask(self, query: wire.Query, done: upstream.Done) -> None:
            held.append((query, done))

    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1), cache.AnswerCache(100), Held(), counters, clock=lambda: now[0]
    )
    waits = {"www.example.com": 0.003, "cloaked.example.net": 0.2, TableForwarder.FAILING: 2.0}
    pending = [pipe.handle(_query(Row("", name), 1), SCHOOL_A, "udp") for name in waits]
    answered: list[bytes | None] = []
    for miss in pending:
        assert isinstance(miss, pipeline.Pending)
        miss.deliver_to(answered.append)
    for (query, done), seconds in zip(held, waits.values(), strict=True):
        now[0] = seconds
        TableForwarder().ask(query, done)
    assert len(answered) == 3
    # Answered at once, not timed: a cache hit and a name on a list.
    assert isinstance(pipe.handle(_query(Row("", "www.example.com"), 2), SCHOOL_A, "udp"), bytes)
    assert isinstance(pipe.handle(_query(Row("", "adult.example.com"), 3), SCHOOL_A, "udp"), bytes)

    def timed(*seconds: float) -> metrics.Histogram:
        out = metrics.Histogram()
        for value in seconds:
            out.observe(value)
        return out

    assert counters.waits == {
        "forwarded": timed(0.003),
        "blocked": timed(0.2),  # its CNAME reached a listed name
        "rewritten": timed(),
        "stale": timed(),
        "servfail": timed(2.0),
    }


class HeldForwarder:
    """The Forwarder protocol: answers at once while `holding` is off, else keeps each question until answer_held()."""

    def __init__(self) -> None:
        self.holding = False
        self.address = "192.0.2.10"
        self.held: list[tuple[wire.Query, upstream.Done]] = []

    def ask(self, query: wire.Query, done: upstream.Done) -> None:
        if self.holding:
            self.held.append((query, done))
        else:
            done(self.answer(query), None)

    def answer(self, query: wire.Query) -> wire.Answer:
        response = dns.message.make_response(dns.message.make_query(query.name, query.qtype))
        response.answer.append(dns.rrset.from_text(query.name + ".", 300, "IN", "A", self.address))
        return wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600)

    def answer_held(self, fail: bool = False) -> None:
        for query, done in self.held:
            if fail:
                done(
                    None, upstream.AllUpstreamsFailed("every upstream failed: timeout", wire.EDE_NO_REACHABLE_AUTHORITY)
                )
            else:
                done(self.answer(query), None)
        self.held = []


class ManualTimers:
    """The pipeline's Timers protocol on a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[float, Callable[[], object]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> object:
        self.calls.append((when, callback))
        return None

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [call for call in self.calls if call[0] <= self.now]:
            for call in due:
                self.calls.remove(call)
                call[1]()


@pytest.fixture
def stale_site(tmp_path):
    """A pipeline whose clocks and upstream move by hand, with www.example.com cached at 0 s (TTL 300) and expired."""
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"]))
    forwarder, timers, counters = HeldForwarder(), ManualTimers(), metrics.Counters()
    now = [0.0]
    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1),
        cache.AnswerCache(100, stale_seconds=3600),
        forwarder,
        counters,
        clock=lambda: now[0],
        timers=timers,
    )
    assert _answer(pipe, _query(Row("", "www.example.com"), 1), SCHOOL_A, "tcp") is not None
    now[0] = 400.0  # expired 100 s ago; inside the stale window
    forwarder.holding = True
    return pipe, forwarder, timers, counters, now


def _start(pipe: pipeline.Pipeline, name: str = "www.example.com", edns: bool = True) -> list[bytes | None]:
    """A cache miss from school A over TCP, started; the list its answer is delivered into."""
    pending = pipe.handle(_query(Row("", name, edns=edns), 7), SCHOOL_A, "tcp")
    assert isinstance(pending, pipeline.Pending)
    delivered: list[bytes | None] = []
    pending.deliver_to(delivered.append)
    return delivered


def test_an_expired_answer_is_served_stale_when_the_client_response_timer_fires(stale_site):
    pipe, forwarder, timers, counters, _ = stale_site
    delivered = _start(pipe)
    timers.advance(1.7)
    assert delivered == []  # upstream may still answer
    timers.advance(0.1)  # 1.8 s: RFC 8767's client response timer
    [reply] = delivered
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.rcode() == dns.rcode.NOERROR and message.answer[0].ttl == 30
    assert [(o.code, o.text) for o in message.options if o.otype == dns.edns.EDE] == [
        (wire.EDE_STALE_ANSWER, "upstreams did not answer in time")
    ]
    assert counters.queries[("school-a", "tcp", "stale")] == 1
    # The question went on: its answer, when it comes, refreshes the cache and is not sent again.
    forwarder.address = "192.0.2.99"
    forwarder.answer_held()
    assert len(delivered) == 1
    fresh = _answer(pipe, _query(Row("", "www.example.com"), 8), SCHOOL_A, "tcp")
    assert fresh is not None and dns.message.from_wire(fresh).answer[0][0].to_text() == "192.0.2.99"


def test_an_upstream_answer_before_the_timer_is_the_answer_and_the_timer_does_nothing(stale_site):
    pipe, forwarder, timers, counters, _ = stale_site
    delivered = _start(pipe)
    timers.advance(1.0)
    second = _start(pipe, edns=False)  # another miss, 1 s later: its timer fires at 2.8 s
    forwarder.answer_held()
    assert len(delivered) == 1 and len(second) == 1
    timers.advance(5.0)
    assert len(delivered) == 1 and len(second) == 1 and not timers.calls
    assert counters.queries[("school-a", "tcp", "stale")] == 0


def test_misses_wait_with_one_timer_armed_at_a_time(stale_site):
    pipe, _, timers, counters, _ = stale_site
    first = _start(pipe)
    timers.advance(0.5)
    second = _start(pipe, edns=False)
    assert len(timers.calls) == 1
    timers.advance(1.3)
    assert len(first) == 1 and second == [] and len(timers.calls) == 1  # armed again for the second
    timers.advance(0.5)
    [reply] = second
    assert reply is not None and dns.message.from_wire(reply).edns == -1  # no EDNS: no EDE either
    assert counters.queries[("school-a", "tcp", "stale")] == 2 and not timers.calls


def test_a_failed_question_is_answered_stale_with_ede_3_before_the_timer(stale_site):
    pipe, forwarder, timers, _, _ = stale_site
    delivered = _start(pipe)
    forwarder.answer_held(fail=True)
    [reply] = delivered
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.answer[0].ttl == 30
    assert [o.code for o in message.options if o.otype == dns.edns.EDE] == [wire.EDE_STALE_ANSWER]
    timers.advance(2.0)
    assert len(delivered) == 1


def test_a_miss_without_a_stale_answer_waits_for_upstream(stale_site):
    pipe, forwarder, timers, _, now = stale_site
    now[0] = 400.0 + 3600  # past the stale window
    delivered = _start(pipe)
    assert not timers.calls
    forwarder.answer_held(fail=True)
    [reply] = delivered
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL


def test_an_unknown_client_is_sent_a_refusal_within_its_networks_budget_and_nothing_else(tmp_path):
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"]))
    counters = metrics.Counters()
    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1),
        cache.AnswerCache(10),
        TableForwarder(),
        counters,
        clock=lambda: 50.0,
        unknown_client_refusals_per_second=2,
    )
    query = _query(Row("", "www.example.com"), 1)
    replies = [pipe.handle(query, client, "udp") for client in (NO_SCHOOL, "127.0.0.4", "127.0.1.3")]
    assert [dns.message.from_wire(r).rcode() for r in replies if isinstance(r, bytes)] == [dns.rcode.REFUSED] * 3
    assert pipe.handle(query, NO_SCHOOL, "udp") is None  # a third answer to 127.0.0.0/24 this second
    assert isinstance(pipe.handle(query, NO_SCHOOL, "tcp"), bytes)  # TCP: the address is not forged
    # A malformed query, another opcode, another EDNS version: nothing (nothing but REFUSED is ever sent).
    for data in (_formerr_query(), _notify(edns=True), dns.message.make_query("x.example", "A", use_edns=1).to_wire()):
        assert pipe.handle(data, "127.0.0.9", "udp") is None
        assert pipe.handle(data, "127.0.0.9", "tcp") is None
    assert counters.dropped == {"unknown_client_rate_limit": 1}
    assert counters.queries == {("unknown", "udp", "refused"): 3, ("unknown", "tcp", "refused"): 1}
    assert counters.malformed == 6


def test_a_stale_answer_at_once_is_kept_as_a_repeat_until_the_failure_recheck_ends(stale_site):
    pipe, forwarder, _, counters, now = stale_site
    _start(pipe)
    forwarder.answer_held(fail=True)  # the refresh failed at 400 s: stale at once until 430 s
    first = pipe.handle(_query(Row("", "www.example.com"), 11), SCHOOL_A, "udp")
    now[0] += 29.0
    again = pipe.handle(_query(Row("", "www.example.com"), 12), SCHOOL_A, "udp")
    assert isinstance(first, bytes) and isinstance(again, bytes) and first[2:] == again[2:]
    assert len(pipe.repeats) == 1 and counters.queries[("school-a", "udp", "stale")] == 2
    assert pipe.cache.stale_served == 3  # the failed question's, the one at once, its repeat
    now[0] += 1.0
    assert isinstance(pipe.handle(_query(Row("", "www.example.com"), 13), SCHOOL_A, "udp"), pipeline.Pending)


def test_a_refresh_that_comes_in_the_failure_recheck_ends_its_repeats(stale_site):
    pipe, forwarder, timers, _, _ = stale_site
    _start(pipe)
    _start(pipe, edns=False)
    timers.advance(1.8)  # both answered stale; their questions go on
    (_, late), (_, failing) = forwarder.held
    failing(None, upstream.AllUpstreamsFailed("every upstream failed: timeout", wire.EDE_NO_REACHABLE_AUTHORITY))
    stale = pipe.handle(_query(Row("", "www.example.com"), 11), SCHOOL_A, "udp")
    assert isinstance(stale, bytes) and len(pipe.repeats) == 1
    forwarder.address = "192.0.2.99"
    late(forwarder.answer(forwarder.held[0][0]), None)  # the other question's answer, in the recheck
    fresh = pipe.handle(_query(Row("", "www.example.com"), 11), SCHOOL_A, "udp")
    assert isinstance(fresh, bytes) and dns.message.from_wire(fresh).answer[0][0].to_text() == "192.0.2.99"
