"""The Prometheus text of /metrics for a known state, read back with prometheus_client's own parser."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from resolver.control.syncstate import SyncStatus
from resolver.dataplane import metrics
from resolver.dataplane.workerstate import merge
from resolver.operations import exposition
from tests.support.states import state, upstream

NOW = 1_700_000_000.0


def families(text: str) -> dict[str, tuple[str, dict[frozenset[tuple[str, str]], float]]]:
    """family name -> (type, {labels: value}) for every family's samples; a histogram's samples
    have their kind as a label too (sample="bucket", "count" or "sum")."""

    def key(family_name: str, family_type: str, sample: Sample) -> frozenset[tuple[str, str]]:
        kind = {"sample": sample.name.removeprefix(family_name + "_")} if family_type == "histogram" else {}
        return frozenset({**sample.labels, **kind}.items())

    return {
        family.name: (family.type, {key(family.name, family.type, sample): sample.value for sample in family.samples})
        for family in text_string_to_metric_families(text)
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


NONE = labels()


def histogram(*seconds: float) -> metrics.Histogram:
    out = metrics.Histogram()
    for value in seconds:
        out.observe(value)
    return out


def samples(histogram: metrics.Histogram, **labelled: str) -> dict[frozenset[tuple[str, str]], float]:
    """A histogram's samples for one label set, as `families` reads them back."""
    return {
        **{labels(**labelled, le=le, sample="bucket"): float(count) for le, count in histogram.cumulative()},
        labels(**labelled, sample="count"): float(histogram.count),
        labels(**labelled, sample="sum"): histogram.sum_seconds,
    }


def test_a_known_state_renders_as_every_family_with_its_labels_and_values():
    one = state(
        0,
        answered=3,
        upstreams=(
            upstream(
                "192.0.2.53:53",
                queries=3,
                failures=1,
                timeouts=1,
                latency_seconds=0.25,
                response=histogram(0.25, 0.001),
            ),
        ),
        in_flight=2,
        tcp_connections=1,
        cache_entries=10,
        cache_bytes=4096,
        cache_hits=5,
        cache_misses=3,
        cache_evictions=1,
        cache_stale_served=1,
        repeats_discarded=7,
        coalesced=2,
        loaded_at=1_700_000_000.5,
        schools=("school-a", "school-b", "school-c"),
        last_query={"school-a": NOW - 10, "school-b": NOW - 7200, "unknown": NOW},
    )
    one.counters.count_block("school-a", "tcp", "games", "school")  # after `state` counted worker 0's queries
    # The same category blocked by two authorities is one series (the rollups keep them apart).
    one.counters.count_block("school-a", "udp", "bypass", "province")
    one.counters.count_block("school-a", "udp", "bypass", "school")
    one.counters.count("unknown", "udp", "refused")
    one.counters.malformed = 4
    one.counters.dropped["udp_in_flight_limit"] = 6
    one.counters.waits["forwarded"].observe(0.02)
    one.counters.rejected[("udp", "proxy_malformed")] = 2
    one.counters.accepted["dot"] = 3
    two = state(
        1,
        answered=1,
        upstreams=(
            upstream(
                "192.0.2.53:53", queries=1, truncated=1, mismatched=2, up=False, failing=True, latency_seconds=0.5
            ),
        ),
        list_entries={"adult": 3, "games": 0},
        schools=("school-a", "school-b", "school-c"),
        last_query={"school-b": NOW - 60},
    )
    two.counters.waits["forwarded"].observe(0.3)
    two.counters.waits["servfail"].observe(2.0)
    summed = dataclasses.replace(merge([one, two]), workers=2, worker_restarts=1, worker_restart_failures=3)

    got = families(exposition.render(lambda: summed, clock=lambda: NOW).decode())

    up = labels(upstream="192.0.2.53:53")
    waited = {
        result: histogram(*seconds)
        for result, seconds in {
            "forwarded": (0.02, 0.3),
            "blocked": (),
            "rewritten": (),
            "stale": (),
            "servfail": (2.0,),
        }.items()
    }
    assert got.pop("schooldns_query_duration_seconds") == (
        "histogram",
        {key: value for result, waits in waited.items() for key, value in samples(waits, result=result).items()},
    )
    response = histogram(0.25, 0.001)
    assert got.pop("schooldns_upstream_response_seconds") == (
        "histogram",
        samples(response, upstream="192.0.2.53:53"),
    )
    assert got == {
        "schooldns_queries": (
            "counter",
            {
                labels(school="school-a", transport="udp", result="forwarded"): 4.0,
                labels(school="school-a", transport="tcp", result="blocked"): 1.0,
                labels(school="school-a", transport="udp", result="blocked"): 2.0,
                labels(school="unknown", transport="udp", result="refused"): 1.0,
            },
        ),
        "schooldns_blocked": (
            "counter",
            {labels(school="school-a", category="games"): 1.0, labels(school="school-a", category="bypass"): 2.0},
        ),
        "schooldns_malformed_queries": ("counter", {NONE: 4.0}),
        "schooldns_internal_errors": ("counter", {NONE: 0.0}),
        "schooldns_queries_dropped": ("counter", {labels(reason="udp_in_flight_limit"): 6.0}),
        "schooldns_queries_in_flight": ("gauge", {NONE: 2.0}),
        "schooldns_tcp_connections": ("gauge", {NONE: 1.0}),
        "schooldns_cache_entries": ("gauge", {NONE: 10.0}),
        "schooldns_cache_bytes": ("gauge", {NONE: 4096.0}),
        "schooldns_cache_hits": ("counter", {NONE: 5.0}),
        "schooldns_cache_misses": ("counter", {NONE: 3.0}),
        "schooldns_cache_evictions": ("counter", {NONE: 1.0}),
        "schooldns_cache_stale_served": ("counter", {NONE: 1.0}),
        "schooldns_repeats_discarded": ("counter", {NONE: 7.0}),
        "schooldns_upstream_coalesced": ("counter", {NONE: 2.0}),
        "schooldns_upstream_queries": ("counter", {up: 4.0}),
        "schooldns_upstream_failures": ("counter", {up: 1.0}),
        "schooldns_upstream_timeouts": ("counter", {up: 1.0}),
        "schooldns_upstream_truncated": ("counter", {up: 1.0}),
        "schooldns_upstream_mismatched_replies": ("counter", {up: 2.0}),
        "schooldns_upstream_latency_seconds": ("gauge", {up: 0.5}),  # the slowest worker's
        "schooldns_upstream_up": ("gauge", {up: 0.0}),  # failing for one worker
        "schooldns_degraded": ("gauge", {NONE: 1.0}),  # the one upstream is failing
        "schooldns_schools_configured": ("gauge", {NONE: 3.0}),
        "schooldns_school_last_query_timestamp_seconds": (
            "gauge",
            {
                labels(school="school-a"): NOW - 10,
                labels(school="school-b"): NOW - 60,  # the latest of the two workers'
                labels(school="school-c"): 0.0,  # never asked; "unknown" is no school
            },
        ),
        "schooldns_schools_active": ("gauge", {labels(window="1h"): 2.0, labels(window="24h"): 2.0}),
        "schooldns_coverage_ratio": ("gauge", {labels(window="24h"): 2 / 3}),
        "schooldns_snapshot_generation": ("gauge", {NONE: 1.0}),
        "schooldns_snapshot_loaded_timestamp_seconds": ("gauge", {NONE: 1_700_000_000.5}),
        "schooldns_lists_updated_timestamp_seconds": ("gauge", {NONE: 1_699_000_000.0}),
        "schooldns_reload_failures": ("counter", {NONE: 0.0}),
        "schooldns_serving_last_good": ("gauge", {NONE: 0.0}),
        "schooldns_list_entries": ("gauge", {labels(category="adult"): 3.0, labels(category="games"): 0.0}),
        "schooldns_workers": ("gauge", {NONE: 2.0}),
        "schooldns_worker_queries": ("counter", {labels(worker="0"): 3.0, labels(worker="1"): 1.0}),
        "schooldns_worker_restarts": ("counter", {NONE: 1.0}),
        "schooldns_worker_restart_failures": ("counter", {NONE: 3.0}),
        "schooldns_transport_rejected": ("counter", {labels(transport="udp", reason="proxy_malformed"): 2.0}),
        "schooldns_connections_accepted": ("counter", {labels(transport="dot"): 3.0}),
    }


def test_counters_are_exposed_with_the_total_suffix_and_help_text():
    text = exposition.render(lambda: state(answered=1)).decode()
    assert "# TYPE schooldns_queries_total counter\n" in text
    assert 'schooldns_queries_total{result="forwarded",school="school-a",transport="udp"} 1.0\n' in text
    assert "# HELP schooldns_queries_total DNS queries answered, by school, transport and result.\n" in text
    # A family without samples (nothing dropped yet) is still announced, so dashboards find it.
    assert "# TYPE schooldns_queries_dropped_total counter\n" in text


def test_each_scrape_reads_the_state_again():
    answered = iter([1, 2])
    render = exposition.render
    assert 'worker="0"} 1.0' in render(lambda: state(answered=next(answered))).decode()
    assert 'worker="0"} 2.0' in render(lambda: state(answered=next(answered))).decode()


def test_the_windows_of_active_schools_end_at_the_scrape():
    seen = state(schools=("a", "b", "c", "d"), last_query={"a": NOW - 30, "b": NOW - 3600, "c": NOW - 86400})
    got = families(exposition.render(lambda: seen, clock=lambda: NOW).decode())
    # A query exactly one window ago is out of it.
    assert got["schooldns_schools_active"][1] == {labels(window="1h"): 1.0, labels(window="24h"): 2.0}
    assert got["schooldns_coverage_ratio"][1] == {labels(window="24h"): 0.5}
    nobody = families(exposition.render(lambda: state(schools=())).decode())
    assert nobody["schooldns_coverage_ratio"][1] == {labels(window="24h"): 0.0}
    assert nobody["schooldns_school_last_query_timestamp_seconds"][1] == {}


def test_an_upstream_that_never_answered_is_not_up_and_has_no_latency():
    silent = state(upstreams=(upstream(queries=4, failures=2, latency_seconds=None, up=False),))
    got = families(exposition.render(lambda: silent).decode())
    assert got["schooldns_upstream_up"][1] == {labels(upstream="192.0.2.53:53"): 0.0}
    assert got["schooldns_upstream_latency_seconds"][1] == {}
    assert got["schooldns_degraded"][1] == {NONE: 0.0}  # not failing either: 2 failures, not 3 in a row


SYNCED = SyncStatus(
    repository="https://hub.example.vn/repository",
    version=42,
    last_attempt=NOW - 5,
    last_success=NOW - 5,
    consecutive_failures=0,
    last_error=None,
    metadata_expires=NOW + 86400 * 3,
    metadata_expired=False,
)


@pytest.mark.parametrize(
    "status, values",
    [
        (SYNCED, (NOW - 5, 0.0, NOW + 86400 * 3, 42.0, 0.0)),
        (
            dataclasses.replace(
                SYNCED,
                version=None,
                last_success=None,
                consecutive_failures=4,
                last_error="cannot reach the hub",
                metadata_expires=None,
            ),
            (0.0, 4.0, None, 0.0, 0.0),
        ),
        (
            dataclasses.replace(SYNCED, consecutive_failures=9, metadata_expired=True),
            (NOW - 5, 9.0, NOW + 86400 * 3, 42.0, 1.0),
        ),
    ],
)
def test_sync_metrics_come_from_the_status_given(status, values):
    got = families(exposition.render(lambda: state(), status).decode())
    names = [
        "schooldns_sync_last_success_timestamp_seconds",
        "schooldns_sync_consecutive_failures",
        "schooldns_sync_metadata_expiry_timestamp_seconds",
        "schooldns_sync_version",
        "schooldns_sync_metadata_expired",
    ]
    for name, value in zip(names, values, strict=True):
        assert got[name] == ("gauge", {} if value is None else {NONE: value}), name


def test_an_instance_without_sync_has_no_sync_metrics():
    text = exposition.render(lambda: state()).decode()
    assert "schooldns_sync" not in text
