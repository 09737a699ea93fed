"""Forwarding to upstream resolvers: random IDs and ports, strict reply matching, TCP on TC, failover, coalescing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
import time

from resolver import wire
from resolver.errors import ResolverError

log = logging.getLogger(__name__)

DOWN_AFTER_FAILURES = 3  # consecutive failures before an upstream is tried last
DOWN_COOLDOWN_SECONDS = 5.0  # ... for this long after its latest failure
TCP_MAX_MESSAGE = 65535
ORDER_REFRESH_SECONDS = 0.1  # how long a computed upstream order is reused
TIMEOUT_CHECK_SECONDS = 0.05  # how often waiting UDP queries are checked against their deadline


class UpstreamError(ResolverError):
    """Forwarding failed; `ede_code` says why for the Extended DNS Error in the SERVFAIL."""

    ede_code = wire.EDE_NETWORK_ERROR


class UpstreamTimeout(UpstreamError):
    ede_code = wire.EDE_NO_REACHABLE_AUTHORITY


class UpstreamNetworkError(UpstreamError):
    ede_code = wire.EDE_NETWORK_ERROR


class AllUpstreamsFailed(UpstreamError):
    """Every upstream timed out or failed; carries the EDE code of the most telling failure."""

    def __init__(self, message: str, ede_code: int):
        super().__init__(message)
        self.ede_code = ede_code


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, default_port: int = 53) -> UpstreamAddress:
    """'1.1.1.1:53', '1.1.1.1', '[2001:db8::1]:53' or '2001:db8::1' -> UpstreamAddress."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad address {text!r}: expected [IPv6]:port")
        port_text = rest[1:] if rest else str(default_port)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, str(default_port)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"bad address {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad address {text!r}: port must be 0-65535")
    return UpstreamAddress(host, int(port_text))


@dataclasses.dataclass(frozen=True, slots=True)
class AnswerLimits:
    """How upstream TTLs are clamped before caching."""

    min_ttl: int = 0
    max_ttl: int = 86400
    negative_max_ttl: int = 3600


class _Pending:
    """One UDP query waiting for its reply: what the reply must match, and when to give up."""

    __slots__ = ("future", "question", "deadline", "timeout_seconds")

    def __init__(self, future: asyncio.Future[bytes], question: bytes, timeout_seconds: float):
        self.future = future
        self.question = question
        self.deadline = time.monotonic() + timeout_seconds
        self.timeout_seconds = timeout_seconds


class _RandomIds:
    """16-bit query IDs from the OS CSPRNG, fetched 4 KiB at a time (one getrandom call per 2048 IDs)."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def next(self) -> int:
        if not self._ids:
            self._ids = list(memoryview(os.urandom(4096)).cast("H"))
        return self._ids.pop()


_random_ids = _RandomIds()
# A forked process (a worker forked by resolver.spawner) draws its own IDs, not its parent's next ones.
os.register_at_fork(after_in_child=_random_ids.__init__)


# Every upstream UDP socket of the process reads into this buffer; a reply is copied out at once.
_REPLY_BUFFER = bytearray(wire.MAX_DATAGRAM)
_REPLY_VIEW = memoryview(_REPLY_BUFFER)


class _UdpSocket:
    """One connected UDP socket (kernel-chosen random source port) with its in-flight queries.

    Read like the listening socket (server.UdpServer): every reply waiting in the socket is read
    in one wake-up of the event loop, not one per loop iteration.
    """

    def __init__(self, owner: Upstream, sock: socket.socket):
        self.owner = owner
        self.sock = sock
        self.pending: dict[int, _Pending] = {}
        self.uses = 0
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recv_into = self.sock.recv_into
        for _ in range(wire.UDP_READ_BATCH):
            try:
                # Into one buffer, then copied: recv(MAX_DATAGRAM) would allocate 64 KiB per reply
                # and shrink it.
                data = _REPLY_VIEW[:recv_into(_REPLY_BUFFER)].tobytes()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors (port unreachable...): fail what is in flight
                self._fail(UpstreamNetworkError(str(exc)))
                return
            # Connected socket: the kernel already dropped datagrams from other sources.
            pending = self.pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 12 else None
            if pending is None or not wire.reply_matches(data, data[0] << 8 | data[1], pending.question):
                self.owner.mismatched += 1  # a stray, late or spoofed reply: ignore it
                continue
            if not pending.future.done():
                pending.future.set_result(data)

    def send(self, message: bytes) -> None:
        try:
            self.sock.send(message)
        except OSError as exc:  # a full buffer or an ICMP error from an earlier query
            raise UpstreamNetworkError(f"{self.owner.address}: {exc}") from None

    def _fail(self, exc: UpstreamError) -> None:
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self._fail(UpstreamNetworkError("socket closed"))


class Upstream:
    """One upstream server: a rotating pool of UDP sockets, TCP for truncated answers, health."""

    def __init__(self, address: UpstreamAddress, sockets: int = 16, socket_max_uses: int = 1000):
        self.address = address
        self.pool_size = sockets
        self.socket_max_uses = socket_max_uses
        self._sockets: list[_UdpSocket] = []  # open and not retired
        self._retired: set[_UdpSocket] = set()  # used up: closed once their last answer arrived
        self._timeout_check: asyncio.TimerHandle | None = None  # armed while queries wait (see _expire)
        # Health and counters (read by metrics and ordering; never per-client).
        self.consecutive_failures = 0
        self.last_failure = 0.0
        self.latency_seconds = 0.0  # exponentially weighted moving average
        self.queries = 0
        self.failures = 0
        self.timeouts = 0
        self.truncated = 0
        self.mismatched = 0

    def is_down(self, now: float) -> bool:
        return (self.consecutive_failures >= DOWN_AFTER_FAILURES
                and now - self.last_failure < DOWN_COOLDOWN_SECONDS)

    def record(self, ok: bool, started: float, now: float) -> None:
        """Count an exchange that began at `started` and ended `now` (time.monotonic)."""
        if ok:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            self.failures += 1
            self.last_failure = now
        self.latency_seconds += (now - started - self.latency_seconds) * 0.2

    def _socket(self) -> _UdpSocket:
        """A socket from the pool, opened while the pool is not full; after socket_max_uses
        queries a socket retires (closed when idle), so source ports keep rotating."""
        sockets = self._sockets
        if len(sockets) < self.pool_size:
            family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((self.address.host, self.address.port))  # UDP: no packet, no wait
            except OSError as exc:
                sock.close()
                raise UpstreamNetworkError(f"{self.address}: {exc}") from None
            chosen = _UdpSocket(self, sock)
            sockets.append(chosen)
        else:
            chosen = sockets[random.randrange(len(sockets))]
        chosen.uses += 1
        if chosen.uses >= self.socket_max_uses:
            sockets.remove(chosen)
            self._retired.add(chosen)
        return chosen

    async def exchange_udp(self, query: wire.Query, timeout_seconds: float) -> bytes:
        """One UDP round trip with a fresh random ID; only a matching reply is accepted."""
        sock = self._socket()
        upstream_id = _random_ids.next()
        while upstream_id in sock.pending:
            upstream_id = _random_ids.next()
        future: asyncio.Future[bytes] = sock.loop.create_future()
        sock.pending[upstream_id] = _Pending(future, query.question_lower, timeout_seconds)
        if self._timeout_check is None:
            self._timeout_check = sock.loop.call_later(TIMEOUT_CHECK_SECONDS, self._expire)
        try:
            sock.send(wire.make_upstream_query(query, upstream_id))
            return await future
        finally:
            del sock.pending[upstream_id]
            if sock in self._retired and not sock.pending:
                self._retired.discard(sock)
                sock.close()

    def _expire(self) -> None:
        """Fail the queries past their deadline; check again later while any is waiting.

        One check every TIMEOUT_CHECK_SECONDS for all of this upstream's queries, instead of a
        timer per query (its creation, cancellation and heap upkeep cost ~5% of a miss): a
        timeout fires up to that much late.
        """
        self._timeout_check = None
        now = time.monotonic()
        waiting = False
        for sock in (*self._sockets, *self._retired):
            for pending in sock.pending.values():
                if pending.future.done():
                    continue
                if now >= pending.deadline:
                    pending.future.set_exception(UpstreamTimeout(
                        f"{self.address}: no answer in {pending.timeout_seconds:.2f}s"))
                else:
                    waiting = True
        if waiting:
            self._timeout_check = asyncio.get_running_loop().call_later(TIMEOUT_CHECK_SECONDS, self._expire)

    async def exchange_tcp(self, query: wire.Query, timeout_seconds: float) -> bytes:
        """One TCP round trip (RFC 7766 framing), used when the UDP answer was truncated."""
        question = query.question_lower
        upstream_id = _random_ids.next()
        writer = None
        try:
            async with asyncio.timeout(timeout_seconds):
                reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
                writer.write(wire.frame(wire.make_upstream_query(query, upstream_id)))
                while True:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    reply = await reader.readexactly(length)
                    if wire.reply_matches(reply, upstream_id, question):
                        return reply
                    self.mismatched += 1
        except TimeoutError:
            raise UpstreamTimeout(f"{self.address}: no TCP answer in {timeout_seconds:.2f}s") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise UpstreamNetworkError(f"{self.address} (tcp): {exc}") from None
        finally:
            if writer is not None:
                writer.close()

    def close(self) -> None:
        if self._timeout_check is not None:
            self._timeout_check.cancel()
            self._timeout_check = None
        for sock in [*self._sockets, *self._retired]:
            sock.close()
        self._sockets.clear()
        self._retired.clear()


class UpstreamPool:
    """Answers questions from a set of upstreams, in order of health, merging identical in-flight queries."""

    def __init__(self, addresses: list[UpstreamAddress], timeout_seconds: float = 2.0,
                 limits: AnswerLimits = AnswerLimits(), sockets_per_upstream: int = 16,
                 max_in_flight: int = 10000):
        if not addresses:
            raise ValueError("at least one upstream is needed")
        self.upstreams = [Upstream(a, sockets_per_upstream) for a in addresses]
        self.timeout_seconds = timeout_seconds
        self.limits = limits
        self.max_in_flight = max_in_flight
        self._in_flight: dict[bytes, asyncio.Future[wire.Answer] | None] = {}
        self.coalesced = 0
        self._order = list(self.upstreams)
        self._order_until = 0.0

    def in_flight(self) -> int:
        return len(self._in_flight)

    async def resolve(self, query: wire.Query) -> wire.Answer:
        """The upstream answer to the query's question; identical concurrent questions share one."""
        key = query.key
        in_flight = self._in_flight
        if key in in_flight:
            shared = in_flight[key]
            if shared is None:  # the first waiter makes the future the asking query will fill
                shared = in_flight[key] = asyncio.get_running_loop().create_future()
            self.coalesced += 1
            return await asyncio.shield(shared)
        if len(in_flight) >= self.max_in_flight:
            raise UpstreamError("too many queries in flight upstream")
        in_flight[key] = None  # most questions are asked once: no future until someone waits
        try:
            answer = await self._resolve_uncoalesced(query)
        except BaseException as exc:
            future = in_flight[key]
            if future is not None and not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else UpstreamError("cancelled"))
                future.exception()  # mark retrieved: the waiters may be gone
            raise
        else:
            future = in_flight[key]
            if future is not None:
                future.set_result(answer)
            return answer
        finally:
            del in_flight[key]

    def ordered(self, now: float) -> list[Upstream]:
        """Healthy upstreams by latency first, then the ones recently failing.

        Sorted at most every ORDER_REFRESH_SECONDS, and at once after a failure.
        """
        if now >= self._order_until:
            self._order = sorted(self.upstreams, key=lambda u: (u.is_down(now), u.latency_seconds))
            self._order_until = now + ORDER_REFRESH_SECONDS
        return self._order

    async def _resolve_uncoalesced(self, query: wire.Query) -> wire.Answer:
        clock = time.monotonic  # the clock of the attempts' deadlines (_Pending), and the event loop's
        started = clock()
        deadline = started + self.timeout_seconds
        candidates = self.ordered(started)
        last_answer: wire.Answer | None = None
        worst: UpstreamError | None = None
        for index, upstream in enumerate(candidates):
            if index:
                started = clock()
            remaining = deadline - started
            if remaining <= 0:
                break
            # Share what is left of the budget among the upstreams still to try.
            attempt_timeout = remaining / (len(candidates) - index)
            upstream.queries += 1
            try:
                reply = await upstream.exchange_udp(query, attempt_timeout)
                if wire.is_truncated(reply):
                    upstream.truncated += 1
                    reply = await upstream.exchange_tcp(query, max(deadline - clock(), 0.05))
                answer = wire.parse_upstream_answer(
                    reply, len(query.question), self.limits.min_ttl, self.limits.max_ttl,
                    self.limits.negative_max_ttl)
            except UpstreamError as exc:
                if isinstance(exc, UpstreamTimeout):
                    upstream.timeouts += 1
                upstream.record(False, started, clock())
                self._order_until = 0.0
                if worst is None or isinstance(exc, UpstreamTimeout):
                    worst = exc
                continue
            except wire.BadReply as exc:
                upstream.mismatched += 1
                upstream.record(False, started, clock())
                self._order_until = 0.0
                worst = worst or UpstreamNetworkError(f"{upstream.address}: bad reply: {exc}")
                continue
            upstream.record(True, started, clock())
            if answer.rcode in (wire.SERVFAIL, wire.REFUSED):
                last_answer = answer  # that upstream could not help; another may
                continue
            return answer
        if last_answer is not None:
            return last_answer
        if worst is None:
            worst = UpstreamTimeout("no time left to ask any upstream")
        raise AllUpstreamsFailed(f"every upstream failed: {worst}", worst.ede_code)

    def close(self) -> None:
        for upstream in self.upstreams:
            upstream.close()
