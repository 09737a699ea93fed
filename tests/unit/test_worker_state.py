"""WorkerState: the sum of several workers (dead ones' counters kept) and its form between processes."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing.connection
import pickle

from resolver.dataplane import metrics
from resolver.dataplane.workerstate import Report, merge
from tests.support.states import state, upstream


def histogram(*seconds: float) -> metrics.Histogram:
    out = metrics.Histogram()
    for value in seconds:
        out.observe(value)
    return out


def test_merge_sums_counters_and_gauges_of_live_workers():
    one = state(0, answered=3, in_flight=2, cache_entries=10, cache_bytes=1000, cache_hits=5, coalesced=1)
    two = state(1, answered=4, in_flight=1, cache_entries=7, cache_bytes=700, cache_hits=2, reload_failures=1)
    one.counters.count_block("school-a", "udp", "games", "school")
    two.counters.count_block("school-a", "tcp", "games", "school")
    two.counters.dropped["udp_oversized"] += 2
    two.counters.malformed += 1
    summed = merge([one, two])
    assert dict(summed.counters.queries) == {
        ("school-a", "udp", "forwarded"): 7,
        ("school-a", "udp", "blocked"): 1,
        ("school-a", "tcp", "blocked"): 1,
    }
    assert dict(summed.counters.blocked) == {("school-a", "games", "school"): 2}
    assert dict(summed.counters.dropped) == {"udp_oversized": 2}
    assert summed.counters.malformed == 1
    assert (summed.in_flight, summed.cache_entries, summed.cache_bytes) == (3, 17, 1700)
    assert (summed.cache_hits, summed.coalesced, summed.reload_failures) == (7, 1, 1)
    assert summed.workers == 2
    assert summed.worker_queries == {0: 3, 1: 4}
    # The workers' counters are copied, not shared: a later query of one is not in this sum.
    one.counters.count("school-a", "udp", "forwarded")
    assert summed.counters.queries[("school-a", "udp", "forwarded")] == 7


def test_merge_takes_the_newest_generation_and_the_lists_of_a_worker_that_has_them():
    old = state(0, generation=1, loaded_at=100.0, list_entries={"adult": 3})
    new = state(1, generation=2, loaded_at=200.0, list_entries={"adult": 4, "games": 1})
    summed = merge([old, new])
    assert (summed.generation, summed.loaded_at, dict(summed.list_entries)) == (2, 200.0, {"adult": 4, "games": 1})
    assert merge([new, state(2, list_entries={})]).list_entries == {"adult": 4, "games": 1}
    assert merge([state(serving_last_good=1), state(1, serving_last_good=1)]).serving_last_good == 2


def test_merge_sums_each_upstream_once_with_the_slowest_latency_and_worst_health():
    a, b, c = "192.0.2.53:53", "[2001:db8::53]:53", "192.0.2.54:53"
    one = state(
        0,
        upstreams=(
            upstream(a, queries=5, failures=1, latency_seconds=0.010, response=histogram(0.01)),
            upstream(b, queries=1),
            upstream(c, latency_seconds=None, up=False),  # never answered this worker
        ),
    )
    two = state(
        1,
        upstreams=(
            upstream(a, queries=2, timeouts=1, latency_seconds=0.030, up=False, failing=True, response=histogram(0.03)),
            upstream(b),
            upstream(c, latency_seconds=0.002),
        ),
    )
    summed = merge([one, two])
    assert summed.upstreams == (
        upstream(
            a,
            queries=7,
            failures=1,
            timeouts=1,
            latency_seconds=0.030,
            up=False,
            failing=True,
            response=histogram(0.01, 0.03),
        ),
        upstream(b, queries=1),
        upstream(c, latency_seconds=0.002),  # up: one worker had its answer, none finds it failing
    )
    silent = merge([state(upstreams=(upstream(c, latency_seconds=None, up=False),))])
    assert silent.upstreams == (upstream(c, latency_seconds=None, up=False),)


def test_the_upstreams_fail_all_together_or_not_at_all():
    a, b = "192.0.2.53:53", "192.0.2.54:53"
    both = state(upstreams=(upstream(a, up=False, failing=True), upstream(b, up=False, failing=True)))
    assert both.failing_upstreams() == (a, b)
    assert state(upstreams=(upstream(a, up=False, failing=True), upstream(b))).failing_upstreams() == ()
    assert state(upstreams=()).failing_upstreams() == ()
    # Failing for one worker is failing for the sum.
    assert merge([both, state(1, upstreams=(upstream(a), upstream(b)))]).failing_upstreams() == (a, b)


def test_merge_keeps_each_schools_latest_query_and_the_newest_snapshots_schools():
    old = state(0, generation=1, schools=("a",), last_query={"a": 100.0, "b": 50.0}, lists_updated_at=10.0)
    new = state(1, generation=2, schools=("a", "b"), last_query={"a": 90.0}, lists_updated_at=20.0)
    dead = merge([], [state(2, last_query={"b": 70.0})])
    summed = merge([old, new], [dead])
    assert summed.last_query == {"a": 100.0, "b": 70.0}
    assert (summed.schools, summed.lists_updated_at) == (("a", "b"), 20.0)
    assert (dead.schools, dead.lists_updated_at, dead.last_query) == ((), 0.0, {"b": 70.0})


def test_a_dead_workers_counters_stay_in_the_sums_and_its_gauges_do_not():
    dead = state(
        1,
        answered=40,
        upstreams=(upstream(queries=40, latency_seconds=0.5, up=False),),
        in_flight=3,
        tcp_connections=2,
        cache_entries=9,
        cache_bytes=900,
        cache_hits=30,
        cache_misses=10,
        generation=7,
        serving_last_good=1,
    )
    dead.counters.count_block("school-a", "udp", "adult", "school")
    departed = merge([], [dead])  # what the supervisor keeps of it
    assert departed.workers == 0 and departed.worker_queries == {}
    assert (departed.in_flight, departed.tcp_connections, departed.cache_entries, departed.cache_bytes) == (0, 0, 0, 0)
    assert (departed.generation, departed.loaded_at, departed.serving_last_good, departed.list_entries) == (
        0,
        0.0,
        0,
        {},
    )

    live = state(0, answered=5, upstreams=(upstream(queries=5, latency_seconds=0.01),), cache_hits=1, in_flight=1)
    restarted = state(1, answered=0, upstreams=(upstream(),))  # counts from zero again
    summed = merge([live, restarted], [departed])
    assert summed.counters.queries[("school-a", "udp", "forwarded")] == 45
    assert summed.counters.blocked[("school-a", "adult", "school")] == 1
    assert (summed.cache_hits, summed.cache_misses) == (31, 10)
    assert summed.in_flight == 1 and summed.generation == 1
    assert summed.upstreams == (upstream(queries=45, latency_seconds=0.01, up=True),)
    assert summed.worker_queries == {0: 5, 1: 0}  # per worker: since it started
    assert summed.workers == 2

    # A second death folds into the one departed state: the supervisor keeps one, however many died.
    again = merge([], [departed, state(1, answered=7)])
    assert merge([], [again]).counters.queries[("school-a", "udp", "forwarded")] == 47


def test_merge_of_nothing_is_an_empty_state():
    empty = merge([])
    assert empty.workers == 0 and empty.generation == 0 and empty.upstreams == ()
    assert not empty.counters.queries and empty.list_entries == {}


def test_a_state_and_a_report_cross_a_process_connection_as_plain_values():
    one = state(
        1,
        answered=2,
        upstreams=(upstream(queries=2, latency_seconds=0.02, response=histogram(0.02, 0.5)),),
        cache_bytes=512,
        list_entries={"adult": 3, "games": 0},
        schools=("school-a", "school-b"),
        last_query={"school-b": 1_700_000_000.5},
    )
    one.counters.count_block("school-b", "tcp", "games", "school")
    one.counters.waits["stale"].observe(1.5)
    one.counters.dropped["tcp_connection_limit"] += 1
    one.counters.internal_errors += 1
    wire = Report(one, (5353, 5354)).to_wire()
    # Builtins only: nothing of schooldns is unpickled in the supervisor.
    assert b"resolver" not in pickle.dumps(wire)
    json.dumps({**wire, "state": {**wire["state"], "worker_queries": {}}})  # JSON-able apart from int keys
    ours, theirs = multiprocessing.connection.Pipe()
    with ours, theirs:
        ours.send(wire)
        back = Report.from_wire(theirs.recv())
    assert back.ports == (5353, 5354)
    got = back.state
    assert dict(got.counters.queries) == dict(one.counters.queries)
    assert dict(got.counters.blocked) == {("school-b", "games", "school"): 1}
    assert dict(got.counters.dropped) == {"tcp_connection_limit": 1}
    assert got.counters.internal_errors == 1
    assert got.counters.waits == one.counters.waits
    assert dataclasses.replace(got, counters=one.counters) == one
    assert Report.from_wire(Report(one).to_wire()).ports == ()


def test_the_summary_for_the_start_up_log():
    assert state(list_entries={"adult": 3, "games": 2}).summary() == "generation 1, 5 list entries"
    assert state(serving_last_good=1).summary() == "generation 1, 3 list entries, from the last good state"
