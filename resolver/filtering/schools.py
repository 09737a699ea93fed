"""School directory: client address -> school, by longest-prefix match over IPv4 and IPv6 networks."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any, Final, Generic, TypeVar

from resolver.errors import ResolverError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Distinct client addresses remembered by lookup(); the memo is cleared when full.
MEMO_MAX_ENTRIES = 65_536

MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6
_MISSING: Any = object()

NetworkLike = str | ipaddress.IPv4Network | ipaddress.IPv6Network


class DirectoryError(ResolverError):
    """The same network was given for two schools, or a network could not be read."""


class SchoolDirectory(Generic[T]):
    """One dict per configured prefix length, probed longest first; fixed at build(), only the lookup memo changes."""

    __slots__ = ("_memo", "_size", "_v4", "_v6")

    def __init__(self, v4: tuple[tuple[int, dict[int, T]], ...], v6: tuple[tuple[int, dict[int, T]], ...], size: int):
        self._v4 = v4  # ((shift, {address >> shift: school}), ...), longest prefix first
        self._v6 = v6
        self._size = size
        self._memo: dict[str | bytes, T | None] = {}

    @classmethod
    def build(cls, schools: Iterable[tuple[NetworkLike, T]]) -> SchoolDirectory[T]:
        """(network, school) pairs; nested networks are fine (the longest prefix wins), duplicates are not."""
        tables: dict[tuple[int, int], dict[int, T]] = {}  # (version, prefixlen) -> table
        size = 0
        for network, school in schools:
            net = _network(network)
            if (
                isinstance(net, ipaddress.IPv6Network)
                and net.prefixlen >= 96
                and net.network_address.ipv4_mapped is not None
            ):
                net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
            bits = net.max_prefixlen
            table = tables.setdefault((net.version, net.prefixlen), {})
            key = int(net.network_address) >> (bits - net.prefixlen)
            if key in table and table[key] is not school:
                raise DirectoryError(f"network {net} is given for two schools: {table[key]!r} and {school!r}")
            table[key] = school
            size += 1

        def ordered(version: int, bits: int) -> tuple[tuple[int, dict[int, T]], ...]:
            lengths = sorted((plen for v, plen in tables if v == version), reverse=True)
            return tuple((bits - plen, tables[(version, plen)]) for plen in lengths)

        return cls(ordered(4, 32), ordered(6, 128), size)

    def __len__(self) -> int:
        return self._size

    def lookup(self, ip: str | bytes) -> T | None:
        """The school whose most specific network contains `ip`, else None.

        `ip` is the address as text (from a socket's peer name) or packed, 4 or 16 bytes (from
        the batched UDP reader, which so skips an inet_ntop per datagram).
        """
        # Hot path: one dict probe per address seen before; otherwise one probe per configured
        # prefix length.
        school = self._memo.get(ip, _MISSING)
        if school is not _MISSING:
            return school
        school = self._match(ip)
        memo = self._memo
        if len(memo) >= MEMO_MAX_ENTRIES:
            memo.clear()
        memo[ip] = school
        return school

    def _match(self, ip: str | bytes) -> T | None:
        try:
            packed = ip if isinstance(ip, bytes) else pack_address(ip)
        except (OSError, ValueError):
            return None  # not an address: nobody's client
        if len(packed) == 4:
            address = int.from_bytes(packed, "big")
            tables = self._v4
        elif len(packed) == 16 and packed[:12] == MAPPED_PREFIX:
            address = int.from_bytes(packed[12:], "big")
            tables = self._v4
        elif len(packed) == 16:
            address = int.from_bytes(packed, "big")
            tables = self._v6
        else:
            return None
        for shift, table in tables:
            school = table.get(address >> shift)
            if school is not None:
                return school
        return None


def pack_address(ip: str) -> bytes:
    """An IP address as text (a zone id allowed) -> 4 or 16 bytes; OSError or ValueError if it is not one."""
    if ":" not in ip:
        return socket.inet_pton(socket.AF_INET, ip)
    return socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])  # drop a zone id


def _network(value: NetworkLike) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise DirectoryError(f"bad network {value!r}: {exc}") from None
