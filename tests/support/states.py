"""WorkerState values for tests: every field 0 or empty unless given."""

from __future__ import annotations

from resolver.dataplane import metrics
from resolver.dataplane.workerstate import UpstreamState, WorkerState


def upstream(address: str = "192.0.2.53:53", **values: object) -> UpstreamState:
    fields: dict[str, object] = {
        "queries": 0,
        "failures": 0,
        "timeouts": 0,
        "truncated": 0,
        "mismatched": 0,
        "latency_seconds": 0.0,
        "up": True,
        "failing": False,
        "response": metrics.Histogram(),
    }
    return UpstreamState(address=address, **{**fields, **values})  # type: ignore[arg-type]


def state(
    index: int = 0,
    answered: int = 0,
    upstreams: tuple[UpstreamState, ...] = (),
    **values: object,
) -> WorkerState:
    """Worker `index`'s state: `answered` forwarded queries of school-a, generation 1, the rest 0 unless given."""
    counters = metrics.Counters()
    for _ in range(answered):
        counters.count("school-a", "udp", "forwarded")
    fields: dict[str, object] = {
        "counters": counters,
        "in_flight": 0,
        "tcp_connections": 0,
        "cache_entries": 0,
        "cache_bytes": 0,
        "cache_hits": 0,
        "cache_misses": 0,
        "cache_evictions": 0,
        "repeats_discarded": 0,
        "cache_stale_served": 0,
        "coalesced": 0,
        "upstreams": upstreams,
        "generation": 1,
        "loaded_at": 1_700_000_000.0,
        "reload_failures": 0,
        "list_entries": {"adult": 3},
        "lists_updated_at": 1_699_000_000.0,
        "schools": ("school-a",),
        "last_query": {},
        "serving_last_good": 0,
        "workers": 1,
        "worker_queries": {index: answered},
        "worker_restarts": 0,
        "worker_restart_failures": 0,
    }
    return WorkerState(**{**fields, **values})  # type: ignore[arg-type]
