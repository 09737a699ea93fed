"""DoH's HTTP/2 frame by frame (an h2 client): many requests on a connection, flow control, hostile frames."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import socket
import struct
from collections.abc import Callable

import dns.message
import dns.rcode
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack

from tests.integration.test_encrypted import doh_port, encrypted, tls_client, wire_query
from tests.support.harness import until
from tests.support.testca import SERVER_NAME, CertificateAuthority

PADDED = 468  # an answer to a query with EDNS is padded to a multiple of this (RFC 8467)


class Client:
    """One HTTP/2 connection of an h2 client: requests written as a test asks, events gathered as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: dict[int, int]):
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.h2.initiate_connection()
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: list[int] = []  # streams in the order their answers ended
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.on_data: Callable[[h2.events.DataReceived], None] = lambda event: None

    @classmethod
    async def connect(cls, port: int, ca: CertificateAuthority, buffers: int = 0, **settings: int) -> Client:
        """A connection, its socket's kernel buffers of `buffers` bytes each when given."""
        sock = socket.socket()
        if buffers:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls_client(ca, ["h2"]), server_hostname=SERVER_NAME
        )
        codes = {getattr(h2.settings.SettingCodes, name.upper()): value for name, value in settings.items()}
        return cls(reader, writer, codes)

    def get(self, query: bytes, path: str = "/dns-query", **priority: int) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        dns_parameter = base64.urlsafe_b64encode(query).rstrip(b"=").decode()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", SERVER_NAME)]
        self.h2.send_headers(stream_id, [*headers, (":path", f"{path}?dns={dns_parameter}")], True, **priority)
        return stream_id

    def post(self, query: bytes, pieces: int = 1, pad_length: int | None = None) -> int:
        """A POST, its body in as many DATA frames, the last one padded."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", SERVER_NAME), (":path", "/dns-query")]
        self.h2.send_headers(stream_id, [*headers, ("content-type", "application/dns-message")])
        cut = [len(query) * n // pieces for n in range(pieces + 1)]
        for n in range(pieces):
            last = n == pieces - 1
            self.h2.send_data(stream_id, query[cut[n] : cut[n + 1]], last, pad_length if last else None)
        return stream_id

    def continued(self) -> bytes:
        """The HEADERS frame h2 made last, its block cut in two: HEADERS and a CONTINUATION frame."""
        made = self.h2.data_to_send()
        length, kind, flags, stream_id = int.from_bytes(made[:3]), made[3], made[4], made[5:9]
        assert kind == 0x1 and flags & 0x4 and len(made) == 9 + length
        block = made[9:]
        half = len(block) // 2
        first = (half << 8 | 0x1).to_bytes(4) + bytes([flags & ~0x4]) + stream_id + block[:half]
        return first + ((length - half) << 8 | 0x9).to_bytes(4) + b"\x04" + stream_id + block[half:]

    async def send(self, raw: bytes = b"") -> None:
        self.writer.write(self.h2.data_to_send() + raw)
        await self.writer.drain()

    async def until(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        """Read and take in frames until condition() holds (TimeoutError otherwise), or the server closed."""
        async with asyncio.timeout(timeout):
            while not condition():
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    return
                for event in self.h2.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        self.headers[event.stream_id] = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                        self.on_data(event)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.ended.append(event.stream_id)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self.terminated = event
                await self.send()

    def answer(self, stream_id: int) -> dns.message.Message:
        assert self.headers[stream_id][b":status"] == b"200"
        assert self.headers[stream_id][b"content-length"] == b"%d" % len(self.bodies[stream_id])
        return dns.message.from_wire(self.bodies[stream_id])

    def close(self) -> None:
        self.writer.close()


async def test_requests_on_one_connection_are_each_answered_once_whatever_their_frames(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, upstream):
        upstream.answer("slow.example.com", "A", "127.0.0.2").delay(0.3, "slow.example.com")
        client = await Client.connect(doh_port(resolver), ca)
        asked: dict[int, int] = {}  # stream -> DNS ID
        for n in range(30):
            asked[client.get(wire_query("www.example.com", query_id=n))] = n
        for n in range(30, 35):  # answered later, after the upstream's delay
            asked[client.get(wire_query("slow.example.com", query_id=n))] = n
        asked[client.post(wire_query("www.example.com", query_id=35))] = 35
        asked[client.post(wire_query("www.example.com", query_id=37), pieces=3, pad_length=20)] = 37
        asked[client.get(wire_query("www.example.com", query_id=36), priority_weight=200, priority_depends_on=0)] = 36
        not_found = client.get(wire_query("www.example.com"), path="/other")
        reset = client.get(wire_query("slow.example.com", query_id=99))
        client.h2.reset_stream(reset)  # before its answer: none comes
        await client.send()
        asked[client.get(wire_query("www.example.com", query_id=38))] = 38
        await client.send(client.continued())  # a header block in two frames: h2's path
        await client.until(lambda: len(client.ended) == len(asked) + 1)
        assert client.headers[not_found][b":status"] == b"404"
        for stream_id, query_id in asked.items():
            answer = client.answer(stream_id)
            assert answer.id == query_id and answer.rcode() == dns.rcode.NOERROR
        assert sorted(client.ended) == sorted([*asked, not_found])

        # The client makes its HPACK table smaller: the next answers' blocks say so first (RFC 7541 4.2).
        client.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
        more = [client.get(wire_query("www.example.com", query_id=n)) for n in range(40, 43)]
        await client.send()
        await client.until(lambda: all(stream_id in client.ended for stream_id in more))
        assert [client.answer(stream_id).id for stream_id in more] == [40, 41, 42]
        assert reset not in client.headers and not client.closed
        client.close()
        rejected = {reason: n for (_, reason), n in resolver.worker.counters.rejected.items()}
        assert rejected == {"http_not_found": 1}


async def test_frames_cut_anywhere_across_reads_are_put_together(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        client = await Client.connect(doh_port(resolver), ca)
        asked = {client.get(wire_query("www.example.com", query_id=n)): n for n in range(3)}
        asked[client.post(wire_query("www.example.com", query_id=3), pieces=3, pad_length=5)] = 3
        made = client.h2.data_to_send()  # the preface too
        for start in range(0, len(made), 7):  # a TLS record, and so mostly a read, of 7 bytes each
            client.writer.write(made[start : start + 7])
            await client.writer.drain()
        await client.until(lambda: len(client.ended) == len(asked))
        assert {stream_id: client.answer(stream_id).id for stream_id in asked} == asked
        client.close()


async def test_a_post_body_too_long_is_answered_413_and_the_connection_goes_on(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        client = await Client.connect(doh_port(resolver), ca)
        stream_id = client.h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", SERVER_NAME), (":path", "/dns-query")]
        client.h2.send_headers(stream_id, [*headers, ("content-type", "application/dns-message")])
        body = bytes(70_000)
        while body:  # as fast as the server gives the windows back
            room = min(client.h2.local_flow_control_window(stream_id), 16384, len(body))
            if room:
                client.h2.send_data(stream_id, body[:room], end_stream=room == len(body))
                body = body[room:]
                await client.send()
            else:
                await client.until(lambda: client.h2.local_flow_control_window(stream_id) > 0)
        await client.until(lambda: stream_id in client.ended)
        assert client.headers[stream_id][b":status"] == b"413"
        after = client.get(wire_query("www.example.com", query_id=3))
        await client.send()
        await client.until(lambda: after in client.ended)
        assert client.answer(after).id == 3 and not client.closed
        assert dict(resolver.worker.counters.rejected) == {("doh", "http_too_large"): 1}
        client.close()


async def test_answers_wait_for_the_clients_flow_control_windows(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        # A stream window of 10 bytes: the padded answer comes 10 bytes at a time, as the client makes room.
        client = await Client.connect(doh_port(resolver), ca, initial_window_size=10)
        await client.send()
        await client.until(lambda: client.h2.remote_settings.initial_window_size == 65535)  # the server's settings

        def room(event: h2.events.DataReceived) -> None:
            assert len(event.data) <= 10
            if not event.stream_ended:
                client.h2.increment_flow_control_window(len(event.data), event.stream_id)

        client.on_data = room
        first = client.get(wire_query("www.example.com", use_edns=0))
        await client.send()
        await client.until(lambda: first in client.ended)
        assert len(client.bodies[first]) == PADDED and client.answer(first).rcode() == dns.rcode.NOERROR

        # The connection's window (65,535 bytes, never widened by this client): 140 answers of 468
        # bytes fit in it, the rest wait for a WINDOW_UPDATE. The h2 client would end the connection
        # on a byte past its window.
        client.on_data = lambda event: None
        client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        batch = [client.get(wire_query("www.example.com", query_id=n, use_edns=0)) for n in range(90)]
        await client.send()
        await client.until(lambda: all(stream_id in client.ended for stream_id in batch))
        held = [client.get(wire_query("www.example.com", query_id=n, use_edns=0)) for n in range(90, 150)]
        await client.send()
        fits = (65535 - PADDED * 91) // PADDED
        await client.until(lambda: sum(stream_id in client.ended for stream_id in held) == fits)
        assert client.h2.inbound_flow_control_window < PADDED
        client.h2.increment_flow_control_window(65535)
        await client.send()
        await client.until(lambda: all(stream_id in client.ended for stream_id in held))
        assert [client.answer(stream_id).id for stream_id in held] == list(range(90, 150))
        assert not client.closed and not resolver.worker.counters.rejected
        client.close()


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack("!IBI", len(payload) << 8 | kind, flags, stream_id) + payload


async def test_hostile_http2_ends_its_connection_with_goaway_and_is_counted(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, upstream):
        upstream.drop("slow.example.com")  # its requests stay open
        port = doh_port(resolver)
        rejected = resolver.worker.counters.rejected

        async def ended_with(client: Client, code: h2.errors.ErrorCodes) -> None:
            await client.until(lambda: client.closed)
            assert client.terminated is not None and client.terminated.error_code == code
            client.close()

        # More streams open at once than the server's SETTINGS allow (sent before the client read them).
        client = await Client.connect(port, ca)
        for n in range(101):
            client.get(wire_query("slow.example.com", query_id=n))
        await client.send()
        await ended_with(client, h2.errors.ErrorCodes.PROTOCOL_ERROR)

        # A header list past the server's MAX_HEADER_LIST_SIZE, in one HEADERS frame.
        client = await Client.connect(port, ca)
        await client.send()
        await client.until(lambda: client.h2.remote_settings.max_header_list_size is not None)
        stream_id = client.h2.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", SERVER_NAME), (":path", "/dns-query")]
        headers.append(("x-pad", "a" * 17_000))
        client.h2.send_headers(stream_id, headers, end_stream=True)
        await client.send()
        await ended_with(client, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

        # A header block that is not HPACK (an index past both tables).
        client = await Client.connect(port, ca)
        await client.send(frame(0x1, 0x5, 1, b"\xff\x7f"))
        await ended_with(client, h2.errors.ErrorCodes.COMPRESSION_ERROR)

        # A request on a stream ID below one already used, and a WINDOW_UPDATE of 0 on a waiting request.
        for bad in (frame(0x1, 0x5, 1, b"\x82\x87\x84"), frame(0x8, 0, 3, bytes(4))):
            waiting = await Client.connect(port, ca)
            waiting.get(wire_query("www.example.com"))  # stream 1
            waiting.get(wire_query("slow.example.com"))  # stream 3, waiting
            await waiting.send()
            await waiting.until(lambda: 1 in waiting.ended)  # noqa: B023 (awaited here)
            await waiting.send(bad)
            await ended_with(waiting, h2.errors.ErrorCodes.PROTOCOL_ERROR)

        # DATA after the request's END_STREAM (h2 judges it: a connection error).
        client = await Client.connect(port, ca)
        stream_id = client.post(wire_query("slow.example.com"))
        await client.send(frame(0x0, 0x1, stream_id, b"more"))
        await ended_with(client, h2.errors.ErrorCodes.PROTOCOL_ERROR)

        assert rejected[("doh", "http_malformed")] == 6
        client = await Client.connect(port, ca)
        stream_id = client.get(wire_query("www.example.com", query_id=7))
        await client.send()
        await client.until(lambda: stream_id in client.ended)
        assert client.answer(stream_id).id == 7
        client.close()


async def test_an_idle_connection_is_closed_but_not_while_an_answer_is_owed(tmp_path):
    async with encrypted(tmp_path, "limits: {tcp_idle_timeout_seconds: 0.3}\n") as (resolver, ca, upstream):
        upstream.answer("slow.example.com", "A", "127.0.0.2").delay(1.0, "slow.example.com")
        client = await Client.connect(doh_port(resolver), ca)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        slow = client.get(wire_query("slow.example.com", query_id=5))
        await client.send()
        await client.until(lambda: slow in client.ended)
        assert client.answer(slow).id == 5 and loop.time() - asked >= 1.0  # past three idle timeouts
        await client.until(lambda: client.closed)  # then idle: GOAWAY, and the server closes
        assert client.terminated is not None and client.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
        client.close()


async def test_mutated_frames_end_at_worst_their_own_connection(tmp_path, caplog):
    async with encrypted(tmp_path) as (resolver, ca, _):
        port = doh_port(resolver)
        shapes = random.Random(8484)
        for _ in range(60):
            client = await Client.connect(port, ca)
            client.get(wire_query("www.example.com", use_edns=0))
            client.post(wire_query("games.example.com"), pieces=2, pad_length=3)
            client.get(wire_query("www.example.com"), priority_weight=5)
            made = bytearray(client.h2.data_to_send())
            for _ in range(shapes.randint(1, 3)):  # past the preface, which h2 reads alone
                made[shapes.randrange(24, len(made))] = shapes.randrange(256)
            client.writer.write(bytes(made))
            await client.writer.drain()
            client.close()  # the server reads what came before the close first
            await until(lambda: not resolver.worker.doh.open, 5)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        client = await Client.connect(port, ca)
        stream_id = client.get(wire_query("www.example.com", query_id=1))
        await client.send()
        await client.until(lambda: stream_id in client.ended)
        assert client.answer(stream_id).id == 1
        client.close()


async def test_a_client_that_does_not_read_its_answers_is_not_read_either(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        client = await Client.connect(doh_port(resolver), ca, buffers=65536)  # fills sooner
        # Windows as wide as HTTP/2 allows, so that flow control holds nothing back.
        client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.h2.increment_flow_control_window(2**31 - 1 - 65535)
        first = client.get(wire_query("www.example.com", use_edns=0))  # the answer cached
        await client.send()
        await client.until(lambda: first in client.ended)
        # One header block of literals never indexed (the static table alone), the same bytes for
        # every request; the h2 client is bypassed, as it would not open more than 100 streams.
        dns_parameter = base64.urlsafe_b64encode(wire_query("www.example.com", use_edns=0)).rstrip(b"=")
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/dns-query?dns=" + dns_parameter)]
        block = hpack.Encoder().encode([(name, value, True) for name, value in headers])
        await until(lambda: len(resolver.worker.doh.open) == 1, 5)
        [connection] = resolver.worker.doh.open
        stream_id, written = first + 2, 0
        async with asyncio.timeout(30):
            while True:
                batch = b"".join(frame(0x1, 0x5, stream_id + 2 * n, block) for n in range(500))
                stream_id += 1000
                client.writer.write(batch)
                try:
                    await asyncio.wait_for(client.writer.drain(), 0.5)
                except TimeoutError:
                    break  # the server reads no more
                written += 500
        # Once the kernel's buffers and the transport's filled, the server read no more requests: most
        # of those written wait unread, and what it holds to send stays small.
        answered = sum(n for (_, transport, _), n in resolver.worker.counters.queries.items() if transport == "doh")
        assert answered < written / 2
        assert connection.transport.get_write_buffer_size() < 2**20
        client.writer.transport.abort()
