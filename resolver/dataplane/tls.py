"""TLS listeners for DoT and DoH: certificates that reload, the accept loop with its bounds, DoT's connection.

A listener accepts on its own socket, and for each connection: turns it away past
`limits.tcp_max_connections` open (or as many handshakes under way), reads the PROXY v2 header a
trusted front-end sends before TLS (peeked, so a connection without one starts TLS with its
first byte), then runs the handshake with the certificate of the moment, bounded in time, on a
TLS transport of the package's own (tlsstream.TlsSession, not asyncio's, whose layers cost more). A
failed or timed-out handshake is counted, never logged above DEBUG. The connection then
belongs to its protocol, told its client and whether it is a trusted front-end's without a
PROXY header before TLS: such a connection may begin with one inside TLS (dnsdist sends it so to
its DoT and DoH backends, HAProxy before TLS), and without either each query's Client Subnet
names its client, as over UDP and TCP. DoT's protocol is the TCP listener's
(server.TcpConnection: RFC 7766 framing, pipelining, idle timeout) with the label "dot" and
padded answers.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Protocol

from resolver.dataplane import ednsopt, frontends, metrics, proxyv2, server, tlsstream
from resolver.errors import ResolverError

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 10.0  # the PROXY header and the TLS handshake of one connection
CHECK_SECONDS = 1.0  # how often, at most, the certificate files are looked at for a change
ACCEPT_BATCH = 64  # connections accepted per wake-up of the event loop
ACCEPT_PAUSE_SECONDS = 1.0  # after accept() failed for want of file descriptors
DOT_ALPN = ("dot",)  # RFC 7858 has none; "dot" is IANA's ALPN ID for DNS over TLS
DOH_ALPN = ("h2", "http/1.1")


class CertificateError(ResolverError):
    """A certificate and key that cannot be served: unreadable, not PEM, or not a pair."""

    def __init__(self, message: str, setting: str):
        super().__init__(message)
        self.setting = setting  # the one of the two at fault: "cert_file" or "key_file"


def load_context(cert_file: Path, key_file: Path, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A server context (TLS 1.2 and later) with this certificate chain and key; CertificateError saying why not."""
    for path, marker, what, setting in (
        (cert_file, b"-----BEGIN CERTIFICATE-----", "PEM certificate", "cert_file"),
        (key_file, b"PRIVATE KEY-----", "PEM private key", "key_file"),
    ):
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read {path}: {exc.strerror or exc}", setting) from None
        if marker not in text:
            raise CertificateError(f"{path} holds no {what}", setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    try:
        # An encrypted key asks for a password: an empty one fails it, rather than a prompt at a terminal.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"the key {key_file} does not belong to the certificate {cert_file}"
            raise CertificateError(message, "key_file") from None
        if exc.reason in ("BAD_DECRYPT", "BAD_PASSWORD_READ", "PROBLEMS_GETTING_PASSWORD"):
            raise CertificateError(
                f"the key {key_file} is encrypted; give it unencrypted (mode 0600)", "key_file"
            ) from None
        why = exc.reason if exc.reason not in (None, "PEM_LIB") else "not valid PEM"
        raise CertificateError(f"cannot load {cert_file} with {key_file}: {why}", "cert_file") from None
    return context


def file_signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    """Inode, size and modification time of each file ((0, 0, 0) for a missing one): changes when a file is renewed."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


class Certificates:
    """The certificate a listener serves, loaded again when its files change or on reload().

    The files are looked at when a connection arrives, at most every CHECK_SECONDS: a renewal
    (certbot, an ACME client, a Kubernetes Secret) needs no restart and no signal. A new pair that
    does not load is logged in one line and the previous one keeps serving; connections already
    open keep theirs.
    """

    def __init__(self, cert_file: Path, key_file: Path, alpn: tuple[str, ...], setting: str):
        self.cert_file = cert_file
        self.key_file = key_file
        self.alpn = alpn
        self.setting = setting  # "dot" or "doh", for the log
        self._signature = file_signature(cert_file, key_file)
        self._context = load_context(cert_file, key_file, alpn)
        self._checked = time.monotonic()

    def context(self) -> ssl.SSLContext:
        """The context for a new connection."""
        now = time.monotonic()
        if now - self._checked >= CHECK_SECONDS:
            self._checked = now
            if file_signature(self.cert_file, self.key_file) != self._signature:
                self.reload()
        return self._context

    def reload(self) -> bool:
        """Load the files again (SIGHUP, or a change seen); False, the old pair kept, when they do not load."""
        signature = file_signature(self.cert_file, self.key_file)
        try:
            context = load_context(self.cert_file, self.key_file, self.alpn)
        except CertificateError as exc:
            self._signature = signature  # said once; tried again when the files change again
            log.error("%s: %s; still serving the certificate loaded before", self.setting, exc)
            return False
        if signature != self._signature:
            log.info("%s: loaded the new certificate %s", self.setting, self.cert_file)
        self._context, self._signature = context, signature
        return True


class Connections(Protocol):
    """What a listener bounds: the open connections of its kind and their limits (server.TcpConnections)."""

    @property
    def open(self) -> Sized: ...
    @property
    def limits(self) -> server.TcpLimits: ...


class TlsListener:
    """One DoT or DoH listening socket: accepts, bounds, reads a trusted front-end's PROXY header, shakes hands."""

    def __init__(
        self,
        sock: socket.socket,
        kind: str,
        certificates: Certificates,
        connections: Connections,
        make_protocol: Callable[[str | bytes, bool], asyncio.Protocol],
        counters: metrics.Counters,
        front_ends: frontends.FrontEnds | None = None,
    ):
        self.sock = sock
        self.kind = kind  # "dot" or "doh": the counting label
        self.certificates = certificates
        self.connections = connections
        self.make_protocol = make_protocol
        self.counters = counters
        self.front_ends = front_ends
        self.loop = asyncio.get_running_loop()
        self.starting: set[asyncio.Task[None]] = set()  # connections before their handshake ended
        self.accepting = False

    def start(self) -> None:
        self.sock.listen(1024)
        self.loop.add_reader(self.sock.fileno(), self._accept_ready)
        self.accepting = True

    def close(self) -> None:
        """Accept no more (connections already made stay with their protocols); cancel handshakes under way."""
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False
        for task in list(self.starting):
            task.cancel()
        self.sock.close()

    def _accept_ready(self) -> None:
        limit = self.connections.limits.tcp_max_connections
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: let connections close, then go on
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.counters.rejected[(self.kind, "connection_limit")] += 1
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume)
                return
            # Open connections are capped (their protocols check again once the handshake ended), and so
            # are handshakes under way, apart: a flood of connections that never finish one holds no more.
            if len(self.connections.open) >= limit or len(self.starting) >= limit:
                self.counters.rejected[(self.kind, "connection_limit")] += 1
                conn.close()
                continue
            task = self.loop.create_task(self._start(conn, peer[0]))
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    def _resume(self) -> None:
        if self.accepting and self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept_ready)

    async def _start(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        client: str | bytes = peer
        front_end = False  # a trusted front-end's without a PROXY header before TLS: one inside, or Client Subnets
        session: tlsstream.TlsSession | None = None
        started = False
        try:
            async with asyncio.timeout(HANDSHAKE_SECONDS):
                if self.front_ends is not None and self.front_ends.trusted(peer):
                    header = await self._proxy_header(conn, self.front_ends)
                    if header is None:
                        front_end = True
                    elif header.client is not None:  # (a LOCAL header leaves the front-end's own address)
                        client = header.client
                session = tlsstream.TlsSession(
                    self.certificates.context(),
                    functools.partial(self.make_protocol, client, front_end),
                    self.loop.create_future(),
                )
                await self.loop.connect_accepted_socket(lambda: session, conn)
                await session.handshaken
                started = True
        except proxyv2.ProxyError:  # counted by stream_header
            pass
        except (OSError, EOFError):  # ssl.SSLError, resets, TimeoutError: a handshake that did not end well
            self.counters.rejected[(self.kind, "tls_handshake")] += 1
        finally:
            if not started:  # (cancelled too: the listener closing)
                if session is not None and session.tcp is not None:
                    session.give_up()
                else:
                    conn.close()

    async def _proxy_header(self, conn: socket.socket, front_ends: frontends.FrontEnds) -> proxyv2.Header | None:
        """The PROXY header at the start of a trusted front-end's connection, taken off it; None when
        it starts otherwise (the TLS handshake then reads the bytes peeked at)."""
        while True:
            await _readable(self.loop, conn)
            start = conn.recv(proxyv2.MAX_HEADER, socket.MSG_PEEK)
            if not start:
                raise ConnectionResetError("closed before its PROXY header or handshake")
            try:
                header = front_ends.stream_header(start, self.kind)
            except proxyv2.Incomplete:
                # The rest is on its way; the bytes peeked at keep the socket readable, so wait a little.
                await asyncio.sleep(0.01)
                continue
            if header is not None:
                conn.recv(header.length)  # as many as were peeked at: all there
            return header


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


class DotConnection(server.TcpConnection):
    """One DNS-over-TLS connection (RFC 7858): the TCP listener's, over TLS, its answers padded (RFC 8467).

    The answers made in one turn of the event loop (those to the queries of one read, mostly) go
    out with one system call, each answer in a TLS record of its own (tlsstream.TlsSession): a
    client that reads one message per wake-up of its event loop (getdns, and so stubby) leaves the
    rest of a record holding several unread, since its socket is not readable again, and its later
    queries wait until the connection closes.
    """

    label = "dot"

    def __init__(self, shared: server.TcpConnections, client: str | bytes = "", front_end: bool = False):
        super().__init__(shared, client)
        self.front_end = self.awaiting_header = front_end
        self.last_read = 0.0  # the event loop's time of the last read

    def _write(self, reply: bytes) -> None:
        super()._write(ednsopt.pad(reply))  # the TLS transport (tlsstream.TlsSession) batches the records

    # A read notes its time, and the timer looks at it when it fires: a new timer for each read (the
    # TCP listener's way) cost 4% of a DoT query's time.
    def _arm_idle_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_read = loop.time()
        if self.idle_timer is None:
            self.idle_timer = loop.call_later(self.shared.limits.tcp_idle_timeout_seconds, self._idle)

    def _idle(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.shared.limits.tcp_idle_timeout_seconds
        rest = self.last_read + timeout - loop.time()
        if self.pending or rest > 0:  # still answering, or read from since the timer was set
            self.idle_timer = loop.call_later(timeout if self.pending else rest, self._idle)
        else:
            self.close()
