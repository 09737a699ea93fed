"""GET /v1/rpz/{zone}: a zone of the RPZ feed as zone-file text, streamed (the admin API's handler)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from resolver.dataplane import pipeline
from resolver.operations import rpzzones
from resolver.operations.refusals import Failure, Refused

log = logging.getLogger(__name__)

Versions = Callable[[], Awaitable[rpzzones.Version | None]]  # the feed's zones now (None: no feed)


def zone_handler(versions: Versions) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of `GET /v1/rpz/{zone}` over the feed's current zones."""

    async def get_zone(request: web.Request) -> web.StreamResponse:
        version = await versions()
        name = request.match_info["zone"].lower().removesuffix(".")
        zone = version.zones.get(name) if version is not None else None
        if version is None or zone is None:
            known = ", ".join(sorted(version.zones)) if version is not None else "none"
            raise Refused(Failure.NOT_FOUND, f"no zone {name!r} in the RPZ feed (zones: {known})")
        problem = version.current()
        if problem is not None:
            raise Refused(Failure.UNAVAILABLE, f"{zone.name}: {problem}")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/plain; charset=utf-8",
                "Content-Disposition": f'inline; filename="{zone.name}.zone"',
            }
        )
        await response.prepare(request)
        pieces = rpzzones.zone_text(version, zone)
        try:
            for piece in pieces:
                await response.write(piece.encode())  # waits while the client is slower than the zone
                await asyncio.sleep(0)  # and lets other requests and DNS run between two pieces
        except pipeline.StreamBroken as exc:
            # The status is sent already: cut the connection, so that the client sees a truncated
            # body rather than a zone that looks complete.
            log.warning("stopped GET /v1/rpz/%s: %s", zone.name, exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            pieces.close()
        await response.write_eof()
        return response

    return get_zone
