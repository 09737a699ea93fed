"""The Prometheus text of /metrics for a known state, read back with prometheus_client's own parser."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from resolver.dataplane.workerstate import merge
from resolver.operations import exposition
from tests.support.states import state, upstream


def families(text: str) -> dict[str, tuple[str, dict[frozenset[tuple[str, str]], float]]]:
    """family name -> (type, {labels: value}) for every family's samples."""
    return {
        family.name: (family.type, {frozenset(sample.labels.items()): sample.value for sample in family.samples})
        for family in text_string_to_metric_families(text)
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


NONE = labels()


def test_a_known_state_renders_as_every_family_with_its_labels_and_values():
    one = state(
        0,
        answered=3,
        upstreams=(upstream("192.0.2.53:53", queries=3, failures=1, timeouts=1, latency_seconds=0.25),),
        in_flight=2,
        tcp_connections=1,
        cache_entries=10,
        cache_bytes=4096,
        cache_hits=5,
        cache_misses=3,
        cache_evictions=1,
        cache_stale_served=1,
        coalesced=2,
        loaded_at=1_700_000_000.5,
    )
    one.counters.count_block("school-a", "tcp", "games")  # after `state` counted worker 0's queries
    one.counters.count("unknown", "udp", "refused")
    one.counters.malformed = 4
    one.counters.dropped["udp_in_flight_limit"] = 6
    one.counters.rejected[("udp", "proxy_malformed")] = 2
    two = state(
        1,
        answered=1,
        upstreams=(upstream("192.0.2.53:53", queries=1, truncated=1, mismatched=2, up=False),),
        list_entries={"adult": 3, "games": 0},
    )
    summed = dataclasses.replace(merge([one, two]), workers=2, worker_restarts=1, worker_restart_failures=3)

    got = families(exposition.render(lambda: summed).decode())

    up = labels(upstream="192.0.2.53:53")
    assert got == {
        "schooldns_queries": (
            "counter",
            {
                labels(school="school-a", transport="udp", result="forwarded"): 4.0,
                labels(school="school-a", transport="tcp", result="blocked"): 1.0,
                labels(school="unknown", transport="udp", result="refused"): 1.0,
            },
        ),
        "schooldns_blocked": ("counter", {labels(school="school-a", category="games"): 1.0}),
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
        "schooldns_upstream_coalesced": ("counter", {NONE: 2.0}),
        "schooldns_upstream_queries": ("counter", {up: 4.0}),
        "schooldns_upstream_failures": ("counter", {up: 1.0}),
        "schooldns_upstream_timeouts": ("counter", {up: 1.0}),
        "schooldns_upstream_truncated": ("counter", {up: 1.0}),
        "schooldns_upstream_mismatched_replies": ("counter", {up: 2.0}),
        "schooldns_upstream_latency_seconds": ("gauge", {up: 0.25}),
        "schooldns_upstream_up": ("gauge", {up: 0.0}),
        "schooldns_snapshot_generation": ("gauge", {NONE: 1.0}),
        "schooldns_snapshot_loaded_timestamp_seconds": ("gauge", {NONE: 1_700_000_000.5}),
        "schooldns_reload_failures": ("counter", {NONE: 0.0}),
        "schooldns_serving_last_good": ("gauge", {NONE: 0.0}),
        "schooldns_list_entries": ("gauge", {labels(category="adult"): 3.0, labels(category="games"): 0.0}),
        "schooldns_workers": ("gauge", {NONE: 2.0}),
        "schooldns_worker_queries": ("counter", {labels(worker="0"): 3.0, labels(worker="1"): 1.0}),
        "schooldns_worker_restarts": ("counter", {NONE: 1.0}),
        "schooldns_worker_restart_failures": ("counter", {NONE: 3.0}),
        "schooldns_transport_rejected": ("counter", {labels(transport="udp", reason="proxy_malformed"): 2.0}),
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
