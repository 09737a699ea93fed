"""The admin HTTP API (aiohttp): liveness, readiness, Prometheus metrics and status; read-only."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

import resolver
from resolver.dataplane import upstream, workerstate
from resolver.operations import exposition, rpzhttp

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """What the admin API may touch: read the live numbers, ask for a reload."""

    state: Callable[[], workerstate.WorkerState]
    reload: Callable[[], Awaitable[bool]]
    rpz: rpzhttp.Versions | None = None  # the RPZ feed's zones; None without an `rpz:` section


def make_app(control: Control) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        state = control.state()
        if state.generation > 0 and state.workers > 0:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: no snapshot installed\n")

    async def metrics_page(_: web.Request) -> web.Response:
        body = exposition.render(control.state)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def status(_: web.Request) -> web.Response:
        state = control.state()
        return web.json_response(
            {
                "version": resolver.__version__,
                "generation": state.generation,
                "lists_age_seconds": round(time.time() - state.loaded_at, 1) if state.loaded_at else None,
                "list_entries": dict(state.list_entries),
                "serving_last_good": state.serving_last_good > 0,
                "workers": state.workers,
                "cache_entries": state.cache_entries,
                "upstreams": [
                    {"address": u.address, "up": u.up, "latency_ms": round(u.latency_seconds * 1000, 2)}
                    for u in state.upstreams
                ],
            }
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/status", status)
    if control.rpz is not None:
        app.router.add_get("/v1/rpz/{zone}", rpzhttp.zone_handler(control.rpz))
    return app


async def start(sock: socket.socket, control: Control) -> web.AppRunner:
    """Serve the admin API on a bound TCP socket (app.bind_admin)."""
    runner = web.AppRunner(make_app(control), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    host, port = sock.getsockname()[:2]
    log.info("admin API on http://%s/", upstream.UpstreamAddress(host, port))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the admin API actually listens on (for port 0 in tests)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("admin API is not listening")
