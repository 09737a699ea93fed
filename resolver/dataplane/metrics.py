"""Per-worker query counters: a dict increment per query, labels from config-bounded sets; rendered by `exposition`."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable, Mapping
from typing import Any

# Query results, the `result` label of schooldns_queries_total (a closed set).
RESULTS = ("forwarded", "cached", "stale", "blocked", "rewritten", "refused", "servfail", "local")
# The results of queries that waited for an upstream: the ones timed (Counters.waits). The others
# are answered within Pipeline.handle, in microseconds; timing them would cost a clock read each.
WAITED_RESULTS = ("forwarded", "blocked", "rewritten", "stale", "servfail")
# Upper bounds in seconds of the duration histograms' buckets; a last bucket holds the slower rest.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Durations counted per bucket (DURATION_BUCKETS, then one for the rest) with their sum: a list add each."""

    __slots__ = ("counts", "sum_seconds")

    def __init__(self, counts: Iterable[int] = (), sum_seconds: float = 0.0) -> None:
        self.counts = list(counts) or [0] * (len(DURATION_BUCKETS) + 1)
        self.sum_seconds = sum_seconds

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bucket (Prometheus' le, "less or equal").
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum_seconds += seconds

    def add(self, other: Histogram) -> None:
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)]
        self.sum_seconds += other.sum_seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of durations up to le) per bucket, "+Inf" last: Prometheus' form."""
        bounds = [*(repr(bound) for bound in DURATION_BUCKETS), "+Inf"]
        running, out = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and (self.counts, self.sum_seconds) == (other.counts, other.sum_seconds)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Histogram({self.counts!r}, {self.sum_seconds!r})"

    def to_wire(self) -> list[Any]:
        return [list(self.counts), self.sum_seconds]

    @classmethod
    def from_wire(cls, data: list[Any]) -> Histogram:
        return cls(data[0], data[1])


# Why a query was dropped unanswered (the `reason` label of schooldns_queries_dropped_total; a
# closed set). Each is a bound of docs/reliability.md.
DROP_REASONS = (
    "udp_in_flight_limit",  # a UDP miss over limits.max_queries_in_flight
    "tcp_in_flight_limit",  # a TCP or DoT miss over it
    "doh_in_flight_limit",  # a DoH miss over it (answered 503)
    "school_in_flight_limit",  # a miss over its school's limits.max_queries_in_flight_per_school
    "school_rate_limit",  # a query over its school's limits.queries_per_second_per_school (DoH: 429)
    "tcp_connection_limit",  # a TCP connection over limits.tcp_max_connections
    "udp_send_buffer_full",  # an answer the kernel's full send buffer took no more of
    "udp_oversized",  # a datagram longer than udpbatch.QUERY_MAX, which no query is
    "unknown_client_rate_limit",  # a refusal over its network's limits.unknown_client_refusals_per_second
)

# Why a transport turned something away before it was a query (the `reason` label of
# schooldns_transport_rejected_total, with the `transport`; a closed set).
REJECTIONS = (
    "proxy_malformed",  # a trusted front-end's PROXY v2 header that is not one: dropped
    "tls_handshake",  # a TLS handshake that failed or took too long
    "connection_limit",  # a DoT or DoH connection over limits.tcp_max_connections
    "http_malformed",  # bytes that are not HTTP/1.1 or HTTP/2: the connection closed
    "http_not_found",  # 404: a path other than /dns-query
    "http_method",  # 405: neither GET nor POST
    "http_bad_request",  # 400: no or a bad `dns` parameter, or not a DNS query
    "http_media_type",  # 415: a POST not of application/dns-message
    "http_too_large",  # 413: a body or query longer than a DNS message may be
    "http_forbidden",  # 403: an unknown DoH token
)


class Counters:
    """Per-worker counters that cost a dict increment per query.

    Keys are tuples of label values that all come from config-bounded sets: school id (or
    "unknown"), transport ("udp"/"tcp"), result (RESULTS), category, authority (policy.Authority:
    who asked for the block).  Never a name or an address.  They are turned into Prometheus
    metrics only when scraped (the authority is summed away there) and into daily rollups.
    """

    __slots__ = ("accepted", "blocked", "dropped", "internal_errors", "malformed", "queries", "rejected", "waits")

    def __init__(self) -> None:
        # defaultdict(int), not Counter: `+= 1` on a Counter (a dict subclass with Python-level
        # methods) measured twice the time, ~0.25 us more per query.
        self.queries: collections.defaultdict[tuple[str, str, str], int] = collections.defaultdict(int)
        # (school, category, authority): the authority tells the rollups who asked for the block; the
        # key is one element longer, the count no dearer.
        self.blocked: collections.defaultdict[tuple[str, str, str], int] = collections.defaultdict(int)
        self.malformed = 0
        self.internal_errors = 0
        self.dropped: collections.defaultdict[str, int] = collections.defaultdict(int)
        # How long the queries that waited for an upstream took to answer, by result (WAITED_RESULTS).
        self.waits = {result: Histogram() for result in WAITED_RESULTS}
        # What transports turned away before it was a query: (transport, reason) -> count (REJECTIONS).
        self.rejected: collections.defaultdict[tuple[str, str], int] = collections.defaultdict(int)
        # Connections taken in, by transport ("tcp", "dot" after its handshake, "doh"): against the
        # queries, how well clients reuse them.
        self.accepted: collections.defaultdict[str, int] = collections.defaultdict(int)

    def count(self, school: str, transport: str, result: str) -> None:
        self.queries[(school, transport, result)] += 1

    def count_block(self, school: str, transport: str, category: str, authority: str) -> None:
        self.queries[(school, transport, "blocked")] += 1
        self.blocked[(school, category, authority)] += 1

    def recount(self, query_key: object, blocked_key: object) -> None:
        """count() / count_block() with label tuples made earlier (a repeated answer; blocked_key None if not blocked).

        Taken as objects, so that the tuples made earlier are used as they are: compiled, a
        tuple[str, str, str] parameter is a C struct, packed into a new tuple for each dict operation.
        """
        queries: dict[Any, int] = self.queries
        queries[query_key] += 1
        if blocked_key is not None:
            blocked: dict[Any, int] = self.blocked
            blocked[blocked_key] += 1

    def merge(self, other: Counters) -> None:
        """Add another worker's counters (the supervisor sums its workers for one scrape)."""
        for query_key, value in other.queries.items():
            self.queries[query_key] += value
        for blocked_key, value in other.blocked.items():
            self.blocked[blocked_key] += value
        for reason, value in other.dropped.items():
            self.dropped[reason] += value
        for rejected_key, value in other.rejected.items():
            self.rejected[rejected_key] += value
        for transport, value in other.accepted.items():
            self.accepted[transport] += value
        self.malformed += other.malformed
        self.internal_errors += other.internal_errors
        for result, histogram in other.waits.items():
            self.waits[result].add(histogram)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (in a worker's report, workerstate.WorkerState.to_wire); `from_dict` reads them."""
        return {
            "queries": [[*k, v] for k, v in self.queries.items()],
            # str(): an authority is a policy.Authority (a StrEnum), and no class of schooldns crosses.
            "blocked": [
                [school, category, str(authority), v] for (school, category, authority), v in self.blocked.items()
            ],
            "malformed": self.malformed,
            "internal_errors": self.internal_errors,
            "dropped": dict(self.dropped),
            "waits": {result: histogram.to_wire() for result, histogram in self.waits.items()},
            "rejected": [[*k, v] for k, v in self.rejected.items()],
            "accepted": dict(self.accepted),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        counters = cls()
        counters.queries.update({tuple(row[:3]): row[3] for row in data["queries"]})
        counters.blocked.update({tuple(row[:3]): row[3] for row in data["blocked"]})
        counters.malformed = data["malformed"]
        counters.internal_errors = data["internal_errors"]
        counters.dropped.update(data["dropped"])
        counters.waits.update({result: Histogram.from_wire(row) for result, row in data["waits"].items()})
        counters.rejected.update({tuple(row[:2]): row[2] for row in data["rejected"]})
        counters.accepted.update(data["accepted"])
        return counters


class LastQueries:
    """When each school last asked, to within a second, read off the counters: nothing per query.

    `update` is called about once a second (a worker's report, or a scrape): a school whose
    count of answered queries grew since the last call asked in between, and gets that call's time.
    """

    __slots__ = ("_totals", "at")

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        self.at: dict[str, float] = {}  # school id -> time.time() of its last query (to within a call)

    def update(self, counters: Counters, now: float) -> Mapping[str, float]:
        totals: collections.defaultdict[str, int] = collections.defaultdict(int)
        for (school, _, _), value in counters.queries.items():
            totals[school] += value
        for school, total in totals.items():
            if total != self._totals.get(school, 0):
                self.at[school] = now
        self._totals = totals
        return self.at
