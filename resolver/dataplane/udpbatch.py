"""Batched UDP for the listeners and the upstream sockets: up to 64 datagrams per system call (recvmmsg, sendmmsg)."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any, Final

from resolver.dataplane import udpcalls, wire

log = logging.getLogger(__name__)

# Why. At max rate a listener spent about half its CPU in system calls: one recvfrom and one
# sendto per query. recvmmsg reads every waiting datagram (up to BATCH) in one call, and sendmmsg
# sends the answers made from them in one. Measured under dnsperf on cache hits, old and new code
# alternated four times: CPU per answered query 22-23 -> 15-17 us, and 38-49% more queries per
# second in three of the four pairs (docs/performance-history.md, "UDP in batches"). Python's socket module has neither
# call, so they are called through ctypes on fixed buffers made once per socket (udpcalls): no
# allocation per call but the payload bytes handed to the pipeline. Where the C library lacks them
# (not Linux), `PlainUdp` reads and writes one datagram per call, with the same interface. This
# module's loops over the datagrams run compiled in the compiled build (resolver.COMPILABLE); the
# ctypes structures cannot be, so they live in udpcalls.

BATCH: Final = wire.UDP_READ_BATCH
# Bytes kept per received datagram. A DNS query is a few hundred bytes; one longer than this is
# dropped and counted (`udp_oversized`), not answered from a truncated read.
QUERY_MAX: Final = 4096
_IN_SIZE: Final = QUERY_MAX + 1  # a received datagram's buffer: one byte more tells one too long
# ... in two parts: the first bytes of every datagram of a batch lie next to each other, and are
# copied out with one call; a query longer than this (rare: most are under 100 bytes) has the rest.
_HEAD: Final = 512
_TAIL: Final = _IN_SIZE - _HEAD
ANSWER_MAX: Final = wire.MAX_UDP_PAYLOAD  # what the pipeline makes for UDP; a longer answer goes out by sendto
_MSG_DONTWAIT: Final[int] = getattr(socket, "MSG_DONTWAIT", 0x40)
# struct sockaddr_in / sockaddr_in6: their sizes, and where the address lies in them (the port,
# big-endian, is bytes 2-3 of both)
_ADDRESS_SIZE = {socket.AF_INET: 16, socket.AF_INET6: 28}
_IP_BYTES = {socket.AF_INET: (4, 8), socket.AF_INET6: (8, 24)}
# The datagrams of one read, in three lists of the same length (no tuple per datagram): their
# payloads, their clients for the pipeline (the IP packed, or as text where read one per call)
# and their senders, each handed back with its answer (the raw socket address, or the address
# recvfrom gave). One type for both readers, so that a compiled listener unpacks it natively.
Received = tuple[list[bytes], list[str | bytes], list[Any]]


class BatchedUdp:
    """A non-blocking UDP socket read and written up to BATCH datagrams per system call.

    A sender is the raw socket address the kernel gave (bytes), handed back with the answer.
    """

    def __init__(self, sock: socket.socket):
        assert udpcalls.SYSTEM_CALLS is not None
        self.sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        size = _ADDRESS_SIZE[sock.family]
        self._ip_start, self._ip_end = _IP_BYTES[sock.family]
        # The rings' buffers and views, held here as well: read per call without a lookup in a
        # ring (a Python object, also in the compiled build).
        self._in = udpcalls.Ring(_IN_SIZE, size, _HEAD)
        self._out = udpcalls.Ring(ANSWER_MAX, size)
        self._in_pointer: int = self._in.pointer
        self._in_addresses: memoryview = self._in.addresses
        self._in_heads: memoryview = self._in.heads
        self._in_tails: memoryview = self._in.payloads
        self._in_lengths: memoryview = self._in.received_lengths
        self._out_pointer: int = self._out.pointer
        self._out_payload_pointer: int = self._out.payload_pointer
        self._out_payloads: memoryview = self._out.payloads
        self._out_addresses: memoryview = self._out.addresses
        self._out_lengths: memoryview = self._out.send_lengths
        self._out_bases: memoryview = self._out.send_bases
        self._address_size = size
        self._recvmmsg, self._sendmmsg = udpcalls.SYSTEM_CALLS
        self.oversized = 0  # datagrams longer than QUERY_MAX, dropped; the caller counts and resets

    def receive(self) -> Received:
        """The waiting datagrams (up to BATCH): payloads, client IPs packed, senders; empty lists when none wait."""
        payloads: list[bytes] = []
        clients: list[str | bytes] = []
        senders: list[Any] = []
        count: int = self._recvmmsg(self._fd, self._in_pointer, BATCH, _MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0:
                code = udpcalls.errno_now()
                if code not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    log.debug("UDP receive error: %s", errno.errorcode.get(code, code))  # a queued ICMP error
            return payloads, clients, senders
        # Per datagram: three slices of bytes objects copied out once per call, the addresses and
        # the payloads' heads (a query longer than its head has its tail added): the sender, its
        # IP and the payload. Measured in process: 2.1 us per datagram with a memoryview slice per
        # address and inet_ntop, 1.1 us with the addresses copied out once.
        address_size = self._address_size
        addresses = self._in_addresses[: count * address_size].tobytes()
        heads = self._in_heads[: count * _HEAD].tobytes()
        ip_start, ip_end = self._ip_start, self._ip_end
        start = 0
        end = address_size
        for length in self._in_lengths[:count].tolist():
            if length > QUERY_MAX:
                self.oversized += 1
            else:
                sender = addresses[end - address_size : end]
                if length <= _HEAD:
                    payloads.append(heads[start : start + length])
                else:
                    tail = start // _HEAD * _TAIL
                    payloads.append(
                        heads[start : start + _HEAD] + self._in_tails[tail : tail + length - _HEAD].tobytes()
                    )
                clients.append(sender[ip_start:ip_end])
                senders.append(sender)
            start += _HEAD
            end += address_size
        return payloads, clients, senders

    def send(self, answers: list[bytes], senders: list[Any]) -> int:
        """Send each answer to the sender at its index; returns how many were dropped for a full send buffer.

        The answers of one system call lie next to each other in the ring's payload buffer, each
        message's iovec pointing at its own: copied in with one slice assignment, as the senders
        are into the ring's addresses, not one (a generic memoryview operation) per answer.
        """
        bases, lengths = self._out_bases, self._out_lengths
        pointer = self._out_payload_pointer
        ring: list[bytes] = []  # the answers in the ring, and their senders
        to: list[bytes] = []
        offset = 0
        dropped = 0
        for i in range(len(answers)):
            answer = answers[i]
            size = len(answer)
            if size > ANSWER_MAX:  # not made for UDP by the pipeline; never batched
                dropped += _sendto(self.sock, answer, self.address(senders[i]))
                continue
            count = len(ring)
            if count == BATCH:
                dropped += self._send_ring(ring, to)
                ring, to, offset, count = [], [], 0, 0
            bases[count] = pointer + offset
            lengths[count] = size
            offset += size
            ring.append(answer)
            to.append(senders[i])
        return dropped + self._send_ring(ring, to)

    def _send_ring(self, answers: list[bytes], senders: list[bytes]) -> int:
        """sendmmsg the answers whose iovecs are set (the first messages of the out ring); how many
        were dropped for a full buffer."""
        count = len(answers)
        if not count:
            return 0
        payload = b"".join(answers)
        self._out_payloads[: len(payload)] = payload
        addresses = b"".join(senders)
        self._out_addresses[: len(addresses)] = addresses
        done = 0
        while done < count:
            sent: int = self._sendmmsg(
                self._fd, self._out_pointer + done * udpcalls.HEADER_SIZE, count - done, _MSG_DONTWAIT
            )
            if sent > 0:
                done += sent
                continue
            code = udpcalls.errno_now()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return count - done  # dropped, as C servers do: the clients will retry
            if code != errno.EINTR:
                log.debug("UDP send error: %s", errno.errorcode.get(code, code))
                done += 1  # that one answer's destination failed (e.g. unreachable); send the rest
        return 0

    def address(self, sender: bytes) -> tuple[str, int]:
        ip_start, ip_end = _IP_BYTES[self._family]
        return socket.inet_ntop(self._family, sender[ip_start:ip_end]), int.from_bytes(sender[2:4], "big")


# An upstream reply is kept up to this size; a longer one (we ask with EDNS 1232) is taken as truncated,
# so its question is asked again over TCP. Our own upstream queries are at most 282 bytes.
REPLY_MAX: Final = 4096
_REPLY_SIZE: Final = REPLY_MAX + 1  # a reply's buffer: one byte more tells one too long
_UPSTREAM_QUERY_MAX: Final = 512


class ConnectedBatch:
    """Connected UDP sockets (the upstream ones) read and written up to BATCH datagrams per system call.

    One instance serves every such socket of the process (`connected()`): a call fills or drains
    its buffers before it returns, so the sockets can share them.
    """

    def __init__(self) -> None:
        assert udpcalls.SYSTEM_CALLS is not None
        self._in = udpcalls.Ring(_REPLY_SIZE, 0)
        self._out = udpcalls.Ring(_UPSTREAM_QUERY_MAX, 0)
        self._in_pointer: int = self._in.pointer
        self._in_payloads: memoryview = self._in.payloads
        self._in_lengths: memoryview = self._in.received_lengths
        self._out_pointer: int = self._out.pointer
        self._out_payloads: memoryview = self._out.payloads
        self._out_lengths: memoryview = self._out.send_lengths
        self._recvmmsg, self._sendmmsg = udpcalls.SYSTEM_CALLS

    def receive(self, sock: socket.socket) -> tuple[list[bytes], int]:
        """The waiting datagrams (up to BATCH), and the errno of a queued error (an ICMP one), 0 if none.

        A datagram longer than REPLY_MAX comes back cut to that size with TC set.
        """
        count: int = self._recvmmsg(sock.fileno(), self._in_pointer, BATCH, _MSG_DONTWAIT, None)
        if count <= 0:
            code = udpcalls.errno_now() if count < 0 else 0
            return [], 0 if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) else code
        payloads = self._in_payloads
        received = []
        start = 0
        for length in self._in_lengths[:count].tolist():
            received.append(
                payloads[start : start + length].tobytes() if length < _REPLY_SIZE else _cut(payloads, start)
            )
            start += _REPLY_SIZE
        return received, 0

    def send(self, sock: socket.socket, messages: list[bytes]) -> list[tuple[int, int]]:
        """Send the messages in order; (index, errno) of each one that could not be sent."""
        payloads, lengths = self._out_payloads, self._out_lengths
        failed: list[tuple[int, int]] = []
        fd = sock.fileno()
        for first in range(0, len(messages), BATCH):
            chunk = messages[first : first + BATCH]
            start = 0
            for i, message in enumerate(chunk):
                size = len(message)
                assert size <= _UPSTREAM_QUERY_MAX  # wire.make_upstream_query's at most 282 bytes
                payloads[start : start + size] = message
                lengths[i] = size
                start += _UPSTREAM_QUERY_MAX
            done = 0
            while done < len(chunk):
                sent: int = self._sendmmsg(
                    fd, self._out_pointer + done * udpcalls.HEADER_SIZE, len(chunk) - done, _MSG_DONTWAIT
                )
                if sent > 0:
                    done += sent
                    continue
                code = udpcalls.errno_now()
                if code == errno.EINTR:
                    continue
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):  # a full send buffer: none of the rest goes
                    failed.extend((first + i, code) for i in range(done, len(messages) - first))
                    return failed
                failed.append((first + done, code))  # e.g. an ICMP error of an earlier datagram
                done += 1
        return failed


def _cut(payloads: memoryview, start: int) -> bytes:
    """A datagram longer than REPLY_MAX: its first REPLY_MAX bytes with TC set (asked again over TCP)."""
    data = bytearray(payloads[start : start + REPLY_MAX])
    if len(data) > 2:
        data[2] |= 0x02
    return bytes(data)


class ConnectedPlain:
    """The same interface, one datagram per system call: where the C library has no recvmmsg."""

    def receive(self, sock: socket.socket) -> tuple[list[bytes], int]:
        received: list[bytes] = []
        for _ in range(BATCH):
            try:
                data = sock.recv(REPLY_MAX + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                return received, exc.errno or errno.EIO
            received.append(data if len(data) <= REPLY_MAX else _cut(memoryview(data), 0))
        return received, 0

    def send(self, sock: socket.socket, messages: list[bytes]) -> list[tuple[int, int]]:
        failed = []
        for i, message in enumerate(messages):
            try:
                sock.send(message)
            except OSError as exc:
                failed.append((i, exc.errno or errno.EIO))
        return failed


_connected: ConnectedBatch | ConnectedPlain | None = None


def connected() -> ConnectedBatch | ConnectedPlain:
    """The process's reader and writer of connected UDP sockets (made at the first call)."""
    global _connected
    if _connected is None:
        _connected = ConnectedBatch() if udpcalls.SYSTEM_CALLS is not None else ConnectedPlain()
    return _connected


class PlainUdp:
    """The same interface, one datagram per system call: where the C library has no recvmmsg."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.oversized = 0

    def receive(self) -> Received:
        received: Received = ([], [], [])
        recvfrom = self.sock.recvfrom
        for _ in range(BATCH):
            try:
                payload, sender = recvfrom(QUERY_MAX + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. a queued ICMP error; the next datagram may be fine
                log.debug("UDP receive error: %s", exc)
                continue
            if len(payload) > QUERY_MAX:
                self.oversized += 1
                continue
            received[0].append(payload)
            received[1].append(sender[0])
            received[2].append(sender)
        return received

    def send(self, answers: list[bytes], senders: list[Any]) -> int:
        return sum(_sendto(self.sock, answer, sender) for answer, sender in zip(answers, senders, strict=True))


def _sendto(sock: socket.socket, answer: bytes, address: Any) -> int:
    """Send one datagram now or drop it; 1 if dropped for a full send buffer."""
    try:
        sock.sendto(answer, address)
    except (BlockingIOError, InterruptedError):
        return 1
    except OSError as exc:
        log.debug("UDP send error: %s", exc)
    return 0


def for_socket(sock: socket.socket) -> BatchedUdp | PlainUdp:
    """The batched reader/writer where the C library has recvmmsg and sendmmsg, else the plain one."""
    if udpcalls.SYSTEM_CALLS is not None and sock.family in _ADDRESS_SIZE:
        return BatchedUdp(sock)
    return PlainUdp(sock)
