"""The counting room: duration histograms and each school's latest query, read off the counters."""

from __future__ import annotations

import re
from pathlib import Path

from resolver.dataplane import metrics


def test_a_duration_on_a_bound_counts_in_that_bucket_and_the_slowest_in_the_last():
    histogram = metrics.Histogram()
    for seconds in (0.0, 0.001, 0.0011, 5.0, 60.0):
        histogram.observe(seconds)
    cumulative = dict(histogram.cumulative())
    assert list(cumulative) == [*(repr(bound) for bound in metrics.DURATION_BUCKETS), "+Inf"]
    assert (cumulative["0.0005"], cumulative["0.001"], cumulative["0.0025"]) == (1, 2, 3)
    assert (cumulative["5.0"], cumulative["+Inf"]) == (4, 5)
    assert histogram.count == 5 and histogram.sum_seconds == 0.001 + 0.0011 + 65.0


def test_histograms_add_and_cross_processes_as_plain_values():
    one, two = metrics.Histogram(), metrics.Histogram()
    one.observe(0.01)
    two.observe(0.3)
    one.add(two)
    assert one.count == 2 and one.sum_seconds == 0.31
    assert metrics.Histogram.from_wire(one.to_wire()) == one
    assert metrics.Histogram() != one


def test_each_school_gets_the_time_of_the_update_that_first_saw_its_count_grow():
    counters, last = metrics.Counters(), metrics.LastQueries()
    assert last.update(counters, 100.0) == {}
    counters.count("school-a", "udp", "forwarded")
    counters.count_block("school-b", "tcp", "adult", "school")
    assert last.update(counters, 101.0) == {"school-a": 101.0, "school-b": 101.0}
    counters.count("school-a", "tcp", "cached")  # another transport and result: the school's total grows
    assert last.update(counters, 102.0) == {"school-a": 102.0, "school-b": 101.0}
    assert last.update(counters, 103.0) == {"school-a": 102.0, "school-b": 101.0}  # nothing asked since


def test_counters_carry_their_durations_across_processes_and_merge_them():
    one = metrics.Counters()
    one.waits["forwarded"].observe(0.02)
    two = metrics.Counters.from_dict(one.to_dict())
    assert two.waits == one.waits
    two.merge(one)
    assert two.waits["forwarded"].count == 2 and two.waits["servfail"].count == 0


def test_every_dropped_reason_the_code_counts_is_declared_and_documented():
    package = Path(metrics.__file__).parents[1]
    counted = set()
    for path in package.rglob("*.py"):
        text = path.read_text()
        counted |= set(re.findall(r'dropped\["(\w+)"\]', text)) | set(re.findall(r'"(\w+_in_flight_limit)"', text))
    assert counted <= set(metrics.DROP_REASONS)
    documented = (package.parent / "docs" / "metrics.md").read_text()
    assert all(f"`{reason}`" in documented for reason in metrics.DROP_REASONS)
