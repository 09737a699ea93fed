"""server.InFlight: the per-worker bound on cache misses waiting upstream, and the drain at shutdown."""

from __future__ import annotations

import asyncio
import types

from resolver.dataplane import metrics, server


class _Waiting:
    """A cache miss (the pipeline's Pending interface) that holds on to where its answer goes until told to answer."""

    def __init__(self, school: str = "school-a") -> None:
        self.deliver = None
        self.school = types.SimpleNamespace(id=school)

    def deliver_to(self, deliver) -> None:
        self.deliver = deliver


async def test_the_bound_drops_and_counts_and_a_finished_miss_frees_its_place():
    counters = metrics.Counters()
    in_flight = server.InFlight(2, counters)
    sent: list[bytes] = []
    first, second, third = _Waiting(), _Waiting(), _Waiting()
    assert in_flight.start(first, sent.append, "udp_in_flight_limit")
    assert in_flight.start(second, sent.append, "udp_in_flight_limit")
    assert not in_flight.start(third, sent.append, "udp_in_flight_limit")  # full: never started
    assert third.deliver is None and counters.dropped["udp_in_flight_limit"] == 1
    first.deliver(b"answer")
    second.deliver(None)  # no answer to send (dropped), but its place is free
    assert sent == [b"answer"] and in_flight.count == 0
    assert in_flight.start(third, sent.append, "udp_in_flight_limit")


async def test_the_drain_ends_when_the_last_miss_is_answered_or_at_its_bound():
    in_flight = server.InFlight(10, metrics.Counters())
    await asyncio.wait_for(in_flight.drain(60), 1)  # nothing in flight: at once
    sent: list[bytes] = []
    answered, lost = _Waiting(), _Waiting()
    in_flight.start(answered, sent.append, "udp_in_flight_limit")
    asyncio.get_running_loop().call_later(0.05, answered.deliver, b"late answer")
    await asyncio.wait_for(in_flight.drain(60), 2)  # ends with the answer, long before its bound
    assert sent == [b"late answer"] and in_flight.count == 0
    in_flight.start(lost, sent.append, "udp_in_flight_limit")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await in_flight.drain(0.1)  # never answered: the drain gives up at its bound
    assert loop.time() - started >= 0.1 and in_flight.count == 1


async def test_one_school_fills_only_its_own_share():
    counters = metrics.Counters()
    in_flight = server.InFlight(3, counters, per_school=2)
    sent: list[bytes] = []
    flood = [_Waiting("lab") for _ in range(3)]
    assert [in_flight.start(miss, sent.append, "udp_in_flight_limit") for miss in flood] == [True, True, False]
    assert counters.dropped == {"school_in_flight_limit": 1}
    other = _Waiting("school-b")
    assert in_flight.start(other, sent.append, "udp_in_flight_limit")  # the last place: another school's
    assert not in_flight.start(_Waiting("school-c"), sent.append, "udp_in_flight_limit")  # the worker is full
    assert counters.dropped == {"school_in_flight_limit": 1, "udp_in_flight_limit": 1}
    flood[0].deliver(b"answer")
    assert in_flight.by_school == {"lab": 1, "school-b": 1}
    assert in_flight.start(flood[2], sent.append, "udp_in_flight_limit")
    for miss in (flood[1], flood[2], other):
        miss.deliver(None)
    assert in_flight.count == 0 and in_flight.by_school == {}
