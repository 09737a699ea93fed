"""Trusted front-ends on real sockets: PROXY v2 and Client Subnet over UDP, TCP, DoT and DoH; untrusted and malformed.

The front-end is 127.0.0.3 (no school's address). School A is 127.0.0.1, school B 127.0.0.2;
A blocks games.example.com, B does not.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import pytest

from resolver.dataplane import proxyv2, wire
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver, until
from tests.support.testca import SERVER_NAME, make_ca

FRONT_END = "127.0.0.3"
LOOPBACK = socket.inet_aton("127.0.0.1")
TRUSTED = f'proxy_protocol: {{trusted: ["{FRONT_END}/32", "192.0.2.0/24"]}}\n'


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("games.example.com", "A", "127.0.0.1")
        yield up


def header(client: str, stream: bool = False) -> bytes:
    return proxyv2.make(socket.inet_aton(client), 40000, LOOPBACK, 53, stream)


def query(name: str = "games.example.com", query_id: int = 7, **kwargs: object) -> bytes:
    message = dns.message.make_query(name, "A", **kwargs)  # type: ignore[arg-type]
    message.id = query_id
    return message.to_wire()


async def udp(port: int, data: bytes, source: str) -> dns.message.Message:
    """One datagram from `source`; its answer."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        return dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 65535), 3))


async def tcp(port: int, data: bytes, source: str, prefix: bytes = b"") -> dns.message.Message | None:
    """A connection from `source` that sends `prefix`, then one framed query; the answer, or None when it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(prefix + wire.frame(data))
        await writer.drain()
        length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
        return dns.message.from_wire(await asyncio.wait_for(reader.readexactly(length), 3))
    except asyncio.IncompleteReadError:
        return None
    finally:
        writer.close()


async def test_a_trusted_front_ends_proxy_header_names_the_school_over_udp_and_tcp(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], TRUSTED) as resolver:
        port = resolver.port
        for send in (
            lambda client: udp(port, header(client) + query(), FRONT_END),
            lambda client: tcp(port, query(), FRONT_END, header(client, stream=True)),
        ):
            assert (await send("127.0.0.1")).rcode() == dns.rcode.NXDOMAIN  # school A blocks games
            assert (await send("127.0.0.2")).rcode() == dns.rcode.NOERROR  # school B does not
            assert (await send("127.0.0.9")).rcode() == dns.rcode.REFUSED  # nobody's
        # Without a header the front-end is its own client (no school): REFUSED, not an error.
        assert (await udp(port, query(), FRONT_END)).rcode() == dns.rcode.REFUSED
        assert (await tcp(port, query(), FRONT_END)).rcode() == dns.rcode.REFUSED
        # Several queries on one connection after its header, as dnsdist sends them.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FRONT_END, 0))
        writer.write(header("127.0.0.2", stream=True) + wire.frame(query(query_id=1)) + wire.frame(query(query_id=2)))
        for expected in (1, 2):
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            answer = dns.message.from_wire(await reader.readexactly(length))
            assert answer.id == expected and answer.rcode() == dns.rcode.NOERROR
        writer.close()
        counted = resolver.worker.counters.queries
        assert counted[("school-a", "udp", "blocked")] == counted[("school-a", "tcp", "blocked")] == 1
        assert not resolver.worker.counters.rejected


async def test_a_proxy_header_from_anyone_else_is_a_malformed_query_from_them(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], TRUSTED) as resolver:
        # From school A's own address, a header claiming school B: never believed. Its bytes are no
        # DNS query (the signature reads as opcode 1): NOTIMP to the sender, counted as malformed.
        answer = await udp(resolver.port, header("127.0.0.2") + query(), "127.0.0.1")
        assert answer.rcode() == dns.rcode.NOTIMP and answer.id == 0x0D0A
        assert resolver.worker.counters.malformed == 1
        assert not resolver.worker.counters.rejected
        # Nothing was answered as school B.
        assert not [key for key in resolver.worker.counters.queries if key[0] == "school-b"]


async def test_malformed_headers_from_a_trusted_front_end_are_dropped_counted_and_serving_goes_on(tmp_path, upstream):
    good = header("127.0.0.2")
    cut = [proxyv2.SIGNATURE, good[:20]]  # datagrams that end inside a header
    broken = [
        good[:12] + b"\x11" + good[13:],  # version 1 in the binary form
        good[:12] + b"\x2f" + good[13:],  # command 15
        good[:14] + b"\x00\x04" + good[16:],  # four bytes for two IPv4 addresses and ports
        good[:14] + b"\xff\xff" + good[16:],  # longer than any header
        good[:14] + struct.pack("!H", 12 + 3) + good[16:28] + b"\x01\x00\x09",  # a TLV longer than the header
    ]
    async with running_resolver(tmp_path, [upstream.address], TRUSTED) as resolver:
        rejected = resolver.worker.counters.rejected
        # From one socket, every broken datagram and then a good one: the good one's is the only answer.
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((FRONT_END, 0))
            sock.setblocking(False)
            for datagram in [*cut, *(bad + query() for bad in broken), good + query(query_id=99)]:
                await loop.sock_sendto(sock, datagram, ("127.0.0.1", resolver.port))
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(sock, 65535), 3))
            assert answer.id == 99 and answer.rcode() == dns.rcode.NOERROR
        assert rejected[("udp", "proxy_malformed")] == len(cut) + len(broken)
        for bad in broken:  # (a stream cut short waits for the rest, until its idle timeout)
            assert await tcp(resolver.port, query(), FRONT_END, bad) is None
        assert rejected[("tcp", "proxy_malformed")] == len(broken)
        assert (await tcp(resolver.port, query(), FRONT_END, header("127.0.0.2", stream=True))).rcode() == 0
        assert resolver.worker.counters.malformed == 0 and resolver.worker.counters.internal_errors == 0


async def test_a_trusted_front_ends_client_subnet_names_the_school_and_nobody_elses_does(tmp_path, upstream):
    def with_subnet(address: str, prefix: int = 32) -> bytes:
        return query(use_edns=0, options=[dns.edns.ECSOption(address, prefix)])

    async with running_resolver(tmp_path, [upstream.address], TRUSTED) as resolver:
        port = resolver.port
        for send in (udp, tcp):
            assert (await send(port, with_subnet("127.0.0.1"), FRONT_END)).rcode() == dns.rcode.NXDOMAIN
            assert (await send(port, with_subnet("127.0.0.2"), FRONT_END)).rcode() == dns.rcode.NOERROR
            # Source prefix 0: the client asked that no address be used; the front-end's own counts.
            assert (await send(port, with_subnet("0.0.0.0", 0), FRONT_END)).rcode() == dns.rcode.REFUSED
            # From school A itself, a subnet claiming school B is ignored.
            assert (await send(port, with_subnet("127.0.0.2"), "127.0.0.1")).rcode() == dns.rcode.NXDOMAIN
        # Once a PROXY header has named the client, the query's own subnet is the client's say, not the front-end's.
        answer = await udp(port, header("127.0.0.1") + with_subnet("127.0.0.2"), FRONT_END)
        assert answer.rcode() == dns.rcode.NXDOMAIN
        # The upstream never sees a client's subnet: schooldns makes its own queries.
        assert all(not dns.message.from_wire(call.raw).options for call in upstream.calls)


async def test_a_proxy_header_before_tls_names_the_client_of_a_dot_connection(tmp_path, upstream):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    dot = 'dot: {listen: ["127.0.0.1:0"], cert_file: tls/server.pem, key_file: tls/server.key}\n'
    async with running_resolver(tmp_path, [upstream.address], TRUSTED + dot) as resolver:
        port = resolver.worker.tls_addresses["dot"][0][1]
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        loop = asyncio.get_running_loop()

        async def ask(source: str, prefix: bytes, pieces: int = 1) -> dns.message.Message:
            sock = socket.socket()
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            step = -(-len(prefix) // pieces) if prefix else 1
            for start in range(0, len(prefix), step):  # a header may come in pieces
                await loop.sock_sendall(sock, prefix[start : start + step])
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname=SERVER_NAME)
            writer.write(wire.frame(query()))
            length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
            answer = dns.message.from_wire(await reader.readexactly(length))
            writer.close()
            return answer

        assert (await ask(FRONT_END, header("127.0.0.1", stream=True))).rcode() == dns.rcode.NXDOMAIN
        assert (await ask(FRONT_END, header("127.0.0.2", stream=True), pieces=3)).rcode() == dns.rcode.NOERROR
        assert (await ask(FRONT_END, b"")).rcode() == dns.rcode.REFUSED  # no header: the front-end itself
        assert resolver.worker.counters.queries[("school-b", "dot", "forwarded")] == 1
        # From an untrusted address the header is just bytes before the handshake: it fails, counted.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await ask("127.0.0.1", header("127.0.0.2", stream=True))
        await until(lambda: resolver.worker.counters.rejected[("dot", "tls_handshake")] == 1, 5)


TLS_LISTENERS = (
    'dot: {listen: ["127.0.0.1:0"], cert_file: tls/server.pem, key_file: tls/server.key}\n'
    'doh: {listen: ["127.0.0.1:0"], cert_file: tls/server.pem, key_file: tls/server.key}\n'
)


def with_subnet(address: str, prefix: int = 32, query_id: int = 7) -> dns.message.Message:
    message = dns.message.make_query(
        "games.example.com", "A", use_edns=0, options=[dns.edns.ECSOption(address, prefix)]
    )
    message.id = query_id
    return message


async def kdig_doh(port: int, ca_file: str, source: str, subnet: str) -> str:
    """kdig over DoH (HTTP/2) from `source` with a Client Subnet: its output."""
    process = await asyncio.create_subprocess_exec(
        "kdig", "-b", source, "@127.0.0.1", "-p", str(port), "+https", f"+tls-ca={ca_file}",
        f"+tls-hostname={SERVER_NAME}", f"+subnet={subnet}", "games.example.com", "A",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, out
    return out.decode()


async def tls_from(
    port: int, context: ssl.SSLContext, source: str, before: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection from `source` that sends `before` ahead of its handshake."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, before)
    return await asyncio.open_connection(sock=sock, ssl=context, server_hostname=SERVER_NAME)


async def test_a_trusted_front_ends_client_subnet_names_the_school_over_dot_and_doh(tmp_path, upstream):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    async with running_resolver(tmp_path, [upstream.address], TRUSTED + TLS_LISTENERS) as resolver:
        dot = resolver.worker.tls_addresses["dot"][0][1]
        doh = resolver.worker.tls_addresses["doh"][0][1]
        context = ssl.create_default_context(cafile=str(ca.ca_file))

        async def over_dot(message: dns.message.Message, source: str) -> dns.message.Message:
            return await dns.asyncquery.tls(
                message, "127.0.0.1", port=dot, source=source, ssl_context=context, server_hostname=SERVER_NAME,
                timeout=3,
            )  # fmt: skip

        # dnspython's DoT client from the front-end: each query's subnet picks the school.
        assert (await over_dot(with_subnet("127.0.0.1"), FRONT_END)).rcode() == dns.rcode.NXDOMAIN
        answer = await over_dot(with_subnet("127.0.0.2"), FRONT_END)
        assert answer.rcode() == dns.rcode.NOERROR and not any(o.otype == dns.edns.ECS for o in answer.options)
        assert (await over_dot(with_subnet("0.0.0.0", 0), FRONT_END)).rcode() == dns.rcode.REFUSED  # its own
        # From school A itself, a subnet claiming school B is ignored.
        assert (await over_dot(with_subnet("127.0.0.2"), "127.0.0.1")).rcode() == dns.rcode.NXDOMAIN

        # One connection carries many devices' queries (dnsdist re-encrypting): each is answered for its own.
        reader, writer = await tls_from(dot, context, FRONT_END)
        for query_id, address in enumerate(["127.0.0.2", "127.0.0.1", "127.0.0.2", "127.0.0.1"]):
            writer.write(wire.frame(with_subnet(address, query_id=query_id).to_wire()))
        answers = {}
        for _ in range(4):
            length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
            answer = dns.message.from_wire(await reader.readexactly(length))
            answers[answer.id] = answer.rcode()
        writer.close()
        assert answers == {0: dns.rcode.NOERROR, 1: dns.rcode.NXDOMAIN, 2: dns.rcode.NOERROR, 3: dns.rcode.NXDOMAIN}

        # kdig's DoH client (HTTP/2): the same.
        ca_file = str(ca.ca_file)
        assert "NXDOMAIN" in await kdig_doh(doh, ca_file, FRONT_END, "127.0.0.1/32")
        out = await kdig_doh(doh, ca_file, FRONT_END, "127.0.0.2/32")
        assert "NOERROR" in out and "CLIENT-SUBNET" not in out.upper(), out
        assert "REFUSED" in await kdig_doh(doh, ca_file, FRONT_END, "0.0.0.0/0")
        assert "NXDOMAIN" in await kdig_doh(doh, ca_file, "127.0.0.1", "127.0.0.2/32")

        counted = resolver.worker.counters.queries
        assert counted[("school-b", "dot", "forwarded")] + counted[("school-b", "dot", "cached")] == 3
        assert counted[("school-b", "doh", "cached")] == 1
        assert counted[("school-a", "dot", "blocked")] == 4 and counted[("school-a", "doh", "blocked")] == 2
        # The upstream never sees a client's subnet: schooldns makes its own queries.
        assert all(not dns.message.from_wire(call.raw).options for call in upstream.calls)
        assert not resolver.worker.counters.rejected


def http_post(message: dns.message.Message) -> bytes:
    body = message.to_wire()
    return (
        b"POST /dns-query HTTP/1.1\r\nhost: %s\r\ncontent-type: application/dns-message\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (SERVER_NAME.encode(), len(body), body)
    )


async def doh_post(
    port: int, context: ssl.SSLContext, source: str, before: bytes, message: dns.message.Message, inside: bytes = b""
) -> dns.message.Message:
    """A connection from `source` that sends `before` ahead of TLS, then `inside` and one HTTP/1.1 POST of `message`."""
    reader, writer = await tls_from(port, context, source, before)
    writer.write(inside + http_post(message))
    response = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    head, _, answer = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return dns.message.from_wire(answer)


async def test_a_proxy_header_before_tls_names_the_client_of_a_doh_connection(tmp_path, upstream):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    async with running_resolver(tmp_path, [upstream.address], TRUSTED + TLS_LISTENERS) as resolver:
        port = resolver.worker.tls_addresses["doh"][0][1]
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        plain = dns.message.make_query("games.example.com", "A")
        assert (
            await doh_post(port, context, FRONT_END, header("127.0.0.1", True), plain)
        ).rcode() == dns.rcode.NXDOMAIN
        assert (await doh_post(port, context, FRONT_END, header("127.0.0.2", True), plain)).rcode() == dns.rcode.NOERROR
        assert (await doh_post(port, context, FRONT_END, b"", plain)).rcode() == dns.rcode.REFUSED  # the front-end
        # Once the header has named the client, a subnet in its queries is the client's own say.
        answer = await doh_post(port, context, FRONT_END, header("127.0.0.1", True), with_subnet("127.0.0.2"))
        assert answer.rcode() == dns.rcode.NXDOMAIN
        assert resolver.worker.counters.queries[("school-b", "doh", "forwarded")] == 1
        # From an untrusted address the header is just bytes before the handshake: it fails, counted.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await doh_post(port, context, "127.0.0.1", header("127.0.0.2", True), plain)
        await until(lambda: resolver.worker.counters.rejected[("doh", "tls_handshake")] == 1, 5)


async def test_a_proxy_header_at_the_start_of_the_tls_stream_names_the_client_as_dnsdist_sends_it(tmp_path, upstream):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    async with running_resolver(tmp_path, [upstream.address], TRUSTED + TLS_LISTENERS) as resolver:
        dot = resolver.worker.tls_addresses["dot"][0][1]
        doh = resolver.worker.tls_addresses["doh"][0][1]
        context = ssl.create_default_context(cafile=str(ca.ca_file))
        rejected = resolver.worker.counters.rejected

        async def over_dot(inside: bytes, source: str = FRONT_END) -> dns.message.Message | None:
            reader, writer = await tls_from(dot, context, source)
            try:
                for start in range(0, len(inside), 10):  # a header may come in pieces
                    writer.write(inside[start : start + 10])
                    await writer.drain()
                length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
                return dns.message.from_wire(await reader.readexactly(length))
            except asyncio.IncompleteReadError:
                return None
            finally:
                writer.close()

        plain = dns.message.make_query("games.example.com", "A")
        for client, rcode in (("127.0.0.1", dns.rcode.NXDOMAIN), ("127.0.0.2", dns.rcode.NOERROR)):
            answer = await over_dot(header(client, stream=True) + wire.frame(query()))
            assert answer is not None and answer.rcode() == rcode
            answer = await doh_post(doh, context, FRONT_END, b"", plain, inside=header(client, stream=True))
            assert answer.rcode() == rcode
        # The header named the client: a subnet in the query after it is the client's own say.
        answer = await over_dot(header("127.0.0.1", stream=True) + wire.frame(with_subnet("127.0.0.2").to_wire()))
        assert answer is not None and answer.rcode() == dns.rcode.NXDOMAIN
        # A malformed header inside TLS from the front-end: the connection closed, counted.
        broken = header("127.0.0.2", stream=True)
        broken = broken[:12] + b"\x11" + broken[13:]  # version 1 in the binary form
        assert await over_dot(broken + wire.frame(query())) is None
        reader, writer = await tls_from(doh, context, FRONT_END)
        writer.write(broken + http_post(plain))
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        assert rejected == {("dot", "proxy_malformed"): 1, ("doh", "proxy_malformed"): 1}
        # From anyone else a header is no HTTP: closed, counted as such; nothing answered as school B.
        reader, writer = await tls_from(doh, context, "127.0.0.1")
        writer.write(header("127.0.0.2", stream=True) + http_post(plain))
        assert await asyncio.wait_for(reader.read(), 3) == b""
        writer.close()
        assert rejected[("doh", "http_malformed")] == 1
        counted = resolver.worker.counters.queries
        assert counted[("school-b", "dot", "forwarded")] == 1 and counted[("school-b", "doh", "cached")] == 1
        assert counted[("school-a", "dot", "blocked")] == 2 and counted[("school-a", "doh", "blocked")] == 1
