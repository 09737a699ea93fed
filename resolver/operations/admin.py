"""The admin HTTP API (aiohttp): health, metrics, status; with a token: policies, explain, reload, sync, audit."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import hashlib
import importlib.resources
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

import resolver
from resolver import yamlfile
from resolver.control import checks, config, syncstate
from resolver.dataplane import pipeline, upstream, workerstate
from resolver.errors import ResolverError, UsageError
from resolver.filtering import lists, policy
from resolver.operations import access, audit, exposition, policyedit, requestbox, rpzhttp, shedding, tokens, ui
from resolver.operations.refusals import Failure, Refused

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
OPENAPI_RESOURCE = "openapi.yaml"  # package data of resolver.operations; docs/openapi.yaml links to it
DEFAULT_LIMIT = 100  # entries or requests a read returns unless `limit` says


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The admin API's bounds (docs/admin-api.md, "Bounds")."""

    max_body_bytes: int = MAX_REQUEST_BYTES
    body_timeout_seconds: float = 10.0  # for the whole body of a request, once its headers are in
    # An idle connection is closed after this long, and so is one whose next request's headers
    # have not all arrived by then (aiohttp's keep-alive timer runs from the connection's start).
    idle_timeout_seconds: float = 15.0
    failed_auth_allowed: int = 10  # failed authentications per source and window...
    failed_auth_window_seconds: float = 60.0  # ...after which the source gets 429 until the window ends
    failed_auth_sources: int = 10_000  # sources remembered at most


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """What the admin API may touch: read the live numbers and the installed snapshot, ask for a reload, sync."""

    state: Callable[[], workerstate.WorkerState]
    reload: Callable[[], Awaitable[bool]]  # True once the new generation is installed (every worker's)
    config: config.Config
    snapshot: Callable[[], Awaitable[pipeline.Snapshot]]  # the snapshot being served (for explain, schools)
    sync: syncstate.Syncing | None = None  # None: this instance has no `sync:`
    rpz: rpzhttp.Versions | None = None  # the RPZ feed's zones; None without an `rpz:` section
    # What this process's admin API and block page dropped at their bounds (shared with the block page).
    sheds: shedding.Sheds = dataclasses.field(default_factory=shedding.Sheds)


# The one place where a refusal becomes an HTTP status (see _errors).
STATUS: Mapping[Failure, int] = {
    Failure.BAD_REQUEST: 400,
    Failure.UNAUTHENTICATED: 401,
    Failure.FORBIDDEN: 403,
    Failure.NOT_FOUND: 404,
    Failure.TIMEOUT: 408,
    Failure.CONFLICT: 409,
    Failure.STALE: 412,
    Failure.TOO_LARGE: 413,
    Failure.INVALID: 422,
    Failure.PRECONDITION_REQUIRED: 428,
    Failure.RATE_LIMITED: 429,
    Failure.NOT_APPLIED: 500,
    Failure.UNAVAILABLE: 503,
}

ANYONE = frozenset(kind for kind in tokens.RoleKind if tokens.Role(kind).is_admin)  # every admin role
READERS = frozenset({tokens.RoleKind.PROVINCE, tokens.RoleKind.VIEWER})
WRITERS = frozenset({tokens.RoleKind.PROVINCE, tokens.RoleKind.SCHOOL})
PROVINCE = frozenset({tokens.RoleKind.PROVINCE})


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Every failure as JSON with a "message": refusals by their reason (STATUS), aiohttp's own (404, 405,
    413) by theirs, anything else as 500 with the traceback in the server's log only."""
    try:
        return await handler(request)
    except Refused as exc:
        body: dict[str, Any] = {"message": exc.message}
        if exc.failure is Failure.INVALID:
            body["errors"] = [
                {"file": p.file, "line": p.line, "path": p.key_path, "message": p.message} for p in exc.problems
            ]
        headers = {}
        if exc.failure is Failure.UNAUTHENTICATED:
            headers["WWW-Authenticate"] = 'Bearer realm="schooldns"'
        if exc.retry_after_seconds is not None:
            headers["Retry-After"] = str(exc.retry_after_seconds)
        return web.json_response(body, status=STATUS[exc.failure], headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {name: value for name, value in exc.headers.items() if name in ("Allow",)}
        return web.json_response({"message": exc.reason.lower()}, status=exc.status, headers=headers)
    except Exception:
        log.exception("admin API: %s %s failed", request.method, request.path)
        return web.json_response({"message": "internal error (the server's log says more)"}, status=500)


def status_of(state: workerstate.WorkerState) -> dict[str, Any]:
    """The JSON of `GET /status` (a public contract: extend, never rename)."""
    return {
        "version": resolver.__version__,
        "generation": state.generation,
        "lists_age_seconds": round(time.time() - state.lists_updated_at, 1) if state.lists_updated_at else None,
        "list_entries": dict(state.list_entries),
        "serving_last_good": state.serving_last_good > 0,
        "workers": state.workers,
        "cache_entries": state.cache_entries,
        "degraded": bool(state.failing_upstreams()),
        "upstreams": [
            {
                "address": u.address,
                "up": u.up,
                "failing": u.failing,
                "latency_ms": None if u.latency_seconds is None else round(u.latency_seconds * 1000, 2),
            }
            for u in state.upstreams
        ],
        "compiled": [name.rsplit(".", 1)[1] for name in resolver.compiled_modules()],  # [] where pure Python
    }


class Api:
    """The token-guarded /v1 endpoints over one Control."""

    def __init__(self, control: Control, limits: Limits):
        self.control = control
        self.config = control.config
        self.limits = limits
        self.gate = access.Gate(
            tokens.TokenFile(control.config.admin.tokens_file),
            access.PerSourceLimit(
                limits.failed_auth_allowed, limits.failed_auth_window_seconds, limits.failed_auth_sources
            ),
            control.sheds,
        )
        self.audit = audit.AuditLog(control.config.state_dir, sheds=control.sheds)
        self.requests = requestbox.RequestBox.of(control.config, control.sheds)
        self.writing = asyncio.Lock()  # one write at a time: the ETag check, the file and its reload

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/status", self.status),
            web.get("/v1/schools", self.schools),
            web.get("/v1/schools/{id}/policy", self.get_policy),
            web.put("/v1/schools/{id}/policy", self.put_policy),
            web.get("/v1/explain", self.explain),
            web.post("/v1/reload", self.reload),
            web.get("/v1/sync", self.get_sync),
            web.post("/v1/sync", self.post_sync),
            web.get("/v1/audit", self.get_audit),
            web.get("/v1/requests", self.get_requests),
            web.post("/v1/requests/{id}/decision", self.decide_request),
            web.get("/v1/openapi.json", self.openapi),
        ]

    def caller(self, request: web.Request, kinds: frozenset[tokens.RoleKind]) -> access.Caller:
        return self.gate.caller(request.headers.get("Authorization"), request.remote or "", kinds)

    async def status(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        body = status_of(self.control.state())
        body["role"] = str(caller.role)
        body["token"] = caller.name
        if self.control.sync is not None:
            body["sync"] = _sync_json(self.control.sync.status())
        return web.json_response(body)

    async def schools(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        snapshot = await self._snapshot()
        return web.json_response(
            {
                "schools": [
                    {
                        "id": school.id,
                        "name": school.name,
                        "level": school.level,
                        "networks": [str(network) for network in school.networks],
                    }
                    for school in snapshot.policies.schools
                    if caller.role.may_read_school(school.id)
                ]
            }
        )

    async def get_policy(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        school_id = request.match_info["id"]
        if not caller.role.may_read_school(school_id):
            raise Refused(Failure.FORBIDDEN, "a school token reads only its own school's policy")
        path = policyedit.school_path(self.config, school_id)
        current = await asyncio.to_thread(policyedit.read, path)
        if current is None:
            raise Refused(Failure.NOT_FOUND, f"no policy file for school '{school_id}'")
        return web.Response(
            body=current.data, content_type="application/yaml", charset="utf-8", headers={"ETag": current.etag}
        )

    async def put_policy(self, request: web.Request) -> web.Response:
        caller = self.caller(request, WRITERS)
        school_id = request.match_info["id"]
        if not caller.role.may_write_school(school_id):
            raise Refused(Failure.FORBIDDEN, "a school token changes only its own school's policy")
        path = policyedit.school_path(self.config, school_id)
        self._refuse_on_hub()
        if_match, if_none_match = request.headers.get("If-Match"), request.headers.get("If-None-Match")
        policyedit.require_precondition(if_match, if_none_match)  # before the body is read
        data = await self._body(request)
        async with self.writing:
            current = await asyncio.to_thread(policyedit.read, path)
            policyedit.check_preconditions(
                current, if_match, if_none_match, caller.role.kind is not tokens.RoleKind.SCHOOL
            )
            await self._write_policy(caller, school_id, path, current, data)
            generation = self.control.state().generation
        etag = policyedit.PolicyText(data).etag
        return web.json_response({"generation": generation, "etag": etag}, headers={"ETag": etag})

    async def _write_policy(
        self,
        caller: access.Caller,
        school_id: str,
        path: Path,
        current: policyedit.PolicyText | None,
        data: bytes,
    ) -> None:
        """The one way a policy file changes (a PUT, a request's decision): a school token's limits, the
        checks of `schooldns check`, the atomic replace with its history, the reload, the audit entry.
        Called with self.writing held, `current` read under it."""
        school_token = caller.role.kind is tokens.RoleKind.SCHOOL
        old_sha256, new_sha256 = current.sha256 if current else None, hashlib.sha256(data).hexdigest()

        def entry(result: audit.Result) -> audit.Entry:
            return self._entry(caller, audit.Action.POLICY_WRITE, result, school_id, old_sha256, new_sha256)

        try:
            if school_token:
                policyedit.check_province_keys(current, data, path)
            await asyncio.to_thread(policyedit.validate, self.config, path, data, school_token)
            await asyncio.to_thread(policyedit.replace, self.config, school_id, path, data, current)
        except Refused as exc:
            result = {Failure.INVALID: audit.Result.INVALID, Failure.FORBIDDEN: audit.Result.REFUSED}
            await self._record(entry(result.get(exc.failure, audit.Result.FAILED)))
            raise
        if not await self.control.reload():
            await asyncio.to_thread(policyedit.restore, path, current)
            await self._record(entry(audit.Result.FAILED))
            raise Refused(
                Failure.NOT_APPLIED,
                "the policy passed the checks, but the server could not install it (its log says why); "
                "the previous file is back in place",
            )
        await self._record(entry(audit.Result.OK))

    def _refuse_on_hub(self) -> None:
        if self.config.sync is not None:
            raise Refused(
                Failure.CONFLICT,
                f"this instance takes its policies from the hub ({self.config.sync.repository}): edit at the hub",
            )

    async def explain(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        school_id, name, at = (request.query.get(key) for key in ("school", "name", "at"))
        if not school_id or not name:
            raise Refused(Failure.BAD_REQUEST, "give ?school=ID&name=NAME (and &at=TIME for another time)")
        if not caller.role.may_read_school(school_id):
            raise Refused(Failure.FORBIDDEN, "a school token explains only its own school")
        snapshot = await self._snapshot()
        if snapshot.policies.school(school_id) is None:
            raise Refused(Failure.NOT_FOUND, f"no school '{school_id}' is served")
        try:
            when = checks.parse_time(at, snapshot.province.timezone, "at").timestamp() if at else time.time()
            explained = await asyncio.to_thread(
                checks.explanation,
                snapshot,
                school_id,
                name,
                when,
                self.config.blocklists_dir,
                lists.WITHHELD_CATEGORIES,
            )
        except UsageError as exc:
            raise Refused(Failure.BAD_REQUEST, str(exc)) from None
        return web.json_response(_explained_json(explained, snapshot.generation, when))

    async def reload(self, request: web.Request) -> web.Response:
        caller = self.caller(request, PROVINCE)
        installed = await self.control.reload()
        await self._record(
            self._entry(caller, audit.Action.RELOAD, audit.Result.OK if installed else audit.Result.FAILED)
        )
        generation = self.control.state().generation
        if not installed:
            raise Refused(
                Failure.INVALID,
                f"the policies or lists do not build; still serving generation {generation} "
                "(the server's log lists the problems; `schooldns check` too)",
            )
        return web.json_response({"generation": generation})

    async def get_sync(self, request: web.Request) -> web.Response:
        self.caller(request, READERS)
        return web.json_response(_sync_json(self._sync().status()))

    async def post_sync(self, request: web.Request) -> web.Response:
        caller = self.caller(request, PROVINCE)
        status = await self._sync().sync_now()
        result = audit.Result.OK if status.last_error is None else audit.Result.FAILED
        await self._record(self._entry(caller, audit.Action.SYNC, result))
        return web.json_response(_sync_json(status))

    async def get_audit(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        limit = _limit(request, audit.MAX_READ, "entries")
        school = _school_filter(request, caller, "entries")
        entries = await asyncio.to_thread(self.audit.read, limit, school)
        return web.json_response({"entries": [entry.to_json() for entry in entries]})

    async def get_requests(self, request: web.Request) -> web.Response:
        caller = self.caller(request, ANYONE)
        limit = _limit(request, requestbox.MAX_READ, "requests")
        school = _school_filter(request, caller, "requests")
        status = None
        if "status" in request.query:
            try:
                status = requestbox.Status(request.query["status"])
            except ValueError:
                known = ", ".join(status.value for status in requestbox.Status)
                raise Refused(Failure.BAD_REQUEST, f"status is one of {known}") from None
        found = await asyncio.to_thread(self.requests.read, limit, school, status)
        return web.json_response({"requests": [one.to_json() for one in found]})

    async def decide_request(self, request: web.Request) -> web.Response:
        caller = self.caller(request, WRITERS)
        text = request.match_info["id"]
        if not text.isdigit() or len(text) > 18:
            raise Refused(Failure.BAD_REQUEST, "a request's id is a number")
        request_id = int(text)
        decision = _decision(await self._body(request))
        async with self.writing:
            found = await asyncio.to_thread(self.requests.get, request_id)
            if found is None or not caller.role.may_read_school(found.school):
                mine = " of your school" if caller.role.kind is tokens.RoleKind.SCHOOL else ""
                raise Refused(Failure.NOT_FOUND, f"no request {request_id}{mine}")
            _check_decision(caller, found, decision)
            if decision in (requestbox.Decision.ALLOW, requestbox.Decision.DENY):
                await self._change_list(caller, found, decision)
            decided = await asyncio.to_thread(
                self.requests.decide,
                request_id,
                found.status,
                requestbox.DECIDED_AS[decision],
                caller.name,
                time.time(),
            )
            if not decided:  # dropped (max_requests) since it was read
                raise Refused(Failure.NOT_FOUND, f"request {request_id} is no longer kept")
            await self._record(
                dataclasses.replace(
                    self._entry(caller, audit.Action.REQUEST_DECISION, audit.Result.OK, found.school),
                    request=request_id,
                    decision=decision.value,
                    name=found.name,
                )
            )
            after = await asyncio.to_thread(self.requests.get, request_id)
            generation = self.control.state().generation
        assert after is not None
        return web.json_response({"request": after.to_json(), "generation": generation})

    async def _change_list(
        self, caller: access.Caller, found: requestbox.Request, decision: requestbox.Decision
    ) -> None:
        """An allowed request's name into the school's `allow`, a denied report's into its `deny`, through
        the one policy write (_write_policy); nothing when the list holds it already."""
        if decision is requestbox.Decision.ALLOW:
            snapshot = await self._snapshot()
            school = snapshot.policies.school(found.school)
            if school is not None:
                now = policy.decide(school, found.name, snapshot.index.lookup(found.name), time.time())
                if isinstance(now, policy.Block) and now.authority is policy.Authority.PROVINCE:
                    raise Refused(
                        Failure.CONFLICT,
                        f"{found.name} is blocked by the province ({now.category}), which an allow entry does "
                        "not lift: only the province's lists change that",
                    )
        self._refuse_on_hub()
        path = policyedit.school_path(self.config, found.school)
        current = await asyncio.to_thread(policyedit.read, path)
        if current is None:
            raise Refused(Failure.NOT_FOUND, f"no policy file for school '{found.school}'")
        key = "allow" if decision is requestbox.Decision.ALLOW else "deny"
        data = policyedit.with_entry(current.data, key, found.name, path)
        if data != current.data:
            await self._write_policy(caller, found.school, path, current, data)

    async def openapi(self, request: web.Request) -> web.Response:
        self.caller(request, ANYONE)
        return web.json_response(await asyncio.to_thread(openapi_document))

    def _sync(self) -> syncstate.Syncing:
        if self.control.sync is None:
            raise Refused(
                Failure.NOT_FOUND,
                "this instance has no `sync:` in its config: its lists and policies are its own files",
            )
        return self.control.sync

    async def _snapshot(self) -> pipeline.Snapshot:
        try:
            return await self.control.snapshot()
        except ResolverError as exc:
            raise Refused(
                Failure.UNAVAILABLE, f"the policies or lists do not build now ({str(exc).splitlines()[0]})"
            ) from None

    async def _body(self, request: web.Request) -> bytes:
        """The request's body, bounded in size (413) and in the time it takes to arrive (408)."""
        too_large = Refused(Failure.TOO_LARGE, f"the body is larger than {self.limits.max_body_bytes} bytes")
        if request.content_length is not None and request.content_length > self.limits.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > self.limits.max_body_bytes:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(
                Failure.TIMEOUT, f"the body did not arrive within {self.limits.body_timeout_seconds:g} s"
            ) from None
        return b"".join(chunks)

    @staticmethod
    def _entry(
        caller: access.Caller,
        action: audit.Action,
        result: audit.Result,
        school: str | None = None,
        old_sha256: str | None = None,
        new_sha256: str | None = None,
    ) -> audit.Entry:
        return audit.Entry(action, result, caller.name, str(caller.role), time.time(), school, old_sha256, new_sha256)

    async def _record(self, entry: audit.Entry) -> None:
        await asyncio.to_thread(self.audit.append, entry)


def _limit(request: web.Request, most: int, what: str) -> int:
    text = request.query.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise Refused(Failure.BAD_REQUEST, f"limit is a number of {what}, 1 to {most}")
    return int(text)


def _school_filter(request: web.Request, caller: access.Caller, what: str) -> str | None:
    """The `school` a read keeps to: for a school token, its own (another is refused)."""
    school = request.query.get("school")
    if caller.role.kind is tokens.RoleKind.SCHOOL:
        if school is not None and school != caller.role.school:
            raise Refused(Failure.FORBIDDEN, f"a school token reads only its own school's {what}")
        school = caller.role.school
    return school


def _decision(body: bytes) -> requestbox.Decision:
    choices = ", ".join(f'"{decision.value}"' for decision in requestbox.Decision)
    wrong = Refused(Failure.BAD_REQUEST, f'send {{"decision": D}}, D one of {choices}')
    try:
        data = json.loads(body)
    except ValueError:
        raise wrong from None
    if not isinstance(data, dict) or set(data) != {"decision"}:
        raise wrong
    try:
        return requestbox.Decision(data["decision"])
    except (ValueError, TypeError):
        raise wrong from None


def _check_decision(caller: access.Caller, found: requestbox.Request, decision: requestbox.Decision) -> None:
    """Whether this caller may decide `found` so: a school decides its open requests, the province its
    schools' open and forwarded ones; allow is for unblock requests, deny for reports."""
    if found.status not in requestbox.WAITING:
        raise Refused(Failure.CONFLICT, f"request {found.id} is decided already ({found.status.value})")
    if caller.role.kind is tokens.RoleKind.SCHOOL and found.status is requestbox.Status.FORWARDED:
        raise Refused(Failure.CONFLICT, f"request {found.id} is with the province now")
    if decision is requestbox.Decision.FORWARD and caller.role.kind is tokens.RoleKind.PROVINCE:
        raise Refused(Failure.CONFLICT, "the province decides: allow, deny or reject")
    if decision is requestbox.Decision.ALLOW and found.kind is not requestbox.Kind.UNBLOCK:
        raise Refused(Failure.BAD_REQUEST, "a report asks for a block: deny, reject or forward it")
    if decision is requestbox.Decision.DENY and found.kind is not requestbox.Kind.REPORT:
        raise Refused(Failure.BAD_REQUEST, "an unblock request is allowed, rejected or forwarded")


def _sync_json(status: syncstate.SyncStatus) -> dict[str, Any]:
    return dataclasses.asdict(status)


def _explained_json(explained: checks.Explained, generation: int, when: float) -> dict[str, Any]:
    explanation = explained.explanation
    decision = explanation.decision
    verdict: dict[str, Any]
    if isinstance(decision, policy.Block):
        verdict = {
            "verdict": "block",
            "category": decision.category,
            "authority": decision.authority.value,
            "action": decision.action.value,
        }
    elif isinstance(decision, policy.Rewrite):
        verdict = {"verdict": "rewrite", "target": decision.target}
    else:
        verdict = {"verdict": "allow"}
    return {
        "school": explanation.school,
        "name": explanation.name,
        "input": explained.given,
        "generation": generation,
        "at": datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds"),
        "local_time": explanation.local_time,
        "decision": verdict,
        "rule": explanation.rule,
        "listed_categories": list(explanation.listed_categories),
        "blocked_categories": list(explanation.blocked_categories),
        "active_schedules": list(explanation.active_schedules),
        "allow_or_deny_entry": explanation.allow_or_deny_entry,
        "answered_by": explanation.answered_by,
        "listed": [
            {
                "name": entry.name,
                "match": entry.match,
                "kind": entry.kind,
                "categories": list(entry.categories),
                "found_in": list(entry.found_in),
            }
            for entry in explained.listed
        ],
        "lines": explained.lines(),
    }


@functools.cache
def openapi_document() -> Any:
    """The OpenAPI document (resolver/operations/openapi.yaml, package data) as plain values, read once."""
    text = importlib.resources.files(__package__).joinpath(OPENAPI_RESOURCE).read_text(encoding="utf-8")
    return yamlfile.parse_yaml(text, f"resolver/operations/{OPENAPI_RESOURCE}").data


def make_app(control: Control, limits: Limits | None = None) -> web.Application:
    limits = limits or Limits()
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[_errors])

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        # 200 ready; 503 with a body that says why otherwise (docs/operations.md, "Readiness").
        state = control.state()
        if not (state.generation > 0 and state.workers > 0):
            return web.Response(status=503, text="not ready: no snapshot installed\n")
        failing = state.failing_upstreams()
        if failing:
            return web.Response(status=503, text=f"degraded: every upstream is failing ({', '.join(failing)})\n")
        return web.Response(text="ready\n")

    async def metrics_page(_: web.Request) -> web.Response:
        body = exposition.render(control.state, control.sync.status() if control.sync else None, sheds=control.sheds)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_of(control.state()))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/status", status)
    api = Api(control, limits)
    app.router.add_routes(api.routes())
    app.router.add_routes(ui.routes(control, api.gate))  # GET /v1/report and the /ui/ pages
    if control.rpz is not None:  # the RPZ feed's zones as text, for the province and viewers
        zone_text = rpzhttp.zone_handler(control.rpz)

        async def rpz_zone(request: web.Request) -> web.StreamResponse:
            api.caller(request, READERS)
            return await zone_text(request)

        app.router.add_get("/v1/rpz/{zone}", rpz_zone)
    return app


class NoAddresses(logging.Filter):
    """aiohttp logs a malformed request "from <client address>": kept, without the address or a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and " from %s" in record.msg:
            exc = record.exc_info[1] if record.exc_info else None
            record.msg = record.msg.replace(" from %s", "") + (f": {exc}" if exc else "")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_server_log = logging.getLogger(f"{__name__}.http")
_server_log.addFilter(NoAddresses())


async def start(sock: socket.socket, control: Control, limits: Limits | None = None) -> web.AppRunner:
    """Serve the admin API on a bound TCP socket (app.bind_admin)."""
    limits = limits or Limits()
    runner = web.AppRunner(
        make_app(control, limits),
        access_log=None,
        logger=_server_log,
        keepalive_timeout=limits.idle_timeout_seconds,
    )
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
