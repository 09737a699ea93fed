"""Pipeline repeats: the same query bytes from the same school reuse an answer only while it is exact."""

from __future__ import annotations

import asyncio
import datetime
import zoneinfo

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from resolver.control import config, snapshots
from resolver.dataplane import cache, metrics, pipeline, repeats, wire
from tests.support import harness

SCHOOL_A = "127.0.0.1"  # primary: games blocked
SCHOOL_B = "127.0.0.2"  # upper_secondary: games allowed


class Clocks:
    """Monotonic and wall clocks the test moves by hand."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = 1_800_000_000.0  # a whole minute (divisible by 60)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


class CountingForwarder:
    """The pipeline's Forwarder protocol: every name has one A record, with TTL 300 unless `ttls` says."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.ttls: dict[str, int] = {}
        self.addresses: dict[str, int] = {}  # how many A records a name has (1 unless said)

    def ask(self, query: wire.Query, done) -> None:
        self.asked.append(query.name)
        request = dns.message.make_query(query.name + ".", query.qtype)
        response = dns.message.make_response(request)
        ttl = self.ttls.get(query.name, 300)
        count = self.addresses.get(query.name, 1)
        addresses = ["192.0.2.10"] if count == 1 else [f"192.0.{n // 250}.{n % 250 + 1}" for n in range(count)]
        response.answer.append(dns.rrset.from_text_list(query.name + ".", ttl, "IN", "A", addresses))
        done(wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600), None)


def make_site(tmp_path, files=None):
    cfg = config.load_config(harness.write_site(tmp_path, ["127.0.0.1:53"], files=files))
    clocks = Clocks()
    forwarder = CountingForwarder()
    counters = metrics.Counters()
    answers = cache.AnswerCache(100)
    pipe = pipeline.Pipeline(
        snapshots.build_snapshot(cfg, 1),
        answers,
        forwarder,
        counters,
        clock=lambda: clocks.monotonic,
        wall_clock=lambda: clocks.wall,
    )
    return pipe, clocks, forwarder, counters, answers, cfg


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


def query(name: str, query_id: int) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0)
    message.id = query_id
    return message.to_wire()


async def answer(pipe: pipeline.Pipeline, data: bytes, client: str = SCHOOL_A, transport: str = "udp"):
    reply = pipe.handle(data, client, transport)
    if isinstance(reply, pipeline.Pending):  # a cache miss: started with where its answer goes
        delivered = asyncio.get_running_loop().create_future()
        reply.deliver_to(delivered.set_result)
        reply = await delivered
    return dns.message.from_wire(reply)


async def test_repeat_gets_its_own_id_and_the_same_answer(site):
    pipe, _clocks, forwarder, counters, answers, _ = site
    first = await answer(pipe, query("www.example.com", 1))
    second = await answer(pipe, query("www.example.com", 2))  # cache hit, now remembered
    third = await answer(pipe, query("www.example.com", 3))  # the repeat
    assert (first.id, second.id, third.id) == (1, 2, 3)
    assert third.answer == first.answer and third.answer[0].ttl == 300
    assert forwarder.asked == ["www.example.com"]
    assert counters.queries[("school-a", "udp", "forwarded")] == 1
    assert counters.queries[("school-a", "udp", "cached")] == 2
    assert answers.hits == 2  # a repeat of a cache hit counts as one


async def test_repeat_ttl_ages_with_the_cache(site):
    pipe, clocks, *_ = site
    await answer(pipe, query("www.example.com", 1))
    assert (await answer(pipe, query("www.example.com", 2))).answer[0].ttl == 300
    clocks.advance(0.5)
    assert (await answer(pipe, query("www.example.com", 3))).answer[0].ttl == 300
    clocks.advance(0.6)  # a whole second after it was stored: the repeat is re-aged, 4 s ahead
    assert (await answer(pipe, query("www.example.com", 4))).answer[0].ttl == 299 - 4
    clocks.advance(4.8)  # 5.9 s after it was stored: the same bytes are still not above the exact TTL
    assert (await answer(pipe, query("www.example.com", 5))).answer[0].ttl == 295
    clocks.advance(0.2)
    assert (await answer(pipe, query("www.example.com", 6))).answer[0].ttl == 294 - 4


@pytest.mark.parametrize("ttl, most_ahead", [(300, repeats.REPEAT_AGE_AHEAD_SECONDS), (40, 2), (15, 0)])
async def test_repeat_ttl_is_never_above_the_exact_ttl_and_at_most_a_sixteenth_below(site, ttl, most_ahead):
    pipe, clocks, forwarder, *_ = site
    forwarder.ttls["www.example.com"] = ttl
    await answer(pipe, query("www.example.com", 1))
    stored_at = clocks.monotonic
    below = []  # how far each served TTL is below the exact one
    while clocks.monotonic - stored_at < ttl - 0.3:
        exact = ttl - int(clocks.monotonic - stored_at)
        served = (await answer(pipe, query("www.example.com", 2))).answer[0].ttl
        assert exact - most_ahead <= served <= exact, (clocks.monotonic - stored_at, exact, served)
        below.append(exact - served)
        clocks.advance(0.3)
    assert max(below) == most_ahead  # 0: a short TTL stays exact
    assert below[-10:] == [0] * 10  # exact again in its last seconds
    assert forwarder.asked == ["www.example.com"]


async def test_a_name_answered_from_repeats_stays_recent_in_the_cache(tmp_path):
    """One-off names churn a small cache while a hot name is answered from the repeats only: its
    cached answer, made recent at each re-aging, is never the one evicted (its stale answer is what
    an upstream outage would serve)."""
    pipe, clocks, forwarder, _counters, answers, _ = make_site(tmp_path)
    answers.max_entries = 10
    hot = "hot.example.com"
    await answer(pipe, query(hot, 1))
    await answer(pipe, query(hot, 2))  # a cache hit, kept as a repeat
    hits = pipe.repeats.hits
    hot_key = wire.parse_query(query(hot, 3)).key
    for number in range(40):
        clocks.advance(1.1)  # past each repeat's second: the next repeat is re-aged
        await answer(pipe, query(f"once{number}.example.com", 10 + number))
        assert (await answer(pipe, query(hot, 3))).answer[0].ttl <= 300
        assert hot_key in answers._entries  # still cached (lookup would make it recent itself)
    assert pipe.repeats.hits - hits == 40 and forwarder.asked.count(hot) == 1
    assert answers.evictions == 31  # 41 names through a cache of 10: only one-off names went


async def test_repeat_ends_when_its_cached_answer_expires(site):
    pipe, clocks, forwarder, *_ = site
    await answer(pipe, query("www.example.com", 1))
    await answer(pipe, query("www.example.com", 2))  # remembered
    clocks.advance(299.5)
    assert (await answer(pipe, query("www.example.com", 3))).answer[0].ttl == 1  # re-aged repeat
    assert forwarder.asked == ["www.example.com"]
    clocks.advance(0.5)  # TTL 300 is over: asked upstream again, never served with TTL 0 from a repeat
    assert (await answer(pipe, query("www.example.com", 4))).answer[0].ttl == 300
    assert forwarder.asked == ["www.example.com", "www.example.com"]


async def test_repeat_is_per_school(site):
    pipe, _, _forwarder, counters, *_ = site
    assert (await answer(pipe, query("games.example.com", 1), SCHOOL_A)).rcode() == dns.rcode.NXDOMAIN
    assert (await answer(pipe, query("games.example.com", 1), SCHOOL_A)).rcode() == dns.rcode.NXDOMAIN
    assert (await answer(pipe, query("games.example.com", 1), SCHOOL_B)).rcode() == dns.rcode.NOERROR
    assert (await answer(pipe, query("games.example.com", 1), SCHOOL_A)).rcode() == dns.rcode.NXDOMAIN
    assert counters.blocked[("school-a", "games", "school")] == 3
    assert counters.queries[("school-b", "udp", "forwarded")] == 1


async def test_blocked_repeat_ends_with_the_decision_minute(tmp_path):
    lessons = 'schedules:\n  - {name: lessons, days: [mon], from: "07:00", to: "07:01", block: [games]}\n'
    pipe, clocks, forwarder, *_ = make_site(tmp_path, {"policies/school-b.yaml": harness.SCHOOL_B + lessons})
    monday = datetime.datetime(2026, 11, 23, 7, 0, 59, tzinfo=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    clocks.wall = monday.timestamp()
    assert (await answer(pipe, query("games.example.com", 1), SCHOOL_B)).rcode() == dns.rcode.NXDOMAIN
    clocks.advance(0.9)
    assert (await answer(pipe, query("games.example.com", 2), SCHOOL_B)).rcode() == dns.rcode.NXDOMAIN
    assert forwarder.asked == []
    clocks.advance(0.1)  # 07:01:00, the lesson is over: decided again, not repeated
    assert (await answer(pipe, query("games.example.com", 3), SCHOOL_B)).rcode() == dns.rcode.NOERROR
    assert forwarder.asked == ["games.example.com"]


async def test_new_snapshot_drops_every_repeat(site, tmp_path):
    pipe, _, _, _, _, cfg = site
    assert (await answer(pipe, query("games.example.com", 1))).rcode() == dns.rcode.NXDOMAIN
    (tmp_path / "blocklists/games.txt").write_text("other.example.com\n")
    pipe.install(snapshots.build_snapshot(cfg, 2))
    assert (await answer(pipe, query("games.example.com", 2))).rcode() == dns.rcode.NOERROR


async def test_tcp_queries_do_not_use_repeats(site):
    pipe, _, _, counters, *_ = site
    for query_id in (1, 2, 3):
        reply = await answer(pipe, query("games.example.com", query_id), transport="tcp")
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.id == query_id
    assert len(pipe.repeats) == 0
    assert counters.queries[("school-a", "tcp", "blocked")] == 3


@pytest.mark.parametrize("bound", ["REPEAT_MAX", "REPEAT_MAX_BYTES"])
async def test_repeats_stay_bounded_and_then_start_again(site, monkeypatch, bound):
    pipe, *_ = site
    monkeypatch.setattr(repeats, bound, 4 if bound == "REPEAT_MAX" else 4 * repeats.REPEAT_OVERHEAD_BYTES)
    for number in range(10):
        for client in (SCHOOL_A, SCHOOL_B):
            await answer(pipe, query(f"games{number}.example.com", number), client)
            assert len(pipe.repeats) <= 2 * 4  # two generations
    assert len(pipe.repeats) >= 1  # the newest answers are kept again after the oldest were dropped
    reply = await answer(pipe, query("games9.example.com", 99), SCHOOL_B)
    assert reply.id == 99 and len(pipe.repeats) <= 2 * 4


async def test_decisions_and_repeats_outlive_minutes_between_schedule_boundaries(tmp_path):
    lessons = 'schedules:\n  - {name: lessons, days: [mon], from: "07:00", to: "08:00", block: [games]}\n'
    pipe, clocks, *_ = make_site(tmp_path, {"policies/school-b.yaml": harness.SCHOOL_B + lessons})
    monday = datetime.datetime(2026, 11, 23, 7, 10, 59, tzinfo=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh"))
    clocks.wall = monday.timestamp()
    for query_id, school in enumerate((SCHOOL_A, SCHOOL_B, SCHOOL_A, SCHOOL_B)):
        assert (await answer(pipe, query("games.example.com", query_id), school)).rcode() == dns.rcode.NXDOMAIN
        clocks.advance(20)  # 07:11:19, 07:11:39, 07:11:59: a minute passes, no schedule boundary
    assert pipe.repeats.hits == 2  # decided once per school, then repeated
    assert pipe.repeats.schools() == 2


async def test_a_miss_is_answered_even_when_making_its_answer_fails(site, caplog):
    pipe, _, forwarder, counters, _, _ = site

    def ask_badly(query, done):  # an upstream room with a bug: an Answer without a message in it
        done(wire.Answer(b"", 0, (), wire.NOERROR, 0, ()), None)

    forwarder.ask = ask_badly
    reply = await answer(pipe, query("www.example.com", 7))
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.id == 7
    assert counters.internal_errors == 1 and "internal error answering a query" in caplog.text


async def test_a_repeat_in_other_letter_case_is_answered_in_its_own_case(site):
    pipe, _, forwarder, counters, answers, _ = site
    await answer(pipe, query("WWW.example.com", 1))  # forwarded
    await answer(pipe, query("www.Example.com", 2))  # a cache hit, kept for repeats
    for query_id, name in enumerate(["WWW.Example.COM", "wWw.eXaMpLe.cOm", "www.example.com", "www.Example.com"], 3):
        reply = await answer(pipe, query(name, query_id))
        assert reply.id == query_id and str(reply.question[0].name) == name + "."
        assert str(reply.answer[0].name) == name + "."  # a pointer to the question: the client's case too
        assert reply.answer[0][0].to_text() == "192.0.2.10" and reply.answer[0].ttl == 300
    assert pipe.repeats.hits == 4 and len(pipe.repeats) == 1  # one kept answer serves every letter case
    assert forwarder.asked == ["www.example.com"]
    assert counters.queries[("school-a", "udp", "cached")] == 5 and answers.hits == 5


async def test_only_the_name_is_taken_in_any_letter_case(site):
    # The type of an HTTPS question (65) is the byte of a capital "A", that of TYPE97 of an "a".
    pipe, _, forwarder, *_ = site
    records = {dns.rdatatype.HTTPS: "1 .", 97: r"\# 1 01"}

    def ask(query: wire.Query, done) -> None:
        forwarder.asked.append(query.name)
        response = dns.message.make_response(dns.message.make_query(query.name + ".", query.qtype))
        response.answer.append(dns.rrset.from_text(query.name + ".", 300, "IN", query.qtype, records[query.qtype]))
        done(wire.parse_upstream_answer(response.to_wire(), len(query.question), 0, 86400, 3600), None)

    forwarder.ask = ask
    asked = [("www.Example.com", "HTTPS"), ("WWW.example.com", "HTTPS"), ("www.example.COM", "TYPE97")]
    for query_id, (name, rdtype) in enumerate(asked * 2, 1):
        message = dns.message.make_query(name, rdtype)
        message.id = query_id
        reply = await answer(pipe, message.to_wire())
        assert reply.id == query_id and reply.question[0].rdtype == dns.rdatatype.from_text(rdtype)
        assert str(reply.question[0].name) == name + "."
    assert forwarder.asked == ["www.example.com", "www.example.com"]  # once per type
    assert pipe.repeats.hits == 2 and len(pipe.repeats) == 2  # the HTTPS questions asked again


async def test_a_blocked_repeat_in_other_letter_case_is_answered_in_its_own_case(site):
    pipe, _, forwarder, counters, *_ = site
    for query_id, name in enumerate(["GAMES.example.com", "games.EXAMPLE.com", "games.example.com"], 1):
        reply = await answer(pipe, query(name, query_id))
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.id == query_id
        assert str(reply.question[0].name) == name + "." and str(reply.authority[0].name) == name + "."
    assert len(pipe.repeats) == 1 and forwarder.asked == []
    assert counters.blocked[("school-a", "games", "school")] == 3


# A query for "a.example" type A, ID 0x1234, RD, then an OPT record (payload 1232) whose options vary.
_HEAD = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + b"\x01a\x07example\x00\x00\x01\x00\x01"
_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"  # root name, TYPE 41, payload 1232, no extended RCODE/DO
_COOKIE = b"\x00\x0a\x00\x08" + b"\x01\x02\x03\x04\x05\x06\x07\x08"  # option 10, an 8-byte client cookie


@pytest.mark.parametrize(
    "data, lone",
    [
        (_HEAD + _OPT + b"\x00\x0c" + _COOKIE, True),  # a lone client cookie
        (_HEAD + _OPT + b"\x00\x00", False),  # a plain OPT
        (_HEAD[:11] + b"\x00" + _HEAD[12:], False),  # no OPT
        (_HEAD + _OPT + b"\x00\x14" + b"\x00\x0a\x00\x10" + b"\x01" * 16, False),  # with a server cookie
        (_HEAD + _OPT + b"\x00\x10" + b"\x00\x0c\x00\x00" + _COOKIE, False),  # padding, then the cookie
        (_HEAD[:8] + b"\x00\x01\x00\x01" + _HEAD[12:] + _OPT + b"\x00\x0c" + _COOKIE, False),  # NSCOUNT 1
        # a 0 byte inside a label where the name would end: the question runs on into what looks like the OPT
        (_HEAD[:12] + b"\x06abc\x00\x00\x01\x00\x01" + _OPT + b"\x00\x0c" + _COOKIE, False),
        (_HEAD[:12] + b"\x00\x00\x01\x00\x01" + _OPT + b"\x00\x0c" + _COOKIE, True),  # the root name
    ],
)
def test_only_a_question_and_an_opt_with_a_client_cookie_alone_is_a_lone_cookie(data, lone):
    assert repeats._lone_cookie(data) is lone


def cookie_query(name: str, query_id: int, cookie: bytes) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.CookieOption(cookie, b"")])
    message.id = query_id
    return message.to_wire()


async def test_a_repeat_with_another_client_cookie_is_answered_without_one(site):
    pipe, _, forwarder, counters, answers, _ = site
    await answer(pipe, cookie_query("www.example.com", 1, b"\x01" * 8))  # forwarded
    await answer(pipe, query("www.example.com", 2))  # a cache hit with a plain OPT, kept for repeats
    for query_id, name in enumerate(["www.example.com", "WWW.Example.com", "www.example.com"], 3):
        data = cookie_query(name, query_id, bytes([query_id]) * 8)
        reply = pipe.handle(data, SCHOOL_A, "udp")
        parsed_reply = dns.message.from_wire(reply)
        assert parsed_reply.id == query_id and str(parsed_reply.question[0].name) == name + "."
        assert parsed_reply.edns == 0 and parsed_reply.options == ()  # no cookie echoed: schooldns has none
        assert parsed_reply.answer[0][0].to_text() == "192.0.2.10" and parsed_reply.answer[0].ttl == 300
        assert reply == pipe.handle(data, SCHOOL_A, "tcp")  # byte for byte what a parsed query gets
    assert pipe.repeats.hits == 3  # every cookie over UDP was a repeat (TCP's repeats are its own)
    assert forwarder.asked == ["www.example.com"]
    assert counters.queries[("school-a", "udp", "cached")] == 4 and answers.hits == 4 + 3


async def test_answers_asked_for_again_outlive_a_flood_of_answers_asked_for_once(site, monkeypatch):
    pipe, *_ = site
    monkeypatch.setattr(repeats, "REPEAT_MAX", 4)  # two generations of 4
    hot = query("games.example.com", 1)
    await answer(pipe, hot)  # blocked, kept
    for number in range(20):
        await answer(pipe, query(f"games{number}.example.com", number))  # once each
        assert (await answer(pipe, hot)).rcode() == dns.rcode.NXDOMAIN
        assert len(pipe.repeats) <= 8
    assert pipe.repeats.hits == 20  # every later one was a repeat, from either generation
    assert pipe.repeats.schools() == 1


def plain_query(name: str, query_id: int, want_dnssec: bool = False) -> bytes:
    """A query without EDNS (or, with want_dnssec, with an OPT record with the DO bit)."""
    message = dns.message.make_query(name, "A", use_edns=0 if want_dnssec else False, want_dnssec=want_dnssec)
    message.id = query_id
    return message.to_wire()


async def test_one_repeat_answers_a_question_with_and_without_edns(site):
    """A cached answer asked without EDNS, with a plain OPT record and with a lone cookie is kept once."""
    pipe, clocks, forwarder, counters, answers, _ = site
    pipe.stream_repeats["tcp"].enabled = False  # TCP keeps no repeats here: what a parsed query gets
    await answer(pipe, plain_query("www.example.com", 1))  # forwarded
    await answer(pipe, plain_query("www.example.com", 2))  # a cache hit, kept without the OPT record
    assert len(pipe.repeats) == 1
    asked = [
        query("www.example.com", 3),
        cookie_query("WWW.example.com", 4, b"\x04" * 8),
        plain_query("www.EXAMPLE.com", 5),
        query("www.example.com", 6),
    ]
    for data in asked:
        reply = pipe.handle(data, SCHOOL_A, "udp")
        assert reply == pipe.handle(data, SCHOOL_A, "tcp")  # byte for byte what a parsed query gets
    assert pipe.repeats.hits == 4 and len(pipe.repeats) == 1
    clocks.advance(2.5)  # re-aged once, then answered with and without an OPT record again
    for data in asked:
        reply = dns.message.from_wire(pipe.handle(data, SCHOOL_A, "udp"))
        parsed = dns.message.from_wire(pipe.handle(data, SCHOOL_A, "tcp"))
        assert reply.answer[0].ttl == 298 - 4 and parsed.answer[0].ttl == 298  # 4 s ahead, as any repeat
        reply.answer[0].ttl = 298
        assert reply == parsed and reply.edns == parsed.edns and reply.question == parsed.question
    assert pipe.repeats.hits == 8 and len(pipe.repeats) == 1 and forwarder.asked == ["www.example.com"]
    assert counters.queries[("school-a", "udp", "cached")] == 9 and answers.hits == 9 + 8


async def test_a_repeat_kept_from_a_query_with_a_plain_opt_answers_one_without(site):
    pipe, _, forwarder, *_ = site
    await answer(pipe, query("www.example.com", 1))
    await answer(pipe, query("www.example.com", 2))  # kept without its OPT record
    data = plain_query("www.example.com", 3)
    reply = pipe.handle(data, SCHOOL_A, "udp")
    assert reply == pipe.handle(data, SCHOOL_A, "tcp") and dns.message.from_wire(reply).edns == -1
    assert pipe.repeats.hits == 1 and len(pipe.repeats) == 1 and forwarder.asked == ["www.example.com"]


async def test_answers_that_differ_with_edns_are_kept_apart(site):
    """DNSSEC OK asks another cache entry; a blocked answer has an EDE option; an answer longer than
    512 bytes with its OPT record is cut without EDNS: each form is kept under its own bytes."""
    pipe, _, forwarder, *_ = site
    forwarder.addresses["many.example.com"] = 40  # 40 A records: about 680 bytes
    await answer(pipe, plain_query("games.example.com", 1))  # blocked for this school, kept
    assert len(pipe.repeats) == 1
    asked = [
        plain_query("www.example.com", 2, want_dnssec=True),
        query("games.example.com", 3),
        query("many.example.com", 4),
        plain_query("many.example.com", 5),
    ]
    for data in asked:
        await answer(pipe, data)
        await answer(pipe, data)  # answered, then kept (a cache hit, or the blocked answer at once)
        hits = pipe.repeats.hits
        reply = pipe.handle(data, SCHOOL_A, "udp")
        assert pipe.repeats.hits == hits + 1  # a repeat of its own form
        parsed = dns.message.from_wire(reply)
        if data[-4:] != b"\x00\x01\x00\x01":  # with an OPT record
            assert parsed.edns == 0 and reply == pipe.handle(data, SCHOOL_A, "tcp")
        else:  # without: many's 40 records do not fit 512 bytes
            assert parsed.edns == -1 and parsed.flags & dns.flags.TC and not parsed.answer
    assert dns.message.from_wire(pipe.handle(asked[1], SCHOOL_A, "udp")).options[0].otype == dns.edns.EDE
    assert len(pipe.repeats) == 1 + 4


async def test_a_repeat_is_not_re_aged_from_another_answer_or_after_its_eviction(tmp_path):
    """A repeat re-ages from the cached answer it was made from only: once that answer is evicted or
    replaced, the query goes the whole way again (the repeat keeps no evicted answer alive)."""
    pipe, clocks, forwarder, _counters, answers, _ = make_site(tmp_path)
    answers.max_entries = 1  # each new answer evicts the one before (of 2, www asked twice would get a second chance)
    await answer(pipe, query("www.example.com", 1))
    await answer(pipe, query("www.example.com", 2))  # kept as a repeat
    await answer(pipe, query("one.example.com", 3))
    await answer(pipe, query("two.example.com", 4))  # www's answer evicted
    hits = pipe.repeats.hits
    assert (await answer(pipe, query("www.example.com", 5))).answer[0].ttl == 300  # the repeat, until its second
    clocks.advance(1.0)
    assert (await answer(pipe, query("www.example.com", 6))).answer[0].ttl == 300  # asked again: a new answer
    assert pipe.repeats.hits == hits + 1 and forwarder.asked.count("www.example.com") == 2
    forwarder.ttls["www.example.com"] = 100
    await answer(pipe, query("one.example.com", 7))
    await answer(pipe, query("two.example.com", 8))  # evicted again
    await answer(pipe, query("www.example.com", 9))  # stored anew (TTL 100), and kept as a repeat of it
    assert (await answer(pipe, query("www.example.com", 10))).answer[0].ttl == 100
    clocks.advance(1.0)
    assert (await answer(pipe, query("www.example.com", 11))).answer[0].ttl == 99 - 4


async def test_a_question_with_bytes_after_it_is_not_kept_for_a_query_with_an_opt_record(site):
    """A query without EDNS and a byte after its question is kept for itself only: a query whose
    bytes without a plain OPT record are the same has that byte as the start of another record."""
    pipe, *_ = site
    junk = plain_query("www.example.com", 1) + b"\x00"
    await answer(pipe, junk)
    await answer(pipe, junk)  # a cache hit, kept under its bytes
    head = plain_query("www.example.com", 2)
    crafted = head[:11] + b"\x01" + head[12:] + b"\x00" + b"\x00\x00\x29\x04\xd0" + bytes(6)  # ARCOUNT 1
    hits = pipe.repeats.hits
    reply = pipe.handle(crafted, SCHOOL_A, "udp")
    assert pipe.repeats.hits == hits and reply == pipe.handle(crafted, SCHOOL_A, "tcp")
    assert dns.message.from_wire(reply).edns == -1  # its additional record is no OPT record


@pytest.mark.parametrize("transport", ["tcp", "dot", "doh"])
async def test_stream_transports_keep_repeats_of_their_own_counted_under_them(site, transport):
    """TCP, DoT and DoH repeat like UDP, each from its own table: a UDP answer cut to 512 bytes is
    never a stream's, and a repeat is counted under the transport it came by."""
    pipe, _, forwarder, counters, answers, _ = site
    forwarder.addresses["many.example.com"] = 40  # about 680 bytes: cut without EDNS over UDP
    many = plain_query("many.example.com", 1)
    await answer(pipe, many)  # forwarded (over UDP: truncated)
    await answer(pipe, many)  # a cache hit over UDP, cut and kept as UDP's repeat
    assert dns.message.from_wire(pipe.handle(many, SCHOOL_A, "udp")).flags & dns.flags.TC
    streams = pipe.stream_repeats[transport]
    whole = pipe.handle(many, SCHOOL_A, transport)  # not UDP's repeat: parsed, from the cache, kept
    assert len(dns.message.from_wire(whole).answer[0]) == 40 and streams.hits == 0 and len(streams) == 1
    for query_id in (7, 8):
        again = bytes([0, query_id]) + many[2:]
        assert pipe.handle(again, SCHOOL_A, transport) == again[:2] + whole[2:]
    blocked = query("games.example.com", 9)
    first = pipe.handle(blocked, SCHOOL_A, transport)
    assert pipe.handle(blocked, SCHOOL_A, transport) == first and dns.message.from_wire(first).rcode() == 3
    assert streams.hits == 3 and pipe.repeats.hits == 1
    assert counters.queries[("school-a", transport, "cached")] == 3 and answers.hits == 2 + 3
    assert counters.queries[("school-a", transport, "blocked")] == 2
    assert counters.queries[("school-a", "udp", "cached")] == 2
    pipe.install(pipe.snapshot)  # a new snapshot: every transport's repeats go
    assert len(streams) == 0 and len(pipe.repeats) == 0
