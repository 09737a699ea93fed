"""Pipeline.handle over the real pipeline, one row per kind of query: rcode, answer, EDE and counters.

The upstream room is replaced at its Protocol boundary (pipeline.Forwarder) by a table of names;
everything else is the real thing: the test site's policies and lists compiled into a snapshot,
the answer cache, the repeats, the counters.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
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
    }
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
    raw: bytes | None = None  # sent instead of a query for `name`
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


def _notify() -> bytes:
    query = dns.message.make_query("example.com", "SOA")
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
    query = dns.message.make_query(row.name, row.qtype, use_edns=0 if row.edns else False)
    query.id = query_id
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
    assert message.rcode() == row.rcode
    records = [f"{dns.rdatatype.to_text(rrset.rdtype)} {rdata}" for rrset in message.answer for rdata in rrset]
    assert tuple(records) == row.answer
    assert any(rrset.rdtype == dns.rdatatype.SOA for rrset in message.authority) is row.negative_soa
    ede = [(option.code, option.text) for option in message.options if option.otype == dns.edns.EDE]
    assert ede == ([row.ede] if row.ede else [])
    assert (message.edns == 0) is (row.edns and row.raw is None)  # an OPT record exactly when the client sent one
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
