"""PROXY protocol version 2 headers (as HAProxy and dnsdist send them), read from bytes with no I/O.

A load balancer in front of schooldns puts one such header before each UDP datagram, and at the
start of each TCP connection, to say whose query it passes on. Only the binary version 2 is
read: the text version 1 is not sent by DNS load balancers. The header's TLVs are checked for
framing and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import struct

from resolver.errors import ResolverError

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16  # the signature, version and command, family and protocol, length
# A header longer than this is refused: the addresses take at most 216 bytes, and what load
# balancers add as TLVs (an ALPN, a TLS version, a unique ID) a few dozen more.
MAX_HEADER = 1024

LOCAL, PROXY = 0, 1  # commands
_UNSPEC, _INET, _INET6, _UNIX = 0, 1, 2, 3  # address families
_ADDRESS_BYTES = {_INET: 12, _INET6: 36, _UNIX: 216}  # source, destination, and for IP both ports
_LENGTH = struct.Struct("!H")


class ProxyError(ResolverError):
    """Bytes that start like a PROXY v2 header but are not a valid one."""


class Incomplete(ProxyError):
    """Only part of a header so far (a stream): wait for more bytes."""


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """What a header says: the client's address (packed, 4 or 16 bytes), or None for the
    connection's own (a LOCAL command, such as a balancer's health check, or no IP family)."""

    client: bytes | None
    port: int
    length: int  # bytes of the header, to be cut off before the DNS message


def starts_header(data: bytes) -> bool:
    """True when `data` begins with the signature, or is a beginning of it (a stream's first bytes)."""
    return data[:12] == SIGNATURE if len(data) >= 12 else SIGNATURE.startswith(data)


def parse(data: bytes) -> Header:
    """The header at the start of `data`; Incomplete when `data` holds only part of one, ProxyError when malformed."""
    if not starts_header(data):
        raise ProxyError("no PROXY v2 signature")
    if len(data) < FIXED:
        raise Incomplete("shorter than the fixed part of a PROXY v2 header")
    version_command, family_protocol = data[12], data[13]
    if version_command >> 4 != 2:
        raise ProxyError(f"PROXY protocol version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command not in (LOCAL, PROXY):
        raise ProxyError(f"unknown PROXY command {command}")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family > _UNIX or protocol > 2:
        raise ProxyError(f"unknown address family {family} or protocol {protocol}")
    length = FIXED + _LENGTH.unpack_from(data, 14)[0]
    if length > MAX_HEADER:
        raise ProxyError(f"a PROXY v2 header of {length} bytes (at most {MAX_HEADER})")
    if len(data) < length:
        raise Incomplete("the header's addresses or TLVs have not all arrived")
    addresses = _ADDRESS_BYTES.get(family, 0)
    if length - FIXED < addresses:
        raise ProxyError(f"{length - FIXED} bytes of addresses, family {family} needs {addresses}")
    _check_tlvs(data, FIXED + addresses, length)
    if command == LOCAL or family in (_UNSPEC, _UNIX):
        return Header(None, 0, length)
    size = 4 if family == _INET else 16
    client = data[FIXED : FIXED + size]
    port = _LENGTH.unpack_from(data, FIXED + 2 * size)[0]
    return Header(client, port, length)


def _check_tlvs(data: bytes, pos: int, end: int) -> None:
    """Every TLV (type, 2-byte length, value) ends inside the header, the last one at its end."""
    while pos < end:
        if pos + 3 > end:
            raise ProxyError("a TLV shorter than its type and length")
        pos += 3 + _LENGTH.unpack_from(data, pos + 1)[0]
        if pos > end:
            raise ProxyError("a TLV runs past the end of the header")


def make(client: bytes, port: int, server: bytes, server_port: int, stream: bool, tlvs: bytes = b"") -> bytes:
    """A PROXY command header for `client` (packed IPv4 or IPv6; `server` of the same family)."""
    family = _INET if len(client) == 4 else _INET6
    body = client + server + _LENGTH.pack(port) + _LENGTH.pack(server_port) + tlvs
    family_protocol = family << 4 | (1 if stream else 2)
    return SIGNATURE + bytes((0x20 | PROXY, family_protocol)) + _LENGTH.pack(len(body)) + body
