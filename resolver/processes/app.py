"""Composition root: one process, or a supervisor of N worker processes; admin API, signals, reload, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import logging
import multiprocessing.connection
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from resolver.control import config, snapshots
from resolver.dataplane import pipeline, server, upstream, workerstate
from resolver.errors import ResolverError
from resolver.processes import sdnotify, spawner, worker

if TYPE_CHECKING:  # imported at run time only once DNS serves (start_admin), or with an `rpz:` section
    from aiohttp import web

    from resolver.operations import rpzfeed, rpzzones

log = logging.getLogger(__name__)


def bind_admin(cfg: config.Config) -> socket.socket | None:
    """The admin API's socket (None: no admin API), bound before DNS serves: a port that is taken
    fails the start in one line, not after DNS has started."""
    if cfg.admin.listen is None:
        return None
    return server.bind_socket(cfg.admin.listen, socket.SOCK_STREAM, False, f"admin.listen in {cfg.file}")


async def start_admin(
    sock: socket.socket | None,
    state: Callable[[], workerstate.WorkerState],
    reload: Callable[[], Awaitable[bool]],
    rpz: Callable[[], Awaitable[rpzzones.Version | None]] | None = None,
) -> web.AppRunner | None:
    """Import the admin API in a thread while DNS is already answering, then serve it on `sock`.

    Its libraries (aiohttp, prometheus_client) took 0.77 s to import of a 1.33 s warm start;
    imported before serving, they delayed the first DNS answer by that much.
    """
    if sock is None:
        return None
    admin = await asyncio.to_thread(importlib.import_module, "resolver.operations.admin")
    # Kept out of the garbage collector's full collections like everything built before serving
    # (Worker.start). A query in flight now that ends in a reference cycle is never collected:
    # at most the few of this moment, once.
    gc.freeze()
    runner: web.AppRunner = await admin.start(sock, admin.Control(state=state, reload=reload, rpz=rpz))
    return runner


async def run_single(cfg: config.Config, ready: Callable[[worker.Worker], object] | None = None) -> None:
    """workers: 1 — everything (DNS, admin, reload) in this process until SIGTERM/SIGINT."""
    cfg = worker.check_listen(cfg)  # before the snapshot, which may take a compile
    admin_sock = bind_admin(cfg)
    try:
        files = snapshots.files_signature(cfg)
        # No local name for the first snapshot: this frame lives until shutdown, and would keep it
        # (and its memory-mapped index) alive after the first list swap.
        dns_worker = worker.Worker(cfg, await asyncio.to_thread(snapshots.start_snapshot, cfg, 1))
        await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    except BaseException:
        if admin_sock is not None:
            admin_sock.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals are handled before the admin API announces itself, the last line of a start.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    signalled = worker.SignalTasks()
    signalled.on(signal.SIGHUP, dns_worker.reload)
    admin_runner = await start_admin(
        admin_sock, dns_worker.state, dns_worker.reload, None if dns_worker.feed is None else dns_worker.rpz_zones
    )
    sdnotify.notify("READY=1")  # systemd's Type=notify: the first snapshot serves, and so does the admin API
    if ready is not None:
        ready(dns_worker)
    watcher = loop.create_task(worker.watch_files(cfg, dns_worker.reload, files))
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    watcher.cancel()
    log.info("shutting down: draining queries in flight (up to %.1fs)", cfg.limits.shutdown_drain_seconds)
    if admin_runner is not None:
        await admin_runner.cleanup()
    await dns_worker.stop()


# ---------------------------------------------------------------------------------------
# Several workers: a supervisor process (admin API, reload, restarts) and N worker processes
# (resolver.processes.worker, forked by resolver.processes.spawner) that each bind the DNS port with SO_REUSEPORT, so
# the kernel spreads queries over cores. The supervisor serves no DNS; the workers serve no admin API.


# A worker that dies is restarted at once. A restart that fails is tried again after
# RESTART_DELAY_SECONDS, then after twice as long each time up to RESTART_DELAY_MAX_SECONDS (a
# worker that cannot start, e.g. after config.yaml was broken, is not forked twice a second).
RESTART_DELAY_SECONDS = 0.5
RESTART_DELAY_MAX_SECONDS = 30.0


class Forker(Protocol):
    """What the supervisor needs from the spawner room (spawner.Spawner; a fake in tests)."""

    def start_worker(
        self, args: worker.SpawnArgs
    ) -> tuple[spawner.WorkerProcess, multiprocessing.connection.Connection]: ...

    def replacement(self) -> Forker: ...

    def close(self) -> None: ...


class WorkerStartError(ResolverError):
    """A worker of `workers: N` did not start when the server did."""


class Supervisor:
    """Starts, watches and stops N worker processes; merges their numbers for the admin API."""

    def __init__(self, cfg: config.Config, forker: Forker):
        self.config = cfg
        self.spawner = forker
        self.processes: list[spawner.WorkerProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.states: dict[int, workerstate.WorkerState] = {}  # the last report of each live worker
        self.listen: tuple[upstream.UpstreamAddress, ...] = cfg.listen  # what the workers serve (run)
        self.stopping = False
        self.restarts = 0  # workers started again after dying
        self.restart_failures = 0
        self._restart_at: dict[int, tuple[float, float]] = {}  # worker index -> (loop time, delay) of its next try
        self.reload_failures = 0  # rejected here, so no worker counts them
        self._departed: tuple[workerstate.WorkerState, ...] = ()  # at most one: the counters of workers that died
        self._stop = asyncio.Event()
        self.feed: rpzfeed.Feed | None = None  # the RPZ feed's zones for GET /v1/rpz (the workers serve DNS)
        self._built: pipeline.Snapshot | None = None  # the snapshot a reload last built here
        self._feed_lock = asyncio.Lock()

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(address.port for address in self.listen)

    def stop(self) -> None:
        """Stop the workers and return from run() (SIGTERM, SIGINT)."""
        self._stop.set()

    def _spawn(self, index: int) -> tuple[spawner.WorkerProcess, multiprocessing.connection.Connection]:
        listen = tuple(str(address) for address in self.listen)
        args = worker.SpawnArgs(self.config.file, listen, index, logging.getLogger().level)
        try:
            return self.spawner.start_worker(args)
        except OSError as exc:
            log.error("the spawner process is gone (%s); starting a new one", exc)
            self.spawner = self.spawner.replacement()
            return self.spawner.start_worker(args)

    async def _wait_ready(
        self,
        index: int,
        conn: multiprocessing.connection.Connection,
        process: spawner.WorkerProcess,
        timeout_seconds: float = 120.0,
    ) -> tuple[int, ...]:
        """The ports a new worker serves on, once it says it serves; its first state is kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        exited = WorkerStartError(f"worker {index} exited while starting (its log says why)")
        while loop.time() < deadline:
            try:
                if await asyncio.to_thread(conn.poll, 0.2):
                    report = workerstate.Report.from_wire(conn.recv())
                    self.states[index] = report.state
                    if report.ports:
                        return report.ports
            except EOFError:  # it closed its end: it has exited, or is exiting
                await asyncio.to_thread(process.wait, 5.0)
                raise exited from None
            if not process.alive():
                raise exited
        raise WorkerStartError(f"worker {index} did not start within {timeout_seconds:.0f}s")

    async def run(self, ready: Callable[[Supervisor], object] | None = None) -> None:
        """Start the workers and the admin API, serve until stop(), then stop the workers.

        A start that fails (an address that cannot be bound, a worker that does not start) stops
        what it started and raises a ResolverError.
        """
        admin_sock: socket.socket | None = None
        admin_runner: web.AppRunner | None = None
        watchers: list[asyncio.Task[None]] = []
        try:
            # Checked here, before any worker builds a snapshot; the workers serve what can be bound.
            self.listen = worker.check_listen(self.config).listen
            admin_sock = bind_admin(self.config)
            files = snapshots.files_signature(self.config)
            # Worker 0 first: with port 0 it picks the ports the others then share.
            for index in range(self.config.workers):
                process, conn = self._spawn(index)
                self.processes.append(process)
                self.conns.append(conn)
                ports = await self._wait_ready(index, conn, process)
                self.listen = tuple(dataclasses.replace(a, port=p) for a, p in zip(self.listen, ports, strict=True))
            log.info("%d workers serving DNS on ports %s; %s", self.config.workers, self.ports, self.state().summary())
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            signalled = worker.SignalTasks()
            signalled.on(signal.SIGHUP, self.reload)
            admin_runner = await start_admin(
                admin_sock, self.state, self.reload, None if self.config.rpz is None else self.rpz_zones
            )
            sdnotify.notify("READY=1")  # every worker serves the first snapshot, and the admin API is up
            if ready is not None:
                ready(self)
            watchers = [
                loop.create_task(self._watch()),
                loop.create_task(worker.watch_files(self.config, self.reload, files)),
            ]
            await self._stop.wait()
            sdnotify.notify("STOPPING=1")
        finally:
            self.stopping = True
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)  # a restarting worker is in self.processes
            if admin_runner is not None:
                await admin_runner.cleanup()
            elif admin_sock is not None:
                admin_sock.close()
            await self._stop_workers()
            self.spawner.close()

    async def _stop_workers(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_drain_seconds + 5
        for process in self.processes:
            if not await asyncio.to_thread(process.wait, max(deadline - time.monotonic(), 0.1)):
                process.send_signal(signal.SIGKILL)
                await asyncio.to_thread(process.wait, 5.0)
            process.close()

    async def _watch(self) -> None:
        """Collect published numbers; restart a worker that died. Never ends before shutdown."""
        loop = asyncio.get_running_loop()
        while True:
            for index, conn in enumerate(self.conns):
                try:
                    while conn.poll():
                        self.states[index] = workerstate.Report.from_wire(conn.recv()).state
                except (EOFError, OSError):
                    pass
                if (
                    not self.stopping
                    and not self.processes[index].alive()
                    and loop.time() >= self._restart_at.get(index, (0.0, 0.0))[0]
                ):
                    await self._restart(index)
            await asyncio.sleep(0.5)

    async def _restart(self, index: int) -> None:
        """Start worker `index` again; when that fails, try again later (see RESTART_DELAY_SECONDS)."""
        if index in self._restart_at:
            log.info("starting worker %d again", index)
        else:
            log.error("worker %d died; restarting it", index)
            self._bury(index)
        self.processes[index].close()
        self.conns[index].close()
        try:
            process, conn = self._spawn(index)
            # Kept at once: shutdown may cancel the wait, and the new worker must be stopped too.
            self.processes[index], self.conns[index] = process, conn
            await self._wait_ready(index, conn, process)
        except Exception as exc:  # OSError, RuntimeError from _wait_ready, ...: never the end of the watch
            self.restart_failures += 1
            previous = self._restart_at.get(index)
            delay = RESTART_DELAY_SECONDS if previous is None else min(previous[1] * 2, RESTART_DELAY_MAX_SECONDS)
            self._restart_at[index] = (asyncio.get_running_loop().time() + delay, delay)
            log.error("worker %d did not start (%s); trying again in %.1fs", index, exc, delay)
        else:
            self.restarts += 1
            self._restart_at.pop(index, None)

    async def reload(self) -> bool:
        """Validate the new files here first, then have every worker install them."""
        try:
            built = await asyncio.to_thread(snapshots.build_serving_snapshot, self.config, 0, reload=True)
        except Exception as exc:
            log.error("reload rejected, workers keep their snapshot:\n%s", exc)
            self.reload_failures += 1
            return False
        if self.config.rpz is not None:
            self._built = built  # what the workers install now: the zones of GET /v1/rpz follow
        for process in self.processes:
            process.send_signal(signal.SIGHUP)
        return True

    async def rpz_zones(self) -> rpzzones.Version | None:
        """The RPZ feed's zones for GET /v1/rpz/{zone}: of the snapshot the last reload built here, or
        built at the first request (reusing the workers' compiled lists). The workers serve them over DNS."""
        if self.config.rpz is None:
            return None
        async with self._feed_lock:
            if self.feed is None:
                from resolver.operations import rpzfeed

                self.feed = rpzfeed.Feed(self.config.rpz, self.config.blocklists_dir, self.config.state_dir)
            if self._built is None:
                self._built = await asyncio.to_thread(snapshots.build_snapshot, self.config, 0)
            if self.feed.version is None or self.feed.version.snapshot is not self._built:
                self.feed.install(await asyncio.to_thread(self.feed.prepare, self._built))
            return self.feed.version

    def state(self) -> workerstate.WorkerState:
        """Every worker's last report, summed, with the counters of workers that died."""
        summed = workerstate.merge(list(self.states.values()), self._departed)
        return dataclasses.replace(
            summed,
            reload_failures=summed.reload_failures + self.reload_failures,
            workers=sum(1 for p in self.processes if p.alive()),
            worker_restarts=self.restarts,
            worker_restart_failures=self.restart_failures,
        )

    def _bury(self, index: int) -> None:
        """Keep a dead worker's last counters in the sums (workerstate.merge says why)."""
        state = self.states.pop(index, None)
        if state is not None:
            self._departed = (workerstate.merge([], [*self._departed, state]),)


def serve(cfg: config.Config, forker: Forker | None = None) -> None:
    """`schooldns serve`: one process, or a supervisor of cfg.workers processes forked by `forker`."""
    if cfg.workers == 1:
        asyncio.run(run_single(cfg))
    else:
        asyncio.run(Supervisor(cfg, forker or spawner.Spawner.fork()).run())
