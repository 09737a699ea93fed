"""Prometheus text for the admin API: every metric family, declared once, read from live state at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from resolver.dataplane import workerstate


class ResolverCollector(Collector):
    """Reads the live objects of one process (or the merged state of many) at scrape time."""

    def __init__(self, state: Callable[[], workerstate.WorkerState]):
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        counters = s.counters
        queries = CounterMetricFamily(
            "schooldns_queries",
            "DNS queries answered, by school, transport and result.",
            labels=["school", "transport", "result"],
        )
        for (school, transport, result), value in sorted(counters.queries.items()):
            queries.add_metric([school, transport, result], value)
        yield queries
        blocked = CounterMetricFamily(
            "schooldns_blocked", "Blocked queries, by school and category.", labels=["school", "category"]
        )
        for (school, category), value in sorted(counters.blocked.items()):
            blocked.add_metric([school, category], value)
        yield blocked
        yield _counter("schooldns_malformed_queries", "Queries that were not valid DNS.", counters.malformed)
        yield _counter(
            "schooldns_internal_errors",
            "Queries answered SERVFAIL because of a bug; should stay 0.",
            counters.internal_errors,
        )
        dropped = CounterMetricFamily(
            "schooldns_queries_dropped", "Queries dropped unanswered, by reason.", labels=["reason"]
        )
        for reason, value in sorted(counters.dropped.items()):
            dropped.add_metric([reason], value)
        yield dropped

        yield _gauge("schooldns_queries_in_flight", "Queries waiting for an upstream.", s.in_flight)
        yield _gauge("schooldns_tcp_connections", "Open client TCP connections.", s.tcp_connections)
        yield _gauge("schooldns_cache_entries", "Answers in the cache.", s.cache_entries)
        yield _gauge(
            "schooldns_cache_bytes",
            "Estimated memory of the answers in the cache (bound: cache.max_megabytes).",
            s.cache_bytes,
        )
        for name, text in (
            ("hits", "Cache lookups that found a fresh answer."),
            ("misses", "Cache lookups that found nothing fresh."),
            ("evictions", "Answers pushed out of the full cache."),
            ("stale_served", "Expired answers served because every upstream failed."),
        ):
            yield _counter(f"schooldns_cache_{name}", text, getattr(s, f"cache_{name}"))
        yield _counter("schooldns_upstream_coalesced", "Queries that joined an identical query in flight.", s.coalesced)

        families = {
            "queries": CounterMetricFamily(
                "schooldns_upstream_queries", "Queries sent to each upstream.", labels=["upstream"]
            ),
            "failures": CounterMetricFamily(
                "schooldns_upstream_failures", "Upstream attempts that timed out or failed.", labels=["upstream"]
            ),
            "timeouts": CounterMetricFamily(
                "schooldns_upstream_timeouts", "Upstream attempts that timed out.", labels=["upstream"]
            ),
            "truncated": CounterMetricFamily(
                "schooldns_upstream_truncated", "UDP answers with TC=1 retried over TCP.", labels=["upstream"]
            ),
            "mismatched": CounterMetricFamily(
                "schooldns_upstream_mismatched_replies",
                "Replies ignored: wrong ID, question or malformed.",
                labels=["upstream"],
            ),
        }
        latency = GaugeMetricFamily(
            "schooldns_upstream_latency_seconds", "Moving average of upstream response time.", labels=["upstream"]
        )
        up = GaugeMetricFamily("schooldns_upstream_up", "1 unless the upstream is failing.", labels=["upstream"])
        for row in s.upstreams:
            for key, family in families.items():
                family.add_metric([row.address], getattr(row, key))
            latency.add_metric([row.address], row.latency_seconds)
            up.add_metric([row.address], int(row.up))
        yield from families.values()
        yield latency
        yield up

        yield _gauge("schooldns_snapshot_generation", "Generation of the installed policies and lists.", s.generation)
        yield _gauge(
            "schooldns_snapshot_loaded_timestamp_seconds", "When the installed snapshot was built.", s.loaded_at
        )
        yield _counter(
            "schooldns_reload_failures", "Reloads rejected; the previous snapshot kept serving.", s.reload_failures
        )
        yield _gauge(
            "schooldns_serving_last_good",
            "Processes serving the last good policies and lists from state_dir, because the files "
            "failed to build when they started (0 when all is well).",
            s.serving_last_good,
        )
        entries = GaugeMetricFamily("schooldns_list_entries", "Listed names per category.", labels=["category"])
        for category, value in sorted(s.list_entries.items()):
            entries.add_metric([category], value)
        yield entries
        yield _gauge("schooldns_workers", "Worker processes serving DNS.", s.workers)
        # How the kernel spread the queries over the workers (one process: worker 0 answers all).
        per_worker = CounterMetricFamily(
            "schooldns_worker_queries",
            "DNS queries answered by each worker process (from 0 when it restarts).",
            labels=["worker"],
        )
        for index, value in sorted(s.worker_queries.items()):
            per_worker.add_metric([str(index)], value)
        yield per_worker
        # Only a supervisor (workers: N > 1) restarts workers; one process reports 0.
        yield _counter("schooldns_worker_restarts", "Workers that died and were started again.", s.worker_restarts)
        yield _counter(
            "schooldns_worker_restart_failures",
            "Restarts of a worker that failed; the next try waits twice as long (up to 30 s).",
            s.worker_restart_failures,
        )
        rejected = CounterMetricFamily(
            "schooldns_transport_rejected",
            "Connections, PROXY headers and HTTP requests turned away before they were a DNS query, "
            "by transport and reason.",
            labels=["transport", "reason"],
        )
        for (transport, reason), value in sorted(counters.rejected.items()):
            rejected.add_metric([transport, reason], value)
        yield rejected


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def render(state: Callable[[], workerstate.WorkerState]) -> bytes:
    """The Prometheus text exposition of one state snapshot (a fresh registry per call)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResolverCollector(state))
    return generate_latest(registry)
