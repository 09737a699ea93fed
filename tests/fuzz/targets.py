"""The fuzz targets: each parser of untrusted input, the errors it may raise, and the inputs it starts from.

A target takes bytes and either returns or raises one of its `expected` errors (the one clear
error a user or a peer gets); anything else is a crash. The same table drives `make fuzz`
(atheris, tests/fuzz/run.py), the replay of every saved reproducer in tests/data/fuzz/<target>/
and the short hypothesis runs in `make test` (tests/unit/test_fuzz_targets.py). A new parser
(a new transport's framing, a proxy header) is one more row in TARGETS.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import dataclasses
import functools
import io
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import hpack

from resolver.control import config, snapshots
from resolver.dataplane import cache, doh, headerblock, metrics, pipeline, proxyv2, server, upstream, wire
from resolver.errors import ResolverError
from resolver.filtering import listformats, policy, policyfile
from resolver.operations import admin, policyedit
from resolver.operations.refusals import Refused
from resolver.yamlfile import ConfigError
from tests.support import harness

REPRODUCERS = Path(__file__).resolve().parents[1] / "data" / "fuzz"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]  # what the parser raises on purpose for bad input
    seeds: Callable[[], list[bytes]]  # well-formed inputs to start mutating from

    def check(self, data: bytes) -> None:
        """Run one input; raise AssertionError (or the unexpected error) for a crash."""
        try:
            self.run(data)
        except self.expected:
            pass


# --- wire: client queries ------------------------------------------------------------------


def _query_seeds() -> list[bytes]:
    seeds = [
        dns.message.make_query("example.com", "A").to_wire(),
        dns.message.make_query("www.Example.ORG", "AAAA", want_dnssec=True).to_wire(),
        dns.message.make_query("a.b.c.example", "HTTPS", use_edns=0, payload=4096).to_wire(),
    ]
    return seeds


def wire_query(data: bytes) -> None:
    query = wire.parse_query(data)
    # What the pipeline does with a parsed query: the key, the upstream question, an error answer.
    assert query.question_lower == wire.lower_question(query.question)
    wire.make_upstream_query(query, 1)
    wire.make_error(query.id, query.flags, wire.SERVFAIL, query)


def _wire_query_checked(data: bytes) -> None:
    try:
        wire_query(data)
    except (wire.FormError, wire.NotImplementedOpcode) as exc:
        wire.make_error(exc.query_id, exc.flags, wire.FORMERR, exc.echo)  # the answer must be buildable


# --- wire: upstream replies ----------------------------------------------------------------

_QUESTION_TYPES = (wire.TYPE_A, wire.TYPE_AAAA, wire.TYPE_CNAME, wire.TYPE_HTTPS, wire.TYPE_ANY)


def _upstream_question(selector: int) -> wire.Query:
    qtype = _QUESTION_TYPES[selector % len(_QUESTION_TYPES)]
    return wire.parse_query(dns.message.make_query("www.example.com", qtype, use_edns=0).to_wire())


def upstream_answer(data: bytes) -> None:
    """data: one selector byte (the question asked), then the reply; its question is forced to ours.

    The upstream room parses only replies that passed reply_matches (our ID, QR, our question), so
    the fuzzer mutates the header's counts and flags and everything after the question.
    """
    if len(data) < 13:
        return
    query = _upstream_question(data[0])
    header = bytearray(data[1:13])
    header[2] |= 0x80  # QR
    struct.pack_into("!H", header, 4, 1)  # QDCOUNT
    reply = bytes(header) + query.question_lower + data[13:]
    assert wire.reply_matches(reply, struct.unpack_from("!H", reply)[0], query.question_lower)
    answer = wire.parse_upstream_answer(reply, len(query.question), 0, 86400, 3600)
    # What the cache and the pipeline then do with it.
    aged = wire.reduce_ttls(answer.message, answer.ttl_offsets, 30)
    wire.replay(aged, answer.question_length, query, 1232)
    wire.answer_rdata(answer, wire.TYPE_A)


def _upstream_seeds() -> list[bytes]:
    seeds = []
    for selector, qtype in enumerate(_QUESTION_TYPES):
        response = dns.message.make_response(dns.message.make_query("www.example.com", qtype, use_edns=0))
        response.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "edge.example.net."))
        response.answer.append(dns.rrset.from_text("edge.example.net.", 60, "IN", "A", "192.0.2.1"))
        soa = "ns1.example.net. hostmaster.example.net. 1 7200 3600 1209600 60"
        response.authority.append(dns.rrset.from_text("example.net.", 60, "IN", "SOA", soa))
        reply = response.to_wire()
        question_end = 12 + len(wire.encode_name("www.example.com")) + 4
        seeds.append(bytes([selector]) + reply[:12] + reply[question_end:])
    return seeds


# --- the TCP framer, over the real pipeline ------------------------------------------------


class _FailingForwarder:
    """The pipeline's Forwarder protocol: every miss fails at once (the answer is SERVFAIL)."""

    def ask(self, query: wire.Query, done: upstream.Done) -> None:
        done(None, upstream.AllUpstreamsFailed("no upstream in the fuzz run", wire.EDE_NO_REACHABLE_AUTHORITY))


class _Transport:
    """What TcpConnection uses of an asyncio transport, keeping what it writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5353) if name == "peername" else None

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class _TcpLimits:
    tcp_max_connections: int = 10
    tcp_idle_timeout_seconds: float = 60.0
    tcp_max_pipelined: int = 4


@functools.cache
def _site() -> tuple[config.Config, pipeline.Snapshot]:
    directory = tempfile.TemporaryDirectory(prefix="schooldns-fuzz-")
    atexit.register(directory.cleanup)  # at exit, not before: the snapshot maps its index
    cfg = config.load_config(harness.write_site(Path(directory.name), ["127.0.0.1:53"]))
    return cfg, snapshots.build_snapshot(cfg, 1)


async def _tcp_stream(data: bytes) -> None:
    _, snapshot = _site()
    counters = metrics.Counters()
    pipe = pipeline.Pipeline(snapshot, cache.AnswerCache(100), _FailingForwarder(), counters)
    connections = server.TcpConnections(pipe, server.InFlight(100, counters), _TcpLimits())
    connection = connections.protocol()
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    # The stream arrives in pieces cut where the input says (its first byte), as TCP may deliver it.
    step = (data[0] if data else 0) % 7 + 1
    for start in range(1, max(len(data), 1), step):
        if transport.closed:
            break
        connection.data_received(data[start : start + step])
    connection.connection_lost(None)
    assert counters.internal_errors == 0, "the pipeline hit an internal error"
    written = bytes(transport.written)
    while written:  # every answer is one whole frame
        assert len(written) >= 2
        length = written[0] << 8 | written[1]
        assert 12 <= length <= len(written) - 2, "a broken frame"
        written = written[2 + length :]


def tcp_framer(data: bytes) -> None:
    asyncio.run(_tcp_stream(data))


def _tcp_seeds() -> list[bytes]:
    return [b"\x03" + b"".join(wire.frame(query) for query in _query_seeds())]


# --- list formats --------------------------------------------------------------------------

_FORMATS = ("domains", "hosts", "adblock", "rpz")


def _as_file(data: bytes) -> io.TextIOWrapper:
    """The bytes as lists.py reads a list file: UTF-8 with replacements, universal newlines."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")


def list_formats(data: bytes) -> None:
    """data: one selector byte (the format), then the file's bytes; the compile's and the trace's reading agree."""
    if not data:
        return
    fmt = _FORMATS[data[0] % len(_FORMATS)]
    entries = list(listformats.parse_list(fmt, _as_file(data[1:])))
    runs = listformats.parse_list_runs(fmt, _as_file(data[1:]))
    assert sum(map(len, runs.values())) == len(entries)
    for name, _match, _kind in entries:
        assert name == "." or name == listformats.normalize_name(name), name


def _list_seeds() -> list[bytes]:
    return [
        b"\x00# comment\nexample.com\n*.ads.example.net\nxn--bcher-kva.example\n",
        b"\x010.0.0.0 tracker.example.com\n127.0.0.1 localhost\n:: ads.example.org # c\n",
        b"\x02||ads.example.com^\n@@||good.example.com^\n! comment\n||x.example^$important\n",
        b"\x03$ORIGIN rpz.example.\n$TTL 60\n@ SOA a. b. 1 2 3 4 5\nbad.example CNAME .\n*.bad.example CNAME .\n",
    ]


# --- policy YAML ---------------------------------------------------------------------------


def _categories() -> tuple[str, ...]:
    return ("adult", "games", "malware", "bypass")


@functools.cache
def _province() -> policy.Province:
    return policyfile.parse_province(harness.PROVINCE, "province.yaml", _categories())


def policy_yaml(data: bytes) -> None:
    """data: one selector byte (province or school file), then the file's text."""
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    if data[0] & 1:
        policyfile.parse_province(text, "province.yaml", _categories())
    else:
        policyfile.parse_school(text, "school-a.yaml", _categories(), _province())


def _policy_seeds() -> list[bytes]:
    return [
        b"\x01" + harness.PROVINCE.encode(),
        b"\x00" + harness.SCHOOL_A.encode(),
        b"\x00" + harness.SCHOOL_B.encode(),
    ]


# --- the admin API's bodies ----------------------------------------------------------------

_POLICY_PATH = Path("school-a.yaml")


def admin_body(data: bytes) -> None:
    """data: one selector byte (which body), then the body: a policy PUT, an allow/deny entry, a decision."""
    if not data:
        return
    body = data[1:]
    current = policyedit.PolicyText(harness.SCHOOL_A.encode())
    kind = data[0] % 3
    if kind == 0:
        policyedit.check_province_keys(current, body, _POLICY_PATH)  # a school token's PUT
        policyedit.check_province_keys(policyedit.PolicyText(body), harness.SCHOOL_A.encode(), _POLICY_PATH)
    elif kind == 1:
        edited = policyedit.with_entry(body, "allow", "unblock.example.com", _POLICY_PATH)
        assert b"unblock.example.com" in edited
    else:
        admin._decision(body)


def _admin_seeds() -> list[bytes]:
    return [
        b"\x00" + harness.SCHOOL_A.encode(),
        b"\x01" + harness.SCHOOL_A.encode(),
        b"\x01id: school-a\nallow:\n  - a.example\n  - b.example\n",
        b'\x02{"decision": "allow"}',
    ]


# --- PROXY v2 headers ----------------------------------------------------------------------


def proxy_v2(data: bytes) -> None:
    """A trusted front-end's bytes: a header read whole (a datagram), and as a stream's first pieces."""
    header = proxyv2.parse(data)
    assert proxyv2.FIXED <= header.length <= min(len(data), proxyv2.MAX_HEADER)
    assert header.client is None or len(header.client) in (4, 16)
    assert 0 <= header.port <= 0xFFFF and (header.client is not None or header.port == 0)
    assert proxyv2.starts_header(data[:12])
    # A stream that has brought only part of it waits for the rest; all of it reads the same.
    for cut in {0, 1, 12, proxyv2.FIXED - 1, proxyv2.FIXED, header.length - 1}:
        if 0 <= cut < header.length:
            try:
                proxyv2.parse(data[:cut])
            except proxyv2.Incomplete:
                continue
            raise AssertionError(f"{cut} bytes of a {header.length}-byte header were not incomplete")
    assert proxyv2.parse(data[: header.length]) == header


def _proxy_seeds() -> list[bytes]:
    query = dns.message.make_query("example.com", "A").to_wire()
    v4, v6 = bytes([192, 0, 2, 1]), bytes(15) + b"\x01"
    local = proxyv2.SIGNATURE + bytes((0x20, 0x00)) + b"\x00\x00"  # LOCAL: a balancer's health check
    return [
        proxyv2.make(v4, 53000, bytes([192, 0, 2, 53]), 53, stream=False) + query,
        proxyv2.make(v6, 853, v6, 853, stream=True, tlvs=b"\x01\x00\x02h2\x05\x00\x04abcd"),
        local,
        proxyv2.SIGNATURE + bytes((0x21, 0x31)) + b"\x00\xd8" + bytes(216),  # a Unix socket's addresses
    ]


# --- DoH requests --------------------------------------------------------------------------


class _DohTokens:
    """The SchoolTokens protocol: one doh:school-b token."""

    def school(self, token: str) -> str | None:
        return "school-b" if token == "token-b" else None


_DOH_METHODS = (b"GET", b"POST", b"PUT")
_DOH_PATHS = (b"/dns-query", b"/dns-query/token-b", b"/dns-query/nobody", b"/")
_DOH_TYPES = (b"application/dns-message", b"Application/DNS-Message; charset=x", b"text/plain", b"")
_DOH_STATUSES = frozenset({200, 400, 403, 404, 405, 413, 415, 429, 431, 501, 503})


def _doh_server() -> tuple[doh.DohServer, metrics.Counters]:
    _, snapshot = _site()
    counters = metrics.Counters()
    pipe = pipeline.Pipeline(snapshot, cache.AnswerCache(100), _FailingForwarder(), counters)
    shared = doh.DohServer(pipe, server.InFlight(100, counters), _TcpLimits(), counters, _DohTokens())
    return shared, counters


def doh_request(data: bytes) -> None:
    """data: one selector byte (method, path, content type), then a GET's query string or a POST's body."""
    if not data:
        return
    shared, counters = _doh_server()
    selector, rest = data[0], data[1:]
    method = _DOH_METHODS[selector % 3]
    path = _DOH_PATHS[selector // 3 % 4]
    content_type = _DOH_TYPES[selector // 12 % 4]
    target = path + b"?" + rest if method == b"GET" else path
    responses: list[doh.Response] = []
    connection = doh.DohConnection(shared, "127.0.0.1")
    shared.request(method, target, content_type, rest if method != b"GET" else b"", connection, responses.append)
    [response] = responses  # exactly one, now: the upstream fails at once
    assert response.status in _DOH_STATUSES, response
    assert counters.internal_errors == 0, "the pipeline hit an internal error"
    if response.status == 200:
        assert len(response.body) >= 12 and response.max_age >= 0


def _doh_request_seeds() -> list[bytes]:
    query = dns.message.make_query("www.example.com", "A").to_wire()
    encoded = base64.urlsafe_b64encode(query).rstrip(b"=")
    return [
        b"\x00ct=1&dns=" + encoded,  # GET /dns-query
        b"\x04" + query,  # POST /dns-query/token-b
        b"\x01" + dns.message.make_query("games.example.com", "AAAA", use_edns=0).to_wire(),  # POST
        b"\x03dns=" + encoded,  # GET with a token
    ]


async def _doh_stream(data: bytes) -> None:
    shared, counters = _doh_server()
    connection = doh.DohConnection(shared, "127.0.0.1")
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]  # no TLS object: HTTP/1.1
    step = (data[0] if data else 0) % 13 + 1  # the bytes arrive in pieces, as TCP may deliver them
    for start in range(1, max(len(data), 1), step):
        if transport.closed:
            break
        connection.data_received(data[start : start + step])
    await asyncio.sleep(0)  # what a paused reader takes up again on the next turn
    connection.connection_lost(None)
    assert counters.internal_errors == 0, "the pipeline hit an internal error"
    written = bytes(transport.written)
    while written.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        written = written[25:]
    while written:  # every response whole: a status line, headers, a body of its content-length
        head, sep, written = written.partition(b"\r\n\r\n")
        assert sep, "a response without the end of its head"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        assert lines[0].startswith(b"HTTP/1.1 ") and status in _DOH_STATUSES, lines[0]
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        assert len(written) >= length, "a body shorter than its content-length"
        written = written[length:]
        while written.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
            written = written[25:]


def doh_http1(data: bytes) -> None:
    """data: one byte (the size of the pieces), then what a client sends on an HTTP/1.1 DoH connection."""
    asyncio.run(_doh_stream(data))


def _doh_http1_seeds() -> list[bytes]:
    query = dns.message.make_query("www.example.com", "A").to_wire()
    encoded = base64.urlsafe_b64encode(query).rstrip(b"=")
    get = b"GET /dns-query?dns=" + encoded + b" HTTP/1.1\r\nHost: doh.example\r\nAccept: */*\r\n\r\n"
    post = (
        b"POST /dns-query/token-b HTTP/1.1\r\nHost: doh.example\r\nContent-Type: application/dns-message\r\n"
        b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(query) + query
    )
    close = b"GET /dns-query?dns=" + encoded + b" HTTP/1.0\r\nConnection: close\r\n\r\n"
    return [b"\x05" + get + post + close, b"\x0c" + post + get, b"\x00" + get * 3]


def hpack_blocks(data: bytes) -> None:
    """data: one byte (where the first block ends), then HTTP/2 header blocks a client sends on one connection."""
    if not data:
        return
    decoder = headerblock.Decoder(doh.MAX_HEAD * 2)
    cut = 1 + data[0] % max(len(data), 1)
    for block in (data[1:cut], data[cut:]):
        headers = decoder.decode(block)
        assert sum(32 + len(name) + len(value) for name, value in headers) <= decoder.max_header_list_size
        assert decoder.size == sum(32 + len(n) + len(v) for n, v in decoder.entries) <= decoder.table_size <= 4096


def _hpack_seeds() -> list[bytes]:
    encoder = hpack.Encoder()
    path = b"/dns-query?dns=" + base64.urlsafe_b64encode(dns.message.make_query("example.com", "A").to_wire())
    request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"doh.example"), (b":path", path)]
    first = encoder.encode([*request, (b"user-agent", b"fuzz")], huffman=True)
    second = encoder.encode([*request[:3], (b":path", path[:-4])], huffman=True)
    encoder.header_table_size = 256
    third = encoder.encode([(b":method", b"POST"), (b"content-type", b"application/dns-message")], huffman=False)
    return [bytes([len(first)]) + first + second, bytes([len(second)]) + second + third]


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("wire_query", _wire_query_checked, (wire.Unanswerable, wire.BadVersion), _query_seeds),
        Target("upstream_answer", upstream_answer, (wire.BadReply,), _upstream_seeds),
        Target("tcp_framer", tcp_framer, (), _tcp_seeds),
        Target("list_formats", list_formats, (), _list_seeds),
        Target("policy_yaml", policy_yaml, (ConfigError,), _policy_seeds),
        Target("admin_body", admin_body, (Refused,), _admin_seeds),
        Target("proxy_v2", proxy_v2, (proxyv2.ProxyError,), _proxy_seeds),
        Target("doh_request", doh_request, (), _doh_request_seeds),
        Target("doh_http1", doh_http1, (), _doh_http1_seeds),
        Target("hpack_blocks", hpack_blocks, (headerblock.HeaderBlockError,), _hpack_seeds),
    )
}

assert all(issubclass(error, ResolverError) for target in TARGETS.values() for error in target.expected)


def reproducers(name: str) -> list[Path]:
    """The saved inputs that once crashed target `name` (each one a regression test)."""
    directory = REPRODUCERS / name
    return (
        sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
        if directory.is_dir()
        else []
    )
