"""DNS over HTTPS (RFC 8484): HTTP/2 (with h2) and HTTP/1.1 on a TLS connection, each request one Pipeline.handle.

Served in every worker, on the TLS transport of tlsstream: a request becomes one call of
`Pipeline.handle` like a UDP datagram, so DoH costs the worker HTTP framing and TLS, not a web
framework. HTTP/2 (what browsers, dig, kdig, curl and dnsperf speak, chosen by ALPN) is the
sans-IO `h2` library's, with a short path here for the frames of a plain GET or POST (see
Http2); HTTP/1.1 is the small reader's here (Content-Length bodies, keep-alive,
pipelined requests answered in order; no chunked bodies, which no DoH client sends). This module
and h2 are imported only when `doh:` is configured.

`/dns-query` is answered for the school of the client's address, as over UDP: a trusted
front-end's PROXY header (before TLS, or first inside it) or, without one, its queries' Client
Subnet names it. `/dns-query/<token>` for the school of a `doh:<school>` token (a device off the
school network): an unknown token, or one whose school no longer exists, gets 403 and is never
answered for another school (nor for `default_school`). GET takes `?dns=` (base64url), POST a
body of application/dns-message; otherwise 405, 415 on another content type, 400 on a bad `dns`
parameter or a message that is not a DNS query, 413 on a body or parameter longer than a DNS
message can be. An answer's `Cache-Control: max-age` is its smallest TTL, and it is padded (RFC
8467) when the query used EDNS.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import functools
import logging
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack

from resolver import tokenfile
from resolver.dataplane import ednsopt, frontends, headerblock, metrics, pipeline, proxyv2, server, wire

log = logging.getLogger(__name__)

MAX_MESSAGE = 65535  # the longest DNS message: a longer body or `dns` parameter is 413
MAX_HEAD = 8192  # an HTTP/1.1 request line and headers
MAX_STREAMS = 100  # HTTP/2 requests open at once on one connection
TOKENS_CHECK_SECONDS = 1.0  # how often, at most, the tokens file is looked at for a change
PATH = b"/dns-query"
CONTENT_TYPE = b"application/dns-message"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_REJECTED = {
    400: "http_bad_request",
    403: "http_forbidden",
    404: "http_not_found",
    405: "http_method",
    413: "http_too_large",
    415: "http_media_type",
}
_RR_FIXED = struct.Struct("!HHIH")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")  # base64url to base64, as base64.urlsafe_b64decode does
_COUNTS = struct.Struct("!HHH")


class Response(NamedTuple):
    """What a request is answered with: a status and, for 200, a DNS answer and its freshness."""

    status: int
    body: bytes = b""
    max_age: int = 0

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.status != 200:
            return [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(self.body))]
        return [
            (b"content-type", CONTENT_TYPE),
            (b"content-length", b"%d" % len(self.body)),
            (b"cache-control", b"max-age=%d" % self.max_age),
        ]


Respond = Callable[[Response], None]


def min_ttl(answer: bytes) -> int:
    """The smallest TTL of an answer's answer and authority records (RFC 8484 5.1), 0 without any."""
    try:
        qdcount, ancount, nscount = _COUNTS.unpack_from(answer, 4)
        size = len(answer)
        pos = 12
        for _ in range(qdcount):
            pos = wire.skip_name(answer, pos, size) + 4
        smallest = -1  # none yet
        for _ in range(ancount + nscount):
            pos = wire.skip_name(answer, pos, size)
            _type, _class, ttl, rdlength = _RR_FIXED.unpack_from(answer, pos)
            if smallest < 0 or ttl < smallest:
                smallest = ttl
            pos += 10 + rdlength
    except (struct.error, wire.WireError):
        return 0
    return max(smallest, 0)


def _dns_parameter(query: bytes) -> bytes | None:
    """The `dns` parameter of a query string, undecoded (None when absent)."""
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"dns":
            return value
    return None


class TokenSchools:
    """The school of each `doh:<school>` token in the tokens file, by the token's hash; the file is
    read again when it changes (looked at on a request, at most every TOKENS_CHECK_SECONDS)."""

    def __init__(self, path: Path):
        self.file = tokenfile.TokenFile(path)
        self._by_hash: dict[str, str] = {}
        self._checked = -math.inf
        self._tokens: tokenfile.Tokens | None = None

    def school(self, token: str) -> str | None:
        now = time.monotonic()
        if now - self._checked >= TOKENS_CHECK_SECONDS:
            self._checked = now
            tokens = self.file.current()
            if tokens is not self._tokens:
                self._tokens = tokens
                if self.file.problem:
                    log.error("DoH tokens: %s; no token is accepted until it is fixed", self.file.problem)
                self._by_hash = {
                    sha: t.role.school
                    for sha, t in tokens.by_hash.items()
                    if t.role.kind is tokenfile.RoleKind.DOH and t.role.school is not None
                }
        return self._by_hash.get(tokenfile.digest(token))


class SchoolTokens(Protocol):
    """What DoH needs of the tokens (TokenSchools)."""

    def school(self, token: str) -> str | None: ...


class DohServer:
    """What a worker's DoH connections share: the pipeline, the bounds, the tokens, the open set."""

    def __init__(
        self,
        pipe: pipeline.Pipeline,
        in_flight: server.InFlight,
        limits: server.TcpLimits,
        counters: metrics.Counters,
        tokens: SchoolTokens,
        front_ends: frontends.FrontEnds | None = None,
    ):
        self.pipeline = pipe
        self.in_flight = in_flight
        self.limits = limits
        self.counters = counters
        self.tokens = tokens
        self.front_ends = front_ends
        self.open: set[DohConnection] = set()

    def protocol(self, client: str | bytes, front_end: bool = False) -> DohConnection:
        return DohConnection(self, client, front_end)

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close()

    def reject(self, status: int, text: str) -> Response:
        reason = _REJECTED.get(status)
        if reason is not None:
            self.counters.rejected[("doh", reason)] += 1
        return Response(status, text.encode() + b"\n")

    def request(
        self,
        method: bytes,
        target: bytes,
        content_type: bytes,
        body: bytes,
        connection: DohConnection,
        respond: Respond,
    ) -> None:
        """Answer one request of `connection`: respond() is called once, now or when the upstream answers."""
        path, _, query = target.partition(b"?")
        school_id = None
        if path.startswith(PATH + b"/"):
            school_id = self.tokens.school(path[len(PATH) + 1 :].decode("ascii", "replace"))
            if school_id is None or self.pipeline.snapshot.policies.school(school_id) is None:
                return respond(self.reject(403, "unknown token"))
        elif path != PATH:
            return respond(self.reject(404, "DNS queries go to /dns-query"))
        if method == b"GET":
            parameter = _dns_parameter(query)
            if parameter is None:
                return respond(self.reject(400, "no dns parameter"))
            if len(parameter) > (MAX_MESSAGE * 4 + 2) // 3:
                return respond(self.reject(413, "dns parameter too long"))
            try:
                message = binascii.a2b_base64(parameter.translate(_FROM_URLSAFE) + b"=" * (-len(parameter) % 4))
            except (binascii.Error, ValueError):
                return respond(self.reject(400, "the dns parameter is not base64url"))
        elif method == b"POST":
            if content_type.partition(b";")[0].strip().lower() != CONTENT_TYPE:
                return respond(self.reject(415, "expected content-type: application/dns-message"))
            if len(body) > MAX_MESSAGE:
                return respond(self.reject(413, "body too long"))
            message = body
        else:
            return respond(self.reject(405, "GET or POST"))
        client = connection.client
        if connection.front_end and self.front_ends is not None:
            client = self.front_ends.client_of(message, client)
        reply = self.pipeline.handle(message, client, "doh", school_id)
        if type(reply) is bytes:
            return respond(self._answer(reply))
        if isinstance(reply, pipeline.Pending):
            if not self.in_flight.start(
                reply,
                lambda answer: respond(self._answer(answer)),
                "doh_in_flight_limit",
                lambda: respond(self.reject(400, "not a DNS query")),
            ):
                respond(Response(503, b"busy\n"))
            return None
        if reply is pipeline.SHED:  # counted as dropped (school_rate_limit)
            return respond(Response(429, b"too many queries from this school\n"))
        return respond(self.reject(400, "not a DNS query"))

    @staticmethod
    def _answer(answer: bytes) -> Response:
        return Response(200, ednsopt.pad(answer), min_ttl(answer))


class DohConnection(asyncio.Protocol):
    """One client's TLS connection: HTTP/2 or HTTP/1.1 as ALPN chose, an idle timeout, a bound on requests waiting."""

    def __init__(self, shared: DohServer, client: str | bytes, front_end: bool = False):
        self.shared = shared
        self.client = client
        self.front_end = front_end  # a trusted front-end's without a PROXY header: its queries' Client Subnet counts
        self.transport: asyncio.Transport | None = None
        self.http: Http1 | Http2 | None = None
        # A trusted front-end's connection without a PROXY header before TLS may start with one inside
        # it (dnsdist's): its first bytes are kept here until they show whether they hold one.
        self.awaiting_header = front_end
        self.start = b""
        self.waiting = 0  # requests whose answer has not been sent
        self.closed = False
        self.write_paused = False  # the transport's unsent bytes are past its high-water mark
        self.idle_timer: asyncio.TimerHandle | None = None
        self.last_read = 0.0  # the loop's time of the last read
        self.loop_time = time.monotonic  # the event loop's clock (set when the connection is made)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        shared = self.shared
        if len(shared.open) >= shared.limits.tcp_max_connections:
            shared.counters.rejected[("doh", "connection_limit")] += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        shared.open.add(self)
        shared.counters.accepted["doh"] += 1
        self.loop_time = asyncio.get_running_loop().time
        self.last_read = self.loop_time()
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        self.http = Http2(self) if alpn == "h2" else Http1(self)
        self._arm_idle_timer(shared.limits.tcp_idle_timeout_seconds)

    def _arm_idle_timer(self, seconds: float) -> None:
        self.idle_timer = asyncio.get_running_loop().call_later(seconds, self._idle)

    def _idle(self) -> None:
        # A read sets last_read, and the timer looks at it when it fires (a new timer per read cost 2%
        # of a request's time).
        timeout = self.shared.limits.tcp_idle_timeout_seconds
        rest = self.last_read + timeout - self.loop_time()
        if self.waiting:
            self._arm_idle_timer(timeout)
        elif rest > 0:
            self._arm_idle_timer(rest)
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop_time()
        if self.awaiting_header:
            data = self._proxy_header(data)
        if data and self.http is not None:
            self.http.received(data)

    def _proxy_header(self, data: bytes) -> bytes:
        """The bytes after a PROXY header at the start of a trusted front-end's TLS stream (all of them
        without one); b"" while it has not all arrived, or when it is malformed (closed)."""
        assert self.shared.front_ends is not None
        self.start += data
        try:
            header = self.shared.front_ends.stream_header(self.start[: proxyv2.MAX_HEADER], "doh")
        except proxyv2.Incomplete:
            return b""
        except proxyv2.ProxyError:
            self.close()
            return b""
        data, self.start, self.awaiting_header = self.start, b"", False
        if header is None:
            return data
        self.front_end = False  # the header named the client; its queries' Client Subnet is the client's own
        self.client = header.client or self.client
        return data[header.length :]

    # A client that does not read its answers is not read either: past the TLS transport's high-water
    # mark of unsent bytes, no request is read (and none answered) until the answers went out.
    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        transport = self.transport
        pipelining_paused = isinstance(self.http, Http1) and self.http.paused  # Http1 resumes it then
        if transport is not None and not transport.is_closing() and not pipelining_paused:
            transport.resume_reading()

    def malformed(self) -> None:
        """Bytes that are not HTTP: counted, and the connection closed."""
        self.shared.counters.rejected[("doh", "http_malformed")] += 1
        self.close()

    def write(self, data: bytes | list[bytes]) -> None:
        """Bytes to send, or pieces to send each in a TLS record of its own (and in one system call)."""
        if data and not self.closed and self.transport is not None and not self.transport.is_closing():
            if isinstance(data, list):
                self.transport.writelines(data)
            else:
                self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if isinstance(self.http, Http2):
                self.http.goodbye()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.shared.open.discard(self)


class _Slot:
    """An HTTP/1.1 request's place in the order its answer must go out in."""

    __slots__ = ("keep_alive", "response")

    def __init__(self, keep_alive: bool):
        self.keep_alive = keep_alive
        self.response: Response | None = None


class Http1:
    """HTTP/1.1 on one connection: requests read in turn, answered in the order they came (RFC 9112 9.3.2).

    At `limits.tcp_max_pipelined` requests waiting for their answers it reads no more until some
    went out. (HTTP/2 needs no such pause: MAX_STREAMS bounds its requests, and h2 ends a
    connection that opens more.)
    """

    def __init__(self, connection: DohConnection):
        self.connection = connection
        self.buffer = bytearray()
        self.slots: collections.deque[_Slot] = collections.deque()
        self.head: tuple[bytes, bytes, bytes, int, bool] | None = None  # method, target, type, length, keep-alive
        self.ending = False  # a response said `connection: close`, or the input was not HTTP
        self.paused = False

    def received(self, data: bytes) -> None:
        self.buffer += data
        while not self.ending and not self.paused:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self._refuse(431, "request head too long")
                    return
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                if not self._read_head(head):
                    return
            assert self.head is not None
            method, target, content_type, length, keep_alive = self.head
            if len(self.buffer) < length:
                return
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            self.head = None
            slot = _Slot(keep_alive)
            self._started(slot)
            self.connection.shared.request(
                method, target, content_type, body, self.connection, functools.partial(self._respond, slot)
            )

    def _read_head(self, head: bytes) -> bool:
        """Take a request line and headers; False when the connection ends here (answered 4xx/5xx or closed)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.connection.malformed()
            self.ending = True
            return False
        method, target, version = parts
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                self.connection.malformed()
                self.ending = True
                return False
            headers[name.lower()] = value.strip()
        if b"transfer-encoding" in headers:
            self._refuse(501, "chunked bodies are not taken; send content-length")
            return False
        length_text = headers.get(b"content-length", b"0")
        if not length_text.isdigit():
            self._refuse(400, "bad content-length")
            return False
        length = int(length_text)
        if length > MAX_MESSAGE:
            self._refuse(413, "body too long")
            return False
        connection = headers.get(b"connection", b"").lower()
        keep_alive = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
        if headers.get(b"expect", b"").lower() == b"100-continue" and length:
            self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.head = (method, target, headers.get(b"content-type", b""), length, keep_alive)
        return True

    def _refuse(self, status: int, text: str) -> None:
        """Answer `status` after the answers owed, then close: what follows cannot be read."""
        self.ending = True
        self.connection.shared.counters.rejected[("doh", _REJECTED.get(status, "http_malformed"))] += 1
        slot = _Slot(keep_alive=False)
        slot.response = Response(status, text.encode() + b"\n")
        self._started(slot)
        self._flush()

    def _started(self, slot: _Slot) -> None:
        self.slots.append(slot)
        connection = self.connection
        connection.waiting += 1
        if connection.waiting >= connection.shared.limits.tcp_max_pipelined and connection.transport is not None:
            self.paused = True
            connection.transport.pause_reading()

    def _respond(self, slot: _Slot, response: Response) -> None:
        slot.response = response
        self._flush()

    def _flush(self) -> None:
        while self.slots and self.slots[0].response is not None:
            slot = self.slots.popleft()
            response = slot.response
            assert response is not None
            self.connection.waiting -= 1
            lines = [b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, "").encode())]
            lines += [name + b": " + value for name, value in response.headers()]
            if not slot.keep_alive:
                lines.append(b"connection: close")
            self.connection.write(b"\r\n".join(lines) + b"\r\n\r\n" + response.body)
            if not slot.keep_alive:
                self.ending = True
                self.slots.clear()
                self.connection.close()
                return
        transport = self.connection.transport
        if self.paused and self.connection.waiting < self.connection.shared.limits.tcp_max_pipelined:
            self.paused = False
            if transport is not None and not transport.is_closing() and not self.connection.write_paused:
                transport.resume_reading()
                asyncio.get_running_loop().call_soon(self.received, b"")  # requests already read


# Headers stay bytes, and h2 checks and rewrites none of them: what is sent is this module's own,
# and of what is received only :method, :path and content-type are read, each compared exactly
# (a request that breaks HTTP/2's header rules gets 404, 405 or 415 from that). The checks took
# about a third of h2's time per request (measured under dnsperf -m doh).
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)

# Frame types and flags read by the short path (RFC 9113 6).
_DATA, _HEADERS, _RST_STREAM, _WINDOW_UPDATE, _CONTINUATION, _PUSH_PROMISE = 0x0, 0x1, 0x3, 0x8, 0x9, 0x5
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_FRAME_HEAD = struct.Struct("!IBI")  # length (24 bits) and type, flags, stream ID
_PREFACE = 24  # the client's connection preface, which h2 reads
_MAX_WINDOW = 2**31 - 1
_ACKNOWLEDGE = 16384  # bytes of short-path request bodies given back to a flow-control window at once
_BLOCKS_KEPT = 4096  # encoded response header blocks kept, by status, length and max-age

# The response headers as HPACK literals that are never indexed, so that a block refers to the
# static table alone and changes neither side's dynamic table: the same bytes are right on every
# connection, whatever its table holds, and are encoded once (by hpack, with an encoder of their own).
_block_encoder = hpack.Encoder()
_blocks: dict[tuple[int, int, int], bytes] = {}


def _never_indexed(response: Response) -> list[tuple[bytes, bytes, bool]]:
    """A response's headers, each marked for hpack as a literal never indexed."""
    return [(b":status", b"%d" % response.status, True), *((n, v, True) for n, v in response.headers())]


def _static_block(response: Response) -> bytes:
    key = (response.status, len(response.body), response.max_age)
    block = _blocks.get(key)
    if block is None:
        if len(_blocks) >= _BLOCKS_KEPT:
            _blocks.clear()
        block = _blocks[key] = _block_encoder.encode(_never_indexed(response))
    return block


def _frame(kind: int, flags: int, stream_id: int, payload: bytes | memoryview) -> bytes:
    return _FRAME_HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


class _H2Decoder:
    """headerblock's decoder as h2 uses hpack's: its errors made hpack's, which h2 turns into connection errors."""

    def __init__(self, decoder: headerblock.Decoder):
        self.decoder = decoder

    @property
    def max_header_list_size(self) -> int:
        return self.decoder.max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self.decoder.max_header_list_size = value

    @property
    def max_allowed_table_size(self) -> int:
        return self.decoder.max_allowed_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self.decoder.max_allowed_table_size = value

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:
        try:
            return self.decoder.decode(data)
        except headerblock.HeaderListTooLong as exc:
            raise hpack.OversizedHeaderListError(str(exc)) from None
        except headerblock.HeaderBlockError as exc:
            raise hpack.HPACKDecodingError(str(exc)) from None


class _Stream:
    __slots__ = ("body", "headers")

    def __init__(self, headers: dict[bytes, bytes]):
        self.headers = headers
        self.body = bytearray()


class _Short:
    """A request taken by the short path: its body while it arrives, its answer's flow-control window,
    and what of the answer waits for room."""

    __slots__ = ("answered", "arriving", "body", "head", "received", "unsent", "window")

    def __init__(self, head: tuple[bytes, bytes, bytes] | None):
        self.head = head  # method, path and content type of a request whose body is arriving and wanted
        self.body = bytearray()
        self.arriving = head is not None  # the client's side of the stream is open
        self.answered = False
        self.received = 0  # bytes of DATA not yet given back to the stream's window
        self.window = 0  # WINDOW_UPDATE increments less DATA sent, over the client's initial window
        self.unsent: memoryview | None = None


class Http2:
    """HTTP/2 on one connection (h2): each stream one request; answers sent within flow control as they come.

    A request opened by one HEADERS frame (END_HEADERS, no padding) on a new stream takes a short
    path: its frames are split off here, its header block decoded by the HPACK decoder h2 uses too
    (headerblock's, so both paths share one dynamic table), a POST's DATA read here (padding, 413,
    the windows given back), and the answer framed here, HEADERS and DATA, within the client's
    flow-control windows (h2's connection window debited). h2 is told each such stream's ID, so
    every later frame is judged by it as before. Every other frame (the preface, SETTINGS, PING,
    GOAWAY, PRIORITY, CONTINUATION, a padded HEADERS, unknown types) goes to h2, in order, and so do
    all frames while h2 is in the middle of a header block. The concurrent-stream bound counts both
    paths' streams. Under dnsperf -m doh the short path took a request's CPU time from about 250 us
    to 120 us, and headerblock's decoder (compiled) to about 55 us, from hpack's. What a connection
    writes in one read, or in one turn of the event loop, leaves in one system call, each answer in
    a TLS record of its own.
    """

    def __init__(self, connection: DohConnection):
        self.connection = connection
        self.h2 = h2.connection.H2Connection(_H2_CONFIG)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD * 2,
            },
        )
        # Both paths decode with one HPACK context, headerblock's (hpack's took 40% of a request's time).
        # Settings given at the start are in force at once, so h2 does not pass this one to its decoder
        # (it does so when a change is acknowledged): a longer header list ends the connection.
        self.decoder = headerblock.Decoder(MAX_HEAD * 2)
        self.h2.decoder = _H2Decoder(self.decoder)  # type: ignore[assignment]
        self.streams: dict[int, _Stream] = {}  # h2's requests still arriving
        self.unsent: dict[int, memoryview] = {}  # h2's answers waiting for the client's flow-control window
        self.short: dict[int, _Short] = {}  # the short path's requests not answered in full
        self.preface = _PREFACE  # bytes of the preface h2 has still to read
        self.inbox = bytearray()  # the start of a frame not yet whole
        self.unacknowledged = 0  # bytes of short-path DATA not yet given back in a WINDOW_UPDATE
        self.in_block = False  # h2 was given a header block's start but not its end: CONTINUATION follows
        self.ended = False
        # What to write, an answer's frames apart from another's: each goes in a TLS record of its own,
        # as a client may read no more than one answer from a record (dnsperf's DoH does so).
        self.out: list[bytes] = []
        self.writing = False  # a write is due: at the end of the read, or soon
        self.h2.initiate_connection()
        self._flush()

    def received(self, data: bytes) -> None:
        if self.ended:
            return
        self.writing = True
        if self.preface:
            first = data[: self.preface]
            self.preface -= len(first)
            data = data[len(first) :]
            if not self._to_h2(first):
                return
        inbox = self.inbox
        inbox += data
        h2_from = pos = 0  # frames from h2_from to pos go to h2 together
        size = len(inbox)
        while size - pos >= 9:
            word, flags, stream_id = _FRAME_HEAD.unpack_from(inbox, pos)
            length, kind = word >> 8, word & 0xFF
            stream_id &= _MAX_WINDOW
            if length > self.h2.max_inbound_frame_size:
                pos = size  # h2 ends the connection with FRAME_SIZE_ERROR
                break
            end = pos + 9 + length
            if end > size:
                break
            if not self.in_block and kind in (_HEADERS, _DATA, _RST_STREAM, _WINDOW_UPDATE):
                if h2_from < pos and not self._to_h2(bytes(inbox[h2_from:pos])):
                    return
                h2_from = pos
                taken = self._short_frame(inbox, pos, length, kind, flags, stream_id)
                if self.ended:
                    return
                if taken:
                    h2_from = end
            if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION) and h2_from <= pos:
                self.in_block = not flags & _END_HEADERS
            pos = end
        if h2_from < pos and not self._to_h2(bytes(inbox[h2_from:pos])):
            return
        del inbox[:pos]
        self._flush()

    def _to_h2(self, data: bytes) -> bool:
        """Frames for h2, and what their events ask; False when the connection ends."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._end(None)  # h2's GOAWAY says why
            return False
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.streams[event.stream_id] = _Stream(dict(event.headers or ()))
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if stream is not None and event.data:
                    stream.body += event.data
                    if len(stream.body) > MAX_MESSAGE:
                        del self.streams[event.stream_id]
                        self.connection.waiting += 1
                        self._respond(event.stream_id, self.connection.shared.reject(413, "body too long"))
            elif isinstance(event, h2.events.StreamEnded):
                self._request(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
                self.unsent.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                for stream_id in list(self.unsent) if not event.stream_id else [event.stream_id]:
                    self._send_body(stream_id)
                if not event.stream_id:
                    for stream_id, short in list(self.short.items()):
                        if short.unsent is not None:
                            self._send_short(stream_id, short)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.ended = True
                self._flush()
                self.connection.close()
                return False
        return True

    def _short_frame(self, inbox: bytearray, pos: int, length: int, kind: int, flags: int, stream_id: int) -> bool:
        """Take a frame on the short path; False to leave it to h2."""
        if kind == _HEADERS:
            return self._short_headers(inbox, pos + 9, pos + 9 + length, flags, stream_id)
        connection = self.h2
        if not stream_id or stream_id > connection.highest_inbound_stream_id or stream_id in connection.streams:
            return False
        short = self.short.get(stream_id)
        if kind == _DATA:
            if short is None or not short.arriving:
                return False  # h2 ends the connection: a stream closed, or h2's own
            return self._short_data(inbox, pos + 9, pos + 9 + length, flags, stream_id, short)
        # RST_STREAM or WINDOW_UPDATE on a stream h2 does not know, and not idle: the short path's,
        # open or answered in full (where RFC 9113 5.1 has these ignored), or one of h2's that is over.
        if length != 4:
            return False  # h2 says why not
        if short is None:
            return True
        increment = int.from_bytes(inbox[pos + 9 : pos + 13]) & _MAX_WINDOW
        if kind == _RST_STREAM:
            del self.short[stream_id]
        elif not increment:
            self._end(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        elif connection.remote_settings.initial_window_size + short.window + increment > _MAX_WINDOW:
            self._end(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
        else:
            short.window += increment
            if short.unsent is not None:
                self._send_short(stream_id, short)
        return True

    def _short_headers(self, inbox: bytearray, start: int, end: int, flags: int, stream_id: int) -> bool:
        """A request's HEADERS frame on a new stream: GET's whole request, or POST's before its DATA."""
        connection = self.h2
        if stream_id <= connection.highest_inbound_stream_id:
            return False  # h2 says why not
        opened = len(self.short)  # and h2's open streams, fewer than it holds (counted only when that matters)
        if opened + len(connection.streams) >= MAX_STREAMS and opened + connection.open_inbound_streams >= MAX_STREAMS:
            self._end(h2.errors.ErrorCodes.PROTOCOL_ERROR)  # as h2 does at its own limit: the connection ends
            return True
        if (
            flags & (_END_HEADERS | _PADDED) != _END_HEADERS
            or not stream_id % 2
            or connection.state_machine.state is h2.connection.ConnectionState.CLOSED
        ):
            return False
        if flags & _PRIORITY:
            if end - start < 5 or int.from_bytes(inbox[start : start + 4]) & _MAX_WINDOW == stream_id:
                return False  # h2 says why not
            start += 5
        try:
            headers = self.decoder.decode(bytes(inbox[start:end]))
        except headerblock.HeaderListTooLong:
            self._end(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        except headerblock.HeaderBlockError:
            self._end(h2.errors.ErrorCodes.COMPRESSION_ERROR)
            return True
        connection.highest_inbound_stream_id = stream_id
        method = path = content_type = b""
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
        if flags & _END_STREAM:
            self.short[stream_id] = _Short(None)
            self._short_request(stream_id, method, path, content_type, b"")
        else:
            self.short[stream_id] = _Short((method, path, content_type))
        return True

    def _short_data(self, inbox: bytearray, start: int, end: int, flags: int, stream_id: int, short: _Short) -> bool:
        """A DATA frame of a short-path request's body: kept, and the windows it took given back."""
        size = end - start  # padding included (RFC 9113 6.9.1)
        short.received += size
        self.unacknowledged += size
        if self.unacknowledged >= _ACKNOWLEDGE:
            self._emit(_frame(_WINDOW_UPDATE, 0, 0, self.unacknowledged.to_bytes(4)))
            self.unacknowledged = 0
        if short.received >= _ACKNOWLEDGE and not flags & _END_STREAM:  # a long body: let the rest come
            self._emit(_frame(_WINDOW_UPDATE, 0, stream_id, short.received.to_bytes(4)))
            short.received = 0
        if flags & _PADDED:
            if end == start or inbox[start] >= end - start:
                self._end(h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return True
            start, end = start + 1, end - inbox[start]
        if short.head is not None:
            short.body += inbox[start:end]
            if len(short.body) > MAX_MESSAGE:  # answered now; what else comes is read and dropped
                short.head, short.body = None, bytearray()
                self.connection.waiting += 1
                self._respond_short(stream_id, self.connection.shared.reject(413, "body too long"))
        if flags & _END_STREAM:
            short.arriving = False
            if short.head is not None:
                method, path, content_type = short.head
                short.head = None
                self._short_request(stream_id, method, path, content_type, bytes(short.body))
            elif short.answered:
                del self.short[stream_id]
        return True

    def _short_request(self, stream_id: int, method: bytes, path: bytes, content_type: bytes, body: bytes) -> None:
        self.connection.waiting += 1
        self.connection.shared.request(
            method, path, content_type, body, self.connection, functools.partial(self._respond_short, stream_id)
        )

    def _respond_short(self, stream_id: int, response: Response) -> None:
        self.connection.waiting -= 1
        short = self.short.get(stream_id)
        if short is None or self.ended or self.connection.closed:
            return  # reset by the client meanwhile, or the connection is over
        # A table size the client set is announced at the start of the next block (RFC 7541 4.2): h2's
        # encoder does so.
        encoder = self.h2.encoder
        block = encoder.encode(_never_indexed(response)) if encoder.table_size_changes else _static_block(response)
        short.unsent = memoryview(response.body)
        self._send_short(stream_id, short, _frame(_HEADERS, _END_HEADERS, stream_id, block))
        self._write_soon()

    def _send_short(self, stream_id: int, short: _Short, headers: bytes = b"") -> None:
        """The answer's HEADERS frame when given, and as much of its body as flow control lets go
        now; the rest on a WINDOW_UPDATE."""
        connection = self.h2
        body = short.unsent
        assert body is not None
        while True:
            room = min(
                connection.remote_settings.initial_window_size + short.window,
                connection.outbound_flow_control_window,
                connection.max_outbound_frame_size,
            )
            size = len(body)
            if room >= size:
                self._emit(headers + _frame(_DATA, _END_STREAM, stream_id, body))
                connection.outbound_flow_control_window -= size
                self._answered(stream_id, short)
                return
            if room <= 0:
                if headers:
                    self._emit(headers)
                short.unsent = body
                return
            self._emit(headers + _frame(_DATA, 0, stream_id, body[:room]))
            headers = b""
            connection.outbound_flow_control_window -= room
            short.window -= room
            body = body[room:]

    def _answered(self, stream_id: int, short: _Short) -> None:
        """A short-path answer sent in full: the stream is over, or over once the client's side ends."""
        if short.arriving:
            short.answered, short.unsent = True, None
        else:
            del self.short[stream_id]

    def _request(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        headers = stream.headers
        self.connection.waiting += 1
        self.connection.shared.request(
            headers.get(b":method", b""),
            headers.get(b":path", b""),
            headers.get(b"content-type", b""),
            bytes(stream.body),
            self.connection,
            lambda response: self._respond(stream_id, response),
        )

    def _respond(self, stream_id: int, response: Response) -> None:
        self.connection.waiting -= 1
        if self.ended or self.connection.closed:
            return
        try:
            self.h2.send_headers(stream_id, [(b":status", b"%d" % response.status), *response.headers()])
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # the client reset the stream meanwhile
        self.unsent[stream_id] = memoryview(response.body)
        self._send_body(stream_id)
        self._emit(b"")
        self._write_soon()

    def _send_body(self, stream_id: int) -> None:
        """As much of the answer as flow control lets go now; the rest on a WINDOW_UPDATE."""
        body = self.unsent.get(stream_id)
        if body is None:
            return
        try:
            while True:
                room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                if room <= 0 and body:
                    self.unsent[stream_id] = body
                    return
                chunk, body = body[:room], body[room:]
                self.h2.send_data(stream_id, chunk, end_stream=not body)
                if not body:
                    break
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.unsent.pop(stream_id, None)

    def _end(self, error: h2.errors.ErrorCodes | None) -> None:
        """A connection error: GOAWAY (h2's own when it found the error), counted, closed."""
        if error is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error)
        self.ended = True
        self._flush()
        self.connection.malformed()

    def goodbye(self) -> None:
        """GOAWAY before the connection closes (idle, or the server stopping)."""
        if self.ended:
            return
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            return
        self._flush()

    def _emit(self, frames: bytes) -> None:
        """Frames of this side's, after whatever h2 has made before them (h2's header blocks keep their order)."""
        made = self.h2.data_to_send()
        if made or frames:
            self.out.append(made + frames if made else frames)

    def _write_soon(self) -> None:
        if not self.writing:
            self.writing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.writing = False
        made = self.h2.data_to_send()
        if made:
            self.out.append(made)
        if self.out:
            out, self.out = self.out, []
            self.connection.write(out)
