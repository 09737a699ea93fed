"""Upstreams asked over DNS over TLS (`tls://1.1.1.1:853#cloudflare-dns.com`): one verified connection, reused.

A TlsUpstream is an upstream.Upstream to the pool (health, order, failover, coalescing and the
timeouts are the pool's) whose queries go, pipelined (RFC 7766 6.2.1.1), over one TLS connection
whose certificate must name the written host name (the system's trust store; SSL_CERT_FILE names
another). Replies are matched as strictly as over UDP: the random ID of a query waiting on this
connection, and its question. The connection opens at the first query and again after it closed;
queries that were waiting when the server closed it (an idle timeout racing a query) are sent once
more on a new one, within their time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from resolver.dataplane import ednsopt, upstream, wire

log = logging.getLogger(__name__)

QUERY_BLOCK = 128  # RFC 8467 4.1: queries padded to a multiple of 128 bytes


def make_upstream(address: upstream.UpstreamAddress, sockets: int) -> upstream.Upstream:
    """The upstream for an address of the config: over TLS when it says so, else plain DNS."""
    if address.tls_name is not None:
        return TlsUpstream(address)
    return upstream.Upstream(address, sockets)


class _Waiting:
    """One query sent on a TLS connection and waiting for its reply (what upstream.Upstream._expire reads)."""

    __slots__ = ("deadline", "done", "query", "question", "resent", "timeout_seconds")

    def __init__(self, query: wire.Query, done: upstream.UdpDone, timeout_seconds: float):
        self.query = query
        self.done = done
        self.question = query.question_lower
        self.deadline = time.monotonic() + timeout_seconds
        self.timeout_seconds = timeout_seconds
        self.resent = False


class TlsUpstream(upstream.Upstream):
    """An upstream over DoT: to the pool an upstream.Upstream, whose queries go over one TLS connection."""

    def __init__(self, address: upstream.UpstreamAddress):
        super().__init__(address, sockets=1)
        self.context = ssl.create_default_context()  # verifies the chain and the host name
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["dot"])
        self.connection: _Connection | None = None  # open, or opening
        self.unreachable = False  # the last connection did not open: said once in the log, until one does

    def send_udp(self, query: wire.Query, timeout_seconds: float, done: upstream.UdpDone) -> None:
        """Send the question over the TLS connection (opened if need be); `done` as for upstream.Upstream."""
        if self.closed:
            raise upstream.UpstreamNetworkError(f"{self.address}: closed")
        self.send(_Waiting(query, done, timeout_seconds))

    def send(self, waiting: _Waiting) -> None:
        if self.connection is None or self.connection.closed:
            self.connection = _Connection(self)
        self.connection.send(waiting)
        if self._timeout_check is None:
            self._timeout_check = asyncio.get_running_loop().call_later(upstream.TIMEOUT_CHECK_SECONDS, self._expire)

    def _expire(self) -> None:
        """Fail the queries past their deadline (as upstream.Upstream does for its UDP sockets)."""
        self._timeout_check = None
        connection = self.connection
        if connection is None:
            return
        now = time.monotonic()
        for upstream_id, waiting in [item for item in connection.pending.items() if now >= item[1].deadline]:
            connection.finish(
                upstream_id,
                None,
                upstream.UpstreamTimeout(f"{self.address}: no answer in {waiting.timeout_seconds:.2f}s"),
            )
        if connection.pending and self._timeout_check is None:
            self._timeout_check = asyncio.get_running_loop().call_later(upstream.TIMEOUT_CHECK_SECONDS, self._expire)

    def close(self) -> None:
        self.closed = True
        if self._timeout_check is not None:
            self._timeout_check.cancel()
            self._timeout_check = None
        if self.connection is not None:
            self.connection.close()


class _Connection(asyncio.Protocol):
    """One TLS connection to a DoT upstream: frames out once it is open, replies matched to the waiting queries."""

    def __init__(self, owner: TlsUpstream):
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, _Waiting] = {}
        self.transport: asyncio.Transport | None = None
        self.unsent: list[bytes] = []  # frames written before the handshake ended
        self.buffer = bytearray()
        self.closed = False
        self.opening = self.loop.create_task(self._open())

    async def _open(self) -> None:
        address = self.owner.address
        try:
            await self.loop.create_connection(
                lambda: self,
                address.host,
                address.port,
                ssl=self.owner.context,
                server_hostname=address.tls_name,
                ssl_handshake_timeout=self.owner_timeout(),
            )
        except (OSError, EOFError) as exc:  # refused, unreachable, a certificate that does not verify, ...
            if not self.owner.unreachable:
                log.warning("upstream %s: cannot open a TLS connection: %s", address, exc)
                self.owner.unreachable = True
            self._lost(upstream.UpstreamNetworkError(f"{address}: {exc}"), resend=False)
            return
        if self.owner.unreachable:
            log.info("upstream %s: a TLS connection is open again", address)
            self.owner.unreachable = False

    def owner_timeout(self) -> float:
        """The handshake's bound: the longest time left to any query waiting for it, at least a second."""
        now = time.monotonic()
        return max([1.0, *(waiting.deadline - now for waiting in self.pending.values())])

    def send(self, waiting: _Waiting) -> None:
        upstream_id = upstream._random_ids.next()
        while upstream_id in self.pending:
            upstream_id = upstream._random_ids.next()
        self.pending[upstream_id] = waiting
        frame = wire.frame(ednsopt.pad(wire.make_upstream_query(waiting.query, upstream_id), QUERY_BLOCK))
        if self.transport is None:
            self.unsent.append(frame)
        else:
            self.transport.write(frame)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.closed:
            transport.close()
            return
        for frame in self.unsent:
            transport.write(frame)
        self.unsent = []

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            length = buffer[0] << 8 | buffer[1]
            if len(buffer) < 2 + length:
                break
            reply = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            upstream_id = reply[0] << 8 | reply[1] if len(reply) >= 12 else -1
            waiting = self.pending.get(upstream_id)
            if waiting is None or not wire.reply_matches(reply, upstream_id, waiting.question):
                self.owner.mismatched += 1  # late (timed out), stray or forged: ignored
                continue
            self.finish(upstream_id, reply, None)

    def finish(self, upstream_id: int, reply: bytes | None, error: upstream.UpstreamError | None) -> None:
        """Hand a waiting query its reply or error, once (upstream.Upstream._expire calls it too)."""
        waiting = self.pending.pop(upstream_id, None)
        if waiting is not None:
            waiting.done(reply, error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(upstream.UpstreamNetworkError(f"{self.owner.address}: connection closed"), resend=True)

    def _lost(self, error: upstream.UpstreamError, resend: bool) -> None:
        """The connection is gone: queries sent on it go once more on a new one, within their time; the others fail."""
        if self.closed:
            return
        self.closed = True
        waiting, self.pending = list(self.pending.values()), {}
        for query in waiting:
            if resend and not query.resent and not self.owner.closed and time.monotonic() < query.deadline:
                query.resent = True
                self.owner.send(query)
            else:
                query.done(None, error)

    def close(self) -> None:
        """Close it and fail what waits on it (the pool is closing)."""
        self.opening.cancel()
        if self.transport is not None:
            self.transport.abort()
        self._lost(upstream.UpstreamNetworkError(f"{self.owner.address}: closed"), resend=False)
