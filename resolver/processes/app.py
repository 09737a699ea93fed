"""Composition root: one process, or a supervisor of N worker processes; admin API, signals, reload, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import gc
import importlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Protocol

from resolver.control import config, snapshots
from resolver.dataplane import pipeline, server, upstream, workerstate
from resolver.errors import ResolverError
from resolver.filtering import policyfile
from resolver.operations import rollups, shedding, tlscert
from resolver.processes import heap, sdnotify, worker

if TYPE_CHECKING:  # imported at run time once DNS serves (start_admin), with sync/publish/rpz, or `workers: N`
    import multiprocessing.connection

    from aiohttp import web

    from resolver.control import bundle, sync, syncstate
    from resolver.operations import rpzfeed, rpzzones
    from resolver.processes import spawner

log = logging.getLogger(__name__)

STATE_TICK_SECONDS = 1.0  # how often one process reads its own state (schools' latest queries, outages)


class UpstreamOutage:
    """Logs one warning when every upstream starts failing and one when they answer again, not one per query."""

    def __init__(self) -> None:
        self.failing: tuple[str, ...] = ()

    def observe(self, state: workerstate.WorkerState) -> None:
        failing = state.failing_upstreams()
        if failing and not self.failing:
            log.warning(
                "every upstream is failing (%s): cache misses get SERVFAIL or stale answers; /readyz says degraded",
                ", ".join(failing),
            )
        elif self.failing and not failing:
            log.warning("upstreams answer again after an outage of every upstream (%s)", ", ".join(self.failing))
        self.failing = failing


async def watch_state(state: Callable[[], workerstate.WorkerState], interval_seconds: float) -> None:
    """Read the state every interval (LastQueries is updated as it is read) and log outages. Never ends."""
    outage = UpstreamOutage()
    while True:
        await asyncio.sleep(interval_seconds)
        outage.observe(state())


def bind_admin(cfg: config.Config) -> socket.socket | None:
    """The admin API's socket (None: no admin API), bound before DNS serves: a port that is taken
    fails the start in one line, not after DNS has started."""
    if cfg.admin.listen is None:
        return None
    return server.bind_socket(cfg.admin.listen, socket.SOCK_STREAM, False, f"admin.listen in {cfg.file}")


@dataclasses.dataclass(frozen=True, slots=True)
class BlockpageSockets:
    """The block page's bound sockets: plain HTTP, and HTTPS with the certificate of `blockpage.tls`."""

    http: tuple[socket.socket, ...]
    https: tuple[socket.socket, ...]
    certificate: tlscert.Certificate | None

    def close(self) -> None:
        for sock in (*self.http, *self.https):
            sock.close()


def bind_blockpage(cfg: config.Config) -> BlockpageSockets | None:
    """The block page's sockets (None: no `blockpage:`), bound and its certificate loaded before DNS
    serves: an address that is taken or a certificate that does not load fails the start in one line."""
    page = cfg.blockpage
    if page is None:
        return None
    certificate = tlscert.Certificate(page.tls, f"blockpage.tls in {cfg.file}") if page.tls is not None else None
    bound: list[socket.socket] = []
    try:
        for address in page.listen:
            bound.append(server.bind_socket(address, socket.SOCK_STREAM, False, f"blockpage.listen in {cfg.file}"))
        for address in page.tls.listen if page.tls is not None else ():
            bound.append(server.bind_socket(address, socket.SOCK_STREAM, False, f"blockpage.tls.listen in {cfg.file}"))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return BlockpageSockets(tuple(bound[: len(page.listen)]), tuple(bound[len(page.listen) :]), certificate)


async def start_blockpage(
    sockets: BlockpageSockets | None,
    cfg: config.Config,
    snapshot: Callable[[], Awaitable[pipeline.Snapshot]],
    sheds: shedding.Sheds | None = None,  # the process's, shared with its admin API
) -> tuple[web.AppRunner, asyncio.Task[None] | None] | None:
    """Serve the block page on its sockets (imported in a thread, like the admin API, once DNS answers)."""
    if sockets is None:
        return None
    blockpage = await asyncio.to_thread(importlib.import_module, "resolver.operations.blockpage")
    started: tuple[web.AppRunner, asyncio.Task[None] | None] = await blockpage.start(
        sockets.http, sockets.https, sockets.certificate, cfg, snapshot, sheds
    )
    return started


async def stop_blockpage(started: tuple[web.AppRunner, asyncio.Task[None] | None] | None) -> None:
    if started is None:
        return
    runner, watcher = started
    if watcher is not None:
        watcher.cancel()
    await runner.cleanup()


async def start_admin(
    sock: socket.socket | None,
    cfg: config.Config,
    state: Callable[[], workerstate.WorkerState],
    reload: Callable[[], Awaitable[bool]],
    snapshot: Callable[[], Awaitable[pipeline.Snapshot]],
    syncing: syncstate.Syncing | None = None,
    rpz: Callable[[], Awaitable[rpzzones.Version | None]] | None = None,
    sheds: shedding.Sheds | None = None,  # the process's, shared with its block page
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
    control = admin.Control(
        state=state,
        reload=reload,
        config=cfg,
        snapshot=snapshot,
        sync=syncing,
        rpz=rpz,
        sheds=sheds or shedding.Sheds(),
    )
    runner: web.AppRunner = await admin.start(sock, control)
    return runner


class Distribution:
    """How a serving process's lists and policies change besides SIGHUP: an instance with `sync:` takes
    them from the hub (resolver.control.sync); otherwise its files are watched, and a hub with
    `publish:` publishes them after every reload that installed them (resolver.control.bundle).
    """

    def __init__(
        self,
        cfg: config.Config,
        reload: Callable[[], Coroutine[object, object, bool]],
        served_entries: Callable[[], Mapping[str, int]],
    ):
        self.config = cfg
        self.syncer: sync.Syncer | None = None  # the admin API's `Syncing`
        self.publisher: bundle.Publisher | None = None
        self.reload = reload  # what SIGHUP and the admin API call
        self._process_reload = reload
        if cfg.sync is not None:
            from resolver.control import sync

            self.syncer = sync.Syncer(cfg, reload, served_entries)
        elif cfg.publish is not None:
            from resolver.control import bundle

            self.publisher = bundle.Publisher(cfg)
            self.reload = self._reload_and_publish

    @staticmethod
    async def before_serving(cfg: config.Config) -> None:
        """An instance with `sync:` and no verified version on disk tries the hub once (bounded) before serving.

        The TUF libraries are imported here (0.1-0.2 s), before DNS serves: imported once it
        serves, they would hold the event loop, and every query, as long. Before that, what a policy
        write killed midway left behind goes.
        """
        from resolver.operations import policyedit

        for stale in await asyncio.to_thread(policyedit.remove_stale_temporaries, cfg):
            log.info("removed %s, left by a policy write that was stopped midway", stale)
        if cfg.sync is not None:
            from resolver.control import sync

            await sync.first_sync(cfg)
        elif cfg.publish is not None:
            importlib.import_module("resolver.control.bundle")

    def start(self, seen: Callable[[], tuple[object, ...]]) -> list[asyncio.Task[None]]:
        """The tasks that keep the lists and policies current (cancel them at shutdown); `seen()`: the
        signature of the files the last reload read (see worker.watch_files)."""
        loop = asyncio.get_running_loop()
        if self.syncer is not None:
            return [loop.create_task(self.syncer.run())]  # the local files are not served: not watched
        tasks = [loop.create_task(worker.watch_files(self.config, self.reload, seen))]
        if self.publisher is not None:
            tasks.append(loop.create_task(self.publisher.run()))
        return tasks

    async def _reload_and_publish(self) -> bool:
        installed = await self._process_reload()
        if installed and self.publisher is not None:
            self.publisher.request()  # unchanged files publish nothing
        return installed


def recorder(cfg: config.Config, state: Callable[[], workerstate.WorkerState]) -> rollups.Recorder:
    """The daily rollups' writer of the serving process (docs/operations.md, "Daily rollups").

    Its days are in province.yaml's time zone, read from that file alone: a supervisor that
    built a whole snapshot for it would keep 2 MB more (measured with the shipped policies).
    """

    async def zone() -> datetime.tzinfo:
        return await asyncio.to_thread(policyfile.load_timezone, cfg.policies_dir)

    return rollups.Recorder(
        rollups.RollupStore(cfg.state_dir), state, zone, cfg.rollups.interval_seconds, cfg.rollups.retention_days
    )


async def run_single(cfg: config.Config, ready: Callable[[worker.Worker], object] | None = None) -> None:
    """workers: 1 — everything (DNS, admin, reload) in this process until SIGTERM/SIGINT."""
    cfg = worker.check_listen(cfg)  # before the snapshot, which may take a compile
    admin_sock = bind_admin(cfg)
    try:
        blockpage_sockets = bind_blockpage(cfg)
    except BaseException:
        if admin_sock is not None:
            admin_sock.close()
        raise
    try:
        await Distribution.before_serving(cfg)
        files = snapshots.files_signature(cfg)
        # No local name for the first snapshot: this frame lives until shutdown, and would keep it
        # (and its memory-mapped index) alive after the first list swap.
        dns_worker = worker.Worker(cfg, await asyncio.to_thread(snapshots.start_snapshot, cfg, 1))
        dns_worker.files = files
        await dns_worker.start(worker.bind_all(cfg, reuse_port=False))
    except BaseException:
        if admin_sock is not None:
            admin_sock.close()
        if blockpage_sockets is not None:
            blockpage_sockets.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signals are handled before the admin API announces itself, the last line of a start.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    distribution = Distribution(cfg, dns_worker.reload, lambda: dns_worker.pipeline.snapshot.entry_counts)
    signalled = worker.SignalTasks()
    signalled.on(signal.SIGHUP, distribution.reload)

    async def installed() -> pipeline.Snapshot:
        return dns_worker.pipeline.snapshot

    sheds = shedding.Sheds()
    admin_runner = await start_admin(
        admin_sock,
        cfg,
        dns_worker.state,
        distribution.reload,
        installed,
        distribution.syncer,
        None if dns_worker.feed is None else dns_worker.rpz_zones,
        sheds,
    )
    blockpage = await start_blockpage(blockpage_sockets, cfg, installed, sheds)
    heap.trim()  # what the imports and the first snapshot's build freed
    # systemd's Type=notify: the first snapshot serves, and so do the admin API and the block page
    sdnotify.notify("READY=1")
    if ready is not None:
        ready(dns_worker)
    daily = recorder(cfg, dns_worker.state)
    tasks = [
        *distribution.start(lambda: dns_worker.files),
        loop.create_task(watch_state(dns_worker.state, STATE_TICK_SECONDS)),
        loop.create_task(daily.run()),
    ]
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    log.info("shutting down: draining queries in flight (up to %.1fs)", cfg.limits.shutdown_drain_seconds)
    await stop_blockpage(blockpage)
    if admin_runner is not None:
        await admin_runner.cleanup()
    await dns_worker.stop()
    await daily.flush()  # a clean stop loses none of the day's numbers


# ---------------------------------------------------------------------------------------
# Several workers: a supervisor process (admin API, reload, restarts) and N worker processes
# (resolver.processes.worker, forked by resolver.processes.spawner) that each bind the DNS port with SO_REUSEPORT, so
# the kernel spreads queries over cores. The supervisor serves no DNS; the workers serve no admin API.


# A worker that dies is restarted at once. A restart that fails is tried again after
# RESTART_DELAY_SECONDS, then after twice as long each time up to RESTART_DELAY_MAX_SECONDS (a
# worker that cannot start, e.g. after config.yaml was broken, is not forked twice a second).
RESTART_DELAY_SECONDS = 0.5
RESTART_DELAY_MAX_SECONDS = 30.0
# A reload returns once every live worker reports the new generation, or after this long (a worker
# reuses the index the supervisor compiled, so it only loads the files again: well under a second).
RELOAD_WAIT_SECONDS = 30.0


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
        self.checked = cfg  # check_listen's: the DoT and DoH addresses with their ports resolved (run)
        self.stopping = False
        self.restarts = 0  # workers started again after dying
        self.restart_failures = 0
        self._restart_at: dict[int, tuple[float, float]] = {}  # worker index -> (loop time, delay) of its next try
        self.reload_failures = 0  # rejected here, so no worker counts them
        self._departed: tuple[workerstate.WorkerState, ...] = ()  # at most one: the counters of workers that died
        self._stop = asyncio.Event()
        self._starting: set[int] = set()  # workers whose first report _wait_ready reads (in a thread)
        self._reloading = asyncio.Lock()  # one reload at a time, so a reload waits for its own generation
        self._snapshotting = asyncio.Lock()
        # The files' signature and the snapshot built from them here: what explain and the schools list read.
        self._snapshot: tuple[tuple[object, ...], pipeline.Snapshot] | None = None
        self.files: tuple[object, ...] = ()  # the files' signature the last reload read (see worker.watch_files)
        self.distribution: Distribution | None = None  # its syncer or publisher, once run() serves
        self.feed: rpzfeed.Feed | None = None  # the RPZ feed's zones for GET /v1/rpz (the workers serve DNS)
        self._feed_lock = asyncio.Lock()

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(address.port for address in self.listen)

    def stop(self) -> None:
        """Stop the workers and return from run() (SIGTERM, SIGINT)."""
        self._stop.set()

    def _spawn(self, index: int) -> tuple[spawner.WorkerProcess, multiprocessing.connection.Connection]:
        listen = tuple(str(address) for address in self.listen)
        dot, doh = ((str(a) for a in c.listen) if c is not None else () for c in (self.checked.dot, self.checked.doh))
        args = worker.SpawnArgs(self.config.file, listen, index, logging.getLogger().level, tuple(dot), tuple(doh))
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
        self._starting.add(index)
        try:
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
        finally:
            self._starting.discard(index)

    async def run(self, ready: Callable[[Supervisor], object] | None = None) -> None:
        """Start the workers and the admin API, serve until stop(), then stop the workers.

        A start that fails (an address that cannot be bound, a worker that does not start) stops
        what it started and raises a ResolverError.
        """
        admin_sock: socket.socket | None = None
        admin_runner: web.AppRunner | None = None
        blockpage_sockets: BlockpageSockets | None = None
        blockpage = None
        watchers: list[asyncio.Task[None]] = []
        daily: rollups.Recorder | None = None
        try:
            # Checked here, before any worker builds a snapshot; the workers serve what can be bound.
            self.checked = worker.check_listen(self.config)
            self.listen = self.checked.listen
            admin_sock = bind_admin(self.config)
            blockpage_sockets = bind_blockpage(self.config)
            await Distribution.before_serving(self.config)
            self.files = snapshots.files_signature(self.config)
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
            self.distribution = Distribution(self.config, self.reload, lambda: self.state().list_entries)
            signalled = worker.SignalTasks()
            signalled.on(signal.SIGHUP, self.distribution.reload)
            sheds = shedding.Sheds()
            admin_runner = await start_admin(
                admin_sock,
                self.config,
                self.state,
                self.distribution.reload,
                self.snapshot,
                self.distribution.syncer,
                None if self.config.rpz is None else self.rpz_zones,
                sheds,
            )
            blockpage = await start_blockpage(blockpage_sockets, self.config, self.snapshot, sheds)
            heap.trim()
            sdnotify.notify("READY=1")  # every worker serves the first snapshot; the admin API and block page are up
            if ready is not None:
                ready(self)
            daily = recorder(self.config, self.state)
            watchers = [
                loop.create_task(self._watch()),
                *self.distribution.start(lambda: self.files),
                # The workers' reports come every second (worker.COUNTERS_PUBLISH_SECONDS).
                loop.create_task(watch_state(self.state, worker.COUNTERS_PUBLISH_SECONDS)),
                loop.create_task(daily.run()),
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
            if blockpage is not None:
                await stop_blockpage(blockpage)
            elif blockpage_sockets is not None:
                blockpage_sockets.close()
            await self._stop_workers()
            self.spawner.close()
            if daily is not None:
                self._collect()  # each worker's last report, sent as it stopped
                await daily.flush()

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
            self._collect()
            for index in range(len(self.processes)):
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

    def _collect(self) -> None:
        """Read the reports the workers sent (those starting are read by _wait_ready)."""
        for index, conn in enumerate(self.conns):
            if index in self._starting:
                continue
            try:
                while conn.poll():
                    self.states[index] = workerstate.Report.from_wire(conn.recv()).state
            except (EOFError, OSError):
                pass

    async def reload(self) -> bool:
        """Validate the new files here first, then have every worker install them.

        Returns once every live worker reports the new generation (a worker reports right after a
        reload), so that what the admin API says next is what the workers serve.
        """
        async with self._reloading:
            files = self.files = await asyncio.to_thread(snapshots.files_signature, self.config)
            try:
                snapshot = await asyncio.to_thread(snapshots.build_serving_snapshot, self.config, 0, reload=True)
            except Exception as exc:
                log.error("reload rejected, workers keep their snapshot:\n%s", exc)
                self.reload_failures += 1
                return False
            self._snapshot = (files, snapshot)
            heap.trim()  # the snapshot it replaces, and its build
            self._collect()
            before = {
                index: (self.processes[index], state)
                for index, state in self.states.items()
                if index not in self._starting and self.processes[index].alive()
            }
            for process in self.processes:
                process.send_signal(signal.SIGHUP)
            await self._until_reloaded(before)
            return True

    async def _until_reloaded(self, before: dict[int, tuple[spawner.WorkerProcess, workerstate.WorkerState]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELOAD_WAIT_SECONDS
        while True:
            self._collect()
            waiting = [
                index
                for index, (process, old) in before.items()
                if self.processes[index] is process  # not restarted since (a new worker loads the new files)
                and process.alive()
                and self.states.get(index, old).generation <= old.generation
                and self.states.get(index, old).reload_failures <= old.reload_failures
            ]
            if not waiting:
                return
            if loop.time() >= deadline:
                log.warning(
                    "worker(s) %s did not report the new generation within %.0fs",
                    ", ".join(map(str, waiting)),
                    RELOAD_WAIT_SECONDS,
                )
                return
            await asyncio.sleep(0.02)

    async def snapshot(self) -> pipeline.Snapshot:
        """What the workers serve, for the admin API (explain, the schools): the supervisor serves no DNS,
        so it builds its own, off the event loop, from the compiled index in state_dir; again only when
        the files change. While the files do not build, the last one that did stands in."""
        async with self._snapshotting:
            files = await asyncio.to_thread(snapshots.files_signature, self.config)
            if self._snapshot is None or self._snapshot[0] != files:
                try:
                    built = await asyncio.to_thread(snapshots.build_snapshot, self.config, 0, snapshots.CompileIn.CHILD)
                except ResolverError:
                    if self._snapshot is None:
                        raise
                    built = self._snapshot[1]
                self._snapshot = (files, built)
                heap.trim()
            return dataclasses.replace(self._snapshot[1], generation=self.state().generation)

    async def rpz_zones(self) -> rpzzones.Version | None:
        """The RPZ feed's zones for GET /v1/rpz/{zone}: of the snapshot the admin API reads (`snapshot`),
        reusing the workers' compiled lists. The workers serve them over DNS."""
        if self.config.rpz is None:
            return None
        async with self._feed_lock:
            if self.feed is None:
                from resolver.operations import rpzfeed

                self.feed = rpzfeed.Feed(self.config.rpz, self.config.blocklists_dir, self.config.state_dir)
            built = await self.snapshot()
            if self.feed.version is None or self.feed.version.snapshot is not built:
                self.feed.install(await asyncio.to_thread(self.feed.prepare, built))
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
        return
    if forker is None:
        from resolver.processes import spawner

        forker = spawner.Spawner.fork()
    asyncio.run(Supervisor(cfg, forker).run())
