"""Differential conformance: the test zone, the queries, and a comparator of schooldns' answers with unbound's."""

from __future__ import annotations

import asyncio
import enum
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

ZONE = "conformance.example."
NEGATIVE_TTL = 2  # the SOA's TTL and MINIMUM: negative answers expire within the test's patience
TTL = 300
TXT_LIMIT = 12 * 1024
#: What policy blocks in the zone (the harness' school A blocks the adult category).
BLOCKED = ("blocked", "cname-to-blocked")
REMOVED = "gone"  # an A record the change removes
APPEARS = "appears"  # NXDOMAIN before the change, an A record after


def txt_rdata(size: int) -> str:
    """A TXT rdata of size characters in strings of at most 255."""
    text = "".join(chr(ord("a") + i % 26) for i in range(size))
    chunks = [text[i : i + 255] for i in range(0, size, 255)] or [""]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def txt_sizes(step: int, dense: bool) -> list[int]:
    """TXT sizes from 0 to 12 KB every step characters and at the UDP and string limits; dense: every
    size where an answer crosses 512 or 1232 bytes (with or without signatures)."""
    edges = {0, 1, 254, 255, 256, 400, 450, 480, 500, 511, 512, 1100, 1180, 1200, 1232, 4000, 4096, TXT_LIMIT}
    crossings = {*range(380, 520), *range(1040, 1240)} if dense else set()
    return sorted(edges | crossings | set(range(0, TXT_LIMIT + 1, step)))


def zone_text(sizes: Iterable[int], changed: bool) -> str:
    """The test zone; changed: the second version (names and types appear, records go)."""
    lines = [
        f"$ORIGIN {ZONE}",
        f"$TTL {TTL}",
        f"@ {NEGATIVE_TTL} SOA ns hostmaster 1 3600 600 86400 {NEGATIVE_TTL}",
        "@ NS ns",
        "ns A 127.0.0.1",
        "a A 192.0.2.1",
        "a AAAA 2001:db8::1",
        *(f"multi A 192.0.2.{i}" for i in range(1, 9)),
        *(f"multi AAAA 2001:db8::{i:x}" for i in range(1, 9)),
        "mx MX 10 a",
        "mx MX 20 mail.example.",
        "_sip._tcp SRV 0 5 5060 a",
        "_sip._tcp SRV 10 5 5061 multi",
        "@ HTTPS 1 . alpn=h2,h3",
        "www HTTPS 1 a alpn=h2 ipv4hint=192.0.2.1 ipv6hint=2001:db8::1",
        "_dns.ns SVCB 1 a alpn=dot port=853",
        "*.wild A 192.0.2.9",
        '*.wild TXT "wildcard"',
        "cn-nx CNAME missing",
        "cn-nodata CNAME a",
        "cn-out CNAME a",
        *(f"chain{n}-{i} CNAME {'a' if i == n else f'chain{n}-{i + 1}'}" for n in (1, 3, 8) for i in range(1, n + 1)),
        "chain-wild CNAME x.wild",
        "blocked A 192.0.2.66",
        "cname-to-blocked CNAME blocked",
        *(f"t{size} TXT {txt_rdata(size)}" for size in sizes),
    ]
    if changed:
        lines += [
            f"{APPEARS} A 192.0.2.77",
            "missing A 192.0.2.78",  # cn-nx now leads somewhere
            'a TXT "now there"',  # cn-nodata's TXT and a's TXT were NODATA
            "a MX 5 a",
        ]
    else:
        lines += [f"{REMOVED} A 192.0.2.99"]
    return "\n".join(lines) + "\n"


class Edns(enum.Enum):
    """How a query uses EDNS."""

    NONE = "no EDNS"
    PLAIN = "EDNS 1232"
    LARGE = "EDNS 4096"
    SMALL = "EDNS 512"
    DO = "DO"
    CD = "CD"
    DO_CD = "DO+CD"


@dataclass(frozen=True)
class Query:
    name: str
    rdtype: str
    edns: Edns

    def message(self) -> dns.message.Message:
        payload = {Edns.LARGE: 4096, Edns.SMALL: 512}.get(self.edns, 1232)
        use_edns = False if self.edns is Edns.NONE else 0  # None would mean EDNS, as a payload is given
        query = dns.message.make_query(
            self.name, self.rdtype, use_edns=use_edns, payload=payload, want_dnssec=self.edns in (Edns.DO, Edns.DO_CD)
        )
        if self.edns in (Edns.CD, Edns.DO_CD):
            query.flags |= dns.flags.CD
        return query

    def __str__(self) -> str:
        return f"{self.name} {self.rdtype} ({self.edns.value})"


def _mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def queries(sizes: Sequence[int], rng: random.Random, sample: int | None = None) -> list[Query]:
    """Every name of the zone with the types that make it interesting, each in every EDNS way, in
    lower and in mixed case; sample: that many of them (the blocked ones always)."""
    types = ("A", "AAAA", "MX", "TXT")
    names: list[tuple[str, Sequence[str]]] = [
        ("", ("SOA", "NS", "HTTPS", "A", "DNSKEY")),
        ("a", (*types, "HTTPS", "SRV")),
        ("multi", types),
        ("mx", ("MX", "A")),
        ("_sip._tcp", ("SRV", "A")),
        ("www", ("HTTPS", "A")),
        ("_dns.ns", ("SVCB", "A")),
        ("x.wild", ("A", "TXT", "AAAA")),
        ("deep.y.wild", ("A", "MX")),
        ("cn-nx", ("A", "AAAA")),
        ("cn-nodata", ("TXT", "MX")),
        ("cn-out", ("A", "CNAME")),
        *((f"chain{n}-1", ("A", "AAAA")) for n in (1, 3, 8)),
        ("chain-wild", ("A", "TXT")),
        ("missing", ("A",)),
        (APPEARS, ("A", "TXT")),
        ("nothere", ("A", "TXT")),
        (REMOVED, ("A",)),
        *((name, ("A", "AAAA")) for name in BLOCKED),
        *((f"t{size}", ("TXT",)) for size in sizes),
    ]
    every = [
        Query(f"{relative}.{ZONE}".lstrip(".") if relative else ZONE, rdtype, edns)
        for relative, rdtypes in names
        for rdtype in rdtypes
        for edns in Edns
    ]
    every += [Query(_mixed_case(q.name, rng), q.rdtype, q.edns) for q in every]
    if sample is not None and sample < len(every):
        # Each name and type at least once (in some EDNS way and case), the blocked ones always, the rest by lot.
        by_question: dict[tuple[str, str], list[Query]] = {}
        for q in every:
            by_question.setdefault((q.name.lower(), q.rdtype), []).append(q)
        chosen = dict.fromkeys(rng.choice(variants) for variants in by_question.values())
        chosen.update(dict.fromkeys(q for q in every if is_blocked(q.name)))
        rest = [q for q in every if q not in chosen]
        every = [*chosen, *rng.sample(rest, max(0, sample - len(chosen)))]
    rng.shuffle(every)
    return every


def _relative(name: str) -> str:
    return dns.name.from_text(name).relativize(dns.name.from_text(ZONE)).to_text().lower()


def is_blocked(name: str) -> bool:
    return _relative(name) in BLOCKED


class Allowance(enum.Enum):
    """A difference documented in docs/conformance.md ("Against unbound"), with the reason."""

    TTL_AGING = "TTLs differ, none above the zone's: each cache ages its own copy, fetched at its own time"
    BLOCKED = "a name the school's policy blocks gets schooldns' blocked answer"
    UDP_CAP = "a UDP answer longer than 1232 bytes is truncated whatever size the client offers"
    NAME_CASE = "owners or names inside records in another letter case: schooldns passes the upstream's bytes"
    CACHED_APART = (
        "a removed name: schooldns asks anew for a question it has not kept, unbound answers the RRset it kept"
    )
    UNCHASED_CNAME = "a CNAME chain the upstream left unfinished is passed on as it came, not chased"


@dataclass(frozen=True)
class Difference:
    query: Query
    transport: str
    what: str
    schooldns: object
    unbound: object

    def __str__(self) -> str:
        return (
            f"{self.query} over {self.transport}: {self.what}: schooldns {self.schooldns!r}, unbound {self.unbound!r}"
        )


#: Types whose rdata holds names, compared without letter case (a cache may print them in another case).
_NAMES_INSIDE = frozenset(
    dns.rdatatype.from_text(t) for t in ("SOA", "NS", "CNAME", "MX", "SRV", "SVCB", "HTTPS", "RRSIG", "NSEC")
)
_NEGATIVE = frozenset(dns.rdatatype.from_text(t) for t in ("SOA", "NSEC", "NSEC3"))

Record = tuple[str, str, str, tuple[str, ...]]


def _section(rrsets: Sequence[dns.rrset.RRset], fold: bool) -> tuple[list[Record], list[tuple[int, int]]]:
    """A section as sorted (owner, class, type, sorted rdata), and each one's (TTL, TTL in the zone);
    fold: owners and the names inside records in lower case."""
    keyed = []
    for r in rrsets:
        texts = (rd.to_text() for rd in r)
        rdata = tuple(sorted(t.lower() for t in texts) if fold and r.rdtype in _NAMES_INSIDE else sorted(texts))
        zone_ttl = NEGATIVE_TTL if (r.covers if r.rdtype == dns.rdatatype.RRSIG else r.rdtype) in _NEGATIVE else TTL
        owner = r.name.to_text().lower() if fold else r.name.to_text()
        record = (owner, dns.rdataclass.to_text(r.rdclass), dns.rdatatype.to_text(r.rdtype), rdata)
        keyed.append((record, (r.ttl, zone_ttl)))
    keyed.sort()
    return [k for k, _ in keyed], [ttl for _, ttl in keyed]


def _edns(message: dns.message.Message) -> tuple[object, ...]:
    if message.edns < 0:
        return ()
    return (
        message.edns,
        message.payload,
        bool(message.ednsflags & dns.flags.DO),
        sorted(o.otype for o in message.options),
    )


def compare(
    query: Query, transport: str, ours: dns.message.Message, theirs: dns.message.Message, allowed: Counter[Allowance]
) -> list[Difference]:
    """The differences between the two answers that no allowance covers; counts the allowances used."""

    def differ(what: str, a: object, b: object) -> None:
        if a != b:
            found.append(Difference(query, transport, what, a, b))

    found: list[Difference] = []
    if transport == "udp" and _over_the_cap(query, ours, theirs):
        allowed[Allowance.UDP_CAP] += 1  # run() compares the answers over TCP
        return found
    if transport == "udp" and _chain_end(ours) is not None and theirs.flags & ~ours.flags & dns.flags.TC:
        allowed[Allowance.UNCHASED_CNAME] += 1  # unbound's whole chain did not fit; run() compares over TCP
        return found
    if _relative(query.name) == REMOVED and ours.rcode() == dns.rcode.NXDOMAIN and theirs.answer:
        allowed[Allowance.CACHED_APART] += 1  # schooldns' answer is the zone's as it now is
        return found
    if _unchased(ours, theirs):
        allowed[Allowance.UNCHASED_CNAME] += 1
        theirs = _as_far_as_upstream_went(ours, theirs)
    if is_blocked(query.name):
        # The blocked answer (its shape is tested in test_conformance): the header and EDNS still match.
        allowed[Allowance.BLOCKED] += 1
        differ("blocked rcode", dns.rcode.to_text(ours.rcode()), "NXDOMAIN")
        differ("flags", dns.flags.to_text(ours.flags), dns.flags.to_text(theirs.flags))
        differ("question", [q.to_text() for q in ours.question], [q.to_text() for q in theirs.question])
        differ("EDNS", _edns(ours)[:3], _edns(theirs)[:3])
        return found
    differ("rcode", dns.rcode.to_text(ours.rcode()), dns.rcode.to_text(theirs.rcode()))
    differ("flags", dns.flags.to_text(ours.flags), dns.flags.to_text(theirs.flags))
    differ("question", [q.to_text() for q in ours.question], [q.to_text() for q in theirs.question])
    differ("EDNS", _edns(ours), _edns(theirs))
    for name, a, b in (("answer", ours.answer, theirs.answer), ("authority", ours.authority, theirs.authority)):
        records_a, ttls_a = _section(a, fold=True)
        records_b, ttls_b = _section(b, fold=True)
        differ(name, records_a, records_b)
        if records_a == records_b and _section(a, fold=False)[0] != _section(b, fold=False)[0]:
            allowed[Allowance.NAME_CASE] += 1
        if records_a == records_b and ttls_a != ttls_b:
            if all(x <= zone and y <= zone for (x, zone), (y, _) in zip(ttls_a, ttls_b, strict=True)):
                allowed[Allowance.TTL_AGING] += 1
            else:
                differ(f"{name} TTLs", ttls_a, ttls_b)
    return found


UDP_CAP = 1232


def _over_the_cap(query: Query, ours: dns.message.Message, theirs: dns.message.Message) -> bool:
    return (
        query.edns is Edns.LARGE
        and bool(ours.flags & dns.flags.TC)
        and not theirs.flags & dns.flags.TC
        and len(theirs.to_wire()) > UDP_CAP
    )


def _chain_end(message: dns.message.Message) -> dns.name.Name | None:
    """The name a CNAME chain in the answer leads to, if no record of it is there (the chain is unfinished)."""
    targets = {r[0].target for r in message.answer if r.rdtype == dns.rdatatype.CNAME}  # type: ignore[attr-defined]
    owners = {r.name for r in message.answer}
    unfinished = targets - owners
    return next(iter(unfinished)) if len(unfinished) == 1 else None


def _unchased(ours: dns.message.Message, theirs: dns.message.Message) -> bool:
    """Ours ends in a CNAME whose target has no records, and unbound went on from there."""
    end = _chain_end(ours)
    return (
        end is not None
        and _chain_end(theirs) is None
        and all(rrset in theirs.answer for rrset in ours.answer)
        and any(r.name == end for r in theirs.answer)
    )


def _as_far_as_upstream_went(ours: dns.message.Message, theirs: dns.message.Message) -> dns.message.Message:
    """Unbound's answer cut to the records ours has (its header, question, authority and EDNS kept)."""
    cut = dns.message.Message(theirs.id)
    cut.flags, cut.question, cut.authority = theirs.flags, theirs.question, theirs.authority
    cut.use_edns(theirs.edns, theirs.ednsflags, theirs.payload, options=theirs.options)
    cut.set_rcode(theirs.rcode())
    cut.answer = [rrset for rrset in theirs.answer if rrset in ours.answer]
    return cut


@dataclass
class Outcome:
    compared: int
    differences: list[Difference]
    allowed: Counter[Allowance]
    negative: list[Query]  # questions either answered with the zone's SOA (NXDOMAIN or NODATA)


def soa_serial(message: dns.message.Message) -> int | None:
    """The serial of the SOA in a negative answer's authority section, if there is one."""
    soa = [rrset for rrset in message.authority if rrset.rdtype == dns.rdatatype.SOA]
    return int(soa[0][0].serial) if soa else None  # type: ignore[attr-defined]


async def _ask(message: dns.message.Message, port: int, transport: str, server: str) -> dns.message.Message:
    try:
        if transport == "udp":
            return await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=3, ignore_trailing=False)
        return await dns.asyncquery.tcp(message, "127.0.0.1", port=port, timeout=3)
    except (OSError, EOFError, dns.exception.DNSException) as error:
        raise AssertionError(f"{server} gave no answer over {transport} to {message.question[0]}: {error!r}") from error


async def run(queries_: Sequence[Query], schooldns_port: int, unbound_port: int, parallel: int = 8) -> Outcome:
    """Ask both each query (over UDP, and over TCP too when either truncated) and compare the answers."""
    outcome = Outcome(0, [], Counter(), [])
    gate = asyncio.Semaphore(parallel)

    async def one(query: Query) -> None:
        async with gate:
            message = query.message()
            ours, theirs = await asyncio.gather(
                _ask(message, schooldns_port, "udp", "schooldns"), _ask(message, unbound_port, "udp", "unbound")
            )
            outcome.differences += compare(query, "udp", ours, theirs, outcome.allowed)
            outcome.compared += 1
            if not is_blocked(query.name) and (soa_serial(ours) is not None or soa_serial(theirs) is not None):
                outcome.negative.append(query)
            if (ours.flags | theirs.flags) & dns.flags.TC:
                ours, theirs = await asyncio.gather(
                    _ask(message, schooldns_port, "tcp", "schooldns"), _ask(message, unbound_port, "tcp", "unbound")
                )
                outcome.differences += compare(query, "tcp", ours, theirs, outcome.allowed)
                outcome.compared += 1

    await asyncio.gather(*(one(q) for q in queries_))
    return outcome
