"""Locally served zones (RFC 6761, RFC 6303, RFC 7686, RFC 8375): names answered here, never asked of an upstream."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping


class Kind(enum.Enum):
    """How a locally served zone answers."""

    #: A 127.0.0.1 and AAAA ::1 for the zone and every name under it; other types NODATA (RFC 6761 6.3).
    LOCALHOST = "localhost"
    #: An empty zone: SOA at the apex, NODATA for other apex types, NXDOMAIN below (RFC 6303 3).
    EMPTY = "empty"


@dataclasses.dataclass(frozen=True, slots=True)
class LocalZone:
    """One locally served zone: its apex, how it answers, and the document that asks for it."""

    zone: str
    kind: Kind
    source: str
    #: names in the zone answered PTR localhost (the loopback addresses' reverse names)
    loopback_names: frozenset[str] = frozenset()


_LOOPBACK6 = ".".join(["1"] + ["0"] * 31) + ".ip6.arpa"
_UNSPECIFIED6 = ".".join(["0"] * 32) + ".ip6.arpa"


def _zones() -> dict[str, LocalZone]:
    zones = [
        LocalZone("localhost", Kind.LOCALHOST, "RFC 6761"),
        LocalZone("invalid", Kind.EMPTY, "RFC 6761"),
        LocalZone("test", Kind.EMPTY, "RFC 6761"),
        LocalZone("onion", Kind.EMPTY, "RFC 7686"),
        LocalZone("home.arpa", Kind.EMPTY, "RFC 8375"),
        LocalZone("10.in-addr.arpa", Kind.EMPTY, "RFC 6303 (RFC 1918)"),
        *(LocalZone(f"{n}.172.in-addr.arpa", Kind.EMPTY, "RFC 6303 (RFC 1918)") for n in range(16, 32)),
        LocalZone("168.192.in-addr.arpa", Kind.EMPTY, "RFC 6303 (RFC 1918)"),
        *(LocalZone(f"{n}.100.in-addr.arpa", Kind.EMPTY, "RFC 7793 (RFC 6598)") for n in range(64, 128)),
        LocalZone("0.in-addr.arpa", Kind.EMPTY, "RFC 6303"),
        LocalZone("127.in-addr.arpa", Kind.EMPTY, "RFC 6303", frozenset({"1.0.0.127.in-addr.arpa"})),
        LocalZone("254.169.in-addr.arpa", Kind.EMPTY, "RFC 6303 (link-local)"),
        LocalZone("2.0.192.in-addr.arpa", Kind.EMPTY, "RFC 6303 (documentation)"),
        LocalZone("100.51.198.in-addr.arpa", Kind.EMPTY, "RFC 6303 (documentation)"),
        LocalZone("113.0.203.in-addr.arpa", Kind.EMPTY, "RFC 6303 (documentation)"),
        LocalZone("255.255.255.255.in-addr.arpa", Kind.EMPTY, "RFC 6303 (broadcast)"),
        LocalZone(_UNSPECIFIED6, Kind.EMPTY, "RFC 6303 (::)"),
        LocalZone(_LOOPBACK6, Kind.EMPTY, "RFC 6303 (::1)", frozenset({_LOOPBACK6})),
        LocalZone("d.f.ip6.arpa", Kind.EMPTY, "RFC 6303 (unique local)"),
        *(LocalZone(f"{n}.e.f.ip6.arpa", Kind.EMPTY, "RFC 6303 (link-local)") for n in "89ab"),
        LocalZone("8.b.d.0.1.0.0.2.ip6.arpa", Kind.EMPTY, "RFC 6303 (documentation)"),
    ]
    return {zone.zone: zone for zone in zones}


#: Every locally served zone by its apex (lower-case, no trailing dot).
ZONES: Mapping[str, LocalZone] = _zones()
#: A name can be in a local zone only if it ends with one of these (a cheap test before the lookup).
SUFFIXES = ("localhost", "invalid", "test", "onion", ".arpa")


def lookup(name: str) -> LocalZone | None:
    """The most specific locally served zone that is `name` or one of its parents, else None."""
    if not name.endswith(SUFFIXES):
        return None
    zones = ZONES
    zone = zones.get(name)
    dot = name.find(".")
    while zone is None and dot >= 0:
        zone = zones.get(name[dot + 1 :])
        dot = name.find(".", dot + 1)
    return zone
