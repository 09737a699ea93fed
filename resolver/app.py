"""Composition root: one process, or a supervisor of N worker processes; admin API, signals, reload, drain."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import multiprocessing.connection
import signal
import time
from typing import Any

from resolver import config, control, metrics, spawner, worker

log = logging.getLogger(__name__)


async def start_admin(cfg: config.Config, state: Any, reload: Any) -> Any:
    """Import the admin API in a thread while DNS is already answering, then start it.

    Its libraries (aiohttp, prometheus_client) took 0.77 s to import of a 1.33 s warm start
    (2026-12-04); imported before serving, they delayed the first DNS answer by that much.
    """
    admin = await asyncio.to_thread(importlib.import_module, "resolver.admin")
    # Kept out of the garbage collector's full collections like everything built before serving
    # (Worker.start). A query in flight now that ends in a reference cycle is never collected:
    # at most the few of this moment, once.
    gc.freeze()
    return await admin.start(cfg, admin.Control(state=state, reload=reload))


async def run_single(cfg: config.Config, ready: Any = None) -> None:
    """workers: 1 — everything (DNS, admin, reload) in this process until SIGTERM/SIGINT."""
    files = control.files_signature(cfg)
    # No local name for the first snapshot: this frame lives until shutdown, and would keep it
    # (and its memory-mapped index) alive after the first list swap.
    dns_worker = worker.Worker(cfg, await asyncio.to_thread(control.start_snapshot, cfg, 1))
    await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals are handled before the admin API announces itself, the last line of a start.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(dns_worker.reload()))
    admin_runner = await start_admin(cfg, dns_worker.state, dns_worker.reload)
    if ready is not None:
        ready(dns_worker)
    watcher = loop.create_task(worker.watch_files(cfg, dns_worker.reload, files))
    await stop.wait()
    watcher.cancel()
    log.info("shutting down: draining queries in flight (up to %.1fs)", cfg.limits.shutdown_drain_seconds)
    if admin_runner is not None:
        await admin_runner.cleanup()
    await dns_worker.stop()


# ---------------------------------------------------------------------------------------
# Several workers: a supervisor process (admin API, reload, restarts) and N worker processes
# (resolver.worker, forked by resolver.spawner) that each bind the DNS port with SO_REUSEPORT, so
# the kernel spreads queries over cores. The supervisor serves no DNS; the workers serve no admin API.


class Supervisor:
    """Starts, watches and stops N worker processes; merges their numbers for the admin API."""

    def __init__(self, cfg: config.Config, forker: spawner.Spawner):
        self.config = cfg
        self.spawner = forker
        self.processes: list[spawner.WorkerProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.states: dict[int, dict[str, Any]] = {}
        self.ports: tuple[int, ...] = tuple(a.port for a in cfg.listen)
        self.stopping = False
        self.restarts = 0
        self.reload_failures = 0  # rejected here, so no worker counts them

    def _spawn(self, index: int) -> tuple[spawner.WorkerProcess, multiprocessing.connection.Connection]:
        args = worker.SpawnArgs(self.config.file, self.ports, index, self.config.workers, logging.getLogger().level)
        try:
            return self.spawner.start_worker(args)
        except OSError as exc:
            log.error("the spawner process is gone (%s); starting a new one", exc)
            self.spawner.close()
            self.spawner = spawner.Spawner.start_fresh()
            return self.spawner.start_worker(args)

    async def _wait_ready(self, index: int, conn: multiprocessing.connection.Connection,
                          process: spawner.WorkerProcess, timeout_seconds: float = 120.0) -> list[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while loop.time() < deadline:
            if await asyncio.to_thread(conn.poll, 0.2):
                message = conn.recv()
                if "ready" in message:
                    return message["ready"]
            if not process.alive():
                raise RuntimeError(f"worker {index} exited while starting")
        raise RuntimeError(f"worker {index} did not start within {timeout_seconds:.0f}s")

    async def run(self, ready: Any = None) -> None:
        files = control.files_signature(self.config)
        # Worker 0 first: with port 0 it picks the ports the others then share.
        for index in range(self.config.workers):
            process, conn = self._spawn(index)
            ports = await self._wait_ready(index, conn, process)
            self.ports = tuple(ports)
            self.processes.append(process)
            self.conns.append(conn)
        log.info("%d workers serving DNS on ports %s", self.config.workers, self.ports)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        admin_runner = await start_admin(self.config, self.state, self.reload)
        if ready is not None:
            ready(self)
        watchers = [loop.create_task(self._watch()),
                    loop.create_task(worker.watch_files(self.config, self.reload, files))]
        await stop.wait()
        self.stopping = True
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)  # a restarting worker is in self.processes
        if admin_runner is not None:
            await admin_runner.cleanup()
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_drain_seconds + 5
        for process in self.processes:
            if not await asyncio.to_thread(process.wait, max(deadline - time.monotonic(), 0.1)):
                process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(process.wait, 5.0)
            process.close()
        self.spawner.close()

    async def _watch(self) -> None:
        """Collect published numbers; restart a worker that died."""
        while True:
            for index, conn in enumerate(self.conns):
                try:
                    while conn.poll():
                        message = conn.recv()
                        if "state" in message:
                            self.states[index] = message["state"]
                except (EOFError, OSError):
                    pass
                process = self.processes[index]
                if not process.alive() and not self.stopping:
                    log.error("worker %d died; restarting it", index)
                    self.restarts += 1
                    process.close()
                    conn.close()
                    process, conn = self._spawn(index)
                    try:
                        await self._wait_ready(index, conn, process)
                    except RuntimeError as exc:
                        log.error("%s", exc)
                    finally:  # also when shutdown cancels the wait: the new worker must be stopped too
                        self.processes[index], self.conns[index] = process, conn
            await asyncio.sleep(0.5)

    async def reload(self) -> bool:
        """Validate the new files here first, then have every worker install them."""
        try:
            await asyncio.to_thread(control.build_serving_snapshot, self.config, 0, reload=True)
        except Exception as exc:
            log.error("reload rejected, workers keep their snapshot:\n%s", exc)
            self.reload_failures += 1
            return False
        for process in self.processes:
            process.send_signal(signal.SIGHUP)
        return True

    def state(self) -> dict[str, Any]:
        """Every worker's published numbers, summed."""
        merged = metrics.Counters()
        total: dict[str, Any] = {"in_flight": 0, "tcp_connections": 0, "cache_entries": 0, "cache_bytes": 0, "cache_hits": 0,
                                 "cache_misses": 0, "cache_evictions": 0, "cache_stale_served": 0,
                                 "coalesced": 0, "reload_failures": self.reload_failures, "serving_last_good": 0}
        upstreams: dict[str, dict[str, Any]] = {}
        generation, loaded_at, entries = 0, 0.0, {}
        for state in self.states.values():
            merged.merge(metrics.Counters.from_dict(state["counters"]))
            for key in total:
                total[key] += state[key]
            for row in state["upstreams"]:
                into = upstreams.setdefault(row["address"], dict.fromkeys(row, 0) | {"address": row["address"], "up": 1})
                for key in ("queries", "failures", "timeouts", "truncated", "mismatched"):
                    into[key] += row[key]
                into["latency_seconds"] = max(into["latency_seconds"], row["latency_seconds"])
                into["up"] = min(into["up"], row["up"])
            generation = max(generation, state["generation"])
            loaded_at = max(loaded_at, state["loaded_at"])
            entries = state["list_entries"]
        return {**total, "counters": merged, "upstreams": list(upstreams.values()),
                "generation": generation, "loaded_at": loaded_at, "list_entries": entries,
                "workers": sum(1 for p in self.processes if p.alive())}


def serve(cfg: config.Config, forker: spawner.Spawner | None = None) -> None:
    """`schooldns serve`: one process, or a supervisor of cfg.workers processes forked by `forker`."""
    if cfg.workers == 1:
        asyncio.run(run_single(cfg))
    else:
        asyncio.run(Supervisor(cfg, forker or spawner.Spawner.fork()).run())
