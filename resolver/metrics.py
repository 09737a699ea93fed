"""Every metric, declared once: cheap per-query counters, exported at scrape time with bounded labels."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Query results, the `result` label of schooldns_queries_total (a closed set).
RESULTS = ("forwarded", "cached", "stale", "blocked", "rewritten", "refused", "servfail")


class Counters:
    """Per-worker counters that cost a dict increment per query.

    Keys are tuples of label values that all come from config-bounded sets: school id (or
    "unknown"), transport ("udp"/"tcp"), result (RESULTS), category.  Never a name or an
    address.  They are turned into Prometheus metrics only when scraped.
    """

    __slots__ = ("queries", "blocked", "malformed", "internal_errors", "dropped")

    def __init__(self) -> None:
        self.queries: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.blocked: collections.Counter[tuple[str, str]] = collections.Counter()
        self.malformed = 0
        self.internal_errors = 0
        self.dropped: collections.Counter[str] = collections.Counter()

    def count(self, school: str, transport: str, result: str) -> None:
        self.queries[(school, transport, result)] += 1

    def count_block(self, school: str, transport: str, category: str) -> None:
        self.queries[(school, transport, "blocked")] += 1
        self.blocked[(school, category)] += 1

    def recount(self, query_key: tuple[str, str, str], blocked_key: tuple[str, str] | None) -> None:
        """count() / count_block() with label tuples made earlier (a repeated answer)."""
        self.queries[query_key] += 1
        if blocked_key is not None:
            self.blocked[blocked_key] += 1

    def merge(self, other: Counters) -> None:
        """Add another worker's counters (the supervisor sums its workers for one scrape)."""
        self.queries.update(other.queries)
        self.blocked.update(other.blocked)
        self.malformed += other.malformed
        self.internal_errors += other.internal_errors
        self.dropped.update(other.dropped)

    def to_dict(self) -> dict[str, Any]:
        return {"queries": [[*k, v] for k, v in self.queries.items()],
                "blocked": [[*k, v] for k, v in self.blocked.items()],
                "malformed": self.malformed, "internal_errors": self.internal_errors,
                "dropped": dict(self.dropped)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        counters = cls()
        counters.queries.update({tuple(row[:3]): row[3] for row in data["queries"]})
        counters.blocked.update({tuple(row[:2]): row[2] for row in data["blocked"]})
        counters.malformed = data["malformed"]
        counters.internal_errors = data["internal_errors"]
        counters.dropped.update(data["dropped"])
        return counters


class ResolverCollector(Collector):
    """Reads the live objects of one process (or the merged state of many) at scrape time."""

    def __init__(self, state: Callable[[], dict[str, Any]]):
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        counters: Counters = s["counters"]
        queries = CounterMetricFamily("schooldns_queries", "DNS queries answered, by school, transport and result.",
                                      labels=["school", "transport", "result"])
        for (school, transport, result), value in sorted(counters.queries.items()):
            queries.add_metric([school, transport, result], value)
        yield queries
        blocked = CounterMetricFamily("schooldns_blocked", "Blocked queries, by school and category.",
                                      labels=["school", "category"])
        for (school, category), value in sorted(counters.blocked.items()):
            blocked.add_metric([school, category], value)
        yield blocked
        yield _counter("schooldns_malformed_queries", "Queries that were not valid DNS.", counters.malformed)
        yield _counter("schooldns_internal_errors", "Queries answered SERVFAIL because of a bug; should stay 0.",
                       counters.internal_errors)
        dropped = CounterMetricFamily("schooldns_queries_dropped", "Queries dropped unanswered, by reason.",
                                      labels=["reason"])
        for reason, value in sorted(counters.dropped.items()):
            dropped.add_metric([reason], value)
        yield dropped

        yield _gauge("schooldns_queries_in_flight", "Queries waiting for an upstream.", s["in_flight"])
        yield _gauge("schooldns_tcp_connections", "Open client TCP connections.", s["tcp_connections"])
        yield _gauge("schooldns_cache_entries", "Answers in the cache.", s["cache_entries"])
        for name, text in (("hits", "Cache lookups that found a fresh answer."),
                           ("misses", "Cache lookups that found nothing fresh."),
                           ("evictions", "Answers pushed out of the full cache."),
                           ("stale_served", "Expired answers served because every upstream failed.")):
            yield _counter(f"schooldns_cache_{name}", text, s[f"cache_{name}"])
        yield _counter("schooldns_upstream_coalesced", "Queries that joined an identical query in flight.",
                       s["coalesced"])

        upstream_rows: Iterable[dict[str, Any]] = s["upstreams"]
        families = {
            "queries": CounterMetricFamily("schooldns_upstream_queries", "Queries sent to each upstream.",
                                           labels=["upstream"]),
            "failures": CounterMetricFamily("schooldns_upstream_failures",
                                            "Upstream attempts that timed out or failed.", labels=["upstream"]),
            "timeouts": CounterMetricFamily("schooldns_upstream_timeouts", "Upstream attempts that timed out.",
                                            labels=["upstream"]),
            "truncated": CounterMetricFamily("schooldns_upstream_truncated",
                                             "UDP answers with TC=1 retried over TCP.", labels=["upstream"]),
            "mismatched": CounterMetricFamily("schooldns_upstream_mismatched_replies",
                                              "Replies ignored: wrong ID, question or malformed.",
                                              labels=["upstream"]),
        }
        latency = GaugeMetricFamily("schooldns_upstream_latency_seconds",
                                    "Moving average of upstream response time.", labels=["upstream"])
        up = GaugeMetricFamily("schooldns_upstream_up", "1 unless the upstream is failing.", labels=["upstream"])
        for row in upstream_rows:
            for key, family in families.items():
                family.add_metric([row["address"]], row[key])
            latency.add_metric([row["address"]], row["latency_seconds"])
            up.add_metric([row["address"]], row["up"])
        yield from families.values()
        yield latency
        yield up

        yield _gauge("schooldns_snapshot_generation", "Generation of the installed policies and lists.",
                     s["generation"])
        yield _gauge("schooldns_snapshot_loaded_timestamp_seconds", "When the installed snapshot was built.",
                     s["loaded_at"])
        yield _counter("schooldns_reload_failures", "Reloads rejected; the previous snapshot kept serving.",
                       s["reload_failures"])
        entries = GaugeMetricFamily("schooldns_list_entries", "Listed names per category.", labels=["category"])
        for category, value in sorted(s["list_entries"].items()):
            entries.add_metric([category], value)
        yield entries
        yield _gauge("schooldns_workers", "Worker processes serving DNS.", s["workers"])


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def render(state: Callable[[], dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of one state snapshot (a fresh registry per call)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResolverCollector(state))
    return generate_latest(registry)
