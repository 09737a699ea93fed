"""The UDP listener: datagrams read in batches, answered through the pipeline; the bound on misses in flight."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any, Protocol

from resolver.dataplane import frontends, metrics, pipeline, udpbatch

# Its own module, not server's: it runs compiled in the compiled build (resolver.COMPILABLE), and
# server's TCP connection, an asyncio.Protocol that DoT's connection subclasses, cannot be.

SCHOOL_IN_FLIGHT_LIMIT = "school_in_flight_limit"  # the dropped reason of a miss over its school's cap


class _School(Protocol):
    @property
    def id(self) -> str: ...


class Miss(Protocol):
    """What InFlight starts: a cache miss (pipeline.Pending) of a school, answered through deliver_to."""

    @property
    def school(self) -> _School: ...
    def deliver_to(self, deliver: pipeline.Deliver) -> None: ...


class InFlight:
    """The capped count of one worker's cache misses waiting for their answers (for the bound and the drain).

    Each school also has its own cap (`per_school`), so that one school's flood (a compromised lab
    PC) fills its own share of the worker's places and the other schools keep theirs.
    """

    def __init__(self, limit: int, counters: metrics.Counters, per_school: int | None = None):
        self.limit = limit
        self.per_school = per_school or limit
        self.counters = counters
        self.count = 0
        self.by_school: dict[str, int] = {}  # school id -> its misses waiting (only schools with some)
        self._idle: asyncio.Event | None = None  # set when the count reaches 0, while draining

    def start(
        self,
        miss: Miss,
        deliver: Callable[[bytes], None],
        reason: str,
        nothing: Callable[[], None] | None = None,
    ) -> bool:
        """Start a cache miss, whose answer goes to deliver() (or, when there is none to send, to
        nothing(), if given: an HTTP request is answered all the same); False (the miss dropped) when full."""
        if self.count >= self.limit:
            self.counters.dropped[reason] += 1
            return False
        school = miss.school.id
        held = self.by_school.get(school, 0)
        if held >= self.per_school:
            self.counters.dropped[SCHOOL_IN_FLIGHT_LIMIT] += 1
            return False
        self.by_school[school] = held + 1
        self.count += 1
        miss.deliver_to(functools.partial(self._finished, deliver, school, nothing))
        return True

    def _finished(
        self, deliver: Callable[[bytes], None], school: str, nothing: Callable[[], None] | None, answer: bytes | None
    ) -> None:
        self.count -= 1
        held = self.by_school.pop(school) - 1
        if held:
            self.by_school[school] = held
        if not self.count and self._idle is not None:
            self._idle.set()
        if answer is not None:
            deliver(answer)
        elif nothing is not None:
            nothing()

    async def drain(self, timeout_seconds: float) -> None:
        """Let queries in flight finish for up to timeout_seconds (the rest fail when the upstreams close)."""
        if self.count:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_seconds)


class UdpServer:
    """One UDP listening socket, read in batches: each datagram is one query."""

    def __init__(
        self,
        sock: socket.socket,
        pipe: pipeline.Pipeline,
        in_flight: InFlight,
        front_ends: frontends.FrontEnds | None = None,
    ):
        self.sock = sock
        self.batch = udpbatch.for_socket(sock)
        self.pipeline = pipe
        # Trusted front-ends' datagrams are answered for the client they name; without any, nothing
        # stands between a datagram and the pipeline.
        # (None: the pipeline's own, called directly, a C call in the compiled build.)
        self.handle = None if front_ends is None else front_ends.datagrams(pipe.handle)
        self.in_flight = in_flight
        self.loop = asyncio.get_running_loop()
        self.reading = False
        self.closed = False
        # Answers of cache misses and their senders, sent once per loop turn
        self.later: list[bytes] = []
        self.later_to: list[Any] = []

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._read_ready)
        self.reading = True

    def pause_reading(self) -> None:
        """Stop taking queries; answers to the ones in flight can still be sent (the drain)."""
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def close(self) -> None:
        self.pause_reading()
        self._send_later()  # what the last queries in flight answered
        self.closed = True
        self.sock.close()

    def _read_ready(self) -> None:
        # Hot path: every waiting datagram in one system call; blocked names and cache hits are
        # answered in one more, cache misses on their own when their answer arrives.
        # (Lists side by side, not a tuple per datagram or answer: measured as CPU per answer.)
        pipe, handle = self.pipeline, self.handle
        payloads, clients, senders = self.batch.receive()
        answers: list[bytes] = []
        to: list[Any] = []
        for i in range(len(payloads)):
            data, client = payloads[i], clients[i]
            reply = pipe.handle(data, client, "udp") if handle is None else handle(data, client, "udp")
            if isinstance(reply, bytes):
                answers.append(reply)
                to.append(senders[i])
            elif isinstance(reply, pipeline.Pending):
                self.in_flight.start(reply, functools.partial(self.send_to, senders[i]), "udp_in_flight_limit")
            # None: nothing to send
        self._send(answers, to)
        if self.batch.oversized:
            self.in_flight.counters.dropped["udp_oversized"] += self.batch.oversized
            self.batch.oversized = 0

    def send_to(self, sender: Any, answer: bytes) -> None:
        """Queue a cache miss's answer: the answers that arrive in one turn of the event loop go out together.

        One sendmmsg per turn instead of one system call per answer, measured as CPU per miss. The
        sender comes first, so that a miss's partial binds it by position (a keyword costs a dict
        per call).
        """
        if not self.later:
            self.loop.call_soon(self._send_later)
        self.later.append(answer)
        self.later_to.append(sender)

    def _send_later(self) -> None:
        answers, to = self.later, self.later_to
        self.later, self.later_to = [], []
        self._send(answers, to)

    def _send(self, answers: list[bytes], to: list[Any]) -> None:
        """Send now or drop: a full socket buffer means the clients will retry (as C servers do)."""
        if answers and not self.closed and (dropped := self.batch.send(answers, to)):
            self.in_flight.counters.dropped["udp_send_buffer_full"] += dropped
