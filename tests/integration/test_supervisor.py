"""The supervisor of `workers: N` in process: a worker that cannot be restarted is tried again until it starts."""

from __future__ import annotations

import asyncio
import os
import signal

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from resolver.control import config
from resolver.dataplane import workerstate
from resolver.operations import exposition
from resolver.processes import app, spawner
from tests.support import harness
from tests.support.fake_upstream import FakeUpstream


class BreakableForker:
    """An app.Forker around a real spawner: while `broken`, no worker and no new spawner can be
    started (as when the spawner died and no process can be made)."""

    def __init__(self) -> None:
        self.real = spawner.Spawner.start_fresh()
        self.broken = False

    def start_worker(self, args):
        if self.broken:
            raise ConnectionError(f"the spawner did not start worker {args.index} (test)")
        return self.real.start_worker(args)

    def replacement(self):
        if self.broken:
            raise OSError("no spawner could be started (test)")
        return self

    def close(self) -> None:
        self.real.close()


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10")
        yield up


async def test_a_worker_that_cannot_be_restarted_is_tried_again_until_it_starts(tmp_path, upstream, caplog):
    cfg = config.load_config(harness.write_site(tmp_path, [upstream.address], "workers: 2\n"))
    forker = BreakableForker()
    supervisor = app.Supervisor(cfg, forker)
    ready = asyncio.Event()
    running = asyncio.create_task(supervisor.run(ready=lambda _: ready.set()))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        forker.broken = True
        os.kill(supervisor.processes[1].pid, signal.SIGKILL)
        # Each failure is logged and counted, and the watch goes on: it tries again, later each time.
        await harness.until(lambda: supervisor.restart_failures >= 2, 10)
        assert "worker 1 did not start (no spawner could be started (test)); trying again in 0.5s" in caplog.text
        assert "trying again in 1.0s" in caplog.text
        state = supervisor.state()
        assert state.workers == 1 and state.worker_restarts == 0
        query = dns.message.make_query("www.example.com", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=supervisor.ports[0], timeout=3)
        assert answer.rcode() == dns.rcode.NOERROR  # the other worker serves meanwhile
        forker.broken = False
        await harness.until(lambda: supervisor.restarts == 1, 20)  # started, and reported ready
        state = supervisor.state()
        assert state.workers == 2 and state.worker_restart_failures >= 2
        text = exposition.render(supervisor.state).decode()
        assert "schooldns_worker_restarts_total 1.0" in text
        assert f"schooldns_worker_restart_failures_total {float(state.worker_restart_failures)}" in text
    finally:
        supervisor.stop()
        await asyncio.wait_for(running, 30)
    assert all(not process.alive() for process in supervisor.processes)


def _answered(state: workerstate.WorkerState) -> int:
    """Queries counted in a reported or summed state, whatever their school and result."""
    return sum(state.counters.queries.values())


async def test_a_restarted_worker_does_not_take_its_counts_out_of_the_sums(tmp_path, upstream):
    # /metrics counters are sums over the workers: one that dies and starts from zero must not make
    # them go down (Prometheus would read a counter reset, and rate() would show a burst).
    cfg = config.load_config(harness.write_site(tmp_path, [upstream.address], "workers: 2\n"))
    supervisor = app.Supervisor(cfg, BreakableForker())
    ready = asyncio.Event()
    running = asyncio.create_task(supervisor.run(ready=lambda _: ready.set()))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        for _ in range(40):  # from as many source ports: SO_REUSEPORT spreads them over both workers
            query = dns.message.make_query("www.example.com", "A")
            await dns.asyncquery.udp(query, "127.0.0.1", port=supervisor.ports[0], timeout=3)
        await harness.until(
            lambda: (
                all(i in supervisor.states and _answered(supervisor.states[i]) > 0 for i in (0, 1))
                and _answered(supervisor.state()) == 40
            ),
            10,
        )
        per_worker = supervisor.state().worker_queries
        assert sorted(per_worker) == [0, 1] and sum(per_worker.values()) == 40
        text = exposition.render(supervisor.state).decode()
        for index, answered in per_worker.items():  # how the kernel spread the queries
            assert f'schooldns_worker_queries_total{{worker="{index}"}} {float(answered)}' in text
        hits_before = supervisor.state().cache_hits
        dead = supervisor.states[1]
        os.kill(supervisor.processes[1].pid, signal.SIGKILL)
        await harness.until(lambda: supervisor.restarts == 1, 30)
        # The new worker has published its own numbers (from zero).
        await harness.until(lambda: supervisor.states.get(1) not in (None, dead), 5)
        assert _answered(supervisor.states[1]) == 0
        state = supervisor.state()
        assert _answered(state) == 40 and state.cache_hits == hits_before
        assert state.worker_queries == {0: per_worker[0], 1: 0}  # the new worker 1 counts from 0
        assert state.workers == 2 and state.in_flight == 0
        text = exposition.render(supervisor.state).decode()
        assert "schooldns_queries_total{" in text
    finally:
        supervisor.stop()
        await asyncio.wait_for(running, 30)
