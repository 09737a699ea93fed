"""The DNS transports of server.py over real sockets: TCP framing and pipelining, idle timeout, bounds.

Beside tests/integration/test_forwarding.py (answers out of order, an idle connection closed, the
connection cap refusing): a query split or batched in TCP segments, a zero-length frame, the
pipelining bound pausing the reads, the idle timer sparing a connection that waits for its answer,
a closed connection freeing its place, and the bound on cache misses in flight.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.message
import dns.rcode
import pytest

from resolver.dataplane import repeats, wire
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver, until


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10")
        yield up


def _query(name: str, query_id: int) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = query_id
    return query.to_wire()


async def _read_answer(reader: asyncio.StreamReader) -> dns.message.Message:
    length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
    return dns.message.from_wire(await asyncio.wait_for(reader.readexactly(length), 3))


class _Gate:
    """A hook for the fake upstream that holds every UDP query until opened."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self, query, transport):
        await self.open.wait()
        return "default"


async def test_a_query_sent_a_byte_at_a_time_is_answered(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address]) as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        try:
            for byte in wire.frame(_query("www.example.com", 7)):
                writer.write(bytes([byte]))
                await writer.drain()
            answer = await _read_answer(reader)
            assert answer.id == 7 and answer.answer[0][0].to_text() == "192.0.2.10"
        finally:
            writer.close()


async def test_queries_in_one_segment_are_each_answered_in_a_frame_of_its_own(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address]) as resolver:
        await resolver.udp("www.example.com")  # cached: the TCP answers are made at once, in order
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        try:
            names = ["www.example.com", "adult.example.com", "www.example.com"]
            writer.write(b"".join(wire.frame(_query(name, 100 + i)) for i, name in enumerate(names)))
            answers = [await _read_answer(reader) for _ in names]
            assert [answer.id for answer in answers] == [100, 101, 102]
            assert [answer.rcode() for answer in answers] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR]
        finally:
            writer.close()


async def test_a_zero_length_frame_closes_the_connection(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address]) as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        writer.write(
            wire.frame(_query("adult.example.com", 1)) + b"\x00\x00" + wire.frame(_query("www.example.com", 2))
        )
        assert (await _read_answer(reader)).id == 1  # the frame before it is still answered
        assert await asyncio.wait_for(reader.read(), 3) == b""  # and nothing after it
        writer.close()
        assert (await resolver.tcp("www.example.com")).rcode() == dns.rcode.NOERROR


async def test_reading_pauses_at_the_pipelining_bound_and_resumes_as_answers_go_out(tmp_path, upstream):
    gate = _Gate()
    upstream.hook = gate
    async with running_resolver(tmp_path, [upstream.address], "limits: {tcp_max_pipelined: 2}\n") as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        try:
            names = [f"n{i}.example.com" for i in range(4)]
            writer.write(b"".join(wire.frame(_query(name, 200 + i)) for i, name in enumerate(names)))
            await until(lambda: upstream.count() == 2, 3)  # two misses in flight: the bound
            [connection] = resolver.worker.tcp.open
            assert connection.paused and connection.pending == 2
            assert upstream.count() == 2  # the other two queries wait, unread, in the buffer
            gate.open.set()
            answers = [await _read_answer(reader) for _ in names]
            assert sorted(answer.id for answer in answers) == [200, 201, 202, 203]
            assert upstream.count() == 4 and not connection.paused and connection.pending == 0
        finally:
            writer.close()


async def test_the_idle_timeout_spares_a_connection_waiting_for_its_answer(tmp_path, upstream):
    upstream.answer("slow.example.com", "A", "192.0.2.20").delay(0.6, "slow.example.com")
    config = "limits: {tcp_idle_timeout_seconds: 0.2}\n"
    async with running_resolver(tmp_path, [upstream.address], config) as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        try:
            writer.write(wire.frame(_query("slow.example.com", 9)))
            answer = await _read_answer(reader)  # three idle timeouts later
            assert answer.id == 9 and answer.answer[0][0].to_text() == "192.0.2.20"
            assert await asyncio.wait_for(reader.read(), 3) == b""  # idle once answered: closed
        finally:
            writer.close()


async def test_a_closed_connection_frees_its_place_under_the_cap(tmp_path, upstream):
    async with running_resolver(tmp_path, [upstream.address], "limits: {tcp_max_connections: 1}\n") as resolver:
        reader, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        writer.write(wire.frame(_query("www.example.com", 1)))
        assert (await _read_answer(reader)).id == 1
        writer.close()
        await until(lambda: not resolver.worker.tcp.open, 3)
        answer = await resolver.tcp("www.example.com")
        assert answer.rcode() == dns.rcode.NOERROR
        assert resolver.worker.counters.dropped["tcp_connection_limit"] == 0


async def test_one_schools_misses_beyond_its_share_are_dropped_and_another_school_is_answered(tmp_path, upstream):
    upstream.answer("held.example.com", "A", "192.0.2.1").answer("b.example.com", "A", "192.0.2.3")
    gate = _Gate()

    async def hold_one_name(query, transport):
        return await gate(query, transport) if query.question[0].name.to_text() == "held.example.com." else "default"

    upstream.hook = hold_one_name
    extra = "limits: {max_queries_in_flight: 10, max_queries_in_flight_per_school: 1}\n"
    async with running_resolver(tmp_path, [upstream.address], extra) as resolver:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as school_a:  # 127.0.0.1: school A
            school_a.setblocking(False)
            await loop.sock_sendto(school_a, _query("held.example.com", 1), ("127.0.0.1", resolver.port))
            await until(lambda: resolver.worker.in_flight.count == 1, 3)
            await loop.sock_sendto(school_a, _query("other.example.com", 2), ("127.0.0.1", resolver.port))
            await until(lambda: resolver.worker.counters.dropped["school_in_flight_limit"] == 1, 3)
            assert upstream.count("other.example.com") == 0
            # School B (127.0.0.2) has its own share: its miss is asked and answered meanwhile.
            answer = await resolver.udp("b.example.com", source="127.0.0.2")
            assert answer.answer[0][0].to_text() == "192.0.2.3"
            gate.open.set()
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(school_a, 65535), 3))
            assert answer.id == 1 and answer.rcode() == dns.rcode.NOERROR
        assert resolver.worker.counters.dropped["udp_in_flight_limit"] == 0


async def test_misses_beyond_the_in_flight_bound_are_dropped_and_counted(tmp_path, upstream):
    upstream.answer("one.example.com", "A", "192.0.2.1").answer("two.example.com", "A", "192.0.2.2")
    gate = _Gate()
    upstream.hook = gate
    async with running_resolver(tmp_path, [upstream.address], "limits: {max_queries_in_flight: 1}\n") as resolver:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            await loop.sock_sendto(client, _query("one.example.com", 1), ("127.0.0.1", resolver.port))
            await until(lambda: resolver.worker.in_flight.count == 1, 3)
            await loop.sock_sendto(client, _query("two.example.com", 2), ("127.0.0.1", resolver.port))
            await until(lambda: resolver.worker.counters.dropped["udp_in_flight_limit"] == 1, 3)
            assert upstream.count("two.example.com") == 0  # dropped before anything was asked
            gate.open.set()
            answer = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(client, 65535), 3))
            assert answer.id == 1 and answer.rcode() == dns.rcode.NOERROR
            await until(lambda: resolver.worker.in_flight.count == 0, 3)
            # Its place is free again: the next miss is asked.
            upstream.hook = None
            assert (await resolver.udp("two.example.com")).answer[0][0].to_text() == "192.0.2.2"


async def test_a_school_over_its_rate_cap_is_shed_and_counted_while_another_school_is_answered(tmp_path, upstream):
    extra = "limits: {queries_per_second_per_school: 1}\n"  # a burst of 2, then one a second
    async with running_resolver(tmp_path, [upstream.address], extra) as resolver:
        dropped = resolver.worker.counters.dropped
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as school_a:  # 127.0.0.1: school A
            school_a.setblocking(False)
            for query_id in range(10):  # at once: far faster than a token a second comes back
                await loop.sock_sendto(school_a, _query("www.example.com", query_id), ("127.0.0.1", resolver.port))
            await until(lambda: dropped["school_rate_limit"] >= 5, 3)  # 8 unless the worker took seconds
            answered = 0
            while answered + dropped["school_rate_limit"] < 10:  # each query answered or dropped
                await asyncio.wait_for(loop.sock_recv(school_a, 65535), 3)
                answered += 1
            assert answered >= 2
        # School B (127.0.0.2) has its own bucket: answered over UDP and TCP meanwhile.
        assert (await resolver.udp("www.example.com", source="127.0.0.2")).rcode() == dns.rcode.NOERROR
        assert (await resolver.tcp("www.example.com", source="127.0.0.2")).rcode() == dns.rcode.NOERROR
        # School A over TCP: the query is dropped as well (counted), the connection stays open.
        before = dropped["school_rate_limit"]
        _, writer = await asyncio.open_connection("127.0.0.1", resolver.port)
        try:
            writer.write(b"".join(wire.frame(_query("www.example.com", n)) for n in range(5)))
            await until(lambda: dropped["school_rate_limit"] >= before + 3, 3)
            assert not writer.is_closing()
        finally:
            writer.close()
        assert resolver.worker.counters.queries[("school-b", "udp", "cached")] == 1


async def test_repeats_forgotten_with_their_generation_are_counted_on_the_metrics_page(tmp_path, upstream, monkeypatch):
    monkeypatch.setattr(repeats, "REPEAT_MAX", 4)  # two generations of 4
    async with running_resolver(tmp_path, [upstream.address], with_admin=True) as resolver:
        for number in range(12):  # blocked for school A: each kept for its repeats at once
            assert (await resolver.udp(f"n{number}.games.example.com")).rcode() == dns.rcode.NXDOMAIN
        # The 5th query made the first 4 the previous generation, the 9th dropped them.
        assert await resolver.metric("schooldns_repeats_discarded_total") == 4.0
        assert len(resolver.worker.pipeline.repeats) == 8
