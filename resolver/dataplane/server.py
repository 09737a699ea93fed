"""DNS transports: the TCP listener and the listening sockets; the UDP listener is udplistener's, with bounds."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
import sys
from typing import Protocol

from resolver.dataplane import frontends, pipeline, proxyv2, upstream, wire
from resolver.dataplane.udplistener import InFlight as InFlight
from resolver.dataplane.udplistener import UdpServer as UdpServer
from resolver.errors import ListenError

log = logging.getLogger(__name__)
# A UDP listener's receive buffer: the queries that wait while the worker is busy (a reload, a
# garbage collection, another process on its core). The kernel's default (net.core.rmem_default,
# 208 KB on Linux) holds a few hundred datagrams, under 50 ms at 7,500 queries a second: past it the
# kernel drops queries that no counter of schooldns sees (tests/perf/soak.py lost thousands so on a
# busy 2-core machine). 4 MiB holds several thousand. Forced past net.core.rmem_max with
# CAP_NET_ADMIN; otherwise the kernel grants at most rmem_max (docs/operations.md).
UDP_RECEIVE_BUFFER = 4 << 20
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class TcpLimits(Protocol):
    """The bounds of the TCP listener (the config's `limits`, resolver.control.config.LimitsConfig)."""

    @property
    def tcp_max_connections(self) -> int: ...
    @property
    def tcp_idle_timeout_seconds(self) -> float: ...
    @property
    def tcp_max_pipelined(self) -> int: ...


class TcpConnections:
    """Shared state of every TCP connection of one worker: the connection cap and the set."""

    def __init__(
        self,
        pipe: pipeline.Pipeline,
        in_flight: InFlight,
        limits: TcpLimits,
        front_ends: frontends.FrontEnds | None = None,
    ):
        self.pipeline = pipe
        self.in_flight = in_flight
        self.limits = limits
        self.front_ends = front_ends
        self.open: set[TcpConnection] = set()

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close()


class TcpConnection(asyncio.Protocol):
    """One client TCP connection (RFC 7766): length-framed queries, pipelined, answered as ready."""

    label = "tcp"  # the transport, for Pipeline.handle and the counters

    def __init__(self, shared: TcpConnections, client: str | bytes = ""):
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.client = client  # given: named by a PROXY header already read (DoT); else the peer's address
        # From a trusted front-end: a PROXY header may come first (`awaiting_header`), and without
        # one the queries' Client Subnet names their client (`front_end`).
        self.front_end = False
        self.awaiting_header = False
        self.pending = 0
        self.paused = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.stream: asyncio.Task[None] | None = None  # a Stream being written; reading waits for it
        self.write_paused = False  # the transport's send buffer is full (pause_writing)
        self.writable: asyncio.Event | None = None  # what a Stream waits on while write_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        shared = self.shared
        if len(shared.open) >= shared.limits.tcp_max_connections:
            shared.in_flight.counters.dropped["tcp_connection_limit"] += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        shared.open.add(self)
        shared.in_flight.counters.accepted[self.label] += 1
        if not self.client:
            peer = transport.get_extra_info("peername")
            self.client = peer[0] if peer else ""
            self.front_end = self.awaiting_header = shared.front_ends is not None and shared.front_ends.trusted(
                self.client
            )
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        loop = asyncio.get_running_loop()
        self.idle_timer = loop.call_later(self.shared.limits.tcp_idle_timeout_seconds, self._idle)

    def _idle(self) -> None:
        if self.pending:
            self._arm_idle_timer()  # still answering: not idle
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm_idle_timer()
        buffer = self.buffer
        if self.awaiting_header and not self._proxy_header():
            return
        while len(buffer) >= 2 and not self.paused:
            length = buffer[0] << 8 | buffer[1]
            if length == 0:
                self.close()  # a zero-length message can't be DNS
                return
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            self._answer(message)
        if len(buffer) > 2 + 65535:
            self.close()

    def _proxy_header(self) -> bool:
        """Cut a trusted front-end's PROXY header off the start of the stream: False while it has not
        all arrived (the idle timer ends a wait too long), or when it is malformed (closed)."""
        assert self.shared.front_ends is not None
        try:
            header = self.shared.front_ends.stream_header(bytes(self.buffer[: proxyv2.MAX_HEADER]), self.label)
        except proxyv2.Incomplete:
            return False
        except proxyv2.ProxyError:
            self.close()
            return False
        self.awaiting_header = False
        if header is not None:
            del self.buffer[: header.length]
            self.front_end = False  # the header named the client; its queries' Client Subnet is the client's own
            self.client = header.client or self.client
        return True

    def _answer(self, message: bytes) -> None:
        client = self.client
        if self.front_end and self.shared.front_ends is not None:
            client = self.shared.front_ends.client_of(message, client)
        reply = self.shared.pipeline.handle(message, client, self.label)
        if type(reply) is bytes:
            self._write(reply)
        elif isinstance(reply, pipeline.Pending) and self.shared.in_flight.start(
            reply, self._finished, "tcp_in_flight_limit"
        ):
            self.pending += 1
            if self.pending >= self.shared.limits.tcp_max_pipelined and self.transport is not None:
                self.paused = True  # stop reading until some answers went out
                self.transport.pause_reading()
        elif isinstance(reply, pipeline.Stream) and self.transport is not None:
            # Queries after it wait until its last message is written (RFC 5936 lets a server
            # answer them meanwhile; none of its clients needs that).
            self.pending += 1
            self.paused = True
            self.transport.pause_reading()
            self.stream = asyncio.get_running_loop().create_task(self._write_stream(reply))  # held by self.stream

    async def _write_stream(self, stream: pipeline.Stream) -> None:
        """Write a Stream's messages as the connection takes them, letting other work run between two."""
        messages = stream.messages()
        try:
            for message in messages:
                if self.transport is None or self.transport.is_closing():
                    return
                self._write(message)
                while self.write_paused:
                    self.writable = asyncio.Event()
                    await self.writable.wait()
                await asyncio.sleep(0)
        except pipeline.StreamBroken as exc:
            log.warning("stopped a zone transfer: %s", exc)
            self.close()
        except Exception:
            log.exception("internal error writing a zone transfer")
            self.close()
        finally:
            messages.close()  # now, not when collected: a transfer cut short ends at once
            self.stream = None
            self.pending -= 1
            if self.transport is not None and not self.transport.is_closing():
                self.paused = self.pending >= self.shared.limits.tcp_max_pipelined
                if not self.paused:
                    self.transport.resume_reading()
                    self.data_received(b"")  # frames already buffered

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None:
            self.writable.set()

    def _finished(self, reply: bytes) -> None:
        self.pending -= 1
        self._write(reply)
        if self.paused and self.stream is None and self.pending < self.shared.limits.tcp_max_pipelined:
            self.paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
                self.data_received(b"")  # frames already buffered

    def _write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.frame(reply))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.stream is not None:
            self.stream.cancel()
        self.shared.open.discard(self)


def bind_sockets(
    address: upstream.UpstreamAddress, reuse_port: bool, setting: str
) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same address (port 0: the same free port for both).

    `setting` names where the address comes from ("listen in FILE"), for the ListenError.
    """
    tries = 20 if address.port == 0 else 1  # port 0: the free UDP port may be taken for TCP
    while True:
        tries -= 1
        udp = bind_socket(address, socket.SOCK_DGRAM, reuse_port, setting)
        same_port = dataclasses.replace(address, port=udp.getsockname()[1])
        try:
            return udp, bind_socket(same_port, socket.SOCK_STREAM, reuse_port, setting)
        except ListenError:
            udp.close()
            if not tries:
                raise


def bind_socket(
    address: upstream.UpstreamAddress, kind: socket.SocketKind, reuse_port: bool, setting: str
) -> socket.socket:
    """A non-blocking socket of `kind` bound to `address`, or the ListenError that says why not."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock: socket.socket | None = None
    try:
        sock = socket.socket(family, kind)
        if kind == socket.SOCK_STREAM:
            # A TCP port is bound again at once after a restart, despite connections in TIME_WAIT.
            # Not UDP: there it would let a second server bind a port that one already serves.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            size_receive_buffer(sock)
        sock.bind((address.host, address.port))
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise listen_error(exc, address, kind, setting) from None
    sock.setblocking(False)
    return sock


def size_receive_buffer(sock: socket.socket) -> None:
    """UDP_RECEIVE_BUFFER for the socket: forced where allowed, else as much as net.core.rmem_max grants."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, UDP_RECEIVE_BUFFER)
    except OSError:  # no CAP_NET_ADMIN (or not Linux): the kernel caps it at rmem_max
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)


def listen_error(exc: OSError, address: upstream.UpstreamAddress, kind: socket.SocketKind, setting: str) -> ListenError:
    """The one line for an address that cannot be bound: which, over what, why, and what to do."""
    host = ipaddress.ip_address(address.host)
    # A host without IPv6 refuses the family (EAFNOSUPPORT) or, with IPv6 disabled, has no ::1 (EADDRNOTAVAIL).
    passable = (
        host.version == 6
        and (host.is_loopback or host.is_unspecified)
        and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
    )
    if passable:
        why, fix = "this host has no IPv6", f"enable IPv6 or remove the address from {setting}"
    elif exc.errno == errno.EADDRINUSE:
        why, fix = "address already in use", f"stop the other server or change {setting}"
    elif exc.errno == errno.EACCES:
        why, fix = "permission denied", f"ports below 1024 need CAP_NET_BIND_SERVICE, or change {setting}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why, fix = "no such address on this host", f"change {setting}"
    elif exc.errno == errno.EAFNOSUPPORT:
        why, fix = "this host has no IPv6", f"change {setting}"
    else:
        why, fix = (exc.strerror or str(exc)).lower(), f"change {setting}"
    transport = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    return ListenError(f"cannot listen on {address} ({transport}): {why}; {fix}", str(address), passable)


# `worker_spread: random`. With `workers: N` every worker binds the DNS port with SO_REUSEPORT, and
# the kernel hands a datagram to one of them by a hash of the client's address and port: a client
# stays on one worker (`worker_spread: client`, the default). Many clients spread evenly that way;
# a few do not, and one source socket (a load balancer or an ISP resolver forwarding from one
# port) lands on a single worker whatever N is. A classic BPF program attached to the group picks
# the socket at random for each datagram instead, so each worker gets 1/N of the queries. A UDP
# query needs no affinity: its answer leaves by the socket that read it. The price: a worker reads
# fewer datagrams per wake-up, and with loadgen on the same two cores two workers answered ~20%
# fewer queries (docs/performance-history.md, "Queries spread over the workers at random"). Where the
# program's index is past the group's sockets (a worker being restarted), the kernel falls back
# to the hash. Linux only (SO_ATTACH_REUSEPORT_CBPF, 4.5+).
_SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RANDOM_SOCKET = (  # struct sock_filter: code, jt, jf, k
    (0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF),  # BPF_LD | BPF_W | BPF_ABS of SKF_AD_OFF + SKF_AD_RANDOM: A = random
    (_MOD_K, 0, 0, 0),  # A = A % workers (k is filled in)
    (0x16, 0, 0, 0),  # BPF_RET | BPF_A: the index of the socket in the group
)


def spread_at_random(udp: socket.socket, workers: int) -> bool:
    """Have the kernel hand each datagram to a random one of the `workers` sockets in this one's
    SO_REUSEPORT group; False where it cannot (not Linux, or the kernel refused)."""
    if not sys.platform.startswith("linux"):
        return False
    program = [(code, jt, jf, workers if code == _MOD_K else k) for code, jt, jf, k in _RANDOM_SOCKET]
    instructions = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *line) for line in program))
    fprog = struct.pack("@HP", len(program), ctypes.addressof(instructions))  # struct sock_fprog
    try:
        udp.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies the program
    except OSError:
        return False
    return True


async def serve_sockets(
    pipe: pipeline.Pipeline,
    in_flight: InFlight,
    limits: TcpLimits,
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    tcp: TcpConnections,
) -> tuple[UdpServer, asyncio.Server]:
    """Start serving on already-bound sockets."""
    loop = asyncio.get_running_loop()
    udp = UdpServer(udp_sock, pipe, in_flight, tcp.front_ends)
    udp.start()
    tcp_server = await loop.create_server(tcp.protocol, sock=tcp_sock, backlog=1024)
    return udp, tcp_server
