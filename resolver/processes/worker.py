"""One worker process's data plane: pipeline, cache, upstreams and listeners; the spawn target for `workers: N`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import resolver
from resolver.control import config, snapshots
from resolver.dataplane import cache, frontends, metrics, pipeline, server, tls, upstream, upstreamtls, workerstate
from resolver.errors import ListenError, ResolverError
from resolver.filtering import policy
from resolver.processes import heap

if TYPE_CHECKING:
    import multiprocessing.connection  # at run time by spawned_main: a process of `workers: 1` goes without

    from resolver.operations import rpzfeed, rpzzones  # at run time only with an `rpz:` section (Worker.__init__)

log = logging.getLogger(__name__)

COUNTERS_PUBLISH_SECONDS = 1.0


class Worker:
    """One process's data plane: pipeline, cache, upstream pool and listeners."""

    def __init__(self, cfg: config.Config, snapshot: pipeline.Snapshot, index: int = 0):
        self.config = cfg
        self.counters = metrics.Counters()
        self.last_queries = metrics.LastQueries()
        self.cache = cache.AnswerCache(
            cfg.cache.max_entries,
            cfg.cache.stale_seconds,
            cfg.cache.max_megabytes * 2**20,
            cfg.cache.stale_failure_recheck_seconds,
        )
        answer_limits = upstream.AnswerLimits(
            cfg.cache.min_ttl_seconds, cfg.cache.max_ttl_seconds, cfg.cache.negative_max_ttl_seconds
        )
        self.pool = upstream.UpstreamPool(
            list(cfg.upstreams),
            cfg.forwarding.timeout_seconds,
            answer_limits,
            cfg.forwarding.sockets_per_upstream,
            cfg.forwarding.max_in_flight,
            make_upstream=upstreamtls.make_upstream,
        )
        self.forward_pools = upstream.ForwardPools(
            policy.MAX_FORWARD_SERVERS, cfg.forwarding.timeout_seconds, answer_limits
        )
        self.pipeline = pipeline.Pipeline(
            snapshot,
            self.cache,
            self.pool,
            self.counters,
            stale_wait_seconds=cfg.cache.stale_wait_seconds,
            unknown_client_refusals_per_second=cfg.limits.unknown_client_refusals_per_second,
            forward_pools=self.forward_pools,
            school_queries_per_second=cfg.limits.queries_per_second_per_school,
        )
        self.in_flight = server.InFlight(
            cfg.limits.max_queries_in_flight, self.counters, cfg.limits.max_queries_in_flight_per_school
        )
        self.front_ends = (
            frontends.FrontEnds(cfg.proxy_protocol.trusted, self.counters) if cfg.proxy_protocol is not None else None
        )
        self.tcp = server.TcpConnections(self.pipeline, self.in_flight, cfg.limits, self.front_ends)
        # DoT and DoH: each kind its certificate, its connections (and their cap), its listeners.
        self.certificates: dict[str, tls.Certificates] = {}
        self.dot: server.TcpConnections | None = None
        self.doh: Any = None  # doh.DohServer, whose module (and h2) is imported only when `doh:` is configured
        if cfg.dot is not None:
            self.certificates["dot"] = tls.Certificates(cfg.dot.cert_file, cfg.dot.key_file, tls.DOT_ALPN, "dot")
            self.dot = server.TcpConnections(self.pipeline, self.in_flight, cfg.limits, self.front_ends)
        if cfg.doh is not None:
            self.certificates["doh"] = tls.Certificates(cfg.doh.cert_file, cfg.doh.key_file, tls.DOH_ALPN, "doh")
            doh = importlib.import_module("resolver.dataplane.doh")
            tokens = doh.TokenSchools(cfg.admin.tokens_file)
            self.doh = doh.DohServer(self.pipeline, self.in_flight, cfg.limits, self.counters, tokens, self.front_ends)
        self._tls: list[tls.TlsListener] = []
        self.tls_addresses: dict[str, list[tuple[str, int]]] = {"dot": [], "doh": []}
        self.index = index  # of this worker among the `workers: N` (0 for the one of `workers: 1`)
        self.feed: rpzfeed.Feed | None = None
        if cfg.rpz is not None:
            from resolver.operations import rpzfeed  # only with an `rpz:` section; it loads no DNS library

            # Worker 0 (or the one of `workers: 1`) tells the secondaries of a new version, once.
            self.feed = rpzfeed.Feed(cfg.rpz, cfg.blocklists_dir, cfg.state_dir, announce=index == 0)
            self.pipeline.zones = self.feed
        self.reload_failures = 0
        self._udp: list[server.UdpServer] = []
        self._tcp_servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self._reloading: asyncio.Lock | None = None
        # The signature of the policy and list files the last reload read (its caller sets the first
        # one's: see watch_files): a reload from SIGHUP or the admin API sets it, so the watcher does
        # not build the same files a second time.
        self.files: tuple[object, ...] = ()

    async def start(self, sockets: list[tuple[socket.socket, socket.socket]]) -> None:
        # What was built so far (modules, the first snapshot) lives as long as the process: keep it
        # out of the full collections of the garbage collector, whose pauses grow with what they
        # visit. Only here, with no query in flight: a frozen object in a reference cycle that
        # becomes garbage later would never be collected.
        gc.freeze()
        if self.feed is not None:
            self.feed.install(await asyncio.to_thread(self.feed.prepare, self.pipeline.snapshot))
        for udp_sock, tcp_sock in sockets:
            udp, tcp = await server.serve_sockets(
                self.pipeline, self.in_flight, self.config.limits, udp_sock, tcp_sock, self.tcp
            )
            self._udp.append(udp)
            self._tcp_servers.append(tcp)
            self.addresses.append(udp_sock.getsockname()[:2])
        self._start_tls()
        log.info(
            "serving DNS on %s (udp+tcp) with %d upstream(s); %s",
            ", ".join(f"{h}:{p}" for h, p in self.addresses),
            len(self.config.upstreams),
            self.state().summary(),
        )
        log.info("%s", resolver.build_description())  # which build serves (after the start, not before a start error)
        for kind, addresses in self.tls_addresses.items():
            if addresses:
                where = ", ".join(str(upstream.UpstreamAddress(h, p)) for h, p in addresses)
                log.info("serving %s on %s", "DNS over TLS" if kind == "dot" else "DNS over HTTPS", where)

    def _start_tls(self) -> None:
        """Bind and start the DoT and DoH listeners (SO_REUSEPORT with `workers: N`, like the DNS port)."""
        cfg = self.config
        kinds: list[tuple[str, config.TlsListenConfig, tls.Connections, Callable[[str | bytes, bool], Any]]] = []
        if cfg.dot is not None and self.dot is not None:
            kinds.append(("dot", cfg.dot, self.dot, self._dot_protocol))
        if cfg.doh is not None and self.doh is not None:
            kinds.append(("doh", cfg.doh, self.doh, self.doh.protocol))
        for kind, settings, connections, make in kinds:
            for address in settings.listen:
                sock = server.bind_socket(address, socket.SOCK_STREAM, cfg.workers > 1, f"{kind}.listen in {cfg.file}")
                listener = tls.TlsListener(
                    sock, kind, self.certificates[kind], connections, make, self.counters, self.front_ends
                )
                listener.start()
                self._tls.append(listener)
                self.tls_addresses[kind].append(sock.getsockname()[:2])

    def _dot_protocol(self, client: str | bytes, front_end: bool) -> tls.DotConnection:
        assert self.dot is not None
        return tls.DotConnection(self.dot, client, front_end)

    async def reload(self) -> bool:
        """Build a new snapshot off the event loop and install it; on failure keep the old one."""
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            generation = self.pipeline.snapshot.generation + 1
            self.files = await asyncio.to_thread(snapshots.files_signature, self.config)
            try:
                snapshot = await asyncio.to_thread(
                    snapshots.build_serving_snapshot, self.config, generation, reload=True
                )
                zones = None if self.feed is None else await asyncio.to_thread(self.feed.prepare, snapshot)
            except Exception as exc:  # ConfigError and anything else: the old snapshot keeps serving
                for certificates in self.certificates.values():
                    certificates.reload()
                self.reload_failures += 1
                log.error("reload rejected, still serving generation %d:\n%s", self.pipeline.snapshot.generation, exc)
                return False
            self.pipeline.install(snapshot)
            heap.trim()  # the replaced snapshot and its repeats, and the new one's build
            for certificates in self.certificates.values():
                certificates.reload()
            if self.feed is not None and zones is not None:
                self.feed.install(zones)
            log.info("installed generation %d", generation)
            return True

    async def rpz_zones(self) -> rpzzones.Version | None:
        """The RPZ feed's zones as installed (GET /v1/rpz/{zone}); None without a feed."""
        return None if self.feed is None else self.feed.version

    async def stop(self) -> None:
        """Stop accepting, let in-flight queries finish within the drain bound, close everything."""
        for udp in self._udp:
            udp.pause_reading()  # no new queries; the socket stays open to send the last answers
        for tcp_server in self._tcp_servers:
            tcp_server.close()
        for listener in self._tls:
            listener.close()
        await self.in_flight.drain(self.config.limits.shutdown_drain_seconds)
        for udp in self._udp:
            udp.close()
        self.tcp.close_all()
        for connections in (self.dot, self.doh):
            if connections is not None:
                connections.close_all()
        if self.feed is not None:
            self.feed.stop()
        for tcp_server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tcp_server.wait_closed(), 1.0)
        self.pool.close()
        self.forward_pools.close()

    def state(self) -> workerstate.WorkerState:
        """Live numbers for metrics and status (no per-client data).

        Asked about once a second (a worker's report, or the single process's own tick): each school's
        latest query is taken from the counters then (metrics.LastQueries).
        """
        snapshot = self.pipeline.snapshot
        return workerstate.WorkerState(
            counters=self.counters,
            in_flight=self.in_flight.count,
            tcp_connections=len(self.tcp.open),
            cache_entries=len(self.cache),
            cache_bytes=self.cache.bytes,
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
            cache_evictions=self.cache.evictions,
            cache_stale_served=self.cache.stale_served,
            repeats_discarded=self.pipeline.repeats_discarded(),
            coalesced=self.pool.coalesced,
            upstreams=tuple(
                workerstate.UpstreamState(
                    address=str(u.address),
                    queries=u.queries,
                    failures=u.failures,
                    timeouts=u.timeouts,
                    truncated=u.truncated,
                    mismatched=u.mismatched,
                    latency_seconds=u.answer_seconds,
                    up=u.up,
                    failing=u.failing,
                    response=u.answer_times,
                )
                for u in self.pool.upstreams
            ),
            generation=snapshot.generation,
            loaded_at=snapshot.loaded_at,
            reload_failures=self.reload_failures,
            list_entries=snapshot.entry_counts,
            lists_updated_at=snapshot.lists_updated_at,
            schools=tuple(school.id for school in snapshot.policies.schools),
            last_query=dict(self.last_queries.update(self.counters, time.time())),
            serving_last_good=int(snapshot.from_last_good),
            workers=1,
            worker_queries={self.index: sum(self.counters.queries.values())},
            worker_restarts=0,
            worker_restart_failures=0,
        )


class SignalTasks:
    """The tasks that signal handlers start (reloads on SIGHUP), held until they end: the event loop
    keeps only weak references to its tasks, and one referenced nowhere else may vanish mid-run."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[object]] = set()

    def on(self, signum: int, job: Callable[[], Coroutine[object, object, object]]) -> None:
        """Run job() in a task of the running loop each time `signum` arrives."""
        asyncio.get_running_loop().add_signal_handler(signum, self._start, job)

    def _start(self, job: Callable[[], Coroutine[object, object, object]]) -> None:
        task = asyncio.get_running_loop().create_task(job())
        self.running.add(task)
        task.add_done_callback(self.running.discard)


async def watch_files(
    cfg: config.Config, reload: Callable[[], Awaitable[bool]], seen: Callable[[], tuple[object, ...]]
) -> None:
    """Reload when a policy or list file changes (polling: works on every filesystem, bounded cost).

    `seen()` is the signature of the files the running snapshot was built from, taken before it
    was built (so a change made while it was being built is not missed), by whichever reload
    built it: files that SIGHUP or the admin API already reloaded are not built again, and files
    that failed to build are tried again only once they change.
    """
    interval = cfg.reload.watch_interval_seconds
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        current = await asyncio.to_thread(snapshots.files_signature, cfg)
        if current != seen():
            log.info("policy or list files changed; reloading")
            await reload()


def bind_all(cfg: config.Config, reuse_port: bool) -> list[tuple[socket.socket, socket.socket]]:
    """The UDP and TCP socket of each listen address (see _bind_listen); `worker_spread: random`
    spreads the UDP queries over the workers' sockets at random (server.spread_at_random)."""
    sockets = [(udp, tcp) for _, udp, tcp in _bind_listen(cfg, reuse_port)]
    if (
        reuse_port
        and cfg.worker_spread == "random"
        and not all([server.spread_at_random(udp, cfg.workers) for udp, _ in sockets])
    ):
        log.warning(
            "worker_spread: random is not available here (Linux 4.5+ only); UDP queries reach "
            "the workers by a hash of the client's address and port"
        )
    return sockets


def check_listen(cfg: config.Config) -> config.Config:
    """cfg with the listen addresses this host can serve, each bound once and closed again.

    Done before anything is built, so that a start that cannot listen fails at once, in one line.
    Bound without SO_REUSEPORT, so that a port held by any other socket fails it, another
    schooldns's included (a worker's SO_REUSEPORT socket would join that one's group).
    """
    served = []
    for address, udp, tcp in _bind_listen(cfg, reuse_port=False):
        udp.close()
        tcp.close()
        served.append(address)
    return dataclasses.replace(
        cfg,
        listen=tuple(served),
        dot=_check_tls_listen(cfg, "dot", cfg.dot),
        doh=_check_tls_listen(cfg, "doh", cfg.doh),
    )


def _check_tls_listen(
    cfg: config.Config, kind: str, settings: config.TlsListenConfig | None
) -> config.TlsListenConfig | None:
    """The DoT or DoH addresses this host can serve (as _bind_listen: an IPv6 one on a host without
    IPv6 passed over), port 0 replaced by the free port found, for every worker to bind."""
    if settings is None:
        return None
    served = []
    for address in settings.listen:
        try:
            sock = server.bind_socket(address, socket.SOCK_STREAM, False, f"{kind}.listen in {cfg.file}")
        except ListenError as exc:
            if not exc.ipv6_unavailable or len(settings.listen) == 1:
                raise
            log.warning("not listening on %s: this host has no IPv6", exc.address)
            continue
        served.append(dataclasses.replace(address, port=sock.getsockname()[1]))
        sock.close()
    return dataclasses.replace(settings, listen=tuple(served))


def _bind_listen(
    cfg: config.Config, reuse_port: bool
) -> list[tuple[upstream.UpstreamAddress, socket.socket, socket.socket]]:
    """Each listen address with its UDP and TCP socket. An IPv6 loopback or any address on a host
    without IPv6 is passed over with a warning (the example config listens on [::1] as well); any
    other address that cannot be bound, or none left to serve, is a ListenError."""
    bound: list[tuple[upstream.UpstreamAddress, socket.socket, socket.socket]] = []
    passed: list[ListenError] = []
    try:
        for address in cfg.listen:
            try:
                bound.append((address, *server.bind_sockets(address, reuse_port, f"listen in {cfg.file}")))
            except ListenError as exc:
                if not exc.ipv6_unavailable:
                    raise
                passed.append(exc)
        if not bound:  # config.load_config refuses an empty listen: every address was passed over
            raise passed[0]
    except ListenError:
        for _, udp, tcp in bound:
            udp.close()
            tcp.close()
        raise
    for skipped in passed:
        log.warning("not listening on %s: this host has no IPv6", skipped.address)
    return bound


# ---------------------------------------------------------------------------------------
# A worker process of `workers: N`, forked by resolver.processes.spawner for the supervisor (resolver.processes.app).
# This module imports only the data plane (never admin, exposition, aiohttp or prometheus_client),
# so that a spawner started as a fresh interpreter loads no more. A worker publishes its numbers
# to the supervisor, which serves /metrics.


@dataclasses.dataclass(frozen=True, slots=True)
class SpawnArgs:
    """What the supervisor hands a worker process (as JSON, through the spawner)."""

    config_file: str
    listen: tuple[str, ...]  # the addresses to serve (check_listen), each with its port resolved (0 = choose)
    index: int
    log_level: int
    dot_listen: tuple[str, ...] = ()  # the DoT and DoH addresses (check_listen: ports resolved)
    doh_listen: tuple[str, ...] = ()


def spawned_main(args: SpawnArgs, fd: int) -> int:
    """A worker process's main function (forked by the spawner): load the config, serve until SIGTERM.

    Returns the exit status: 1 when the worker could not start, which its log says in one line.
    """
    import multiprocessing.connection

    conn = multiprocessing.connection.Connection(fd)
    logging.basicConfig(
        level=args.log_level,
        force=True,  # replaces the handler inherited from the supervisor
        format=f"%(asctime)s worker{args.index} %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config.load_config(args.config_file)
        cfg = dataclasses.replace(cfg, listen=tuple(upstream.parse_address(text) for text in args.listen))
        if cfg.dot is not None and args.dot_listen:
            dot = tuple(upstream.parse_address(text) for text in args.dot_listen)
            cfg = dataclasses.replace(cfg, dot=dataclasses.replace(cfg.dot, listen=dot))
        if cfg.doh is not None and args.doh_listen:
            doh = tuple(upstream.parse_address(text) for text in args.doh_listen)
            cfg = dataclasses.replace(cfg, doh=dataclasses.replace(cfg.doh, listen=doh))
        asyncio.run(_spawned_async(cfg, args, conn))
    except KeyboardInterrupt:
        pass
    except ResolverError as exc:  # a port taken since the supervisor checked it, a broken config.yaml, ...
        log.error("%s", exc)
        return 1
    return 0


async def _spawned_async(cfg: config.Config, args: SpawnArgs, conn: multiprocessing.connection.Connection) -> None:
    # No local name for the first snapshot: it would outlive the first list swap (see app.run_single).
    worker = Worker(cfg, await asyncio.to_thread(snapshots.start_snapshot, cfg, 1), args.index)
    await worker.start(bind_all(cfg, reuse_port=True))
    heap.trim()
    ports = tuple(port for _, port in worker.addresses)
    conn.send(workerstate.Report(worker.state(), ports).to_wire())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides

    async def reload() -> bool:
        installed = await worker.reload()
        with contextlib.suppress(OSError):  # the supervisor waits for this report (Supervisor.reload)
            conn.send(workerstate.Report(worker.state()).to_wire())
        return installed

    signalled = SignalTasks()
    signalled.on(signal.SIGHUP, reload)
    publisher = loop.create_task(_publish(worker, conn, stop))
    await stop.wait()
    publisher.cancel()
    await worker.stop()
    with contextlib.suppress(OSError):  # the last numbers, for the supervisor's last write of the rollups
        conn.send(workerstate.Report(worker.state()).to_wire())


async def _publish(worker: Worker, conn: multiprocessing.connection.Connection, stop: asyncio.Event) -> None:
    """Send this worker's numbers to the supervisor every second (it serves /metrics).

    When the supervisor is gone (killed, crashed) the worker stops too: nothing would restart it,
    reload it or publish its numbers, and a new supervisor's workers would share the port with it.
    """
    while True:
        await asyncio.sleep(COUNTERS_PUBLISH_SECONDS)
        try:
            conn.send(workerstate.Report(worker.state()).to_wire())
        except OSError as exc:
            log.error("lost the supervisor (%s); stopping", exc)
            stop.set()
            return
