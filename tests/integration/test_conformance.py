"""How schooldns answers, as independent clients (dig, kdig, drill, dnspython) see it: docs/conformance.md.

The real server (one worker, in this process) forwards to the fake upstream on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from resolver.dataplane import wire
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver, until

TOOLS = ("dig", "kdig", "drill")


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10", ttl=300)
        yield up


@pytest.fixture
async def resolver(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], "cache: {stale_wait_seconds: 0.3}\n") as running:
        yield running


async def ask(tool: str, port: int, name: str, *options: str) -> str:
    """The output of one query by an independent client (its own options: flags, class, type, TCP)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (`make test` installs it when run as root)")
    if tool == "drill":
        command = [path, "-p", str(port), name, "@127.0.0.1", *options]
    else:
        command = [path, "@127.0.0.1", "-p", str(port), name, "+retry=0", "+time=2", *options]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return out.decode()


def class_and_type(tool: str, qclass: str, qtype: str) -> tuple[str, ...]:
    """A query's class and type as the tool takes them (kdig knows CH as a class word, HS only as CLASS4)."""
    if tool == "kdig":
        return ("-c", "CLASS4" if qclass == "HS" else qclass, "-t", qtype)
    return (qclass, qtype)


def flags_of(output: str) -> set[str]:
    """The header flags the client printed (dig: `flags: qr rd ra;`, kdig: `Flags: ...;`, drill: `flags: ... ;`)."""
    match = re.search(r"(?i)\bflags: ([a-z ]*?)\s*;", output)
    assert match is not None, output
    return set(match[1].split())


def status_of(output: str) -> str:
    match = re.search(r"(?i)(?:status|rcode): ([A-Z]+)", output)
    assert match is not None, output
    return match[1]


def well_formed(output: str) -> None:
    """Nothing the client took for a broken answer or a broken server."""
    for complaint in ("malformed", "bad packet", "FORMERR", "not available", "Warning", "WARNING", "error"):
        assert complaint not in output, output


async def udp_raw(data: bytes, port: int) -> bytes:
    """Send bytes that no DNS library would make, and return the one datagram that answers them."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        await loop.sock_sendall(sock, data)
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), 2.0)


def _ede(message: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text) for o in message.options if o.otype == dns.edns.EDE]


def _authoritative(query: dns.message.Message, transport: str) -> dns.message.Message:
    """An upstream that answers as an authoritative server does: AA set, RA clear."""
    response = dns.message.make_response(query, recursion_available=False)
    response.flags |= dns.flags.AA
    response.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.7"))
    return response


# -------------------------------------------------------------------------------------------
# Header bits


@pytest.mark.parametrize("tool", TOOLS)
async def test_answers_say_recursion_available_not_authoritative_with_the_clients_rd_and_cd(resolver, upstream, tool):
    upstream.hook = _authoritative
    cd = ("-o", "CD") if tool == "drill" else ("+cdflag",)
    for name in ("auth.example.com", "auth.example.com", "adult.example.com"):  # forwarded, cached, blocked
        output = await ask(tool, resolver.port, name)
        assert flags_of(output) == {"qr", "rd", "ra"}, output
        well_formed(output)
        assert flags_of(await ask(tool, resolver.port, name, *cd)) == {"qr", "rd", "ra", "cd"}
    norecurse = ("-o", "rd") if tool == "drill" else ("+norecurse",)
    assert flags_of(await ask(tool, resolver.port, "auth.example.com", *norecurse)) == {"qr", "ra"}


async def test_an_error_answer_has_ra_and_the_clients_cd(resolver, upstream):
    upstream.servfail("broken.example.com")
    output = await ask("dig", resolver.port, "broken.example.com", "+cdflag")
    assert status_of(output) == "SERVFAIL" and flags_of(output) == {"qr", "rd", "ra", "cd"}


# -------------------------------------------------------------------------------------------
# Negative caching through a CNAME (RFC 2308 5)


@pytest.mark.parametrize("negative", ["nodata", "nxdomain"])
async def test_a_cname_to_no_data_is_kept_for_the_negative_ttl_not_the_cnames(tmp_path, negative):
    async with FakeUpstream(default_soa_ttl=60, default_soa_minimum=60) as upstream:
        upstream.cname("alias.example.com", "target.example.net", ttl=3600)
        if negative == "nodata":
            upstream.answer("target.example.net", "A", "192.0.2.1")  # no AAAA: NODATA with the SOA
        async with running_resolver(tmp_path, [upstream.address]) as resolver:
            now = [0.0]
            resolver.worker.pipeline.clock = lambda: now[0]
            first = await resolver.udp("alias.example.com", "AAAA")
            assert first.rcode() == (dns.rcode.NOERROR if negative == "nodata" else dns.rcode.NXDOMAIN)
            assert first.answer[0].rdtype == dns.rdatatype.CNAME and first.authority[0].ttl == 60
            now[0] = 59
            await resolver.udp("alias.example.com", "AAAA")
            assert upstream.count("alias.example.com") == 1
            # The name starts to exist: seen once the negative answer expired, not after the CNAME's hour.
            upstream.answer("target.example.net", "AAAA", "2001:db8::1")
            now[0] = 61
            answer = await resolver.udp("alias.example.com", "AAAA")
            assert upstream.count("alias.example.com") == 2
            assert answer.rcode() == dns.rcode.NOERROR and answer.answer[-1][0].to_text() == "2001:db8::1"


# -------------------------------------------------------------------------------------------
# FORMERR and NOTIMP


async def test_notimp_to_an_edns_query_has_an_opt_record_the_question_and_no_ra(resolver):
    output = await ask("dig", resolver.port, "example.com", "SOA", "+opcode=notify")
    assert status_of(output) == "NOTIMP" and "opcode: NOTIFY" in output
    assert flags_of(output) == {"qr", "rd"}  # no RA: recursion means nothing to a NOTIFY
    assert "OPT PSEUDOSECTION" in output and re.search(r";example\.com\.\s+IN\s+SOA", output), output


async def test_formerr_to_an_edns_query_has_an_opt_record_and_the_question(resolver):
    query = dns.message.make_query("www.example.com", "A", use_edns=0)
    raw = query.to_wire()
    record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    question_end = 12 + len(query.question[0].name.to_wire()) + 4
    # The same query with an answer record: not a query a resolver takes.
    malformed = raw[:6] + struct.pack("!H", 1) + raw[8:question_end] + record + raw[question_end:]
    answer = dns.message.from_wire(await udp_raw(malformed, resolver.port))
    assert answer.rcode() == dns.rcode.FORMERR and answer.edns == 0
    assert answer.question[0].name.to_text() == "www.example.com." and answer.flags & dns.flags.RA


# -------------------------------------------------------------------------------------------
# An upstream that refuses


async def test_an_upstream_refusal_is_servfail_with_an_ede_naming_it(resolver, upstream):
    upstream.refuse("refused.example.com")
    output = await ask("dig", resolver.port, "refused.example.com")
    assert status_of(output) == "SERVFAIL", output
    assert f"EDE: 22 (No Reachable Authority): (no upstream answered: {upstream.address} refused (REFUSED)" in output
    stranger = await resolver.udp("www.example.com", source="127.0.0.3", use_edns=0)
    assert stranger.rcode() == dns.rcode.REFUSED  # only schooldns' own refusal is a REFUSED


# -------------------------------------------------------------------------------------------
# Serve-stale (RFC 8767)


async def test_an_expired_answer_is_served_stale_when_the_client_response_timer_fires(resolver, upstream):
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    await resolver.udp("www.example.com")
    upstream.drop()
    now[0] = 400.0  # expired 100 s ago; inside the stale window
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await resolver.udp("www.example.com", use_edns=0)
    waited = loop.time() - started
    assert 0.3 <= waited < 0.9  # the timer (0.3 s here), not the forwarding timeout (1 s)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0].ttl == 30
    assert _ede(answer) == [(wire.EDE_STALE_ANSWER, "upstreams did not answer in time")]
    output = await ask("dig", resolver.port, "www.example.com")
    assert "EDE: 3 (Stale Answer)" in output and "192.0.2.10" in output


async def test_the_question_goes_on_after_a_stale_answer_and_refreshes_the_cache(resolver, upstream):
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    await resolver.udp("www.example.com")
    upstream.answer("www.example.com", "A", "192.0.2.20").delay(0.6, "www.example.com")  # later than the timer
    now[0] = 400.0
    stale = await resolver.udp("www.example.com")
    assert stale.answer[0].ttl == 30
    key = wire.parse_query(dns.message.make_query("www.example.com", "A").to_wire()).key
    await until(lambda: not resolver.worker.cache.has_stale(key, now[0]), 3.0)  # the upstream's answer arrived
    fresh = await resolver.udp("www.example.com")
    assert sorted(r.to_text() for r in fresh.answer[0]) == ["192.0.2.10", "192.0.2.20"] and not _ede(fresh)
    assert upstream.count("www.example.com") == 2
    assert resolver.worker.in_flight.count == 0 and not resolver.worker.pool.asking


async def test_after_a_failed_refresh_the_name_is_answered_stale_at_once_until_the_recheck_timer_ends(
    resolver, upstream
):
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    await resolver.udp("www.example.com")
    upstream.drop()  # silent from now on
    now[0] = 400.0  # expired, inside the stale window
    assert (await resolver.udp("www.example.com")).answer[0].ttl == 30  # after the client response timer
    key = wire.parse_query(dns.message.make_query("www.example.com", "A").to_wire()).key
    await until(lambda: resolver.worker.cache.rechecking(key, now[0]), 3.0)  # the forwarding timeout: it failed
    asked = upstream.count("www.example.com")
    loop = asyncio.get_running_loop()
    for offset in (0.0, 29.0):  # within the 30 s recheck timer: stale at once, upstream not asked
        now[0] = 400.0 + offset
        started = loop.time()
        answer = await resolver.udp("www.example.com", use_edns=0)
        assert loop.time() - started < 0.2  # not the 0.3 s client response timer
        assert answer.answer[0].ttl == 30
        assert _ede(answer) == [(wire.EDE_STALE_ANSWER, "upstreams failed to refresh it recently")]
        assert upstream.count("www.example.com") == asked and not resolver.worker.pool.asking
    now[0] = 431.0  # the timer ended: upstream is asked again (and, silent still, the timer answers stale)
    assert (await resolver.udp("www.example.com")).answer[0].ttl == 30
    await until(lambda: upstream.count("www.example.com") > asked, 3.0)


async def test_an_upstream_servfail_serves_the_stale_answer_and_starts_the_recheck_timer(resolver, upstream):
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    await resolver.udp("www.example.com")
    upstream.servfail("www.example.com")
    now[0] = 400.0
    answer = await resolver.udp("www.example.com", use_edns=0)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0].ttl == 30
    assert _ede(answer) == [(wire.EDE_STALE_ANSWER, "upstreams did not answer in time")]
    key = wire.parse_query(dns.message.make_query("www.example.com", "A").to_wire()).key
    assert resolver.worker.cache.rechecking(key, now[0])


# -------------------------------------------------------------------------------------------
# CHAOS and other classes


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("name", ["version.bind", "hostname.bind", "id.server", "version.server"])
async def test_chaos_queries_are_refused_here_and_never_forwarded(resolver, upstream, tool, name):
    output = await ask(tool, resolver.port, name, *class_and_type(tool, "CH", "TXT"))
    assert status_of(output) == "REFUSED", output
    assert upstream.count() == 0


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("qclass", ["CH", "HS"])
async def test_a_blocked_answer_to_another_class_is_in_that_class(resolver, upstream, tool, qclass):
    output = await ask(tool, resolver.port, "adult.example.com", *class_and_type(tool, qclass, "TXT"))
    assert status_of(output) == "NXDOMAIN", output
    well_formed(output)
    shown = "(HS|CLASS4)" if qclass == "HS" else qclass
    assert re.search(rf"adult\.example\.com\.\s+\d+\s+{shown}\s+SOA\s", output), output
    assert upstream.count() == 0


async def test_zone_transfers_are_refused_here(resolver, upstream):
    answer = await resolver.tcp("example.com", "AXFR", use_edns=0)
    assert answer.rcode() == dns.rcode.REFUSED and upstream.count() == 0
    assert _ede(answer) == [
        (wire.EDE_NOT_SUPPORTED, "zone transfers are not served; schooldns forwards class IN queries")
    ]


# -------------------------------------------------------------------------------------------
# Clients outside every school network


async def test_unknown_clients_are_sent_refusals_within_their_networks_budget_and_nothing_else(tmp_path, upstream):
    extra = "limits: {unknown_client_refusals_per_second: 3}\n"
    async with running_resolver(tmp_path, [upstream.address], extra) as resolver:
        resolver.worker.pipeline.clock = lambda: 1000.0  # one second of the budget, however long the test takes
        counters = resolver.worker.counters
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.3", 0))  # in no school's network
            sock.setblocking(False)
            sock.connect(("127.0.0.1", resolver.port))
            for query_id in range(8):
                query = dns.message.make_query("www.example.com", "A", use_edns=0)
                query.id = query_id
                await loop.sock_sendall(sock, query.to_wire())
            await loop.sock_sendall(sock, b"\x00\x63\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example")  # malformed
            await until(lambda: counters.dropped["unknown_client_rate_limit"] == 5 and counters.malformed == 1, 3.0)
            # Handled in this process's event loop: every answer sent is in the socket by now.
            answers = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    answers.append(dns.message.from_wire(sock.recv(65535)))
        assert [(a.id, a.rcode(), _ede(a)[0][0]) for a in answers] == [
            (i, dns.rcode.REFUSED, wire.EDE_PROHIBITED) for i in range(3)
        ]
        # Over TCP the handshake proved the address: refused every time, however many.
        for _ in range(5):
            assert (await resolver.tcp("www.example.com", source="127.0.0.3")).rcode() == dns.rcode.REFUSED
        assert upstream.count() == 0


# -------------------------------------------------------------------------------------------
# An answer too long only for its additional records


async def test_an_answer_that_fits_without_its_additional_records_is_sent_so_every_time(resolver, upstream):
    def srv_with_addresses(query: dns.message.Message, transport: str) -> dns.message.Message:
        response = dns.message.make_response(query)
        name = query.question[0].name
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "SRV", "0 5 5060 a.example.com."))
        addresses = [f"2001:db8::{i:x}" for i in range(1, 30)]
        response.additional.append(dns.rrset.from_text("a.example.com.", 300, "IN", "AAAA", *addresses))
        return response

    upstream.hook = srv_with_addresses
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    for step in range(4):  # forwarded, cached, repeated, and repeated once the kept reply is re-aged
        now[0] = step * 2.5
        answer = await resolver.udp("_sip._tcp.example.com", "SRV", use_edns=0, payload=512)
        assert not answer.flags & dns.flags.TC and not answer.additional and answer.edns == 0
        assert answer.answer[0][0].to_text() == "0 5 5060 a.example.com." and answer.answer[0].ttl <= 300
