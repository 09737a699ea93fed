"""Composition root: build a worker from config, serve, reload on SIGHUP, drain on SIGTERM, supervise N workers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from typing import Any

from resolver import admin, cache, config, control, metrics, pipeline, server, upstream

log = logging.getLogger(__name__)

COUNTERS_PUBLISH_SECONDS = 1.0


class Worker:
    """One process's data plane: pipeline, cache, upstream pool and listeners."""

    def __init__(self, cfg: config.Config, snapshot: pipeline.Snapshot, workers: int = 1):
        self.config = cfg
        self.counters = metrics.Counters()
        self.cache = cache.AnswerCache(cfg.cache.max_entries, cfg.cache.stale_seconds)
        self.pool = upstream.UpstreamPool(
            list(cfg.upstreams), cfg.forwarding.timeout_seconds,
            upstream.AnswerLimits(cfg.cache.min_ttl_seconds, cfg.cache.max_ttl_seconds,
                                  cfg.cache.negative_max_ttl_seconds),
            cfg.forwarding.sockets_per_upstream, cfg.forwarding.max_in_flight)
        self.pipeline = pipeline.Pipeline(snapshot, self.cache, self.pool, self.counters)
        self.in_flight = server.InFlight(cfg.limits.max_queries_in_flight, self.counters)
        self.tcp = server.TcpConnections(self.pipeline, self.in_flight, cfg.limits)
        self.workers = workers
        self.reload_failures = 0
        self.list_entries: dict[str, int] = control.entry_counts(snapshot)
        self._udp: list[server.UdpServer] = []
        self._tcp_servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self._reloading: asyncio.Lock | None = None

    async def start(self, sockets: list[tuple[socket.socket, socket.socket]]) -> None:
        # What was built so far (modules, the first snapshot) lives as long as the process: keep it
        # out of the full collections of the garbage collector, whose pauses grow with what they
        # visit. Only here, with no query in flight: a frozen object in a reference cycle that
        # becomes garbage later would never be collected.
        gc.freeze()
        for udp_sock, tcp_sock in sockets:
            udp, tcp = await server.serve_sockets(self.pipeline, self.in_flight, self.config.limits,
                                                  udp_sock, tcp_sock, self.tcp)
            self._udp.append(udp)
            self._tcp_servers.append(tcp)
            self.addresses.append(udp_sock.getsockname()[:2])
        log.info("serving DNS on %s (udp+tcp) with %d upstream(s)",
                 ", ".join(f"{h}:{p}" for h, p in self.addresses), len(self.config.upstreams))

    async def reload(self) -> bool:
        """Build a new snapshot off the event loop and install it; on failure keep the old one."""
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            generation = self.pipeline.snapshot.generation + 1
            try:
                snapshot = await asyncio.to_thread(control.build_snapshot, self.config, generation, True)
            except Exception as exc:  # ConfigError and anything else: the old snapshot keeps serving
                self.reload_failures += 1
                log.error("reload rejected, still serving generation %d:\n%s",
                          self.pipeline.snapshot.generation, exc)
                return False
            self.pipeline.install(snapshot)
            self.list_entries = control.entry_counts(snapshot)
            log.info("installed generation %d", generation)
            return True

    async def stop(self) -> None:
        """Stop accepting, let in-flight queries finish within the drain bound, close everything."""
        for udp in self._udp:
            udp.pause_reading()  # no new queries; the socket stays open to send the last answers
        for tcp_server in self._tcp_servers:
            tcp_server.close()
        await self.in_flight.drain(self.config.limits.shutdown_drain_seconds)
        for udp in self._udp:
            udp.close()
        self.tcp.close_all()
        for tcp_server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tcp_server.wait_closed(), 1.0)
        self.pool.close()

    def state(self) -> dict[str, Any]:
        """Live numbers for metrics and status (no per-client data)."""
        snapshot = self.pipeline.snapshot
        now = time.monotonic()
        return {
            "counters": self.counters,
            "in_flight": len(self.in_flight.tasks),
            "tcp_connections": len(self.tcp.open),
            "cache_entries": len(self.cache),
            "cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
            "cache_evictions": self.cache.evictions, "cache_stale_served": self.cache.stale_served,
            "coalesced": self.pool.coalesced,
            "upstreams": [{"address": str(u.address), "queries": u.queries, "failures": u.failures,
                           "timeouts": u.timeouts, "truncated": u.truncated, "mismatched": u.mismatched,
                           "latency_seconds": u.latency_seconds, "up": 0 if u.is_down(now) else 1}
                          for u in self.pool.upstreams],
            "generation": snapshot.generation, "loaded_at": snapshot.loaded_at,
            "reload_failures": self.reload_failures, "list_entries": self.list_entries,
            "workers": self.workers,
        }


async def watch_files(cfg: config.Config, reload: Any, seen: tuple) -> None:
    """Reload when a policy or list file changes (polling: works on every filesystem, bounded cost).

    `seen` is the signature taken before the running snapshot was built, so a change made
    while it was being built is not missed.
    """
    interval = cfg.reload.watch_interval_seconds
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        current = await asyncio.to_thread(control.files_signature, cfg)
        if current != seen:
            seen = current
            log.info("policy or list files changed; reloading")
            await reload()


def bind_all(cfg: config.Config, reuse_port: bool) -> list[tuple[socket.socket, socket.socket]]:
    return [server.bind_sockets(address, reuse_port) for address in cfg.listen]


async def run_single(cfg: config.Config, ready: Any = None) -> None:
    """workers: 1 — everything (DNS, admin, reload) in this process until SIGTERM/SIGINT."""
    files = control.files_signature(cfg)
    snapshot = await asyncio.to_thread(control.build_snapshot, cfg, 1)
    worker = Worker(cfg, snapshot)
    await worker.start(bind_all(cfg, reuse_port=False))
    admin_runner = await admin.start(cfg, admin.Control(state=worker.state, reload=worker.reload))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(worker.reload()))
    if ready is not None:
        ready(worker)
    watcher = loop.create_task(watch_files(cfg, worker.reload, files))
    await stop.wait()
    watcher.cancel()
    log.info("shutting down: draining queries in flight (up to %.1fs)", cfg.limits.shutdown_drain_seconds)
    if admin_runner is not None:
        await admin_runner.cleanup()
    await worker.stop()


# ---------------------------------------------------------------------------------------
# Several workers: a supervisor process (admin API, reload, restarts) and N spawned workers
# that each bind the DNS port with SO_REUSEPORT, so the kernel spreads queries over cores.


@dataclasses.dataclass(frozen=True, slots=True)
class _WorkerArgs:
    config_file: str
    ports: tuple[int, ...]  # the resolved port of each listen address (0 = choose)
    index: int
    workers: int
    log_level: int


def _worker_main(args: _WorkerArgs, conn: multiprocessing.connection.Connection) -> None:
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s worker{args.index} %(levelname)s %(name)s: %(message)s")
    cfg = config.load_config(args.config_file)
    listen = tuple(dataclasses.replace(a, port=p) for a, p in zip(cfg.listen, args.ports))
    cfg = dataclasses.replace(cfg, listen=listen)
    try:
        asyncio.run(_worker_async(cfg, args, conn))
    except KeyboardInterrupt:
        pass


async def _worker_async(cfg: config.Config, args: _WorkerArgs,
                        conn: multiprocessing.connection.Connection) -> None:
    snapshot = await asyncio.to_thread(control.build_snapshot, cfg, 1)
    worker = Worker(cfg, snapshot, args.workers)
    await worker.start(bind_all(cfg, reuse_port=True))
    conn.send({"ready": [port for _, port in worker.addresses]})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(worker.reload()))
    publisher = loop.create_task(_publish(worker, conn))
    await stop.wait()
    publisher.cancel()
    await worker.stop()
    with contextlib.suppress(OSError):
        conn.send({"state": _wire_state(worker.state()), "final": True})


async def _publish(worker: Worker, conn: multiprocessing.connection.Connection) -> None:
    """Send this worker's numbers to the supervisor every second (it serves /metrics)."""
    while True:
        await asyncio.sleep(COUNTERS_PUBLISH_SECONDS)
        try:
            conn.send({"state": _wire_state(worker.state())})
        except OSError:
            return


def _wire_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "counters": state["counters"].to_dict()}


class Supervisor:
    """Starts, watches and stops N worker processes; merges their numbers for the admin API."""

    def __init__(self, cfg: config.Config):
        self.config = cfg
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.states: dict[int, dict[str, Any]] = {}
        self.ports: tuple[int, ...] = tuple(a.port for a in cfg.listen)
        self.stopping = False
        self.restarts = 0

    def _spawn(self, index: int) -> tuple[Any, multiprocessing.connection.Connection]:
        parent, child = self.context.Pipe()
        args = _WorkerArgs(self.config.file, self.ports, index, self.config.workers,
                           logging.getLogger().level)
        process = self.context.Process(target=_worker_main, args=(args, child), name=f"schooldns-worker{index}")
        process.start()
        child.close()
        return process, parent

    async def _wait_ready(self, index: int, conn: multiprocessing.connection.Connection,
                          process: Any, timeout_seconds: float = 120.0) -> list[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while loop.time() < deadline:
            if await asyncio.to_thread(conn.poll, 0.2):
                message = conn.recv()
                if "ready" in message:
                    return message["ready"]
            if not process.is_alive():
                raise RuntimeError(f"worker {index} exited with code {process.exitcode} while starting")
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
        admin_runner = await admin.start(self.config, admin.Control(state=self.state, reload=self.reload))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        if ready is not None:
            ready(self)
        watchers = [loop.create_task(self._watch()), loop.create_task(watch_files(self.config, self.reload, files))]
        await stop.wait()
        self.stopping = True
        for watcher in watchers:
            watcher.cancel()
        if admin_runner is not None:
            await admin_runner.cleanup()
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_drain_seconds + 5
        for process in self.processes:
            await asyncio.to_thread(process.join, max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                process.kill()

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
                if not process.is_alive() and not self.stopping:
                    log.error("worker %d died (exit code %s); restarting it", index, process.exitcode)
                    self.restarts += 1
                    process, conn = self._spawn(index)
                    try:
                        await self._wait_ready(index, conn, process)
                    except RuntimeError as exc:
                        log.error("%s", exc)
                    self.processes[index], self.conns[index] = process, conn
            await asyncio.sleep(0.5)

    async def reload(self) -> bool:
        """Validate the new files here first, then have every worker install them."""
        try:
            await asyncio.to_thread(control.build_snapshot, self.config, 0)
        except Exception as exc:
            log.error("reload rejected, workers keep their snapshot:\n%s", exc)
            for state in self.states.values():
                state["reload_failures"] = state.get("reload_failures", 0) + 1
            return False
        for process in self.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGHUP)
        return True

    def state(self) -> dict[str, Any]:
        """Every worker's published numbers, summed."""
        merged = metrics.Counters()
        total: dict[str, Any] = {"in_flight": 0, "tcp_connections": 0, "cache_entries": 0, "cache_hits": 0,
                                 "cache_misses": 0, "cache_evictions": 0, "cache_stale_served": 0,
                                 "coalesced": 0, "reload_failures": 0}
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
                "workers": sum(1 for p in self.processes if p.is_alive())}


def serve(cfg: config.Config) -> None:
    """`schooldns serve`: one process, or a supervisor with cfg.workers processes."""
    if cfg.workers == 1:
        asyncio.run(run_single(cfg))
    else:
        asyncio.run(Supervisor(cfg).run())
