"""The forwarding core over real sockets: UDP, TCP, EDNS, cache, upstream pool, bad input."""

import asyncio
import os
import random
import shutil
import socket
import struct

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.dataplane import upstream as forwarding
from resolver.dataplane import wire
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver, until


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10", ttl=300)
        yield up


@pytest.fixture
async def resolver(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address]) as running:
        yield running


def _ede(message):
    return [(o.code, o.text) for o in message.options if o.otype == dns.edns.EDE]


async def test_udp_answer_is_forwarded_with_client_id_and_case(resolver, upstream):
    query = dns.message.make_query("WWW.Example.COM", "A")
    query.id = 4321
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, timeout=2)
    assert answer.id == 4321 and answer.rcode() == dns.rcode.NOERROR
    assert str(answer.question[0].name) == "WWW.Example.COM."
    assert answer.answer[0][0].to_text() == "192.0.2.10"
    assert answer.flags & dns.flags.RA and answer.flags & dns.flags.RD
    # Our own upstream ID, not the client's; a lower-cased question.
    call = upstream.calls[-1]
    assert call.name == "www.example.com" and call.transport == "udp"


async def test_cache_hit_does_not_ask_upstream_and_ages_ttl(resolver, upstream):
    now = [1000.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    first = await resolver.udp("www.example.com")
    now[0] += 100.4
    second = await resolver.udp("www.example.com")
    assert upstream.count("www.example.com") == 1
    assert first.answer[0].ttl == 300 and second.answer[0].ttl == 200
    now[0] += 300
    await resolver.udp("www.example.com")
    assert upstream.count("www.example.com") == 2  # expired: asked again


async def test_a_query_with_a_new_client_cookie_is_a_repeat_answered_without_a_cookie(resolver, upstream):
    pipe = resolver.worker.pipeline
    for query_id, name in enumerate(["www.example.com", "www.example.com", "WWW.example.COM", "www.Example.com"], 1):
        query = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.CookieOption(os.urandom(8), b"")])
        query.id = query_id
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, timeout=2)
        assert answer.id == query_id and str(answer.question[0].name) == name + "."
        assert answer.answer[0][0].to_text() == "192.0.2.10" and answer.edns == 0 and answer.options == ()
    assert upstream.count("www.example.com") == 1
    assert pipe.repeats.hits == 2 and len(pipe.repeats) == 1  # forwarded, a cache hit kept, then two repeats
    assert pipe.counters.queries[("school-a", "udp", "cached")] == 3 and pipe.cache.hits == 3


async def test_negative_answer_is_cached_for_soa_minimum(resolver, upstream):
    upstream.nxdomain("gone.example.com", soa_ttl=300, soa_minimum=60)
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    first = await resolver.udp("gone.example.com")
    assert first.rcode() == dns.rcode.NXDOMAIN and first.authority[0].ttl == 60
    now[0] = 59
    await resolver.udp("gone.example.com")
    assert upstream.count("gone.example.com") == 1
    now[0] = 61
    await resolver.udp("gone.example.com")
    assert upstream.count("gone.example.com") == 2


async def test_servfail_is_never_cached(resolver, upstream):
    upstream.servfail("broken.example.com")
    for _ in range(2):
        assert (await resolver.udp("broken.example.com")).rcode() == dns.rcode.SERVFAIL
    assert upstream.count("broken.example.com") == 2


async def test_tcp_pipelined_queries_are_answered_out_of_order(resolver, upstream):
    upstream.answer("slow.example.com", "A", "192.0.2.20").delay(0.3, "slow.example.com")
    reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
    slow = dns.message.make_query("slow.example.com", "A")
    fast = dns.message.make_query("www.example.com", "A")
    writer.write(wire.frame(slow.to_wire()) + wire.frame(fast.to_wire()))
    ids = []
    for _ in range(2):
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        ids.append(dns.message.from_wire(await reader.readexactly(length)).id)
    writer.close()
    assert ids == [fast.id, slow.id]


async def test_truncated_upstream_answer_is_retried_over_tcp(resolver, upstream):
    upstream.large_answer("big.example.com", 40, "A").truncate("big.example.com")
    answer = await resolver.udp("big.example.com", use_edns=0, payload=1232)
    assert not answer.flags & dns.flags.TC
    assert len(answer.answer[0]) == 40
    assert upstream.count("big.example.com", transport="tcp") == 1


@pytest.mark.parametrize("edns,payload,truncated", [(False, None, True), (True, 512, True), (True, 4096, False)])
async def test_client_udp_size_decides_truncation(resolver, upstream, edns, payload, truncated):
    upstream.large_answer("txt.example.com", 12, "TXT")  # ~ 800 bytes
    kwargs = {"use_edns": 0, "payload": payload} if edns else {}
    answer = await resolver.udp("txt.example.com", "TXT", **kwargs)
    assert bool(answer.flags & dns.flags.TC) is truncated
    assert (answer.edns == 0) is edns  # OPT echoed exactly when the client sent one
    full = await resolver.tcp("txt.example.com", "TXT", **kwargs)
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 12


async def test_do_bit_is_passed_upstream(resolver, upstream):
    await resolver.udp("www.example.com", use_edns=0, want_dnssec=True)
    assert upstream.calls[-1].do


async def test_failover_when_one_upstream_drops_everything(tmp_path, upstream):
    async with FakeUpstream() as dead:
        dead.drop()
        async with running_resolver(tmp_path, [dead.address, upstream.address]) as resolver:
            for i in range(5):
                upstream.answer(f"n{i}.example.com", "A", "192.0.2.1")
                answer = await resolver.udp(f"n{i}.example.com", timeout=3)
                assert answer.answer[0][0].to_text() == "192.0.2.1"
            # After a few timeouts the dead upstream is tried last: later queries are fast.
            assert dead.count() <= 4
            pool = resolver.worker.pool
            assert pool.ordered(asyncio.get_running_loop().time())[0].address.port == upstream.port


async def test_all_upstreams_failing_gives_servfail_with_ede(tmp_path):
    async with FakeUpstream() as dead1, FakeUpstream() as dead2:
        dead1.drop()
        dead2.drop()
        async with running_resolver(tmp_path, [dead1.address, dead2.address]) as resolver:
            answers = await asyncio.gather(
                *[resolver.udp(f"n{i}.example.com", use_edns=0, timeout=4) for i in range(20)]
            )
            assert {answer.rcode() for answer in answers} == {dns.rcode.SERVFAIL}
            assert {_ede(answer)[0][0] for answer in answers} == {wire.EDE_NO_REACHABLE_AUTHORITY}
            # Nothing is left waiting: every miss gave back its place, every question its slot.
            assert resolver.worker.in_flight.count == 0 and not resolver.worker.pool.asking
            assert dead1.count() + dead2.count() == 40  # each question asked of both, once


async def test_closed_upstream_port_gives_network_error_ede(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: ICMP port unreachable
    async with running_resolver(tmp_path, [f"127.0.0.1:{port}"]) as resolver:
        answer = await resolver.udp("www.example.com", use_edns=0)
        assert answer.rcode() == dns.rcode.SERVFAIL
        assert _ede(answer)[0][0] == wire.EDE_NETWORK_ERROR
        assert resolver.worker.in_flight.count == 0 and not resolver.worker.pool.asking


async def test_stale_answer_served_when_upstream_goes_away(resolver, upstream):
    now = [0.0]
    resolver.worker.pipeline.clock = lambda: now[0]
    await resolver.udp("www.example.com")
    upstream.drop()
    now[0] = 400  # expired, inside the stale window
    answer = await resolver.udp("www.example.com")
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0].ttl == 30


async def test_identical_concurrent_queries_are_coalesced(resolver, upstream):
    upstream.answer("popular.example.com", "A", "192.0.2.30").delay(0.2, "popular.example.com")
    answers = await asyncio.gather(*[resolver.udp("popular.example.com") for _ in range(100)])
    assert all(a.answer[0][0].to_text() == "192.0.2.30" for a in answers)
    assert upstream.count("popular.example.com") == 1
    assert resolver.worker.pool.coalesced == 99


async def test_replies_with_wrong_id_or_question_are_ignored(resolver, upstream):
    def hostile(query, transport):
        good = dns.message.make_response(query)
        good.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.99"))
        wrong_id = dns.message.make_response(query)
        wrong_id.id = (query.id + 1) % 65536
        wrong_id.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "6.6.6.6"))
        wrong_question = dns.message.make_query("evil.example.net", "A")
        wrong_question.id = query.id
        wrong_question.flags |= dns.flags.QR
        return [wrong_id.to_wire(), wrong_question.to_wire(), good.to_wire()]

    sent = []

    def hook(query, transport):
        replies = hostile(query, transport)
        sent.extend(replies)
        for reply in replies[:-1]:
            call = next(c for c in upstream.calls if c.id == query.id)
            upstream_socket.sendto(reply, call.peer)
        return replies[-1]

    upstream_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream_socket.bind(("127.0.0.1", 0))
    upstream.hook = hook
    try:
        answer = await resolver.udp("spoof.example.com")
    finally:
        upstream_socket.close()
    # Replies from another port never reach a connected socket; the right one wins.
    assert answer.answer[0][0].to_text() == "192.0.2.99"


async def test_upstream_queries_use_random_ids_and_several_source_ports(resolver, upstream):
    for i in range(60):
        upstream.answer(f"r{i}.example.com", "A", "192.0.2.1")
    await asyncio.gather(*[resolver.udp(f"r{i}.example.com") for i in range(60)])
    calls = [c for c in upstream.calls if c.transport == "udp"]
    assert len({c.peer[1] for c in calls}) > 4
    assert len({c.id for c in calls}) > 50


async def test_upstream_sockets_retire_after_their_uses_and_close(upstream):
    upstream.answer("rotate.example.com", "A", "192.0.2.1")
    server = forwarding.Upstream(forwarding.parse_address(upstream.address), sockets=2, socket_max_uses=3)
    query = wire.parse_query(dns.message.make_query("rotate.example.com", "A").to_wire())
    try:
        for _ in range(4):  # rounds of concurrent exchanges: retired sockets still get their answers
            replies = await asyncio.gather(*[server.exchange_udp(query, 1.0) for _ in range(3)])
            assert all(dns.message.from_wire(reply).answer for reply in replies)
        ports = {call.peer[1] for call in upstream.calls}
        assert len(ports) >= 4  # 12 queries, 3 per socket: ports keep rotating
        assert len(server._sockets) <= 2 and not server._retired  # used-up sockets were closed
    finally:
        server.close()


async def test_udp_exchanges_time_out_on_their_own_deadlines_and_the_check_stops_when_idle(upstream):
    upstream.answer("fast.example.com", "A", "192.0.2.1").drop("lost.example.com")
    server = forwarding.Upstream(forwarding.parse_address(upstream.address))
    fast = wire.parse_query(dns.message.make_query("fast.example.com", "A").to_wire())
    lost = wire.parse_query(dns.message.make_query("lost.example.com", "A").to_wire())
    loop = asyncio.get_running_loop()
    try:

        async def timed(query, timeout):
            started = loop.time()
            try:
                return await server.exchange_udp(query, timeout), loop.time() - started
            except forwarding.UpstreamTimeout as exc:
                return exc, loop.time() - started

        (short, short_s), (answered, _), (long, long_s) = await asyncio.gather(
            timed(lost, 0.2), timed(fast, 1.0), timed(lost, 0.6)
        )
        assert isinstance(short, forwarding.UpstreamTimeout) and "no answer in 0.20s" in str(short)
        assert isinstance(long, forwarding.UpstreamTimeout) and "no answer in 0.60s" in str(long)
        assert dns.message.from_wire(answered).answer  # a reply in time is not failed by the check
        assert 0.2 <= short_s < long_s and long_s >= 0.6  # never early, each on its own deadline
        assert server._timeout_check is None  # nothing waits: no periodic check left running
        assert not any(sock.pending for sock in server._sockets)
    finally:
        server.close()


async def test_unknown_client_is_refused_with_ede_18(resolver, upstream):
    answer = await resolver.udp("www.example.com", source="127.0.0.3", use_edns=0)
    assert answer.rcode() == dns.rcode.REFUSED
    assert _ede(answer)[0][0] == wire.EDE_PROHIBITED
    assert upstream.count() == 0


async def test_other_opcodes_get_notimp(resolver):
    query = dns.message.make_query("example.com", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=resolver.port, timeout=2)
    assert answer.rcode() == dns.rcode.NOTIMP and answer.id == query.id


async def _raw_udp(port: int, payload: bytes, timeout: float = 0.5) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, payload, ("127.0.0.1", port))
        return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    except TimeoutError:
        return None
    finally:
        sock.close()


async def test_malformed_question_gets_formerr_and_garbage_is_dropped(resolver):
    bad = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0) + b"\x07example"
    answer = dns.message.from_wire(await _raw_udp(resolver.port, bad))
    assert answer.id == 77 and answer.rcode() == dns.rcode.FORMERR
    assert await _raw_udp(resolver.port, b"\x01\x02\x03", timeout=0.2) is None


async def test_a_datagram_too_long_for_a_query_is_dropped_and_counted(resolver):
    # The listener reads 4096 bytes per datagram (udpbatch.QUERY_MAX): a longer one is no query.
    query = dns.message.make_query("www.example.com", "A").to_wire()
    assert await _raw_udp(resolver.port, query + b"\x00" * 5000, timeout=0.3) is None
    assert resolver.worker.counters.dropped["udp_oversized"] == 1
    answer = dns.message.from_wire(await _raw_udp(resolver.port, query, timeout=3))
    assert answer.rcode() == dns.rcode.NOERROR and resolver.worker.counters.dropped["udp_oversized"] == 1


async def test_thousands_of_mutated_packets_leave_the_server_answering(resolver, upstream):
    rng = random.Random(1234)
    seed = dns.message.make_query("a.b.www.example.com", "A", use_edns=0, want_dnssec=True).to_wire()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for i in range(3000):
            packet = bytearray(seed)
            for _ in range(rng.randint(1, 8)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            if i % 3 == 0:
                packet = packet[: rng.randrange(len(packet))]
            if i % 7 == 0:
                packet = bytearray(os.urandom(rng.randrange(1, 600)))
            if len(packet) > 2:
                packet[2] &= 0x7F  # keep most as queries so they reach the parser's depths
            sock.sendto(bytes(packet), ("127.0.0.1", resolver.port))
            await asyncio.sleep(0)  # the server shares this loop: let it read before the socket buffer fills
        # TCP: garbage frames and a frame cut short, then a good query on a new connection.
        _, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        writer.write(b"\x00\x05hello" + b"\x00\x20" + os.urandom(32) + b"\xff\xff" + b"x" * 10)
        await writer.drain()
        writer.close()
    finally:
        sock.close()
    assert (await resolver.udp("www.example.com")).answer[0][0].to_text() == "192.0.2.10"
    assert (await resolver.tcp("www.example.com")).answer[0][0].to_text() == "192.0.2.10"
    assert resolver.worker.counters.malformed > 1000
    assert resolver.worker.counters.internal_errors == 0


async def test_tcp_idle_connections_are_closed(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], "limits: {tcp_idle_timeout_seconds: 0.2}\n") as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # the server closed it
        writer.close()


async def test_tcp_connection_cap(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], "limits: {tcp_max_connections: 2}\n") as resolver:
        held = [await asyncio.open_connection("127.0.0.1", resolver.port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        assert resolver.worker.counters.dropped["tcp_connection_limit"] == 1
        for _, w in [*held, (reader, writer)]:
            w.close()


@pytest.mark.parametrize("tool", ["dig", "kdig"])
async def test_independent_cli_client(resolver, tool):
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (`make test` installs it when run as root)")
    for transport in ([], ["+tcp"]):
        proc = await asyncio.create_subprocess_exec(
            path,
            "@127.0.0.1",
            "-p",
            str(resolver.port),
            "www.example.com",
            "A",
            "+short",
            "+retry=0",
            "+time=2",
            *transport,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        assert out.decode().split() == ["192.0.2.10"]


def _question(name: str) -> wire.Query:
    return wire.parse_query(dns.message.make_query(name, "A").to_wire())


class _Outcomes:
    """Records what UpstreamPool.ask hands a waiter, once per call, and can wait for the count."""

    def __init__(self) -> None:
        self.calls: list[tuple[wire.Answer | None, Exception | None]] = []
        self.arrived = asyncio.Event()

    def __call__(self, answer, error) -> None:
        self.calls.append((answer, error))
        self.arrived.set()


async def test_questions_waiting_when_the_pool_closes_fail_once_and_no_socket_is_left(upstream):
    upstream.drop("lost.example.com")
    async with FakeUpstream() as second:
        second.drop()
        pool = forwarding.UpstreamPool(
            [forwarding.parse_address(upstream.address), forwarding.parse_address(second.address)], timeout_seconds=5.0
        )
        outcome = _Outcomes()
        pool.ask(_question("lost.example.com"), outcome)
        await until(lambda: upstream.count("lost.example.com"), 2)  # the query arrived and waits for its reply
        assert not outcome.calls
        pool.close()  # no failover to the second upstream, which is closing too
        [(answer, error)] = outcome.calls
        assert answer is None and isinstance(error, forwarding.AllUpstreamsFailed)
        assert second.count() == 0
        assert all(not u._sockets and not u._retired for u in pool.upstreams)
        assert not pool.asking
        with pytest.raises(forwarding.UpstreamError):  # a closed pool answers at once, opening nothing
            await pool.resolve(_question("www.example.com"))
        assert all(not u._sockets for u in pool.upstreams)


async def test_a_waiter_that_fails_does_not_cost_the_others_their_answer(upstream, caplog):
    pool = forwarding.UpstreamPool([forwarding.parse_address(upstream.address)])
    try:

        def broken(answer, error):
            raise RuntimeError("a bug in a waiter")

        outcome = _Outcomes()
        pool.ask(_question("www.example.com"), broken)
        pool.ask(_question("WWW.example.com"), outcome)  # the same question: it waits for the first
        await asyncio.wait_for(outcome.arrived.wait(), 2)
        [(answer, error)] = outcome.calls
        assert error is None and answer.rcode == wire.NOERROR
        assert pool.coalesced == 1 and upstream.count("www.example.com") == 1
        assert "internal error handing out an upstream answer" in caplog.text
    finally:
        pool.close()


async def test_questions_beyond_the_in_flight_bound_fail_at_once(upstream):
    upstream.delay(0.3, "www.example.com")
    pool = forwarding.UpstreamPool([forwarding.parse_address(upstream.address)], max_in_flight=1)
    try:
        first, second = _Outcomes(), _Outcomes()
        pool.ask(_question("www.example.com"), first)
        upstream.answer("other.example.com", "A", "192.0.2.2")
        pool.ask(_question("other.example.com"), second)
        [(answer, error)] = second.calls  # before ask returned: nothing was sent
        assert answer is None and "too many queries in flight upstream" in str(error)
        assert upstream.count("other.example.com") == 0
        await asyncio.wait_for(first.arrived.wait(), 2)
        assert first.calls[0][0].rcode == wire.NOERROR
    finally:
        pool.close()


async def test_truncated_answers_open_at_most_max_tcp_exchanges_connections(upstream):
    # An upstream (or a spoofer) that truncates every answer must not get a connection per miss.
    upstream.truncate()
    gate = asyncio.Event()

    async def hold_tcp(query, transport):
        if transport == "tcp":
            await gate.wait()
        return "default"

    upstream.hook = hold_tcp
    pool = forwarding.UpstreamPool(
        [forwarding.parse_address(upstream.address)], timeout_seconds=5.0, max_tcp_exchanges=2
    )
    try:
        outcomes = [_Outcomes() for _ in range(5)]
        for i, outcome in enumerate(outcomes):
            upstream.answer(f"t{i}.example.com", "A", "192.0.2.3")
            pool.ask(_question(f"t{i}.example.com"), outcome)
        await until(lambda: sum(len(o.calls) for o in outcomes) == 3, 3)  # beyond the bound: failed at once
        failed = [o.calls[0][1] for o in outcomes if o.calls]
        assert all(str(error) == f"no upstream answered: {upstream.address} TCP limit reached" for error in failed)
        assert upstream.count(transport="tcp") <= 2
        gate.set()
        await until(lambda: all(o.calls for o in outcomes), 3)
        answered = [o.calls[0][0] for o in outcomes if o.calls[0][0] is not None]
        assert len(answered) == 2 and all(answer.rcode == wire.NOERROR for answer in answered)
        assert upstream.count(transport="tcp") == 2 and not pool.asking
    finally:
        pool.close()


async def test_a_bug_in_handling_a_reply_ends_the_question_and_leaves_nothing_waiting(upstream):
    # A negative max TTL makes every record's TTL one that cannot be written back (struct.error):
    # a stand-in for a bug in handling a reply, in the compiled build as well.
    pool = forwarding.UpstreamPool(
        [forwarding.parse_address(upstream.address)], limits=forwarding.AnswerLimits(max_ttl=-1)
    )
    try:
        first, second = _Outcomes(), _Outcomes()
        pool.ask(_question("www.example.com"), first)
        pool.ask(_question("www.example.com"), second)  # coalesced: it gets the same outcome
        await asyncio.wait_for(second.arrived.wait(), 2)
        for outcome in (first, second):
            [(answer, error)] = outcome.calls
            assert answer is None and isinstance(error, struct.error)
        assert not pool.asking
        upstream.answer("other.example.com", "A", "192.0.2.4")
        pool.limits = forwarding.AnswerLimits()  # the pool goes on answering
        assert (await pool.resolve(_question("other.example.com"))).rcode == wire.NOERROR
    finally:
        pool.close()
