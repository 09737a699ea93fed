"""Batched UDP (recvmmsg / sendmmsg) and its one-datagram-per-call twin, on real loopback sockets."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time

import pytest

from resolver.dataplane import udpbatch

IMPLEMENTATIONS = [udpbatch.BatchedUdp, udpbatch.PlainUdp]
FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


def _bound(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def _receive_all(batch, expected: int, timeout: float = 3.0) -> list[list[tuple[bytes, str, object]]]:
    """receive() until `expected` datagrams came; one list of (payload, client, sender) per call that returned some."""
    calls, total = [], 0
    deadline = time.monotonic() + timeout
    while total < expected and time.monotonic() < deadline:
        payloads, clients, senders = batch.receive()
        assert len(payloads) == len(clients) == len(senders)
        if payloads:
            calls.append(list(zip(payloads, clients, senders, strict=True)))
            total += len(payloads)
    return calls


def test_this_machine_batches():
    # Linux's C library has recvmmsg and sendmmsg: the listeners get the batched implementation.
    with _bound(socket.AF_INET, "127.0.0.1") as sock:
        assert type(udpbatch.for_socket(sock)) is udpbatch.BatchedUdp


@pytest.mark.parametrize("family, host", FAMILIES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_datagrams_come_in_batches_and_answers_reach_each_sender(implementation, family, host):
    server = _bound(family, host)
    server.setblocking(False)
    clients = [_bound(family, host) for _ in range(3)]
    try:
        batch = implementation(server)
        assert batch.receive() == ([], [], [])  # nothing waits
        sent = {}
        for number in range(100):  # more than one batch
            client = clients[number % 3]
            payload = f"query {number} ".encode() * (1 + number % 7)
            client.sendto(payload, server.getsockname()[:2])
            sent[payload] = client.getsockname()[1]
        calls = _receive_all(batch, 100)
        assert len(calls[0]) == udpbatch.BATCH  # all that waited, up to the bound
        received = [item for call in calls for item in call]
        assert sorted(payload for payload, _, _ in received) == sorted(sent)
        assert {ipaddress.ip_address(client) for _, client, _ in received} == {ipaddress.ip_address(host)}

        assert batch.send([b"answer to " + payload for payload, _, _ in received], [s for _, _, s in received]) == 0
        for client in clients:
            client.settimeout(3)
            for _ in range(len([p for p, port in sent.items() if port == client.getsockname()[1]])):
                answer = client.recv(2048)
                assert (
                    answer.startswith(b"answer to ") and sent[answer[len(b"answer to ") :]] == client.getsockname()[1]
                )
    finally:
        server.close()
        for client in clients:
            client.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_datagrams_of_every_length_a_query_may_have_arrive_whole(implementation):
    # The batched reader keeps a datagram's first bytes apart from the rest: both sides of that
    # boundary, and in one batch, so that each one's parts come from its own buffers.
    server = _bound(socket.AF_INET, "127.0.0.1")
    server.setblocking(False)
    client = _bound(socket.AF_INET, "127.0.0.1")
    try:
        batch = implementation(server)
        sizes = [1, 12, 511, 512, 513, 1000, 2048, udpbatch.QUERY_MAX - 1, udpbatch.QUERY_MAX, 40]
        sent = [bytes((number + i) % 251 for i in range(size)) for number, size in enumerate(sizes)]
        for payload in sent:
            client.sendto(payload, server.getsockname())
        received = [payload for call in _receive_all(batch, len(sent)) for payload, _, _ in call]
        assert received == sent and batch.oversized == 0
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_datagram_longer_than_a_query_can_be_is_dropped_and_counted(implementation):
    server = _bound(socket.AF_INET, "127.0.0.1")
    server.setblocking(False)
    client = _bound(socket.AF_INET, "127.0.0.1")
    try:
        batch = implementation(server)
        for size in (udpbatch.QUERY_MAX + 1, udpbatch.QUERY_MAX, 60_000):
            client.sendto(b"x" * size, server.getsockname())
        received = [item for call in _receive_all(batch, 1) for item in call]
        time.sleep(0.05)  # the 60,000-byte one may trail on loopback; nothing else to wait for
        received += zip(*batch.receive(), strict=True)
        assert [len(payload) for payload, _, _ in received] == [udpbatch.QUERY_MAX]
        assert batch.oversized == 2
    finally:
        server.close()
        client.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_an_answer_that_cannot_be_sent_does_not_stop_the_others(implementation):
    server = _bound(socket.AF_INET, "127.0.0.1")
    server.setblocking(False)
    clients = [_bound(socket.AF_INET, "127.0.0.1") for _ in range(2)]
    try:
        batch = implementation(server)
        for client in clients:
            client.sendto(b"hello", server.getsockname())
        received = [item for call in _receive_all(batch, 2) for item in call]
        senders = [sender for _, _, sender in received]
        # Port 0 is no destination (EINVAL): that answer fails alone, and is not a full buffer.
        if implementation is udpbatch.BatchedUdp:
            nowhere = senders[0][:2] + b"\x00\x00" + senders[0][4:]
        else:
            nowhere = (senders[0][0], 0)
        assert batch.send([b"one", b"lost", b"two"], [senders[0], nowhere, senders[1]]) == 0
        answers = set()
        for client in clients:
            client.settimeout(3)
            answers.add(client.recv(100))
        assert answers == {b"one", b"two"}
    finally:
        server.close()
        for client in clients:
            client.close()


CONNECTED = [udpbatch.ConnectedBatch, udpbatch.ConnectedPlain]


def _connected_pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    """(an upstream's socket, connected and non-blocking; the peer it is connected to)."""
    peer = _bound(family, host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(peer.getsockname())
    return sock, peer


def _connected_receive_all(batch, sock, expected: int, timeout: float = 3.0) -> list[list[bytes]]:
    calls, total = [], 0
    deadline = time.monotonic() + timeout
    while total < expected and time.monotonic() < deadline:
        received, error = batch.receive(sock)
        assert error == 0
        if received:
            calls.append(received)
            total += len(received)
    return calls


@pytest.mark.parametrize("family, host", FAMILIES)
@pytest.mark.parametrize("implementation", CONNECTED)
def test_a_connected_socket_sends_and_reads_in_batches(implementation, family, host):
    sock, peer = _connected_pair(family, host)
    try:
        batch = implementation()
        assert batch.receive(sock) == ([], 0)
        queries = [f"query {number} ".encode() * (1 + number % 7) for number in range(100)]
        assert batch.send(sock, queries) == []  # more than one batch, in order
        peer.settimeout(3)
        arrived = []
        for _ in queries:
            data, source = peer.recvfrom(2048)
            arrived.append(data)
            peer.sendto(b"reply to " + data, source)
        assert arrived == queries
        calls = _connected_receive_all(batch, sock, 100)
        assert len(calls[0]) == udpbatch.BATCH
        assert [reply for call in calls for reply in call] == [b"reply to " + query for query in queries]
    finally:
        sock.close()
        peer.close()


@pytest.mark.parametrize("implementation", CONNECTED)
def test_a_reply_longer_than_kept_comes_cut_with_tc_so_it_is_asked_again_over_tcp(implementation):
    sock, peer = _connected_pair(socket.AF_INET, "127.0.0.1")
    try:
        batch = implementation()
        batch.send(sock, [b"q"])
        peer.settimeout(3)
        _, source = peer.recvfrom(100)
        header = b"\xab\xcd\x81\x80" + bytes(8)
        peer.sendto(header + b"x" * 10_000, source)
        peer.sendto(header + b"y" * 100, source)
        received = [reply for call in _connected_receive_all(batch, sock, 2) for reply in call]
        assert [len(reply) for reply in received] == [udpbatch.REPLY_MAX, 112]
        assert received[0][2] == 0x83 and received[1][2] == 0x81  # TC set on the cut one only
    finally:
        sock.close()
        peer.close()


@pytest.mark.parametrize("implementation", CONNECTED)
def test_a_queued_icmp_error_is_reported_and_the_other_sends_go_on(implementation):
    peer = _bound(socket.AF_INET, "127.0.0.1")
    address = peer.getsockname()
    peer.close()  # nothing listens there: the kernel answers with port unreachable
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(address)
    try:
        batch = implementation()
        assert batch.send(sock, [b"one"]) == []
        deadline = time.monotonic() + 3
        error = 0
        while not error and time.monotonic() < deadline:
            _, error = batch.receive(sock)
        assert error == errno.ECONNREFUSED
        assert batch.send(sock, [b"two"]) == []  # the error was taken: the next send goes
    finally:
        sock.close()
