"""Batched UDP (recvmmsg / sendmmsg) and its one-datagram-per-call twin, on real loopback sockets."""

from __future__ import annotations

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
    """receive() until `expected` datagrams came; one list per call that returned some."""
    calls, total = [], 0
    deadline = time.monotonic() + timeout
    while total < expected and time.monotonic() < deadline:
        if received := batch.receive():
            calls.append(received)
            total += len(received)
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
        assert batch.receive() == []  # nothing waits
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

        assert batch.send([(b"answer to " + payload, sender) for payload, _, sender in received]) == 0
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
        received += batch.receive()
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
        assert batch.send([(b"one", senders[0]), (b"lost", nowhere), (b"two", senders[1])]) == 0
        answers = set()
        for client in clients:
            client.settimeout(3)
            answers.add(client.recv(100))
        assert answers == {b"one", b"two"}
    finally:
        server.close()
        for client in clients:
            client.close()
