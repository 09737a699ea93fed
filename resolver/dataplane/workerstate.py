"""The live numbers of a serving process (WorkerState), how several add up, and their form between processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from resolver.dataplane import metrics


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamState:
    """One upstream's numbers: counters of its attempts, its latency and health, all from real exchanges."""

    address: str
    queries: int
    failures: int
    timeouts: int
    truncated: int
    mismatched: int
    latency_seconds: float | None  # moving average of its answers; None: it never answered
    up: bool  # it answered, and is not failing since
    failing: bool  # its latest exchanges failed (upstream.DOWN_AFTER_FAILURES in a row)
    response: metrics.Histogram  # how long its answers took

    def to_wire(self) -> dict[str, Any]:
        return {
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)},
            "response": self.response.to_wire(),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> UpstreamState:
        return cls(**{**data, "response": metrics.Histogram.from_wire(data["response"])})


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerState:
    """What one worker reports, or the sum of several (`merge`): read by /metrics, /status and the start-up log.

    Counters only grow while their process lives; gauges are the values of the moment. Nothing per
    client. Every field is required, so that a new one cannot be left out of `merge`.
    """

    counters: metrics.Counters  # a worker's live counters, read at once; a copy in a merged state
    in_flight: int
    tcp_connections: int
    cache_entries: int
    cache_bytes: int
    cache_hits: int
    cache_misses: int
    cache_evictions: int
    cache_stale_served: int
    repeats_discarded: int  # answers kept for repeats, forgotten when the older generation was dropped
    coalesced: int
    upstreams: tuple[UpstreamState, ...]
    generation: int  # of the installed snapshot (0: none)
    loaded_at: float  # when the installed snapshot was built (time.time())
    reload_failures: int
    list_entries: Mapping[str, int]  # listed names per category
    lists_updated_at: float  # when the installed lists last changed (time.time(); 0: unknown)
    schools: tuple[str, ...]  # the ids of the schools configured in the installed snapshot
    last_query: Mapping[str, float]  # school id -> time.time() of its latest query, to within a second
    serving_last_good: int  # processes serving the last good policies and lists (see snapshots.start_snapshot)
    workers: int  # processes serving DNS
    worker_queries: Mapping[int, int]  # queries answered, by worker index (from 0 when a worker restarts)
    worker_restarts: int
    worker_restart_failures: int

    def summary(self) -> str:
        """What the start-up log says of the installed snapshot."""
        text = f"generation {self.generation}, {sum(self.list_entries.values())} list entries"
        return text + (", from the last good state" if self.serving_last_good else "")

    def failing_upstreams(self) -> tuple[str, ...]:
        """The upstreams' addresses when every one is failing (degraded: misses get SERVFAIL or stale); else ()."""
        if self.upstreams and all(upstream.failing for upstream in self.upstreams):
            return tuple(upstream.address for upstream in self.upstreams)
        return ()

    def to_wire(self) -> dict[str, Any]:
        """Plain values (str, int, float, bool, list, dict) for a worker's reports; `from_wire` reads them."""
        return {
            **{field.name: getattr(self, field.name) for field in dataclasses.fields(self)},
            "counters": self.counters.to_dict(),
            "upstreams": [upstream.to_wire() for upstream in self.upstreams],
            "list_entries": dict(self.list_entries),
            "schools": list(self.schools),
            "last_query": dict(self.last_query),
            "worker_queries": dict(self.worker_queries),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> WorkerState:
        return cls(
            **{
                **data,
                "counters": metrics.Counters.from_dict(data["counters"]),
                "upstreams": tuple(UpstreamState.from_wire(upstream) for upstream in data["upstreams"]),
                "schools": tuple(data["schools"]),
            }
        )


def merge(live: Sequence[WorkerState], departed: Sequence[WorkerState] = ()) -> WorkerState:
    """The states of several workers added up: what /metrics and /status show for them all.

    `departed` are the last states of workers that died: their counters stay in the sums, so that no
    counter goes down when a worker starts again from zero (Prometheus would read a reset, and
    rate() a burst). Gauges, health, the generation, the lists and the per-worker counts come from
    the `live` states only. Merging no live state gives a state of counters alone: what stands in
    for every departed worker. A school's latest query is the latest any worker saw, departed or not.
    """
    every = [*departed, *live]
    counters = metrics.Counters()
    last_query: dict[str, float] = {}
    for state in every:
        counters.merge(state.counters)
        for school, at in state.last_query.items():
            last_query[school] = max(at, last_query.get(school, 0.0))
    newest = max(live, key=lambda state: state.generation, default=None)  # the snapshot to describe
    return WorkerState(
        counters=counters,
        in_flight=sum(state.in_flight for state in live),
        tcp_connections=sum(state.tcp_connections for state in live),
        cache_entries=sum(state.cache_entries for state in live),
        cache_bytes=sum(state.cache_bytes for state in live),
        cache_hits=sum(state.cache_hits for state in every),
        cache_misses=sum(state.cache_misses for state in every),
        cache_evictions=sum(state.cache_evictions for state in every),
        cache_stale_served=sum(state.cache_stale_served for state in every),
        repeats_discarded=sum(state.repeats_discarded for state in every),
        coalesced=sum(state.coalesced for state in every),
        upstreams=_merge_upstreams(live, departed),
        generation=max((state.generation for state in live), default=0),
        loaded_at=max((state.loaded_at for state in live), default=0.0),
        reload_failures=sum(state.reload_failures for state in every),
        list_entries=next((state.list_entries for state in reversed(live) if state.list_entries), {}),
        lists_updated_at=newest.lists_updated_at if newest is not None else 0.0,
        schools=newest.schools if newest is not None else (),
        last_query=last_query,
        serving_last_good=sum(state.serving_last_good for state in live),
        workers=sum(state.workers for state in live),
        worker_queries={index: count for state in live for index, count in state.worker_queries.items()},
        worker_restarts=sum(state.worker_restarts for state in every),
        worker_restart_failures=sum(state.worker_restart_failures for state in every),
    )


def _merge_upstreams(live: Sequence[WorkerState], departed: Sequence[WorkerState]) -> tuple[UpstreamState, ...]:
    """Each upstream once, in the order first seen: counters and answer times summed over every state,
    the slowest latency and the worst health over the live ones (failing when any live worker finds it
    failing, up when one finds it up and none failing)."""
    rows: dict[str, list[UpstreamState]] = {}
    live_rows: dict[str, list[UpstreamState]] = {}
    for state in departed:
        for upstream in state.upstreams:
            rows.setdefault(upstream.address, []).append(upstream)
    for state in live:
        for upstream in state.upstreams:
            rows.setdefault(upstream.address, []).append(upstream)
            live_rows.setdefault(upstream.address, []).append(upstream)
    merged = []
    for address, every in rows.items():
        current = live_rows.get(address, [])
        response = metrics.Histogram()
        for row in every:
            response.add(row.response)
        failing = any(row.failing for row in current)
        merged.append(
            UpstreamState(
                address=address,
                queries=sum(row.queries for row in every),
                failures=sum(row.failures for row in every),
                timeouts=sum(row.timeouts for row in every),
                truncated=sum(row.truncated for row in every),
                mismatched=sum(row.mismatched for row in every),
                latency_seconds=max(
                    (row.latency_seconds for row in current if row.latency_seconds is not None), default=None
                ),
                up=not failing and any(row.up for row in current),
                failing=failing,
                response=response,
            )
        )
    return tuple(merged)


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """What a worker process of `workers: N` sends the supervisor: its state once it serves, with the
    port it bound for each listen address, then its state every second (without ports)."""

    state: WorkerState
    ports: tuple[int, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """Plain values, pickled by multiprocessing.connection: no class of schooldns crosses."""
        return {"state": self.state.to_wire(), "ports": list(self.ports)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Report:
        return cls(WorkerState.from_wire(data["state"]), tuple(data["ports"]))
