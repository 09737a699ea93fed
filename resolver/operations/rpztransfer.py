"""RPZ feed on the wire: SOA answers, AXFR and IXFR in many messages, TSIG and NOTIFY (dnspython, loaded on first use).

dnspython parses the clients' questions, checks and makes TSIG signatures and sends NOTIFY. The
records of a transfer are written here as bytes: a dnspython record object each took 300 us
(measured on 20,000 names), a transfer of a million names minutes; bytes take about 4 us.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from collections.abc import Generator, Sequence
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rrset
import dns.tsig

from resolver.control import tsigkeys
from resolver.dataplane import pipeline, streams, upstream, wire
from resolver.operations import rpzzones

log = logging.getLogger(__name__)

# Records per AXFR message, in bytes: a message is made between two turns of the event loop,
# so its size bounds how long DNS waits for a transfer (16 KB: about 500 names, 2-3 ms).
MESSAGE_BYTES = 16 * 1024
TSIG_FUDGE_SECONDS = 300
NOTIFY_TRIES = 5  # RFC 1996 4.3: repeated until answered; here 1 + 2 + 4 + 8 + 16 s at most
NOTIFY_FIRST_TIMEOUT_SECONDS = 1.0
MAX_TRANSFERS = 8  # zone transfers written at once by one process; more are answered SERVFAIL

_HEADER = struct.Struct("!HHHHHH")
_LENGTH = [bytes((length,)) for length in range(64)]  # a label's length byte
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength


class Feed(Protocol):
    """What a transfer needs of the feed (resolver.operations.rpzfeed.Feed)."""

    keys: tuple[tsigkeys.TsigKey, ...]
    transfers: int  # zone transfers being written by this process


def answer(
    feed: Feed, version: rpzzones.Version, zone: rpzzones.Zone, query: wire.Query, data: bytes, transport: str
) -> bytes | pipeline.Stream:
    """A transfer client's SOA, AXFR or IXFR question for `zone`: checked for TSIG, answered or streamed."""
    try:
        request = dns.message.from_wire(data, keyring=_keyring(feed.keys))
    except (dns.message.UnknownTSIGKey, dns.tsig.BadAlgorithm, dns.tsig.BadKey):
        return _tsig_error(data, query, dns.rcode.BADKEY)
    except dns.tsig.BadSignature:
        return _tsig_error(data, query, dns.rcode.BADSIG)
    except dns.tsig.BadTime:
        return _tsig_error(data, query, dns.rcode.BADTIME)
    except dns.exception.DNSException:
        return wire.make_error(query.id, query.flags, wire.FORMERR, query)
    if feed.keys and not request.had_tsig:
        ede = wire.ede_option(wire.EDE_PROHIBITED, "this feed needs a TSIG key") if query.edns else b""
        return wire.make_error(query.id, query.flags, wire.REFUSED, query, ede)
    if version.problem is not None:  # the lists do not build: secondaries keep what they have
        return _response(request, version, zone, dns.rcode.SERVFAIL)
    if query.qtype == wire.TYPE_SOA or (query.qtype == wire.TYPE_IXFR and transport == "udp"):
        # An IXFR over UDP gets the current SOA: ask again over TCP (RFC 1995 2).
        return _response(request, version, zone, dns.rcode.NOERROR, with_soa=True)
    if transport == "udp":
        return _response(request, version, zone, dns.rcode.NOTIMP)  # AXFR is TCP only
    if query.qtype == wire.TYPE_IXFR and _up_to_date(request, version.serial):
        return _response(request, version, zone, dns.rcode.NOERROR, with_soa=True)  # RFC 1995 4: nothing new
    problem = version.current()  # the list files are still those of the serial, or a reload is due
    if problem is not None or feed.transfers >= MAX_TRANSFERS:
        if problem is not None:
            log.warning("rpz: a transfer of %s answered SERVFAIL: %s", zone.name, problem)
        return _response(request, version, zone, dns.rcode.SERVFAIL)
    return _Transfer(feed, version, zone, request, query)  # IXFR too: the whole zone (RFC 1995 4)


def _tsig_error(data: bytes, query: wire.Query, error: int) -> bytes:
    """NOTAUTH with an unsigned TSIG record that names the error (RFC 8945 5.3.2): the client can tell why."""
    try:
        request = dns.message.from_wire(data, keyring=False)  # read, not checked
    except dns.exception.DNSException:
        return wire.make_error(query.id, query.flags, wire.FORMERR, query)
    response = dns.message.make_response(request, our_payload=wire.MAX_UDP_PAYLOAD)
    response.set_rcode(dns.rcode.NOTAUTH)
    reply = response.to_wire()
    if request.tsig is None:
        return reply
    theirs = request.tsig[0]
    tsig = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
        dns.rdataclass.ANY,
        dns.rdatatype.TSIG,
        theirs.algorithm,
        theirs.time_signed,
        theirs.fudge,
        b"",
        query.id,
        error,
        b"",
    )
    rdata = _rdata_wire(tsig)
    arcount = int.from_bytes(reply[10:12], "big") + 1
    return (
        reply[:10]
        + arcount.to_bytes(2, "big")
        + reply[12:]
        + request.tsig.name.to_digestable()
        + _RR.pack(dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
        + rdata
    )


def _up_to_date(request: dns.message.Message, serial: int) -> bool:
    """Whether an IXFR's SOA has `serial` or a later one (RFC 1982 serial arithmetic)."""
    for rrset in request.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            theirs = int(rrset[0].serial)
            return theirs == serial or 0 < (theirs - serial) % 2**32 < 2**31
    return False


def _response(
    request: dns.message.Message, version: rpzzones.Version, zone: rpzzones.Zone, rcode: int, with_soa: bool = False
) -> bytes:
    response = dns.message.make_response(request, our_payload=wire.MAX_UDP_PAYLOAD)  # signed as the request was
    response.flags |= dns.flags.AA
    response.set_rcode(dns.rcode.Rcode.make(rcode))
    if with_soa:
        response.answer.append(_soa_rrset(version, zone))
    return response.to_wire()


def _soa_rrset(version: rpzzones.Version, zone: rpzzones.Zone) -> dns.rrset.RRset:
    return dns.rrset.from_text(
        f"{zone.name}.",
        version.ttl,
        "IN",
        "SOA",
        f"{rpzzones.SOA_MNAME}. {rpzzones.SOA_RNAME}. {version.serial} {rpzzones.SOA_REFRESH_SECONDS} "
        f"{rpzzones.SOA_RETRY_SECONDS} {rpzzones.SOA_EXPIRE_SECONDS} {version.ttl}",
    )


@functools.lru_cache(maxsize=4)
def _keyring(keys: tuple[tsigkeys.TsigKey, ...]) -> dict[dns.name.Name, dns.tsig.Key]:
    return {dns.name.from_text(key.name): dns.tsig.Key(key.name, key.secret, f"{key.algorithm}.") for key in keys}


def _name_wire(name: str) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in name.encode().split(b".")) + b"\x00"


class _Transfer(streams.Stream):
    """AXFR (or IXFR answered as AXFR) of one zone: SOA, NS, the records, SOA, about MESSAGE_BYTES per message."""

    def __init__(
        self,
        feed: Feed,
        version: rpzzones.Version,
        zone: rpzzones.Zone,
        request: dns.message.Message,
        query: wire.Query,
    ):
        self.feed = feed
        self.version = version
        self.zone = zone
        self.start = _HEADER.size + len(query.question)  # where the answers begin in each message
        self.head = struct.pack("!HH", query.id, wire.QR | wire.AA | query.flags & wire.RD) + b"\0\1"
        self.question = query.question  # in every message: owner names point at its name (offset 12)
        self.key: dns.tsig.Key | None = request.keyring if request.had_tsig else None
        self.request_mac = request.mac
        self.tsig_context: dns.tsig.HMACTSig | dns.tsig.GSSTSig | None = None

    def messages(self) -> Generator[bytes, None, None]:
        version, zone, ttl = self.version, self.zone, self.version.ttl
        self.feed.transfers += 1
        try:
            soa = b"\xc0\x0c" + _soa_record(version, ttl)  # owner names end in the zone's, in the question
            ns = _name_wire(rpzzones.SOA_MNAME)
            block = b"\xc0\x0c" + _RR.pack(wire.TYPE_CNAME, wire.CLASS_IN, ttl, 1) + b"\x00"
            passthru = b"\xc0\x0c" + _RR.pack(wire.TYPE_CNAME, wire.CLASS_IN, ttl, 14) + b"\x0crpz-passthru\x00"
            records = [soa, b"\xc0\x0c" + _RR.pack(wire.TYPE_NS, wire.CLASS_IN, ttl, len(ns)) + ns]
            size = 0
            for owner, blocked in version.records(zone):  # StreamBroken if the lists change under it
                record = b"".join([_LENGTH[len(label)] + label for label in owner.encode().split(b".")])
                record += block if blocked else passthru
                records.append(record)
                size += len(record)
                if size >= MESSAGE_BYTES:
                    yield self._message(records)
                    records, size = [], 0
            records.append(soa)
            yield self._message(records)
        finally:
            self.feed.transfers -= 1

    def _message(self, records: Sequence[bytes]) -> bytes:
        message = self.head + struct.pack("!HHH", len(records), 0, 0) + self.question + b"".join(records)
        if self.key is None:
            return message
        template = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
            dns.rdataclass.ANY, dns.rdatatype.TSIG, self.key.algorithm, 0, TSIG_FUDGE_SECONDS, b"", _id(message), 0, b""
        )
        # RFC 8945 5.3.1: the first message's MAC covers the request's; each later one the previous MAC.
        signed, self.tsig_context = dns.tsig.sign(  # type: ignore[no-untyped-call]
            message, self.key, template, int(time.time()), self.request_mac, self.tsig_context, True
        )
        rdata = _rdata_wire(signed)
        return (
            message[:10]
            + b"\0\1"
            + message[12:]
            + self.key.name.to_digestable()
            + _RR.pack(dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
            + rdata
        )


def _rdata_wire(rdata: dns.rdata.Rdata) -> bytes:
    out = rdata.to_wire()
    assert out is not None  # without a file to write to, to_wire returns the bytes
    return out


def _id(message: bytes) -> int:
    return int.from_bytes(message[:2], "big")


def _soa_record(version: rpzzones.Version, ttl: int) -> bytes:
    rdata = (
        _name_wire(rpzzones.SOA_MNAME)
        + _name_wire(rpzzones.SOA_RNAME)
        + struct.pack(
            "!IIIII",
            version.serial,
            rpzzones.SOA_REFRESH_SECONDS,
            rpzzones.SOA_RETRY_SECONDS,
            rpzzones.SOA_EXPIRE_SECONDS,
            ttl,
        )
    )
    return _RR.pack(wire.TYPE_SOA, wire.CLASS_IN, ttl, len(rdata)) + rdata


async def notify_all(version: rpzzones.Version, targets: Sequence[upstream.UpstreamAddress]) -> None:
    """NOTIFY (RFC 1996) every zone of `version` to every secondary, each repeated until answered (NOTIFY_TRIES)."""
    await asyncio.gather(
        *(_notify(zone, _soa_rrset(version, zone), target) for zone in version.zones.values() for target in targets)
    )


async def _notify(zone: rpzzones.Zone, soa: dns.rrset.RRset, target: upstream.UpstreamAddress) -> None:
    message = dns.message.make_query(f"{zone.name}.", dns.rdatatype.SOA)
    message.flags = dns.flags.AA  # and no RD; the opcode shares these bits, so it is set after
    message.set_opcode(dns.opcode.NOTIFY)
    message.answer.append(soa)  # the new serial (RFC 1996 3.7): a secondary that has it asks nothing
    timeout = NOTIFY_FIRST_TIMEOUT_SECONDS
    for _ in range(NOTIFY_TRIES):
        try:
            reply = await dns.asyncquery.udp(message, target.host, timeout=timeout, port=target.port)
        except (dns.exception.Timeout, OSError):
            timeout *= 2
            continue
        except dns.exception.DNSException as exc:
            log.warning("rpz: NOTIFY of %s to %s: unusable answer (%s)", zone.name, target, exc)
            return
        if reply.rcode() != dns.rcode.NOERROR:
            log.warning(
                "rpz: NOTIFY of %s to %s answered %s: does it allow this server to notify it?",
                zone.name,
                target,
                dns.rcode.to_text(reply.rcode()),
            )
        return
    log.warning("rpz: NOTIFY of %s to %s: no answer after %d tries", zone.name, target, NOTIFY_TRIES)
