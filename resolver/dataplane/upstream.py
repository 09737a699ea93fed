"""Forwarding to upstream resolvers: random IDs and ports, strict reply matching, TCP on TC, failover, coalescing."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

from resolver.dataplane import metrics, udpbatch, wire
from resolver.errors import ResolverError

log = logging.getLogger(__name__)

DOWN_AFTER_FAILURES: Final = 3  # consecutive failures before an upstream is tried last, and counts as failing
DOWN_COOLDOWN_SECONDS: Final = 5.0  # ... for this long after its latest failure
TCP_MAX_MESSAGE: Final = 65535
ORDER_REFRESH_SECONDS: Final = 0.1  # how long a computed upstream order is reused
TIMEOUT_CHECK_SECONDS: Final = 0.05  # how often waiting UDP queries are checked against their deadline
# A failing upstream that no query has tried for this long is asked the root's NS (a probe), so that
# its recovery is seen without client traffic (a load balancer stops sending it while /readyz says
# degraded).
PROBE_SECONDS: Final = 1.0
NAMED_IN_ERROR: Final = 3  # failing upstreams named in a SERVFAIL's Extended DNS Error text
# Consecutive queries that share an upstream socket (see Upstream._socket).
SOCKET_RUN: Final = 8
# A forward zone's server (a school's own DNS server) serves one school's intranet: a few sockets do.
FORWARD_SOCKETS_PER_SERVER: Final = 4


class UpstreamError(ResolverError):
    """Forwarding failed; `ede_code` says why for the Extended DNS Error in the SERVFAIL, `reason` in two words.

    Each kind's defaults are class constants copied to the instance: compiled, an exception class
    takes no default for an instance attribute from its class body.
    """

    EDE_CODE: ClassVar[int] = wire.EDE_NETWORK_ERROR
    REASON: ClassVar[str] = "failed"

    def __init__(self, message: str):
        super().__init__(message)
        self.ede_code = self.EDE_CODE
        self.reason = self.REASON


class UpstreamTimeout(UpstreamError):
    EDE_CODE = wire.EDE_NO_REACHABLE_AUTHORITY
    REASON = "timed out"


class UpstreamNetworkError(UpstreamError):
    EDE_CODE = wire.EDE_NETWORK_ERROR
    REASON = "unreachable"


class UpstreamBadReply(UpstreamNetworkError):
    REASON = "bad reply"


class UpstreamTcpBusy(UpstreamNetworkError):
    """A truncated answer that could not be asked again over TCP: max_tcp_exchanges were running."""

    REASON = "TCP limit reached"


class UpstreamRefused(UpstreamError):
    """An upstream answered REFUSED or NOTAUTH: it will not resolve for us (an access list, a misconfiguration).

    RFC 8914's No Reachable Authority covers servers that "refused to reply".
    """

    EDE_CODE = wire.EDE_NO_REACHABLE_AUTHORITY

    def __init__(self, address: UpstreamAddress, rcode_name: str):
        super().__init__(f"{address} refused the query ({rcode_name})")
        self.reason = f"refused ({rcode_name})"


class AllUpstreamsFailed(UpstreamError):
    """Every upstream timed out or failed; carries the EDE code of the most telling failure."""

    def __init__(self, message: str, ede_code: int):
        super().__init__(message)
        self.ede_code = ede_code


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamAddress:
    host: str
    port: int
    # An upstream asked over TLS (DoT, `tls://host:port#name`) gives the name its certificate must
    # carry (the address itself when written without one); None: plain DNS.
    tls_name: str | None = None

    def __str__(self) -> str:
        text = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.tls_name is None:
            return text
        return f"tls://{text}" + (f"#{self.tls_name}" if self.tls_name != self.host else "")


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


# What a UDP query is finished with: its matching reply, or why there is none (exactly one is None).
UdpDone = Callable[[bytes | None, "UpstreamError | None"], None]
# What a question asked of the pool is finished with: its answer, or the failure (exactly one is None).
Done = Callable[[wire.Answer | None, Exception | None], None]


async def _awaited(start: Callable[[Callable[[Any, Exception | None], None]], None]) -> Any:
    """Await an operation started with start(done) that calls done(result, None) or done(None, error)."""
    future = asyncio.get_running_loop().create_future()

    def done(result: Any, error: Exception | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    start(done)
    return await future


class _Pending:
    """One UDP query waiting for its reply: what the reply must match, when to give up, who to tell."""

    __slots__ = ("deadline", "done", "question", "timeout_seconds")

    def __init__(self, done: UdpDone, question: bytes, timeout_seconds: float):
        self.done = done
        self.question = question
        self.deadline = time.monotonic() + timeout_seconds
        self.timeout_seconds = timeout_seconds


class _RandomIds:
    """16-bit query IDs from the OS CSPRNG, fetched 4 KiB at a time (one getrandom call per 2048 IDs)."""

    def __init__(self) -> None:
        self._ids: list[int] = []

    def forget(self) -> None:
        """Drop the IDs fetched and not used yet."""
        self._ids = []

    def next(self) -> int:
        if not self._ids:
            self._ids = list(memoryview(os.urandom(4096)).cast("H"))
        return self._ids.pop()


_random_ids: Final = _RandomIds()
# A forked process (a worker forked by resolver.processes.spawner) draws its own IDs, not its parent's next ones.
os.register_at_fork(after_in_child=_random_ids.forget)


class _UdpSocket:
    """One connected UDP socket (kernel-chosen random source port) with its in-flight queries.

    Read and written in batches, like the listening socket (server.UdpServer): every reply waiting
    in the socket is read with one recvmmsg per wake-up of the event loop, and the queries asked in
    one turn of the loop leave with one sendmmsg at its end (udpbatch.connected()).
    """

    def __init__(self, owner: Upstream, sock: socket.socket):
        self.owner = owner
        self.sock = sock
        self.pending: dict[int, _Pending] = {}
        self.outgoing: list[tuple[int, bytes]] = []  # (upstream ID, query) to send at the end of this turn
        self.uses = 0
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.batch = udpbatch.connected()
        self.loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        replies, error = self.batch.receive(self.sock)
        pending_by_id = self.pending
        for data in replies:
            if self.closed:  # retired, and its last reply just arrived
                return
            # Connected socket: the kernel already dropped datagrams from other sources.
            upstream_id = data[0] << 8 | data[1] if len(data) >= 12 else -1
            pending = pending_by_id.get(upstream_id)
            if pending is None or not wire.reply_matches(data, upstream_id, pending.question):
                self.owner.mismatched += 1  # a stray, late or spoofed reply: ignore it
                continue
            self.finish(upstream_id, data, None)
        if error and not self.closed:  # ICMP errors (port unreachable...): fail what is in flight
            self._fail(UpstreamNetworkError(f"{self.owner.address}: {os.strerror(error)}"))

    def send(self, upstream_id: int, message: bytes) -> None:
        """Queue a query: sent with the others of this turn of the event loop (_flush)."""
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append((upstream_id, message))

    def _flush(self) -> None:
        """Send the queued queries in one system call; one that cannot be sent fails (and fails over)."""
        outgoing, self.outgoing = self.outgoing, []
        if self.closed:  # its waiting queries have failed already
            return
        for index, code in self.batch.send(self.sock, [message for _, message in outgoing]):
            # A full buffer or an ICMP error from an earlier query.
            self.finish(outgoing[index][0], None, UpstreamNetworkError(f"{self.owner.address}: {os.strerror(code)}"))

    @property
    def retired(self) -> bool:
        """Used up: no new queries; closed once its last answer arrived."""
        return self in self.owner._retired

    def finish(self, upstream_id: int, reply: bytes | None, error: UpstreamError | None) -> None:
        """Hand a waiting query its reply or error (once); a retired socket closes after its last one."""
        pending = self.pending.pop(upstream_id, None)
        if pending is None:
            return
        if not self.pending and self.retired:
            self.close()
        pending.done(reply, error)

    def _fail(self, exc: UpstreamError) -> None:
        for upstream_id in list(self.pending):
            self.finish(upstream_id, None, exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.owner.discard(self)
            self._fail(UpstreamNetworkError(f"{self.owner.address}: socket closed"))


class Upstream:
    """One upstream server: a rotating pool of UDP sockets, TCP for truncated answers, health."""

    def __init__(self, address: UpstreamAddress, sockets: int = 16, socket_max_uses: int = 1000):
        self.address = address
        self.pool_size = sockets
        self.socket_max_uses = socket_max_uses
        self._sockets: list[_UdpSocket] = []  # open and not retired
        self._retired: set[_UdpSocket] = set()  # used up: closed once their last answer arrived
        self._current: _UdpSocket | None = None  # the socket of the next queries (see _socket)
        self._current_uses = 0
        self._next = 0  # the pool's socket that takes over next
        self.closed = False
        self._timeout_check: asyncio.TimerHandle | None = None  # armed while queries wait (see _expire)
        # Health and counters (read by metrics and ordering; never per-client).
        self.consecutive_failures = 0
        self.last_failure = 0.0
        # Exponentially weighted moving averages: of every exchange, a failure counting as slow (the
        # order of asking), and of answered exchanges only (what an operator is shown).
        self.latency_seconds = 0.0
        self.answer_seconds: float | None = None  # None: it never answered
        self.answer_times = metrics.Histogram()  # answered exchanges
        self.probing = False
        self.queries = 0
        self.failures = 0
        self.timeouts = 0
        self.truncated = 0
        self.mismatched = 0

    def is_down(self, now: float) -> bool:
        """Failing, and tried last for a while after its latest failure."""
        return self.failing and now - self.last_failure < DOWN_COOLDOWN_SECONDS

    @property
    def failing(self) -> bool:
        """Its last DOWN_AFTER_FAILURES exchanges failed (until one is answered)."""
        return self.consecutive_failures >= DOWN_AFTER_FAILURES

    @property
    def up(self) -> bool:
        """It answered (any rcode), and is not failing since."""
        return self.answer_seconds is not None and not self.failing

    def record(self, ok: bool, started: float, now: float) -> None:
        """Count an exchange that began at `started` and ended `now` (time.monotonic)."""
        elapsed = now - started
        if ok:
            self.consecutive_failures = 0
            self.answer_times.observe(elapsed)
            average = self.answer_seconds
            self.answer_seconds = elapsed if average is None else average + (elapsed - average) * 0.2
        else:
            self.consecutive_failures += 1
            self.failures += 1
            self.last_failure = now
        self.latency_seconds += (elapsed - self.latency_seconds) * 0.2

    def probe(self, timeout_seconds: float) -> None:
        """Ask the root's NS once, counted like any exchange: a reply that matches is an answer."""
        started = time.monotonic()

        def done(reply: bytes | None, error: UpstreamError | None) -> None:
            self.probing = False
            if isinstance(error, UpstreamTimeout):
                self.timeouts += 1
            self.record(reply is not None, started, time.monotonic())

        self.queries += 1
        self.probing = True
        try:
            self.send_udp(_PROBE, timeout_seconds, done)
        except UpstreamError:
            self.probing = False
            self.record(False, started, started)

    def _socket(self) -> _UdpSocket:
        """The socket for the next query, opened while the pool is not full.

        SOCKET_RUN consecutive queries share a socket, then the next one of the pool takes over: the
        queries of one turn of the event loop leave in a few sendmmsg calls and their replies come
        back to a few recvmmsg, while a burst of replies still spreads over the pool's receive
        buffers. After socket_max_uses queries a socket retires (closed when idle), so source ports
        keep rotating.
        """
        chosen = self._current
        if chosen is None or self._current_uses >= SOCKET_RUN:
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
                self._next = (self._next + 1) % len(sockets)
                chosen = sockets[self._next]
            self._current = chosen
            self._current_uses = 0
        self._current_uses += 1
        chosen.uses += 1
        if chosen.uses >= self.socket_max_uses:
            self._sockets.remove(chosen)
            self._retired.add(chosen)
            self._current = None
        return chosen

    def discard(self, sock: _UdpSocket) -> None:
        """Forget a closed retired socket (close() forgets the open ones)."""
        self._retired.discard(sock)

    def send_udp(self, query: wire.Query, timeout_seconds: float, done: UdpDone) -> None:
        """Send the question over UDP with a fresh random ID (at the end of this turn of the event
        loop); `done` gets the matching reply, or the error (timeout, ICMP, a send that failed,
        closed), exactly once and never before this returns. Raises UpstreamNetworkError if no
        socket can be opened."""
        if self.closed:
            raise UpstreamNetworkError(f"{self.address}: closed")
        sock = self._socket()
        upstream_id = _random_ids.next()
        while upstream_id in sock.pending:
            upstream_id = _random_ids.next()
        sock.pending[upstream_id] = _Pending(done, query.question_lower, timeout_seconds)
        sock.send(upstream_id, wire.make_upstream_query(query, upstream_id))
        if self._timeout_check is None:
            self._timeout_check = sock.loop.call_later(TIMEOUT_CHECK_SECONDS, self._expire)

    async def exchange_udp(self, query: wire.Query, timeout_seconds: float) -> bytes:
        """send_udp awaited: the matching reply, or its error raised."""
        reply: bytes = await _awaited(functools.partial(self.send_udp, query, timeout_seconds))
        return reply

    def _expire(self) -> None:
        """Fail the queries past their deadline; check again later while any is waiting.

        One check every TIMEOUT_CHECK_SECONDS for all of this upstream's queries, instead of a
        timer per query (its creation, cancellation and heap upkeep cost ~5% of a miss): a
        timeout fires up to that much late.
        """
        self._timeout_check = None
        now = time.monotonic()
        expired = [
            (sock, upstream_id, pending.timeout_seconds)
            for sock in (*self._sockets, *self._retired)
            for upstream_id, pending in sock.pending.items()
            if now >= pending.deadline
        ]
        for sock, upstream_id, timeout_seconds in expired:  # may start queries: not while iterating
            sock.finish(upstream_id, None, UpstreamTimeout(f"{self.address}: no answer in {timeout_seconds:.2f}s"))
        if self._timeout_check is None and any(sock.pending for sock in (*self._sockets, *self._retired)):
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
        self.closed = True
        if self._timeout_check is not None:
            self._timeout_check.cancel()
            self._timeout_check = None
        for sock in [*self._sockets, *self._retired]:
            sock.close()
        self._current = None
        self._sockets.clear()
        self._retired.clear()


_PROBE: Final = wire.make_synthetic_query("", wire.TYPE_NS)  # the root's NS: every recursive resolver answers it


class _Question:
    """One question the pool is answering: its attempts over the upstreams in order, and who waits.

    Driven by callbacks, not a task: a waiting cache miss holds no task, future or coroutine
    frames (measured: 2.3 KB per waiting miss instead of 3.9; docs/performance-history.md, "Cache misses
    without tasks").
    """

    __slots__ = (
        "candidates",
        "deadline",
        "failures",
        "finished",
        "index",
        "last_answer",
        "pool",
        "query",
        "started",
        "waiters",
        "worst",
    )

    def __init__(self, pool: UpstreamPool, query: wire.Query, done: Done):
        self.pool = pool
        self.query = query
        self.waiters = [done]
        self.started = time.monotonic()  # the clock of the attempts' deadlines (_Pending), and the event loop's
        self.deadline = self.started + pool.timeout_seconds
        self.candidates = pool.ordered(self.started)
        self.index = -1  # the upstream being asked
        self.last_answer: wire.Answer | None = None  # a SERVFAIL, returned if no upstream does better
        self.worst: UpstreamError | None = None  # the most telling failure so far
        self.failures: list[str] | None = None  # "address reason" of each failed attempt (made on a failure)
        self.finished = False

    def next_attempt(self) -> None:
        """Ask the next upstream, sharing what is left of the time among the ones still to try; or finish."""
        candidates = self.candidates
        while self.index + 1 < len(candidates):
            self.index += 1
            if self.index:
                self.started = time.monotonic()
            remaining = self.deadline - self.started
            if remaining <= 0:
                break
            upstream = candidates[self.index]
            upstream.queries += 1
            try:
                upstream.send_udp(self.query, remaining / (len(candidates) - self.index), self.udp_done)
                return
            except UpstreamError as exc:
                self.failed(upstream, exc)
        if self.last_answer is not None:
            self.finish(self.last_answer, None)
        else:
            worst = self.worst or UpstreamTimeout("no time left to ask any upstream")
            self.finish(None, AllUpstreamsFailed(self.failure_text(), worst.ede_code))

    def failure_text(self) -> str:
        """The SERVFAIL's Extended DNS Error text: the upstreams that failed and how, in brief."""
        failures = self.failures or []
        if not failures:
            return "no time left to ask an upstream"
        text = "no upstream answered: " + ", ".join(failures[:NAMED_IN_ERROR])
        return text + (f" (+{len(failures) - NAMED_IN_ERROR} more)" if len(failures) > NAMED_IN_ERROR else "")

    def udp_done(self, reply: bytes | None, error: UpstreamError | None) -> None:
        try:  # costs nothing until it catches (Python 3.11); one call per reply less than a helper
            upstream = self.candidates[self.index]
            if reply is None:
                self.failed(upstream, error)  # type: ignore[arg-type]
                self.next_attempt()
            elif reply[2] & 0x02:  # TC: again over TCP, the one path that runs as a task
                self.truncated(upstream)
            else:
                self.replied(upstream, reply)
        except Exception as exc:  # a bug: the waiters answer SERVFAIL, and nothing is left waiting
            self.finish(None, exc)

    def truncated(self, upstream: Upstream) -> None:
        upstream.truncated += 1
        if not self.pool.start_tcp(upstream, self.query, max(self.deadline - time.monotonic(), 0.05), self.tcp_done):
            self.failed(
                upstream,
                UpstreamTcpBusy(f"{upstream.address}: {self.pool.max_tcp_exchanges} TCP exchanges already in flight"),
            )
            self.next_attempt()

    def tcp_done(self, task: asyncio.Task[bytes]) -> None:
        upstream = self.candidates[self.index]
        error = UpstreamNetworkError(f"{upstream.address} (tcp): cancelled") if task.cancelled() else task.exception()
        try:
            if isinstance(error, UpstreamError):
                self.failed(upstream, error)
                self.next_attempt()
            elif isinstance(error, Exception):
                self.finish(None, error)  # a bug in the exchange: the waiters answer SERVFAIL
            else:
                self.replied(upstream, task.result())
        except Exception as exc:  # a bug: the waiters answer SERVFAIL, and nothing is left waiting
            self.finish(None, exc)

    def replied(self, upstream: Upstream, reply: bytes) -> None:
        limits = self.pool.limits
        try:
            answer = wire.parse_upstream_answer(
                reply, len(self.query.question), limits.min_ttl, limits.max_ttl, limits.negative_max_ttl
            )
        except wire.BadReply as exc:
            upstream.mismatched += 1
            self.failed(upstream, UpstreamBadReply(f"{upstream.address}: bad reply: {exc}"), telling=False)
            self.next_attempt()
            return
        rcode = answer.rcode
        if rcode == wire.REFUSED or rcode == wire.NOTAUTH:
            # Not passed on: the client would take it for schooldns' own refusal. Another upstream
            # may answer; if none does, SERVFAIL with an EDE that names the refusal.
            name = "REFUSED" if rcode == wire.REFUSED else "NOTAUTH"
            self.failed(upstream, UpstreamRefused(upstream.address, name))
            self.next_attempt()
            return
        upstream.record(True, self.started, time.monotonic())
        if rcode == wire.SERVFAIL:
            self.last_answer = answer  # that upstream could not help; another may
            self.next_attempt()
            return
        self.finish(answer, None)

    def failed(self, upstream: Upstream, exc: UpstreamError, telling: bool = True) -> None:
        """Count a failed attempt; a timeout is the most telling failure, else the first one."""
        if isinstance(exc, UpstreamTimeout):
            upstream.timeouts += 1
        upstream.record(False, self.started, time.monotonic())
        self.pool.reorder()
        if upstream.failing:
            self.pool.watch_failing()
        if self.worst is None or (telling and isinstance(exc, UpstreamTimeout)):
            self.worst = exc
        if self.failures is None:
            self.failures = []
        self.failures.append(f"{upstream.address} {exc.reason}")

    def finish(self, answer: wire.Answer | None, error: Exception | None) -> None:
        """Hand every waiter the outcome; once (a later call, after a bug, does nothing)."""
        if self.finished:
            return
        self.finished = True
        del self.pool.asking[self.query.key]
        for done in self.waiters:
            try:
                done(answer, error)
            except Exception:  # a waiter's bug must not cost the other waiters their answer
                log.exception("internal error handing out an upstream answer")


class UpstreamPool:
    """Answers questions from a set of upstreams, in order of health, merging identical in-flight queries."""

    def __init__(
        self,
        addresses: list[UpstreamAddress],
        timeout_seconds: float = 2.0,
        limits: AnswerLimits = AnswerLimits(),
        sockets_per_upstream: int = 16,
        max_in_flight: int = 10000,
        max_tcp_exchanges: int = 64,
        make_upstream: Callable[[UpstreamAddress, int], Upstream] | None = None,  # upstreamtls.make_upstream
    ):
        if not addresses:
            raise ValueError("at least one upstream is needed")
        self.upstreams = [(make_upstream or Upstream)(a, sockets_per_upstream) for a in addresses]
        self.timeout_seconds = timeout_seconds
        self.limits = limits
        self.max_in_flight = max_in_flight
        self.asking: dict[bytes, _Question] = {}  # question key -> the question being answered
        self.coalesced = 0
        self._order = list(self.upstreams)
        self._order_until = 0.0
        self.max_tcp_exchanges = max_tcp_exchanges
        self._tcp_exchanges: set[asyncio.Task[bytes]] = set()  # retries of truncated answers
        self._probe_check: asyncio.TimerHandle | None = None  # armed while an upstream is failing
        self._closed = False

    def ask(self, query: wire.Query, done: Done) -> None:
        """Answer the query's question: `done(answer, None)` or `done(None, error)`, exactly once,
        possibly before this returns. Identical questions asked meanwhile share the answer."""
        question = self.asking.get(query.key)
        if question is not None:
            question.waiters.append(done)
            self.coalesced += 1
        elif len(self.asking) >= self.max_in_flight:
            done(None, UpstreamError("too many queries in flight upstream"))
        else:
            question = self.asking[query.key] = _Question(self, query, done)
            try:
                question.next_attempt()
            except Exception as exc:  # a bug: the waiters answer SERVFAIL, and nothing is left waiting
                question.finish(None, exc)

    async def resolve(self, query: wire.Query) -> wire.Answer:
        """ask(), awaited: the answer, or the failure raised."""
        answer: wire.Answer = await _awaited(functools.partial(self.ask, query))
        return answer

    def start_tcp(
        self, upstream: Upstream, query: wire.Query, timeout_seconds: float, done: Callable[[asyncio.Task[bytes]], None]
    ) -> bool:
        """Run upstream.exchange_tcp as a task (cancelled when the pool closes), then done(task).

        False, and nothing started, when max_tcp_exchanges are running: an upstream (or a
        spoofer) that truncates every answer must not open a connection per cache miss.
        """
        if len(self._tcp_exchanges) >= self.max_tcp_exchanges:
            return False
        task = asyncio.get_running_loop().create_task(upstream.exchange_tcp(query, timeout_seconds))
        self._tcp_exchanges.add(task)
        task.add_done_callback(self._tcp_exchanges.discard)
        task.add_done_callback(done)
        return True

    def watch_failing(self) -> None:
        """Probe the failing upstreams while they fail (see PROBE_SECONDS)."""
        if self._probe_check is None and not self._closed:
            self._probe_check = asyncio.get_running_loop().call_later(PROBE_SECONDS, self._probe)

    def _probe(self) -> None:
        self._probe_check = None
        now = time.monotonic()
        for upstream in self.upstreams:
            if upstream.failing and not upstream.probing and now - upstream.last_failure >= PROBE_SECONDS:
                upstream.probe(self.timeout_seconds)
        if any(upstream.failing for upstream in self.upstreams):
            self.watch_failing()

    def reorder(self) -> None:
        """Sort the upstreams again at the next question (after a failure)."""
        self._order_until = 0.0

    def ordered(self, now: float) -> list[Upstream]:
        """Healthy upstreams by latency first, then the ones recently failing.

        Sorted at most every ORDER_REFRESH_SECONDS, and at once after a failure.
        """
        if now >= self._order_until:
            self._order = sorted(self.upstreams, key=lambda u: (u.is_down(now), u.latency_seconds))
            self._order_until = now + ORDER_REFRESH_SECONDS
        return self._order

    def close(self) -> None:
        """Close every upstream: questions still waiting fail (their waiters answer at once)."""
        for task in self._tcp_exchanges:
            task.cancel()
        self._closed = True
        if self._probe_check is not None:
            self._probe_check.cancel()
            self._probe_check = None
        for upstream in self.upstreams:
            upstream.closed = True  # no failover to an upstream about to close
        for upstream in self.upstreams:
            upstream.close()


class _Unavailable:
    """What a forward zone is asked through when no pool may be made for it: every question fails."""

    def __init__(self, message: str):
        self.message = message

    def ask(self, query: wire.Query, done: Done) -> None:
        done(None, UpstreamError(self.message))


ForwardServers = tuple[tuple[str, int], ...]  # (IP address, port) of a forward zone's servers, in order


class ForwardPools:
    """The pools of the forward zones' servers: one UpstreamPool per list of servers, made when first asked.

    At most `max_pools`; past that a forward zone's questions fail (SERVFAIL) rather than open sockets
    without bound. `retain` closes the pools that a new snapshot no longer names.
    """

    def __init__(
        self,
        max_pools: int,
        timeout_seconds: float = 2.0,
        limits: AnswerLimits = AnswerLimits(),
        max_in_flight: int = 1000,
    ):
        self.max_pools = max_pools
        self.timeout_seconds = timeout_seconds
        self.limits = limits
        self.max_in_flight = max_in_flight
        self.pools: dict[ForwardServers, UpstreamPool] = {}
        self._full = _Unavailable(f"more than {max_pools} forward server lists")

    def pool(self, servers: ForwardServers) -> UpstreamPool | _Unavailable:
        pool = self.pools.get(servers)
        if pool is None:
            if len(self.pools) >= self.max_pools:
                return self._full
            addresses = [UpstreamAddress(host, port) for host, port in servers]
            pool = self.pools[servers] = UpstreamPool(
                addresses, self.timeout_seconds, self.limits, FORWARD_SOCKETS_PER_SERVER, self.max_in_flight
            )
        return pool

    def retain(self, wanted: set[ForwardServers]) -> None:
        """Close the pools of server lists not in `wanted` (their waiting questions fail at once)."""
        for servers in [s for s in self.pools if s not in wanted]:
            self.pools.pop(servers).close()

    def close(self) -> None:
        self.retain(set())
