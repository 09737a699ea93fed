"""EDNS options of the transports, on bytes: a query's Client Subnet (RFC 7871), an answer's Padding (RFC 7830).

The pipeline neither needs nor sees them: a trusted front-end's Client Subnet picks the school
before the query reaches it (and it never reaches an upstream, whose queries schooldns makes
itself), and the padding is added to an answer on its way out over DoT or DoH.
"""

from __future__ import annotations

import struct

from resolver.dataplane import wire

OPTION_CLIENT_SUBNET = 8
OPTION_PADDING = 12
# RFC 8467 4.1, the recommended Block-Length Padding: answers to a multiple of 468 bytes.
ANSWER_BLOCK = 468

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_COUNTS = struct.Struct("!HHHH")


def _opt(message: bytes) -> tuple[int, int] | None:
    """(start of the OPT record, end of it) when the message's last record is its OPT record, else None."""
    size = len(message)
    if size < 12:
        return None
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(message, 4)
    if not arcount:
        return None
    pos = 12
    try:
        for _ in range(qdcount):
            pos = wire.skip_name(message, pos, size) + 4
        start = pos
        for _ in range(ancount + nscount + arcount):
            start = pos
            pos = wire.skip_name(message, pos, size)
            if pos + 10 > size:
                return None
            pos += 10 + _U16.unpack_from(message, pos + 8)[0]
    except wire.WireError:
        return None
    if pos != size or _U16.unpack_from(message, wire.skip_name(message, start, size))[0] != wire.TYPE_OPT:
        return None
    return start, pos


def client_subnet(query: bytes) -> bytes | None:
    """The address of a query's Client Subnet option (packed, 4 or 16 bytes, zeros past its prefix), or None.

    None too for a source prefix of 0 (the client asked that no address be used) and for any
    malformed option or message: the pipeline then answers the message as it deserves.
    """
    found = _opt(query)
    if found is None:
        return None
    start, end = found
    pos = wire.skip_name(query, start, end) + 10
    while pos + 4 <= end:
        code, length = _U16X2.unpack_from(query, pos)
        pos += 4
        if code == OPTION_CLIENT_SUBNET:
            return _subnet_address(query[pos : pos + length]) if pos + length <= end else None
        pos += length
    return None


def _subnet_address(option: bytes) -> bytes | None:
    if len(option) < 4:
        return None
    family, source_prefix = _U16.unpack_from(option)[0], option[2]
    size = {1: 4, 2: 16}.get(family)
    if size is None or not 0 < source_prefix <= size * 8:
        return None
    address = option[4:]
    if len(address) != (source_prefix + 7) // 8:
        return None
    return address + bytes(size - len(address))


def pad(answer: bytes, block: int = ANSWER_BLOCK) -> bytes:
    """The answer with a Padding option that makes its length a multiple of `block`; unchanged
    when it has no OPT record (the client did not use EDNS: RFC 7830 4 allows no padding then),
    when its OPT record is not the last record, or when it carries padding already."""
    found = _opt(answer)
    if found is None:
        return answer
    start, end = found
    rdata = wire.skip_name(answer, start, end) + 10
    pos = rdata
    while pos + 4 <= end:
        code, length = _U16X2.unpack_from(answer, pos)
        if code == OPTION_PADDING:
            return answer
        pos += 4 + length
    length = -(len(answer) + 4) % block
    if len(answer) + 4 + length > 65535:
        return answer
    rdlength = end - rdata + 4 + length
    return (
        answer[: rdata - 2]
        + _U16.pack(rdlength)
        + answer[rdata:]
        + _U16.pack(OPTION_PADDING)
        + _U16.pack(length)
        + bytes(length)
    )
