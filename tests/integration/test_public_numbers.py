"""The public numbers of `schooldns serve`: every /metrics family, label and value and every /status key, pinned."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import dns.asyncquery
import dns.message
import pytest
from prometheus_client.parser import text_string_to_metric_families

import resolver
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import Served, serve

# Every metric family /metrics exposes, with its type. Dashboards and alerts read these names:
# a family may be added (add it here), never renamed or dropped.
FAMILIES = {
    "schooldns_queries": "counter",
    "schooldns_blocked": "counter",
    "schooldns_malformed_queries": "counter",
    "schooldns_internal_errors": "counter",
    "schooldns_queries_dropped": "counter",
    "schooldns_query_duration_seconds": "histogram",
    "schooldns_queries_in_flight": "gauge",
    "schooldns_tcp_connections": "gauge",
    "schooldns_schools_configured": "gauge",
    "schooldns_school_last_query_timestamp_seconds": "gauge",
    "schooldns_schools_active": "gauge",
    "schooldns_coverage_ratio": "gauge",
    "schooldns_cache_entries": "gauge",
    "schooldns_cache_bytes": "gauge",
    "schooldns_cache_hits": "counter",
    "schooldns_cache_misses": "counter",
    "schooldns_cache_evictions": "counter",
    "schooldns_cache_stale_served": "counter",
    "schooldns_repeats_discarded": "counter",
    "schooldns_upstream_coalesced": "counter",
    "schooldns_upstream_queries": "counter",
    "schooldns_upstream_failures": "counter",
    "schooldns_upstream_timeouts": "counter",
    "schooldns_upstream_truncated": "counter",
    "schooldns_upstream_mismatched_replies": "counter",
    "schooldns_upstream_latency_seconds": "gauge",
    "schooldns_upstream_response_seconds": "histogram",
    "schooldns_upstream_up": "gauge",
    "schooldns_degraded": "gauge",
    "schooldns_snapshot_generation": "gauge",
    "schooldns_snapshot_loaded_timestamp_seconds": "gauge",
    "schooldns_lists_updated_timestamp_seconds": "gauge",
    "schooldns_reload_failures": "counter",
    "schooldns_serving_last_good": "gauge",
    "schooldns_list_entries": "gauge",
    "schooldns_workers": "gauge",
    "schooldns_worker_queries": "counter",
    "schooldns_worker_restarts": "counter",
    "schooldns_worker_restart_failures": "counter",
    "schooldns_transport_rejected": "counter",
    "schooldns_audit_entries_dropped": "counter",
    "schooldns_blockpage_requests_deleted": "counter",
    "schooldns_admin_auth_rate_limited": "counter",
    "schooldns_connections_accepted": "counter",
}

STATUS_KEYS = [
    "version",
    "generation",
    "lists_age_seconds",
    "list_entries",
    "serving_last_good",
    "workers",
    "cache_entries",
    "degraded",
    "upstreams",
    "compiled",
]


class Positive:
    """Equal to any number above 0: a value that depends on timing (latency, time, estimated bytes)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and other > 0

    def __repr__(self) -> str:
        return "Positive()"


class AtMost:
    """Equal to any count from 0 to `most`: a histogram bucket of durations that depend on timing."""

    def __init__(self, most: int):
        self.most = most

    def __eq__(self, other: object) -> bool:
        return isinstance(other, float) and other.is_integer() and 0 <= other <= self.most

    def __repr__(self) -> str:
        return f"AtMost({self.most})"


BUCKETS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0")


def histogram(name: str, labels: dict[str, str], count: int) -> list[tuple[str, dict[str, str], object]]:
    """The samples of `count` durations that depend on timing (each below the 5 s bucket)."""
    return [
        *((f"{name}_bucket", {**labels, "le": le}, AtMost(count)) for le in BUCKETS[:-1]),
        (f"{name}_bucket", {**labels, "le": "5.0"}, float(count)),
        (f"{name}_bucket", {**labels, "le": "+Inf"}, float(count)),
        (f"{name}_count", labels, float(count)),
        (f"{name}_sum", labels, Positive() if count else 0.0),
    ]


def expected_samples(upstream: str, workers: int) -> dict[tuple[str, frozenset[tuple[str, str]]], object]:
    """Every sample after WORKLOAD, by sample name and labels (worker_queries is checked apart)."""
    a = "school-a"
    rows: list[tuple[str, dict[str, str], object]] = [
        ("schooldns_queries_total", {"school": a, "transport": "udp", "result": "forwarded"}, 1.0),
        ("schooldns_queries_total", {"school": a, "transport": "udp", "result": "cached"}, 1.0),
        ("schooldns_queries_total", {"school": a, "transport": "udp", "result": "blocked"}, 2.0),
        ("schooldns_queries_total", {"school": a, "transport": "tcp", "result": "blocked"}, 1.0),
        ("schooldns_queries_total", {"school": "unknown", "transport": "udp", "result": "refused"}, 1.0),
        ("schooldns_blocked_total", {"school": a, "category": "games"}, 2.0),
        ("schooldns_blocked_total", {"school": a, "category": "adult"}, 1.0),
        ("schooldns_malformed_queries_total", {}, 1.0),
        ("schooldns_internal_errors_total", {}, 0.0),
        ("schooldns_queries_dropped_total", {"reason": "udp_oversized"}, 1.0),
        *histogram("schooldns_query_duration_seconds", {"result": "forwarded"}, 1),
        *(
            sample
            for result in ("blocked", "rewritten", "stale", "servfail")
            for sample in histogram("schooldns_query_duration_seconds", {"result": result}, 0)
        ),
        ("schooldns_queries_in_flight", {}, 0.0),
        ("schooldns_tcp_connections", {}, 0.0),
        ("schooldns_connections_accepted_total", {"transport": "tcp"}, 1.0),
        ("schooldns_schools_configured", {}, 2.0),
        ("schooldns_school_last_query_timestamp_seconds", {"school": a}, Positive()),
        ("schooldns_school_last_query_timestamp_seconds", {"school": "school-b"}, 0.0),
        ("schooldns_schools_active", {"window": "1h"}, 1.0),
        ("schooldns_schools_active", {"window": "24h"}, 1.0),
        ("schooldns_coverage_ratio", {"window": "24h"}, 0.5),
        ("schooldns_cache_entries", {}, 1.0),
        ("schooldns_cache_bytes", {}, Positive()),
        ("schooldns_cache_hits_total", {}, 1.0),
        ("schooldns_cache_misses_total", {}, 1.0),
        ("schooldns_cache_evictions_total", {}, 0.0),
        ("schooldns_cache_stale_served_total", {}, 0.0),
        ("schooldns_repeats_discarded_total", {}, 0.0),
        ("schooldns_upstream_coalesced_total", {}, 0.0),
        ("schooldns_upstream_queries_total", {"upstream": upstream}, 1.0),
        ("schooldns_upstream_failures_total", {"upstream": upstream}, 0.0),
        ("schooldns_upstream_timeouts_total", {"upstream": upstream}, 0.0),
        ("schooldns_upstream_truncated_total", {"upstream": upstream}, 0.0),
        ("schooldns_upstream_mismatched_replies_total", {"upstream": upstream}, 0.0),
        ("schooldns_upstream_latency_seconds", {"upstream": upstream}, Positive()),
        *histogram("schooldns_upstream_response_seconds", {"upstream": upstream}, 1),
        ("schooldns_upstream_up", {"upstream": upstream}, 1.0),
        ("schooldns_degraded", {}, 0.0),
        ("schooldns_snapshot_generation", {}, 1.0),
        ("schooldns_snapshot_loaded_timestamp_seconds", {}, Positive()),
        ("schooldns_lists_updated_timestamp_seconds", {}, Positive()),
        ("schooldns_reload_failures_total", {}, 0.0),
        ("schooldns_serving_last_good", {}, 0.0),
        ("schooldns_list_entries", {"category": "adult"}, 1.0),
        ("schooldns_list_entries", {"category": "bypass"}, 0.0),
        ("schooldns_list_entries", {"category": "games"}, 2.0),
        ("schooldns_list_entries", {"category": "malware"}, 1.0),
        ("schooldns_workers", {}, float(workers)),
        ("schooldns_worker_restarts_total", {}, 0.0),
        ("schooldns_worker_restart_failures_total", {}, 0.0),
        ("schooldns_audit_entries_dropped_total", {}, 0.0),
        ("schooldns_blockpage_requests_deleted_total", {"status": "decided"}, 0.0),
        ("schooldns_blockpage_requests_deleted_total", {"status": "waiting"}, 0.0),
        ("schooldns_admin_auth_rate_limited_total", {}, 0.0),
    ]
    return {(name, frozenset(labels.items())): value for name, labels, value in rows}


ANSWERED = 6  # the queries of WORKLOAD that are answered and counted in schooldns_queries_total


def from_one_socket(port: int) -> None:
    """The UDP queries of the workload, from one socket (one source port): with the default
    worker_spread the kernel hands them all to one worker, so the cache numbers are one cache's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect(("127.0.0.1", port))
        for name in ("www.example.com", "www.example.com", "games.example.com", "adult.example.com"):
            query = dns.message.make_query(name, "A")
            sock.send(query.to_wire())
            assert dns.message.from_wire(sock.recv(4096)).id == query.id
        sock.send(b"\x12")  # malformed: dropped, counted
        sock.send(bytes(5000))  # longer than any query: dropped, counted as udp_oversized


async def workload(served: Served) -> None:
    """One query of each kind (a thread for the blocking socket: the fake upstream runs on this loop)."""
    await asyncio.to_thread(from_one_socket, served.dns_port)
    query = dns.message.make_query("games.example.com", "A")
    await dns.asyncquery.tcp(query, "127.0.0.1", port=served.dns_port, timeout=3)
    refused = dns.message.make_query("www.example.com", "A")  # from no school's network
    await dns.asyncquery.udp(refused, "127.0.0.1", port=served.dns_port, source="127.0.0.3", timeout=3)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("workers", [1, 2])
async def test_metrics_and_status_keep_every_name_label_key_and_value(tmp_path, workers):
    async with FakeUpstream() as upstream:
        upstream.answer("www.example.com", "A", "192.0.2.10", ttl=300)
        async with serve(tmp_path, upstream, workers) as served:
            # Ready once the admin API is announced: a worker reports its state with its ports.
            assert await served.admin("/readyz") == "ready\n"
            assert await served.admin("/healthz") == "ok\n"
            serving = next(line for line in served.log if "serving DNS on" in line)
            assert serving.rstrip().endswith("generation 1, 4 list entries")
            await workload(served)
            expected = expected_samples(upstream.address, workers)
            async with asyncio.timeout(15):  # until every worker has published what it counted
                while True:
                    text = await served.metrics()
                    got = samples(text)
                    per_worker = {k: v for k, v in got.items() if k[0] == "schooldns_worker_queries_total"}
                    if sum(per_worker.values()) == ANSWERED and got.keys() >= expected.keys():
                        break
                    await asyncio.sleep(0.2)
            assert got == {**expected, **per_worker}
            families = {family.name: family.type for family in text_string_to_metric_families(text)}
            assert families == FAMILIES
            assert {dict(labels)["worker"] for _, labels in per_worker} == {str(i) for i in range(workers)}

            status = json.loads(await served.admin("/status"))
            assert list(status) == STATUS_KEYS
            age = status.pop("lists_age_seconds")
            assert isinstance(age, float) and 0 <= age < time.time()
            [row] = status.pop("upstreams")
            assert list(row) == ["address", "up", "failing", "latency_ms"]
            assert row["address"] == upstream.address and row["up"] is True and row["failing"] is False
            assert row["latency_ms"] >= 0
            assert status == {
                "version": resolver.__version__,
                "generation": 1,
                "list_entries": {"adult": 1, "games": 2, "malware": 1, "bypass": 0},
                "serving_last_good": False,
                "workers": workers,
                "cache_entries": 1,
                "degraded": False,
                "compiled": [name.rsplit(".", 1)[1] for name in resolver.compiled_modules()],
            }
