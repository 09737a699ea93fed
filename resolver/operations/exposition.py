"""Prometheus text for the admin API: every metric family, declared once, read from live state at scrape time."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from resolver.control import syncstate
from resolver.dataplane import workerstate
from resolver.operations import shedding

# The windows of schooldns_schools_active: (label value, seconds). Coverage is given for the last.
ACTIVE_WINDOWS = (("1h", 3600.0), ("24h", 86400.0))


class ResolverCollector(Collector):
    """Reads the live objects of one process (or the merged state of many) at scrape time."""

    def __init__(
        self,
        state: Callable[[], workerstate.WorkerState],
        sync_status: syncstate.SyncStatus | None = None,
        clock: Callable[[], float] = time.time,
        sheds: shedding.Sheds | None = None,
    ):
        self.state = state
        self.sync_status = sync_status  # None: an instance without sync, which has none of its metrics
        self.clock = clock
        self.sheds = sheds  # None: no admin side (its families are left out)

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        yield from _queries(s)
        yield from _schools(s, self.clock())
        yield from _cache(s)
        yield from _upstreams(s)
        yield from _snapshot(s)
        if self.sync_status is not None:
            yield from _sync(self.sync_status)
        yield from _workers(s)
        yield from _transports(s)
        if self.sheds is not None:
            yield from _admin_sheds(self.sheds)


def _queries(s: workerstate.WorkerState) -> Iterator[Metric]:
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
    by_category: collections.Counter[tuple[str, str]] = collections.Counter()
    for (school, category, _), value in counters.blocked.items():  # the authority is the rollups' only
        by_category[(school, category)] += value
    for (school, category), value in sorted(by_category.items()):
        blocked.add_metric([school, category], value)
    yield blocked
    waited = HistogramMetricFamily(
        "schooldns_query_duration_seconds",
        "Time from a query's arrival to its answer, for the queries that waited for an upstream, by "
        "result (the others are answered from memory in microseconds, and not timed).",
        labels=["result"],
    )
    for result, histogram in counters.waits.items():
        waited.add_metric([result], histogram.cumulative(), histogram.sum_seconds)
    yield waited
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


def _schools(s: workerstate.WorkerState, now: float) -> Iterator[Metric]:
    """Which configured schools use this instance: coverage (the fleet's is a PromQL question)."""
    yield _gauge("schooldns_schools_configured", "Schools configured in the installed policies.", len(s.schools))
    last = GaugeMetricFamily(
        "schooldns_school_last_query_timestamp_seconds",
        "When this instance last answered a query of the school (to within a second; 0: not since it started).",
        labels=["school"],
    )
    for school in sorted(s.schools):
        last.add_metric([school], s.last_query.get(school, 0.0))
    yield last
    active = GaugeMetricFamily(
        "schooldns_schools_active",
        "Configured schools with a query answered in the window, on this instance (since it started).",
        labels=["window"],
    )
    counts = []
    for window, seconds in ACTIVE_WINDOWS:
        counts.append(sum(1 for school in s.schools if s.last_query.get(school, 0.0) > now - seconds))
        active.add_metric([window], counts[-1])
    yield active
    coverage = GaugeMetricFamily(
        "schooldns_coverage_ratio",
        "Share of the configured schools with a query answered in the window, on this instance (0 without schools).",
        labels=["window"],
    )
    coverage.add_metric([ACTIVE_WINDOWS[-1][0]], counts[-1] / len(s.schools) if s.schools else 0.0)
    yield coverage


def _cache(s: workerstate.WorkerState) -> Iterator[Metric]:
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
        (
            "stale_served",
            "Expired answers served (repeats included): upstream slower than cache.stale_wait_seconds, "
            "every upstream failed, or a refresh failed less than cache.stale_failure_recheck_seconds ago.",
        ),
    ):
        yield _counter(f"schooldns_cache_{name}", text, getattr(s, f"cache_{name}"))
    yield _counter(
        "schooldns_repeats_discarded",
        "Answers kept for repeats that were forgotten when the older of their two generations was dropped.",
        s.repeats_discarded,
    )


def _upstreams(s: workerstate.WorkerState) -> Iterator[Metric]:
    yield _counter("schooldns_upstream_coalesced", "Queries that joined an identical query in flight.", s.coalesced)
    families = {
        "queries": CounterMetricFamily(
            "schooldns_upstream_queries", "Queries sent to each upstream (probes included).", labels=["upstream"]
        ),
        "failures": CounterMetricFamily(
            "schooldns_upstream_failures",
            "Upstream attempts that timed out, failed or were refused (REFUSED, NOTAUTH).",
            labels=["upstream"],
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
        "schooldns_upstream_latency_seconds",
        "Moving average of the upstream's answer time (no sample before its first answer).",
        labels=["upstream"],
    )
    response = HistogramMetricFamily(
        "schooldns_upstream_response_seconds", "How long each upstream took to answer.", labels=["upstream"]
    )
    up = GaugeMetricFamily(
        "schooldns_upstream_up",
        "1 when the upstream answered and is not failing since; 0 before its first answer or while failing.",
        labels=["upstream"],
    )
    for row in s.upstreams:
        for key, family in families.items():
            family.add_metric([row.address], getattr(row, key))
        if row.latency_seconds is not None:
            latency.add_metric([row.address], row.latency_seconds)
        response.add_metric([row.address], row.response.cumulative(), row.response.sum_seconds)
        up.add_metric([row.address], int(row.up))
    yield from families.values()
    yield latency
    yield response
    yield up
    yield _gauge(
        "schooldns_degraded",
        "1 while every upstream is failing: /readyz answers 503 degraded, cache misses get SERVFAIL or stale answers.",
        int(bool(s.failing_upstreams())),
    )


def _snapshot(s: workerstate.WorkerState) -> Iterator[Metric]:
    yield _gauge("schooldns_snapshot_generation", "Generation of the installed policies and lists.", s.generation)
    yield _gauge("schooldns_snapshot_loaded_timestamp_seconds", "When the installed snapshot was built.", s.loaded_at)
    yield _gauge(
        "schooldns_lists_updated_timestamp_seconds",
        "When the installed lists last changed (the newest list file's modification time; 0: unknown).",
        s.lists_updated_at,
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


def _sync(status: syncstate.SyncStatus) -> Iterator[Metric]:
    """The sync from the hub's signed repository (an instance with `sync:` only)."""
    yield _gauge(
        "schooldns_sync_last_success_timestamp_seconds",
        "When the last sync from the hub succeeded (0: never since the start).",
        status.last_success or 0.0,
    )
    yield _gauge(
        "schooldns_sync_consecutive_failures",
        "Syncs that failed in a row since the last success (the last good version keeps serving).",
        status.consecutive_failures,
    )
    expiry = GaugeMetricFamily(
        "schooldns_sync_metadata_expiry_timestamp_seconds",
        "When the verified metadata expires, the earliest of its roles (no sample before a verified sync).",
    )
    if status.metadata_expires is not None:
        expiry.add_metric([], status.metadata_expires)
    yield expiry
    yield _gauge(
        "schooldns_sync_version",
        "The published bundle version being served (0: none verified yet).",
        status.version or 0,
    )
    yield _gauge(
        "schooldns_sync_metadata_expired",
        "1 while the hub's metadata has expired: the feed is frozen, the last good version keeps serving.",
        int(status.metadata_expired),
    )


def _workers(s: workerstate.WorkerState) -> Iterator[Metric]:
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


def _transports(s: workerstate.WorkerState) -> Iterator[Metric]:
    rejected = CounterMetricFamily(
        "schooldns_transport_rejected",
        "Connections, PROXY headers and HTTP requests turned away before they were a DNS query, "
        "by transport and reason.",
        labels=["transport", "reason"],
    )
    for (transport, reason), value in sorted(s.counters.rejected.items()):
        rejected.add_metric([transport, reason], value)
    yield rejected
    accepted = CounterMetricFamily(
        "schooldns_connections_accepted",
        "Client connections taken in, by transport (tcp; dot and doh once their TLS handshake ended).",
        labels=["transport"],
    )
    for transport, value in sorted(s.counters.accepted.items()):
        accepted.add_metric([transport], value)
    yield accepted


def _admin_sheds(sheds: shedding.Sheds) -> Iterator[Metric]:
    """What the admin API and the block page of this process dropped at their bounds (docs/reliability.md)."""
    yield _counter(
        "schooldns_audit_entries_dropped",
        "Audit log entries removed with the oldest rotated file (the log keeps about 15,000 changes).",
        sheds.audit_entries_dropped,
    )
    deleted = CounterMetricFamily(
        "schooldns_blockpage_requests_deleted",
        "Block page requests deleted to stay under blockpage.max_requests, by status (decided ones go first).",
        labels=["status"],
    )
    deleted.add_metric(["decided"], sheds.requests_deleted_decided)
    deleted.add_metric(["waiting"], sheds.requests_deleted_waiting)
    yield deleted
    yield _counter(
        "schooldns_admin_auth_rate_limited",
        "Admin API requests answered 429: their source failed to authenticate too often in the last minute.",
        sheds.admin_auth_rate_limited,
    )


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def render(
    state: Callable[[], workerstate.WorkerState],
    sync_status: syncstate.SyncStatus | None = None,
    clock: Callable[[], float] = time.time,
    sheds: shedding.Sheds | None = None,
) -> bytes:
    """The Prometheus text exposition of one state snapshot (a fresh registry per call).

    `sync_status`: the instance's sync (None: it has none, and no schooldns_sync_* family is given);
    `clock`: the wall clock the windows of schooldns_schools_active end at; `sheds`: what the
    process's admin side dropped (None: it has none).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ResolverCollector(state, sync_status, clock, sheds))
    return generate_latest(registry)
