"""The block page server (aiohttp): the page for the name in the Host header and the client's school, and its forms."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from resolver.control import checks, config
from resolver.dataplane import pipeline, upstream
from resolver.errors import ResolverError, UsageError
from resolver.filtering import lists, policy
from resolver.operations import access, admin, pages, requestbox, shedding, tlscert
from resolver.operations.pages import Answer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024  # a form post is a token, a name and a reason
BODY_TIMEOUT_SECONDS = 10.0
IDLE_TIMEOUT_SECONDS = 15.0
TOKEN_LIFETIME_SECONDS = 3_600.0  # a page left open longer gets "load the page again"
MAX_SOURCES = 10_000  # sources whose form posts are counted, the oldest forgotten first


@dataclasses.dataclass(frozen=True, slots=True)
class Visitor:
    """Who asks, as far as the page may know: the school of the address, never the address itself."""

    school: policy.SchoolPolicy | None
    snapshot: pipeline.Snapshot


class Blockpage:
    """The page and its forms over the snapshot being served (the same school directory and policies as DNS)."""

    def __init__(
        self,
        cfg: config.Config,
        snapshot: Callable[[], Awaitable[pipeline.Snapshot]],
        clock: Callable[[], float] = time.time,
        sheds: shedding.Sheds | None = None,  # the process's, shared with its admin API
    ):
        page = cfg.blockpage or config.BlockpageConfig()
        self.snapshot = snapshot
        self.clock = clock
        self.requests = requestbox.RequestBox.of(cfg, sheds)
        self.posts = access.PerSourceLimit(
            page.submissions_per_source, page.submission_window_seconds, MAX_SOURCES, clock=time.monotonic
        )
        # The forms' tokens are signed with a key that lives as long as the process: a page from
        # before a restart gets "load the page again", and there is no key file to protect.
        self.key = secrets.token_bytes(32)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(pages.UNBLOCK_PATH, self.unblock),
            web.post(pages.REPORT_PATH, self.report),
            web.get("/favicon.ico", self.favicon),
            web.get("/{path:.*}", self.show),
        ]

    async def show(self, request: web.Request) -> web.Response:
        visitor = await self._visitor(request)
        school = visitor.school
        if school is None:  # a device in no school's networks: no verdict to give, nobody to ask
            return _html(pages.render(pages.Page(None, None, None, None, None)), 200)
        name = _host_name(request.headers.get("Host", ""))
        if name == _host_name(urllib.parse.urlsplit(visitor.snapshot.province.info_url).netloc):
            name = None  # the block page by its own name (the EDE's info URL)
        block = _blocked(visitor, name) if name is not None else None
        issued = int(self.clock())
        unblock_token = None
        if name is not None and block is not None and _may_ask(block):
            unblock_token = self._token(requestbox.Kind.UNBLOCK, school.id, name, issued)
        report_token = self._token(requestbox.Kind.REPORT, school.id, "", issued)
        page = pages.Page(name, block, school.name, unblock_token, report_token)
        return _html(pages.render(page), 403 if block is not None else 200)

    async def unblock(self, request: web.Request) -> web.Response:
        form, visitor = await self._post(request)
        school = visitor.school
        assert school is not None
        name = _host_name(form.get("name", ""))  # the page's own name, signed in its token
        if name is None or not self._valid(form.get("token", ""), requestbox.Kind.UNBLOCK, school.id, name):
            return _answer(Answer.EXPIRED)
        try:
            reason = requestbox.UnblockReason(form.get("reason", ""))
        except ValueError:
            return _answer(Answer.NOT_A_SITE)
        block = _blocked(visitor, name)
        if block is None or not _may_ask(block):
            return _answer(Answer.NOT_BLOCKED)
        taken = await asyncio.to_thread(
            self.requests.submit,
            requestbox.Kind.UNBLOCK,
            school.id,
            name,
            reason.value,
            self.clock(),
            block.category,
            block.authority.value,
        )
        log.info("block page: an unblock request for %s from school %s (%s)", name, school.id, taken.value)
        answers = {requestbox.Taken.NEW: Answer.SENT, requestbox.Taken.AGAIN: Answer.SENT_AGAIN}
        return _answer(answers.get(taken, Answer.FULL))

    async def report(self, request: web.Request) -> web.Response:
        form, visitor = await self._post(request)
        school = visitor.school
        assert school is not None
        if not self._valid(form.get("token", ""), requestbox.Kind.REPORT, school.id, ""):
            return _answer(Answer.EXPIRED)
        name = _site_name(form.get("site", ""))
        try:
            reason = requestbox.ReportReason(form.get("reason", ""))
        except ValueError:
            name = None
        if name is None:
            return _answer(Answer.NOT_A_SITE)
        if _blocked(visitor, name) is not None:
            return _answer(Answer.ALREADY_BLOCKED)  # nothing to decide; and a withheld list is not shown to anyone
        taken = await asyncio.to_thread(
            self.requests.submit, requestbox.Kind.REPORT, school.id, name, reason.value, self.clock()
        )
        log.info("block page: a report of %s from school %s (%s)", name, school.id, taken.value)
        return _answer(Answer.FULL if taken is requestbox.Taken.FULL else Answer.REPORTED)

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=404, headers=pages.HEADERS)

    async def _post(self, request: web.Request) -> tuple[dict[str, str], Visitor]:
        """A form post's fields and visitor, once it passes the checks every post passes: the rate per
        source, the origin, the size and time of the body, a school."""
        source = request.remote or ""
        if (wait := self.posts.retry_after(source)) is not None:
            raise _refusal(Answer.TOO_MANY, {"Retry-After": str(int(wait) + 1)})
        self.posts.count(source)
        origin = request.headers.get("Origin", "null")  # "null": a browser that keeps the origin to itself
        if origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("Host"):
            raise _refusal(Answer.EXPIRED)  # posted from another site's page (the token is the main guard)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise _refusal(Answer.NOT_A_SITE)
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                posted = await request.post()
        except (TimeoutError, ValueError, web.HTTPException):
            raise _refusal(Answer.NOT_A_SITE) from None
        form = {key: value for key, value in posted.items() if isinstance(value, str)}
        visitor = await self._visitor(request)
        if visitor.school is None:
            raise _refusal(Answer.NO_SCHOOL)
        return form, visitor

    async def _visitor(self, request: web.Request) -> Visitor:
        try:
            snapshot = await self.snapshot()
        except ResolverError:
            raise web.HTTPServiceUnavailable(text="the block page cannot work out its policies now\n") from None
        try:
            address = checks.parse_client(request.remote or "")
        except UsageError:  # not an IP address: a Unix socket
            return Visitor(snapshot.default_school, snapshot)
        return Visitor(snapshot.directory.lookup(address.packed) or snapshot.default_school, snapshot)

    def _token(self, kind: requestbox.Kind, school: str, name: str, issued: int) -> str:
        """A form's token: when it was made and a MAC over that, the form, the school and the name."""
        message = f"{kind.value}\0{issued}\0{school}\0{name}".encode()
        mac = hmac.new(self.key, message, hashlib.sha256).digest()
        return f"{issued}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def _valid(self, token: str, kind: requestbox.Kind, school: str, name: str) -> bool:
        issued, _, _ = token.partition(".")
        if not issued.isdigit() or len(issued) > 12:
            return False
        if not 0 <= self.clock() - int(issued) <= TOKEN_LIFETIME_SECONDS:
            return False
        return hmac.compare_digest(token, self._token(kind, school, name, int(issued)))


def _blocked(visitor: Visitor, name: str) -> policy.Block | None:
    """The visitor's school's block of `name` now (None: not blocked, or no school)."""
    if visitor.school is None:
        return None
    decision = policy.decide(visitor.school, name, visitor.snapshot.index.lookup(name), time.time())
    return decision if isinstance(decision, policy.Block) else None


def _may_ask(block: policy.Block) -> bool:
    """Whether a child may ask to unblock it: not a name of a withheld list (csam), which no request shows."""
    return block.category not in lists.WITHHELD_CATEGORIES


def _host_name(host: str) -> str | None:
    """The name in a Host header (its port dropped); None for an address or no name."""
    if not host or host.startswith("["):
        return None
    head, _, port = host.rpartition(":")
    if head and port.isdigit():
        host = head
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        return policy.normalize_name(host)
    except ValueError:
        return None


def _site_name(text: str) -> str | None:
    """The name a child typed or pasted into the report form: a name, or a URL whose host is one."""
    text = text.strip()
    if len(text) > pages.MAX_SITE_CHARS:
        return None
    if "/" in text:
        parsed = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
        text = parsed.hostname or ""
    return _host_name(text)


def _html(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={**pages.HEADERS, **(headers or {})},
    )


def _answer(answer: Answer) -> web.Response:
    return _html(pages.render_answer(answer), pages.ANSWERS[answer][0])


class _Refused(Exception):
    def __init__(self, response: web.Response):
        self.response = response


def _refusal(answer: Answer, headers: dict[str, str] | None = None) -> _Refused:
    return _Refused(_html(pages.render_answer(answer), pages.ANSWERS[answer][0], headers))


@web.middleware
async def _refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Refused as refused:
        return refused.response


def make_app(page: Blockpage) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_refusals])
    app.router.add_routes(page.routes())
    return app


_server_log = logging.getLogger(f"{__name__}.http")
_server_log.addFilter(admin.NoAddresses())


async def start(
    http: Sequence[socket.socket],
    https: Sequence[socket.socket],
    certificate: tlscert.Certificate | None,
    cfg: config.Config,
    snapshot: Callable[[], Awaitable[pipeline.Snapshot]],
    sheds: shedding.Sheds | None = None,
) -> tuple[web.AppRunner, asyncio.Task[None] | None]:
    """Serve the block page on bound TCP sockets (app.bind_blockpage): plain HTTP, and HTTPS with `certificate`."""
    runner = web.AppRunner(
        make_app(Blockpage(cfg, snapshot, sheds=sheds)),
        access_log=None,
        logger=_server_log,
        keepalive_timeout=IDLE_TIMEOUT_SECONDS,
    )
    await runner.setup()
    for sock in http:
        await web.SockSite(runner, sock).start()
        log.info("block page on http://%s/", _shown(sock))
    watcher = None
    if certificate is not None:
        for sock in https:
            await web.SockSite(runner, sock, ssl_context=certificate.context).start()
            log.info("block page on https://%s/", _shown(sock))
        watcher = asyncio.get_running_loop().create_task(certificate.watch())
    return runner, watcher


def _shown(sock: socket.socket) -> upstream.UpstreamAddress:
    host, port = sock.getsockname()[:2]
    return upstream.UpstreamAddress(host, port)
