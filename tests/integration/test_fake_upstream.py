"""Self-test of tests.support.fake_upstream over real loopback sockets with dnspython's client."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.fake_upstream import Call, FakeUpstream, Unframed

TIMEOUT = 1.0


def make_query(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


async def udp(up: FakeUpstream, query: dns.message.Message, timeout: float = TIMEOUT) -> dns.message.Message:
    return await dns.asyncquery.udp(query, up.host, port=up.port, timeout=timeout)


async def tcp(up: FakeUpstream, query: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(query, up.host, port=up.port, timeout=TIMEOUT)


class _OneDatagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.received.done():
            self.received.set_result(data)


async def raw_udp(up: FakeUpstream, *datagrams: bytes) -> bytes:
    """Send datagrams from one socket; return the first datagram that comes back."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        _OneDatagram, remote_addr=(up.host, up.port)
    )
    try:
        for datagram in datagrams:
            transport.sendto(datagram)
        return await asyncio.wait_for(protocol.received, TIMEOUT)
    finally:
        transport.close()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(size)


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def texts(response: dns.message.Message, rdtype: str) -> set[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return {rd.to_text() for rrset in response.answer if rrset.rdtype == wanted for rd in rrset}


async def test_address_and_answers_over_udp_and_tcp() -> None:
    async with FakeUpstream() as up:
        assert up.host == "127.0.0.1" and up.port > 0
        assert up.address == f"127.0.0.1:{up.port}"
        up.answer("example.com", "A", "192.0.2.1", ttl=300)
        up.answer("example.com.", "A", "192.0.2.2")
        up.answer("example.com", "MX", "10 mail.example.com")
        up.answer("example.com", "TXT", '"v=spf1 -all"')
        up.answer("example.com", "HTTPS", "1 . alpn=h2")

        for ask in (udp, tcp):
            response = await ask(up, make_query("example.com", "A"))
            assert response.rcode() == dns.rcode.NOERROR
            assert texts(response, "A") == {"192.0.2.1", "192.0.2.2"}
            assert response.answer[0].ttl == 300
        response = await udp(up, make_query("example.com", "MX"))
        assert texts(response, "MX") == {"10 mail.example.com."}
        response = await udp(up, make_query("example.com", "TXT"))
        assert texts(response, "TXT") == {'"v=spf1 -all"'}
        response = await udp(up, make_query("example.com", "HTTPS"))
        assert texts(response, "HTTPS") == {'1 . alpn="h2"'}


async def test_id_question_case_and_flags_are_preserved() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1")
        query = make_query("ExAmPlE.CoM", "A")
        query.id = 4242
        reply = dns.message.from_wire(await raw_udp(up, query.to_wire()))
        assert reply.id == 4242
        assert reply.question[0].name.labels == (b"ExAmPlE", b"CoM", b"")
        assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA
        assert reply.flags & dns.flags.RD
        assert texts(reply, "A") == {"192.0.2.1"}

        no_rd = make_query("example.com", "A")
        no_rd.flags &= ~dns.flags.RD
        reply = await udp(up, no_rd)
        assert not reply.flags & dns.flags.RD and reply.flags & dns.flags.RA


async def test_cname_is_chased_within_the_fake_data() -> None:
    async with FakeUpstream() as up:
        up.cname("www.example.com", "example.com", ttl=60).answer("example.com", "A", "192.0.2.1")
        up.cname("dangling.example.com", "missing.example.net")

        response = await udp(up, make_query("www.example.com", "A"))
        assert response.rcode() == dns.rcode.NOERROR
        assert [rr.rdtype for rr in response.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
        assert response.answer[0].ttl == 60
        assert texts(response, "CNAME") == {"example.com."}
        assert texts(response, "A") == {"192.0.2.1"}

        only_cname = await udp(up, make_query("www.example.com", "CNAME"))
        assert [rr.rdtype for rr in only_cname.answer] == [dns.rdatatype.CNAME]

        dangling = await udp(up, make_query("dangling.example.com", "A"))
        assert dangling.rcode() == dns.rcode.NXDOMAIN
        assert texts(dangling, "CNAME") == {"missing.example.net."}
        assert dangling.authority[0].name == dns.name.from_text("example.net")


async def test_nxdomain_and_nodata_carry_soa_with_configured_ttls() -> None:
    async with FakeUpstream() as up:
        up.nxdomain("gone.example.com", soa_ttl=120, soa_minimum=60)
        up.nodata("example.com", "AAAA", soa_ttl=90, soa_minimum=30)
        up.answer("example.com", "A", "192.0.2.1")

        gone = await udp(up, make_query("gone.example.com", "A"))
        assert gone.rcode() == dns.rcode.NXDOMAIN and not gone.answer
        (soa,) = gone.authority
        assert soa.rdtype == dns.rdatatype.SOA
        assert soa.name == dns.name.from_text("example.com")
        assert soa.ttl == 120 and soa[0].minimum == 60

        nodata = await udp(up, make_query("example.com", "AAAA"))
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].ttl == 90 and nodata.authority[0][0].minimum == 30

        implicit = await udp(up, make_query("example.com", "MX"))  # name exists, type does not
        assert implicit.rcode() == dns.rcode.NOERROR and not implicit.answer
        assert implicit.authority[0].rdtype == dns.rdatatype.SOA

        unknown = await udp(up, make_query("nothing.example", "A"))
        assert unknown.rcode() == dns.rcode.NXDOMAIN
        assert unknown.authority[0].name == dns.name.from_text("example")
        assert unknown.authority[0].ttl == 300


async def test_servfail_and_refuse() -> None:
    async with FakeUpstream() as up:
        up.servfail("broken.example.com").refuse("private.example.com")
        assert (await udp(up, make_query("broken.example.com"))).rcode() == dns.rcode.SERVFAIL
        assert (await tcp(up, make_query("private.example.com"))).rcode() == dns.rcode.REFUSED


async def test_delay_answers_pipelined_tcp_queries_out_of_order() -> None:
    async with FakeUpstream() as up:
        up.answer("slow.example", "A", "192.0.2.1").answer("fast.example", "A", "192.0.2.2")
        up.delay(0.05, name="slow.example")
        slow, fast = make_query("slow.example"), make_query("fast.example")
        slow.id, fast.id = 1, 2
        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:
            writer.write(frame(slow.to_wire()) + frame(fast.to_wire()))
            first = dns.message.from_wire(await read_frame(reader))
            second = dns.message.from_wire(await read_frame(reader))
            assert (first.id, second.id) == (2, 1)
            writer.write_eof()
            assert await reader.read() == b""  # server closes after EOF
        finally:
            writer.close()
            await writer.wait_closed()


async def test_truncate_sets_tc_on_udp_and_tcp_gets_everything() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1").truncate("example.com")
        over_udp = await udp(up, make_query("example.com"))
        assert over_udp.flags & dns.flags.TC and not over_udp.answer
        over_tcp = await tcp(up, make_query("example.com"))
        assert not over_tcp.flags & dns.flags.TC and texts(over_tcp, "A") == {"192.0.2.1"}


async def test_large_answers_are_truncated_to_the_client_limit() -> None:
    async with FakeUpstream() as up:
        up.large_answer("big.example", 100)  # ~1.6 kB
        up.large_answer("txt.example", 10, "TXT")  # ~0.6 kB
        assert (await udp(up, make_query("big.example"))).flags & dns.flags.TC
        assert (await udp(up, make_query("big.example", use_edns=0))).flags & dns.flags.TC
        big = await udp(up, make_query("big.example", use_edns=0, payload=4096))
        assert not big.flags & dns.flags.TC and len(texts(big, "A")) == 100
        assert (await udp(up, make_query("txt.example", "TXT"))).flags & dns.flags.TC
        assert len(texts(await tcp(up, make_query("big.example")), "A")) == 100


async def test_drop_never_replies() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1").drop("dropped.example")
        with pytest.raises(dns.exception.Timeout):
            await udp(up, make_query("dropped.example"), timeout=0.1)
        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:  # the dropped query is read but ignored; the next one is answered
            writer.write(frame(make_query("dropped.example").to_wire()))
            writer.write(frame(make_query("example.com").to_wire()))
            writer.write_eof()
            answered = dns.message.from_wire(await read_frame(reader))
            assert texts(answered, "A") == {"192.0.2.1"}
            assert await reader.read() == b""
        finally:
            writer.close()
            await writer.wait_closed()
        assert up.count("dropped.example") == 2


async def test_edns_is_echoed_only_when_the_query_has_it() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1")
        with_edns = await udp(up, make_query("example.com", use_edns=0, payload=4096, want_dnssec=True))
        assert with_edns.edns == 0 and with_edns.payload == 1232
        assert with_edns.ednsflags & dns.flags.DO
        plain = await udp(up, make_query("example.com"))
        assert plain.edns == -1
        assert [(c.do, c.payload) for c in up.calls] == [(True, 4096), (False, None)]


async def test_hook_controls_replies() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1")
        seen: list[str] = []

        def hook(query: dns.message.Message, transport: str) -> bytes | str | None:
            seen.append(transport)
            name = query.question[0].name.to_text()
            if name == "garbage.example.":
                return b"\xde\xad\xbe\xef"
            if name == "wrong-id.example.":
                reply = dns.message.make_response(query)
                reply.id = (query.id + 1) % 65536
                return reply.to_wire()
            if name == "unframed.example.":
                return Unframed(b"\x00\x02ok")
            if name == "silent.example.":
                return None
            return "default"

        up.hook = hook
        assert await raw_udp(up, make_query("garbage.example").to_wire()) == b"\xde\xad\xbe\xef"
        query = make_query("wrong-id.example")
        assert dns.message.from_wire(await raw_udp(up, query.to_wire())).id == (query.id + 1) % 65536
        assert texts(await tcp(up, make_query("example.com")), "A") == {"192.0.2.1"}

        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:
            writer.write(frame(make_query("silent.example").to_wire()))
            writer.write(frame(make_query("garbage.example").to_wire()))  # framed by the fake
            writer.write(frame(make_query("unframed.example").to_wire()))  # sent as-is
            writer.write_eof()
            assert await reader.read() == frame(b"\xde\xad\xbe\xef") + b"\x00\x02ok"
        finally:
            writer.close()
            await writer.wait_closed()
        assert seen == ["udp", "udp", "tcp", "tcp", "tcp", "tcp"]


async def test_hook_errors_are_raised_by_stop() -> None:
    up = FakeUpstream()
    await up.start()

    def hook(query: dns.message.Message, transport: str) -> None:
        raise RuntimeError("boom")

    up.hook = hook
    with pytest.raises(dns.exception.Timeout):
        await udp(up, make_query("example.com"), timeout=0.05)
    with pytest.raises(RuntimeError, match="boom"):
        await up.stop()


async def test_calls_counters_malformed_and_reset() -> None:
    async with FakeUpstream() as up:
        up.answer("example.com", "A", "192.0.2.1")
        query = make_query("Example.COM.", "AAAA")
        await raw_udp(up, b"\x00not dns", query.to_wire())  # garbage first, same socket
        await tcp(up, make_query("example.com", "A"))
        await udp(up, make_query("other.example", "A"))

        assert up.malformed == 1
        first = up.calls[0]
        assert first == Call(
            name="example.com",
            qtype="AAAA",
            transport="udp",
            id=query.id,
            do=False,
            payload=None,
            raw=query.to_wire(),
            peer=first.peer,
        )
        assert first.peer[0] == "127.0.0.1"
        assert up.count() == 3
        assert up.count("EXAMPLE.com.") == 2
        assert up.count("example.com", "A") == 1
        assert up.count(transport="udp") == 2
        assert up.count("example.com", transport="tcp") == 1

        up.reset()
        assert up.calls == [] and up.malformed == 0 and up.count() == 0
        assert texts(await udp(up, make_query("example.com")), "A") == {"192.0.2.1"}  # data kept
        assert up.count() == 1


async def test_stop_closes_open_connections_and_pending_replies() -> None:
    async with FakeUpstream() as up:
        up.answer("fast.example", "A", "192.0.2.1").delay(10, name="slow.example")
        slow, fast = make_query("slow.example").to_wire(), make_query("fast.example").to_wire()
        await raw_udp(up, slow, fast)  # fast's reply proves slow is pending
        reader, writer = await asyncio.open_connection(up.host, up.port)
        writer.write(frame(slow) + frame(fast))
        await read_frame(reader)
        assert up.count("slow.example") == 2
    try:
        assert await reader.read() == b""  # the fake closed the connection
    finally:
        writer.close()
        await writer.wait_closed()
