"""A task started by a signal handler (a reload on SIGHUP) is held until it ends, then let go."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from resolver.processes import worker
from tests.support.harness import until


async def test_a_signalled_task_is_held_while_it_runs_and_dropped_when_done():
    started = asyncio.Event()
    finish = asyncio.Event()
    runs: list[str] = []

    async def job() -> bool:
        started.set()
        await finish.wait()
        runs.append("done")
        return True

    signalled = worker.SignalTasks()
    signalled.on(signal.SIGUSR1, job)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(started.wait(), 5)
        [task] = signalled.running
        gc.collect()
        assert not task.done()
        finish.set()
        await until(lambda: not signalled.running, 5)
        assert runs == ["done"] and task.result() is True
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
