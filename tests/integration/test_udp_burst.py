"""A burst of UDP queries that arrives while the worker cannot read (stopped, as by a busy core) is answered whole."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time

import dns.message

from resolver.dataplane import server
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import serve

BURST = 3000  # the kernel's default receive buffer (208 KB) holds a few hundred of these
SLOT = 2048  # bytes a queued datagram of this size takes in a receive buffer, and some to spare


async def test_a_burst_sent_while_the_worker_is_stopped_is_answered_whole(tmp_path):
    async with FakeUpstream() as upstream, serve(tmp_path, upstream, workers=1) as served:
        query = dns.message.make_query("adult.example.com", "A").to_wire()  # blocked: answered by schooldns itself
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.size_receive_buffer(client)  # the listener's size: what this user may have (root: all of it)
        burst = min(BURST, client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // SLOT)
        client.connect(("127.0.0.1", served.dns_port))
        client.setblocking(False)
        os.kill(served.process.pid, signal.SIGSTOP)
        try:
            for number in range(burst):
                client.send(struct.pack("!H", number) + query[2:])
        finally:
            os.kill(served.process.pid, signal.SIGCONT)
        answered: set[int] = set()
        deadline = time.monotonic() + 10
        while len(answered) < burst and time.monotonic() < deadline:
            try:
                answered.add(struct.unpack_from("!H", client.recv(4096))[0])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        client.close()
        assert len(answered) == burst
