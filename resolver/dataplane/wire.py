"""DNS bytes in and out, no I/O: parse queries, build answers, patch IDs, age TTLs, EDE, TCP framing.

Everything on the per-query path works on raw bytes with struct: parsing a query never
builds a message object, and a cached answer is replayed by patching its ID, question and
TTLs.  Safe-search rewrites are built here too: no DNS library is imported by the server.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from resolver.errors import ResolverError

# Header flag bits (RFC 1035 4.1.1, RFC 4035 for AD/CD).
QR: Final = 0x8000
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
AD: Final = 0x0020
CD: Final = 0x0010
OPCODE_MASK: Final = 0x7800

# Response codes.
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
NOTAUTH: Final = 9
BADVERS: Final = 16  # extended rcode carried in OPT (RFC 6891)

# Record types used here. Final, as every constant here: compiled, a name that is not is looked
# up in the module's dictionary at each use.
TYPE_A: Final = 1
TYPE_NS: Final = 2
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_PTR: Final = 12
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_SVCB: Final = 64
TYPE_HTTPS: Final = 65
TYPE_IXFR: Final = 251  # zone transfers (RFC 1995, RFC 5936)
TYPE_AXFR: Final = 252
TYPE_ANY: Final = 255
CLASS_IN: Final = 1
CLASS_CH: Final = 3
# Meta classes (RFC 2136, RFC 1035): no record is in them.
CLASS_NONE: Final = 254
CLASS_ANY: Final = 255

# Extended DNS Error info codes (RFC 8914) that schooldns emits.
EDE_STALE_ANSWER: Final = 3
EDE_BLOCKED: Final = 15
EDE_CENSORED: Final = 16
EDE_FILTERED: Final = 17
EDE_PROHIBITED: Final = 18
EDE_NOT_SUPPORTED: Final = 21
EDE_NO_REACHABLE_AUTHORITY: Final = 22
EDE_NETWORK_ERROR: Final = 23
OPTION_EDE: Final = 15

# Largest UDP answer we send, whatever the client advertises (DNS flag day 2020).
MAX_UDP_PAYLOAD: Final = 1232
MIN_UDP_PAYLOAD: Final = 512
# Largest UDP datagram. The upstream sockets are read with a buffer of this size (asyncio's
# transports use 256 KiB): a 256 KiB buffer per datagram can make glibc mmap + munmap on every
# read (measured: half the qps after a warm start, two page faults per query). The listeners read
# into fixed buffers of 4 KiB per datagram (udpbatch.QUERY_MAX).
MAX_DATAGRAM: Final = 65535
# Datagrams a UDP socket (listening or upstream) reads per wake-up of the event loop (a listener
# with one recvmmsg call, see udpbatch). asyncio's
# DatagramTransport reads one datagram per loop iteration (a select call, a callback and a recvfrom
# for each); reading until the socket is empty, up to this many, measured 1.6x the datagrams per
# second on one core, a little ahead of uvloop (docs/performance-history.md, "The hot path, profiled").
# The bound keeps TCP and timers served under a flood.
UDP_READ_BATCH: Final = 64

_HEADER: Final = struct.Struct("!HHHHHH")
_U16: Final = struct.Struct("!H")
_U16X2: Final = struct.Struct("!HH")
_RR_FIXED: Final = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U32: Final = struct.Struct("!I")


class WireError(ResolverError):
    """Bytes that are not a DNS message we can work with."""


class Unanswerable(WireError):
    """No usable header (too short) or not a query at all: the only right move is to drop it."""


class Echo(NamedTuple):
    """What an answer to a query that could not be taken repeats of it (see _salvage)."""

    question: bytes  # the question section, b"" when there is none to repeat
    edns: bool  # one well-formed OPT record: the answer carries one too (RFC 6891 6.1.1)
    do: bool


NO_ECHO = Echo(b"", False, False)


class FormError(WireError):
    """A readable header but a malformed question or OPT: answer FORMERR.

    `echo` is what the answer repeats; parse_query fills it in.
    """

    def __init__(self, message: str, query_id: int, flags: int, echo: Echo = NO_ECHO):
        super().__init__(message)
        self.query_id = query_id
        self.flags = flags
        self.echo = echo


class NotImplementedOpcode(WireError):
    """A well-formed message with an opcode other than QUERY: answer NOTIMP (`echo`: what it repeats)."""

    def __init__(self, query_id: int, flags: int, echo: Echo = NO_ECHO):
        super().__init__(f"opcode {(flags & OPCODE_MASK) >> 11} not implemented")
        self.query_id = query_id
        self.flags = flags
        self.echo = echo


class BadVersion(WireError):
    """EDNS version above 0: answer BADVERS (RFC 6891 6.1.3)."""

    def __init__(self, query: Query):
        super().__init__("unsupported EDNS version")
        self.query = query


class BadReply(WireError):
    """An upstream reply that is malformed or does not match the question we asked."""


# A plain class, not a dataclass: compiled, a dataclass keeps the __init__ that the dataclasses
# module writes in Python (measured 2% of a miss's CPU), while this one runs compiled.
class Query:
    """The client's view of one query, parsed once: everything later stages need, as values.

    Treat it as immutable: no stage assigns to a field.
    """

    __slots__ = ("do", "edns", "flags", "id", "key", "name", "payload", "qclass", "qtype", "question")

    def __init__(
        self,
        id: int,
        flags: int,
        question: bytes,
        name: str,
        qtype: int,
        qclass: int,
        edns: bool,
        payload: int,
        do: bool,
        key: bytes,
    ):
        self.id = id
        self.flags = flags
        self.question = question  # the question section exactly as the client sent it (case preserved)
        self.name = name  # lower-case presentation form without the trailing dot ("" for the root)
        self.qtype = qtype
        self.qclass = qclass
        self.edns = edns  # the client sent an OPT record
        self.payload = payload  # the UDP size we may answer with (512 without EDNS)
        self.do = do  # DNSSEC OK bit
        # Cache and coalescing key: the question without case, then the bits that change the
        # answer (see _key). Made once by the parser: a cache miss needs it, or its question part,
        # 8 times.
        self.key = key

    def __repr__(self) -> str:
        return f"Query(id={self.id}, name={self.name!r}, qtype={self.qtype}, qclass={self.qclass}, edns={self.edns})"

    @property
    def question_lower(self) -> bytes:
        """The question with its name lower-cased (type and class bytes untouched)."""
        return self.key[:-2]


def _key(question: bytes, do: bool, flags: int) -> bytes:
    """Query.key: the lower-cased question, a DO byte and a CD byte."""
    return lower_question(question) + (b"\x01" if do else b"\x00") + (b"\x01" if flags & CD else b"\x00")


def lower_question(question: bytes) -> bytes:
    """Lower-case the name of a question section; its last 4 bytes (type, class) are numbers
    whose bytes may look like ASCII capitals (HTTPS = 65 = "A") and must stay as they are."""
    return question[:-4].lower() + question[-4:]


def parse_query(data: bytes) -> Query:
    """Parse a client query; raise Unanswerable, FormError, NotImplementedOpcode or BadVersion."""
    size = len(data)
    if size < 12:
        raise Unanswerable("shorter than a DNS header")
    query_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise Unanswerable("a response, not a query")
    if flags & OPCODE_MASK:
        raise NotImplementedOpcode(query_id, flags, _salvage(data))
    try:  # costs nothing until it catches (Python 3.11)
        if qdcount != 1:
            raise FormError(f"QDCOUNT is {qdcount}, expected 1", query_id, flags)
        if ancount:
            raise FormError("a query with answer records", query_id, flags)

        # Question name: plain labels only. A compression pointer in the first name of a
        # message could only point back into the header, so it is malformed (no loop possible).
        pos = 12
        labels = 0
        plain_lengths = True  # no label length is also the code of a letter a name may hold (see _name_text)
        while True:
            if pos >= size:
                raise FormError("question name runs past the end", query_id, flags)
            length = data[pos]
            if length == 0:
                pos += 1
                break
            if length > 63:
                raise FormError("bad label length or compression in question", query_id, flags)
            if length in _LENGTHS_LIKE_LETTERS:
                plain_lengths = False
            pos += 1 + length
            labels += 1
            if pos > size:
                raise FormError("question label runs past the end", query_id, flags)
            if pos - 12 > 254:
                raise FormError("question name longer than 255 octets", query_id, flags)
        if pos + 4 > size:
            raise FormError("question has no type and class", query_id, flags)
        qtype, qclass = _U16X2.unpack_from(data, pos)
        question_end = pos + 4
        # The name in lower case with its label lengths: they are below 'A', so lower() keeps them.
        wire_name = data[12:pos].lower()
        name = _name_text(wire_name, labels) if plain_lengths else read_name(wire_name, 0)[0]
        pos = question_end
        if nscount:  # only an IXFR query carries a record there: the SOA of the version the client has
            if qtype != TYPE_IXFR:
                raise FormError("a query with authority records", query_id, flags)
            for _ in range(nscount):
                pos = _skip_name(data, pos, size, query_id, flags)
                if pos + 10 > size:
                    raise FormError("authority record runs past the end", query_id, flags)
                pos += 10 + _U16.unpack_from(data, pos + 8)[0]
                if pos > size:
                    raise FormError("authority record data runs past the end", query_id, flags)

        edns = False
        payload = MIN_UDP_PAYLOAD
        do = False
        version = 0
        for _ in range(arcount):
            if pos < size and data[pos] == 0:  # the root name, as every OPT record's
                pos += 1
            else:
                pos = _skip_name(data, pos, size, query_id, flags)
            if pos + 10 > size:
                raise FormError("additional record runs past the end", query_id, flags)
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
            pos += 10 + rdlength
            if pos > size:
                raise FormError("additional record data runs past the end", query_id, flags)
            if rtype == TYPE_OPT:
                if edns:
                    raise FormError("more than one OPT record", query_id, flags)
                edns = True
                payload = min(max(rclass, MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
                version = (ttl >> 16) & 0xFF
                do = bool(ttl & 0x8000)
    except FormError as exc:
        exc.echo = _salvage(data)
        raise
    question = data[12:question_end]
    key = wire_name + data[question_end - 4 : question_end] + _KEY_ENDS[do][flags & CD != 0]
    query = Query(query_id, flags, question, name, qtype, qclass, edns, payload, do, key)
    if version != 0:
        raise BadVersion(query)
    return query


def _salvage(data: bytes) -> Echo:
    """What a FORMERR or NOTIMP answer repeats of a query it could not take; never raises.

    The question when there is exactly one and it is a plain name with a type and class, and EDNS
    when the records after it hold exactly one OPT record in the additional section: a responder
    that understood the OPT includes one (RFC 6891 6.1.1).
    """
    size = len(data)
    _, _, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    question = b""
    pos = 12
    try:
        for _ in range(qdcount):
            start = pos
            pos = _skip_name(data, pos, size) + 4
            if pos > size:
                return NO_ECHO
            if qdcount == 1 and _is_plain_name(data, start, pos - 4):
                question = data[start:pos]
        opts = 0
        do = False
        for index in range(ancount + nscount + arcount):
            pos = _skip_name(data, pos, size)
            if pos + 10 > size:
                break
            rtype, _, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
            pos += 10 + rdlength
            if pos > size:
                break
            if rtype == TYPE_OPT and index >= ancount + nscount:
                opts += 1
                do = bool(ttl & 0x8000)
    except FormError:
        return Echo(question, False, False)
    return Echo(question, opts == 1, do and opts == 1)


def _is_plain_name(data: bytes, pos: int, end: int) -> bool:
    """Whether data[pos:end] is one uncompressed name of at most 255 octets (a question we can repeat)."""
    if end - pos > 255:
        return False
    while pos < end:
        length = data[pos]
        if length == 0:
            return pos + 1 == end
        if length > 63:
            return False
        pos += 1 + length
    return False


def _labels_to_text(labels: list[bytes]) -> str:
    """Lower-case presentation text of a name; unusual bytes become \\DDD escapes.

    Escaping means a label holding a dot ("evil.com" as one label) can never be mistaken
    for two labels and match a list entry it is not.
    """
    text = b".".join(labels).lower()
    # Fast path: only letters, digits, '-', '_', '*' and the dots the join put there.
    if not text.translate(None, _PLAIN_WITH_DOT) and text.count(b".") == len(labels) - 1:
        return text.decode("ascii")
    return ".".join("".join(chr(b) if b in _PLAIN_BYTES else f"\\{b:03d}" for b in label.lower()) for label in labels)


_PLAIN_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_*")
_PLAIN_WITH_DOT: Final = b"abcdefghijklmnopqrstuvwxyz0123456789-_*."
# Label lengths (1-63) that are also the code of a byte a plain name holds ('*', '-', digits): a
# name with such a label is made text label by label.
_LENGTHS_LIKE_LETTERS: Final = frozenset(length for length in range(1, 64) if length in _PLAIN_BYTES)
# Every other byte below 64 becomes a dot: the label lengths inside a name, when none is one of those.
_LENGTHS_TO_DOTS: Final = bytes(46 if code < 64 and code not in _PLAIN_BYTES else code for code in range(256))
_KEY_ENDS: Final = ((b"\x00\x00", b"\x00\x01"), (b"\x01\x00", b"\x01\x01"))  # Query.key's DO and CD bytes


def _name_text(wire_name: bytes, labels: int) -> str:
    """_labels_to_text of a lower-case wire name none of whose label lengths looks like a letter.

    One translate turns its label lengths into dots; a byte of a label that is no plain letter
    became a dot too, or is left, and the slower way escapes it.
    """
    if len(wire_name) < 2:  # the root (and [1:-1] of one byte fails when compiled by mypyc)
        return read_name(wire_name, 0)[0]
    text = wire_name[1:-1].translate(_LENGTHS_TO_DOTS)
    if not text.translate(None, _PLAIN_WITH_DOT) and text.count(b".") == labels - 1:
        return text.decode("ascii")
    return read_name(wire_name, 0)[0]


def _skip_name(data: bytes, pos: int, size: int, query_id: int = 0, flags: int = 0) -> int:
    """Offset just past a (possibly compressed) name; never follows pointers, so never loops."""
    hops = 0
    while True:
        if pos >= size:
            raise FormError("name runs past the end", query_id, flags)
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length > 63:
            raise FormError("bad label length", query_id, flags)
        pos += 1 + length
        hops += 1
        if hops > 128:
            raise FormError("name has too many labels", query_id, flags)


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """(lower-case name, offset past it) following compression pointers, loop-safe."""
    labels: list[bytes] = []
    end = -1
    jumps = 0
    size = len(data)
    total = 0
    while True:
        if pos >= size:
            raise BadReply("name runs past the end")
        length = data[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= size:
                raise BadReply("truncated compression pointer")
            if end < 0:
                end = pos + 2
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                raise BadReply("forward compression pointer")
            jumps += 1
            if jumps > 64:
                raise BadReply("compression loop")
            pos = target
            continue
        if length > 63:
            raise BadReply("bad label length")
        labels.append(data[pos + 1 : pos + 1 + length])
        total += length + 1
        if total > 255:
            raise BadReply("name longer than 255 octets")
        pos += 1 + length
    return _labels_to_text(labels), end


def encode_name(name: str) -> bytes:
    """Presentation name ("a.example.com", no escapes) -> uncompressed wire form."""
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.encode("ascii").split(b"."):
        if not 0 < len(label) < 64:
            raise WireError(f"bad label in {name!r}")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > 255:
        raise WireError(f"name too long: {name!r}")
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Answers we make ourselves


def _opt_record(payload: int, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, payload, ttl, len(options)) + options


def ede_option(info_code: int, text: str = "") -> bytes:
    """An Extended DNS Error option (RFC 8914) for an OPT record."""
    body = _U16.pack(info_code) + text.encode("utf-8")[:300]
    return _U16X2.pack(OPTION_EDE, len(body)) + body


def _answer_flags(query_flags: int, rcode: int, extra: int = 0) -> int:
    # QR, keep the client's RD and CD, we are recursive (RA), the opcode is QUERY.
    return QR | RA | (query_flags & (RD | CD)) | extra | (rcode & 0xF)


def make_error(query_id: int, flags: int, rcode: int, query: Query | Echo = NO_ECHO, ede: bytes = b"") -> bytes:
    """An answer with no records: FORMERR/NOTIMP/REFUSED/SERVFAIL/BADVERS (+ EDE when EDNS).

    It repeats the question and carries an OPT record when `query` has them; RA only answers a
    QUERY (recursion means nothing for another opcode).
    """
    opcode = flags & OPCODE_MASK
    out_flags = QR | (RA if not opcode else 0) | opcode | (flags & (RD | CD)) | (rcode & 0xF)
    question = query.question
    qdcount = 1 if question else 0
    if not query.edns:
        return _HEADER.pack(query_id, out_flags, qdcount, 0, 0, 0) + question
    opt = _opt_record(MAX_UDP_PAYLOAD, query.do, rcode >> 4, ede)
    return _HEADER.pack(query_id, out_flags, qdcount, 0, 0, 1) + question + opt


_SOA_NAMES: Final = encode_name("schooldns.invalid") + encode_name("hostmaster.schooldns.invalid")


def _soa_rdata(negative_ttl: int) -> bytes:
    return _SOA_NAMES + struct.pack("!IIIII", 1, 3600, 600, 86400, negative_ttl)


def make_local_answer(
    query: Query, rcode: int, answers: list[tuple[int, int, bytes]], negative_ttl: int, ede: bytes = b""
) -> bytes:
    """A synthesized answer: records owned by the query name (type, ttl, rdata), or none + SOA.

    Used for blocked names (NXDOMAIN / NODATA with an SOA whose MINIMUM is the blocked TTL,
    RFC 2308) and for null-IP / block-page addresses.  The SOA owner is the query name, so a
    negative answer can be cached by the client for exactly the blocked TTL.  The records are
    in the query's class (an answer in another class is malformed to clients), IN for the meta
    classes ANY and NONE.
    """
    rclass = query.qclass if query.qclass < CLASS_NONE else CLASS_IN
    body = bytearray()
    for rtype, ttl, rdata in answers:
        body += b"\xc0\x0c" + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata
    nscount = 0
    if not answers:
        soa = _soa_rdata(negative_ttl)
        body += b"\xc0\x0c" + _RR_FIXED.pack(TYPE_SOA, rclass, negative_ttl, len(soa)) + soa
        nscount = 1
    arcount = 0
    if query.edns:
        body += _opt_record(MAX_UDP_PAYLOAD, query.do, 0, ede)
        arcount = 1
    flags = _answer_flags(query.flags, rcode)
    header = _HEADER.pack(query.id, flags, 1, len(answers) if answers else 0, nscount, arcount)
    return header + query.question + bytes(body)


def zone_soa_rdata(zone: str, minimum_ttl: int) -> bytes:
    """The SOA of a locally served zone (RFC 6303 4.1's shape): the zone itself as MNAME, nobody.invalid."""
    return encode_name(zone) + _NOBODY + struct.pack("!IIIII", 1, 3600, 1200, 604800, minimum_ttl)


_NOBODY: Final = encode_name("nobody.invalid")


def make_zone_answer(query: Query, rcode: int, answers: list[tuple[int, bytes]], zone: str, ttl: int) -> bytes:
    """An authoritative (AA) answer from a locally served zone: records (type, rdata) owned by the
    query name, or none and the zone's SOA in the authority section (RFC 2308), class IN."""
    body = bytearray()
    for rtype, rdata in answers:
        body += b"\xc0\x0c" + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata
    nscount = 0
    if not answers:
        soa = zone_soa_rdata(zone, ttl)
        body += encode_name(zone) + _RR_FIXED.pack(TYPE_SOA, CLASS_IN, ttl, len(soa)) + soa
        nscount = 1
    arcount = 0
    if query.edns:
        body += _opt_record(MAX_UDP_PAYLOAD, query.do)
        arcount = 1
    header = _HEADER.pack(query.id, _answer_flags(query.flags, rcode, AA), 1, len(answers), nscount, arcount)
    return header + query.question + bytes(body)


def make_synthetic_query(name: str, qtype: int, do: bool = False) -> Query:
    """A Query of our own (e.g. for a safe-search target), as if a client had sent it."""
    question = encode_name(name) + _U16X2.pack(qtype, CLASS_IN)
    return Query(0, RD, question, name, qtype, CLASS_IN, True, MAX_UDP_PAYLOAD, do, _key(question, do, RD))


def frame(message: bytes) -> bytes:
    """TCP framing (RFC 1035 4.2.2): a two-byte length before the message."""
    return _U16.pack(len(message)) + message


# ---------------------------------------------------------------------------------------
# Upstream: our queries out, their replies in


def make_upstream_query(query: Query, upstream_id: int) -> bytes:
    """Our own query for the client's question: our ID, lower-cased name, EDNS with DO as asked."""
    flags = RD | (query.flags & CD)
    return _HEADER.pack(upstream_id, flags, 1, 0, 0, 1) + query.question_lower + _opt_record(MAX_UDP_PAYLOAD, query.do)


def reply_matches(reply: bytes, upstream_id: int, question_lower: bytes) -> bool:
    """Cheap check before anything else: our ID, a response, and exactly our question."""
    if len(reply) < 12 + len(question_lower):
        return False
    reply_id, flags, qdcount = struct.unpack_from("!HHH", reply)
    if reply_id != upstream_id or not flags & QR or qdcount != 1:
        return False
    return lower_question(reply[12 : 12 + len(question_lower)]) == question_lower


def is_truncated(reply: bytes) -> bool:
    return bool(reply[2] & (TC >> 8))


def reply_rcode(reply: bytes) -> int:
    return reply[3] & 0x0F


class Answer:
    """An upstream reply made ready to replay: no OPT, TTL offsets known, cache lifetime known.

    `message` still carries the upstream header and question; `replay()` patches the ID,
    flags and question bytes for each client and appends that client's OPT record. A plain
    class, as Query is: compiled, a NamedTuple is still made in Python (1.5% of a miss's CPU).
    """

    __slots__ = ("message", "question_length", "rcode", "targets", "ttl", "ttl_offsets")

    def __init__(
        self,
        message: bytes,
        question_length: int,
        ttl_offsets: tuple[int, ...],
        rcode: int,
        ttl: int,
        targets: tuple[str, ...],
    ):
        self.message = message
        self.question_length = question_length
        self.ttl_offsets = ttl_offsets
        self.rcode = rcode
        self.ttl = ttl  # seconds this answer may be cached (0 = do not cache)
        self.targets = targets  # CNAME / SVCB / HTTPS target names in the answer section

    def __repr__(self) -> str:
        return f"Answer(rcode={self.rcode}, ttl={self.ttl}, {len(self.message)} bytes, targets={self.targets})"


def parse_upstream_answer(
    reply: bytes, question_length: int, min_ttl: int, max_ttl: int, negative_max_ttl: int
) -> Answer:
    """Walk an upstream reply once: drop its OPT, clamp TTLs, find targets and cache lifetime.

    The header keeps only the upstream's AD bit and RCODE: the answer is schooldns' own, so RA is
    set and AA is not (RFC 1035 4.1.1), and replay() adds the client's RD and CD (RFC 4035 3.2.2).
    """
    size = len(reply)
    _, flags, _, ancount, nscount, arcount = _HEADER.unpack_from(reply)
    rcode = flags & 0xF
    pos = 12 + question_length
    qtype = reply[pos - 4] << 8 | reply[pos - 3]
    answered = qtype == TYPE_CNAME or qtype == TYPE_ANY  # records of the asked type: not a negative answer
    offsets: list[int] = []
    targets: list[str] = []
    patches: list[tuple[int, int]] = []  # (offset, TTL) of the TTLs that change
    answer_ttl = soa_ttl = -1
    opt_start = -1
    authority_end = ancount + nscount
    for index in range(authority_end + arcount):
        start = pos
        if pos < size and reply[pos] >= 0xC0:  # most owners: a compression pointer
            pos += 2
        else:
            try:
                pos = _skip_name(reply, pos, size)
            except FormError as exc:
                raise BadReply(str(exc)) from None
        if pos + 10 > size:
            raise BadReply("record runs past the end")
        rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(reply, pos)
        rdata_at = pos + 10
        pos = rdata_at + rdlength
        if pos > size:
            raise BadReply("record data runs past the end")
        if rtype == TYPE_OPT:
            if index < authority_end or opt_start >= 0:
                raise BadReply("misplaced OPT record")
            opt_start = start
            continue
        # Clamped without min() / max(): a call costs more than the comparisons.
        clamped = min_ttl if ttl >= 0x80000000 or ttl < min_ttl else max_ttl if ttl > max_ttl else ttl
        if index < ancount:
            if answer_ttl < 0 or clamped < answer_ttl:
                answer_ttl = clamped
            if rtype == qtype:
                answered = True
            if rtype == TYPE_CNAME:
                targets.append(read_name(reply, rdata_at)[0])
            elif rtype in (TYPE_HTTPS, TYPE_SVCB) and rdlength > 2:
                target = read_name(reply, rdata_at + 2)[0]
                if target:
                    targets.append(target)
        elif index < authority_end and rtype == TYPE_SOA:
            # RFC 2308 5: negative answers live min(SOA TTL, SOA MINIMUM); clients then cache the
            # negative answer as long.
            minimum = _U32.unpack_from(reply, pos - 4)[0] if rdlength >= 22 else 0
            soa_ttl = min(clamped, minimum, negative_max_ttl)
            clamped = soa_ttl
        if clamped != ttl:
            patches.append((rdata_at - 6, clamped))
        offsets.append(rdata_at - 6)
    # The header: the upstream's AD and RCODE, RA; and one additional record less without the OPT,
    # which goes with anything after it. Trailing bytes after the records are ignored, as most
    # resolvers do.
    message = reply[:2] + bytes((QR >> 8, RA | flags & (AD | 0xF)))
    message += reply[4:] if opt_start < 0 else reply[4:10] + _U16.pack(arcount - 1) + reply[12:opt_start]
    if patches:
        buf = bytearray(message)
        for offset, ttl in patches:
            _U32.pack_into(buf, offset, ttl)
        message = bytes(buf)

    if rcode == NOERROR and answered and answer_ttl >= 0:
        cache_ttl = answer_ttl
    elif rcode in (NOERROR, NXDOMAIN) and soa_ttl >= 0:
        # NXDOMAIN or NODATA, also at the end of a CNAME chain: the SOA's negative TTL (RFC 2308
        # 5), and no longer than the chain's own records.
        cache_ttl = soa_ttl if answer_ttl < 0 else min(soa_ttl, answer_ttl)
    else:
        cache_ttl = 0  # SERVFAIL, REFUSED, referrals and negative answers without SOA: never cached
    if flags & TC:
        cache_ttl = 0
    return Answer(message, question_length, tuple(offsets), rcode, cache_ttl, tuple(targets))


def answer_rdata(answer: Answer, rtype: int) -> list[bytes]:
    """The rdata of the answer section's records of type `rtype` (a safe-search target's addresses)."""
    message = answer.message
    size = len(message)
    pos = 12 + answer.question_length
    found = []
    for _ in range(_U16.unpack_from(message, 6)[0]):
        pos = _skip_name(message, pos, size)
        record_type, _rclass, _ttl, rdlength = _RR_FIXED.unpack_from(message, pos)
        pos += 10 + rdlength
        if record_type == rtype:
            found.append(message[pos - rdlength : pos])
    return found


def reduce_ttls(message: bytes, ttl_offsets: tuple[int, ...], seconds: int, start: int = 0) -> bytes:
    """`message` with the TTL at each offset reduced by `seconds` (never below zero).

    `start` is where `message` begins in the message the offsets were counted in (2 for a
    message kept without its ID).
    """
    if seconds <= 0:
        return message
    if len(ttl_offsets) == 1:  # most answers: one record, or a NODATA's SOA; two slices beat a bytearray
        offset = ttl_offsets[0] - start
        ttl = _U32.unpack_from(message, offset)[0]
        return message[:offset] + _U32.pack(ttl - seconds if ttl > seconds else 0) + message[offset + 4 :]
    buf = bytearray(message)
    for offset in ttl_offsets:
        offset -= start
        ttl = _U32.unpack_from(buf, offset)[0]
        _U32.pack_into(buf, offset, ttl - seconds if ttl > seconds else 0)
    return bytes(buf)


def replay(message: bytes, question_length: int, query: Query, limit: int, options: bytes = b"") -> bytes:
    """A stored answer for this client: its ID, its question bytes, its OPT (with `options`), fitted to `limit`.

    `message` is an Answer's message (already aged).  When the result does not fit the
    client's UDP limit its additional records go; when it still does not fit it is cut to the
    header and question with TC=1 (RFC 1035 4.2.1, RFC 6891 7), and the client retries over TCP.
    """
    flags = (message[2] << 8 | message[3]) | (query.flags & (RD | CD))  # the stored flags: QR, RA, AD, RCODE
    head = _U16X2.pack(query.id, flags)
    rest = message[12 + question_length :]
    if query.edns:
        arcount = (message[10] << 8 | message[11]) + 1
        out = (
            head
            + message[4:10]
            + _U16.pack(arcount)
            + query.question
            + rest
            + _opt_record(MAX_UDP_PAYLOAD, query.do, 0, options)
        )
    else:
        out = head + message[4:12] + query.question + rest
    if len(out) > limit:
        return _without_additional(message, question_length, query, flags, limit, options)
    return out


def _without_additional(
    message: bytes, question_length: int, query: Query, flags: int, limit: int, options: bytes
) -> bytes:
    """The answer without its additional records if that fits `limit`, else header and question with TC.

    Additional records are optional: a responder drops them before it truncates (RFC 2181 9).
    Names point only backwards, so the answer and authority sections stand alone.
    """
    if not message[10] << 8 | message[11]:
        return make_truncated(query, flags)
    pos, size = 12 + question_length, len(message)
    for _ in range((message[6] << 8 | message[7]) + (message[8] << 8 | message[9])):
        pos = _skip_name(message, pos, size)
        pos += 10 + _RR_FIXED.unpack_from(message, pos)[3]
    records = message[12 + question_length : pos]
    head = _U16X2.pack(query.id, flags) + message[4:10]
    if query.edns:
        out = head + _U16.pack(1) + query.question + records + _opt_record(MAX_UDP_PAYLOAD, query.do, 0, options)
    else:
        out = head + _U16.pack(0) + query.question + records
    return out if len(out) <= limit else make_truncated(query, flags)


def make_truncated(query: Query, flags: int) -> bytes:
    """Header + question (+ OPT) with TC=1: 'ask me again over TCP'."""
    flags |= TC
    if query.edns:
        return _HEADER.pack(query.id, flags, 1, 0, 0, 1) + query.question + _opt_record(MAX_UDP_PAYLOAD, query.do)
    return _HEADER.pack(query.id, flags, 1, 0, 0, 0) + query.question


def make_rewrite(query: Query, target: str, target_answer: Answer, ttl: int) -> Answer:
    """A safe-search answer: `name CNAME target` plus the target's address records.

    Built once per (question, target) and then cached like an upstream answer.
    """
    target_wire = encode_name(target)
    cname = b"\xc0\x0c" + _RR_FIXED.pack(TYPE_CNAME, CLASS_IN, ttl, len(target_wire)) + target_wire
    records = [cname]
    target_at = 12 + len(query.question) + 12  # the target name inside our CNAME's rdata
    for rdata in answer_rdata(target_answer, query.qtype):
        owner = _U16.pack(0xC000 | target_at)
        records.append(owner + _RR_FIXED.pack(query.qtype, CLASS_IN, ttl, len(rdata)) + rdata)
    flags = QR | RA  # as parse_upstream_answer leaves an upstream's: replay() adds the client's RD and CD
    message = _HEADER.pack(0, flags, 1, len(records), 0, 0) + query.question_lower + b"".join(records)
    offsets = []
    pos = 12 + len(query.question)
    for record in records:
        name_len = 2
        offsets.append(pos + name_len + 4)
        pos += len(record)
    return Answer(message, len(query.question), tuple(offsets), NOERROR, ttl, (target,))


# The walk over a name for the transports' EDNS options (ednsopt), which read whole messages too.
skip_name = _skip_name
