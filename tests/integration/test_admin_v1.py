"""The admin API's /v1 endpoints on a real server over loopback: roles and scopes, policy edits, explain, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import dns.rcode
import pytest
import yarl

from resolver.control import checks, syncstate
from resolver.operations import admin, audit, tokens
from tests.support import harness

# A csam category (mandatory) whose list must never be readable through the API.
FILES = {
    "policies/province.yaml": harness.PROVINCE.replace("mandatory: [malware]", "mandatory: [malware, csam]"),
    "blocklists/sources.yaml": harness.SOURCES + "  csam:\n    sources:\n      - {file: csam.txt, format: domains}\n",
    "blocklists/csam.txt": "# national list\ncsam-listed.example\n",
}
# Failed authentications are limited per source: these tests make more than ten on purpose.
GENEROUS = admin.Limits(failed_auth_allowed=1_000)
WHO = ("province", "viewer", "school-a", None, "unknown", "doh-a")  # None: no Authorization header


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclasses.dataclass
class Api:
    running: harness.Running
    session: aiohttp.ClientSession
    secrets: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.admin_port}"

    @property
    def policies(self) -> Path:
        return self.running.config.policies_dir

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = "province",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.secrets.get(who, 'sdns_not-a-token')}"
        url = yarl.URL(self.base + path, encoded=True)
        async with self.session.request(method, url, data=data, headers=sent) as response:
            reply = Reply(response.status, response.headers.copy(), await response.text())
        if reply.status >= 400:  # every error is JSON with a message
            assert reply.headers["Content-Type"].startswith("application/json"), reply
            assert reply.json()["message"], reply
        return reply

    async def edit(self, school: str, who: str, change: str = "# edited\n") -> Reply:
        """PUT the school's file as it is plus `change`, over its current ETag."""
        current = await self.call("GET", f"/v1/schools/{school}/policy")
        assert current.status == 200, current
        body = current.text.encode() + change.encode()
        return await self.call("PUT", f"/v1/schools/{school}/policy", who, body, {"If-Match": current.headers["ETag"]})


class FakeSync:
    """A syncstate.Syncing that syncs nothing: what the admin API reads and asks of an instance's sync."""

    def __init__(self) -> None:
        self.current = syncstate.SyncStatus("https://hub.example/repo/", 3, None, None, 0, None, None, False)

    def status(self) -> syncstate.SyncStatus:
        return self.current

    async def sync_now(self) -> syncstate.SyncStatus:
        now = time.time()
        self.current = dataclasses.replace(self.current, last_attempt=now, last_success=now, version=4)
        return self.current


@contextlib.asynccontextmanager
async def serving(
    root: Path,
    limits: admin.Limits = GENEROUS,
    syncing: syncstate.Syncing | None = None,
    config_extra: str = "",
) -> AsyncIterator[Api]:
    async with (
        harness.running_resolver(
            root,
            ["192.0.2.53:53"],  # never asked: these tests query only names that are blocked
            config_extra,
            FILES,
            with_admin=True,
            admin_limits=limits,
            syncing=syncing,
        ) as running,
        aiohttp.ClientSession() as session,
    ):
        path = running.config.admin.tokens_file
        secrets = {
            "province": tokens.add(path, tokens.Role.parse("province"), "prov")[1],
            "viewer": tokens.add(path, tokens.Role.parse("viewer"), "view")[1],
            "school-a": tokens.add(path, tokens.Role.parse("school:school-a"), "it-a")[1],
            # A pupil's DNS over HTTPS token: never the admin API, whatever the endpoint.
            "doh-a": tokens.add(path, tokens.Role.parse("doh:school-a"), "doh-a")[1],
        }
        yield Api(running, session, secrets)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path) as served:
        yield served


# What each caller gets from each endpoint on an instance without `sync:`.
MATRIX = {
    ("GET", "/v1/status"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/schools"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/schools/school-a/policy"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/schools/school-b/policy"): (200, 200, 403, 401, 401, 403),
    ("PUT", "/v1/schools/school-a/policy"): (200, 403, 200, 401, 401, 403),
    ("PUT", "/v1/schools/school-b/policy"): (200, 403, 403, 401, 401, 403),
    ("GET", "/v1/explain?school=school-a&name=games.example.com"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/explain?school=school-b&name=games.example.com"): (200, 200, 403, 401, 401, 403),
    ("POST", "/v1/reload"): (200, 403, 403, 401, 401, 403),
    ("GET", "/v1/sync"): (404, 404, 403, 401, 401, 403),
    ("POST", "/v1/sync"): (404, 403, 403, 401, 401, 403),
    ("GET", "/v1/audit"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/audit?school=school-b"): (200, 200, 403, 401, 401, 403),
    ("GET", "/v1/requests"): (200, 200, 200, 401, 401, 403),
    ("GET", "/v1/requests?school=school-b"): (200, 200, 403, 401, 401, 403),
    ("GET", "/v1/openapi.json"): (200, 200, 200, 401, 401, 403),
}


async def test_every_endpoint_for_every_role(api):
    got = {}
    for method, path in MATRIX:
        for who in WHO:
            if method == "PUT":
                reply = await api.edit(path.split("/")[3], who)
            else:
                reply = await api.call(method, path, who)
            got[(method, path, who)] = reply.status
            if reply.status == 401:
                assert reply.headers["WWW-Authenticate"] == 'Bearer realm="schooldns"'
            if who == "school-a" and "school-b" in path:
                # Refused, and nothing of school B is in the answer.
                assert "THPT B" not in reply.text and "127.0.0.2" not in reply.text
    want = {
        (method, path, who): status
        for (method, path), row in MATRIX.items()
        for who, status in zip(WHO, row, strict=True)
    }
    assert got == want


async def test_the_sync_endpoints_for_every_role_on_an_instance_with_sync(tmp_path):
    fake = FakeSync()
    async with serving(tmp_path, syncing=fake) as api:
        statuses = {}
        for who in WHO:
            statuses[("GET", who)] = (await api.call("GET", "/v1/sync", who)).status
            statuses[("POST", who)] = (await api.call("POST", "/v1/sync", who)).status
        assert [statuses[("GET", who)] for who in WHO] == [200, 200, 403, 401, 401, 403]
        assert [statuses[("POST", who)] for who in WHO] == [200, 403, 403, 401, 401, 403]
        now = (await api.call("GET", "/v1/sync", "viewer")).json()
        assert now["repository"] == "https://hub.example/repo/" and now["version"] == 4
        status = (await api.call("GET", "/v1/status", "viewer")).json()
        assert status["sync"]["version"] == 4 and status["role"] == "viewer" and status["token"] == "view"
        [entry] = (await api.call("GET", "/v1/audit")).json()["entries"]
        assert (entry["action"], entry["result"], entry["who"], entry["role"]) == ("sync", "ok", "prov", "province")


async def test_a_school_token_sees_its_own_school_only(api):
    schools = (await api.call("GET", "/v1/schools", "school-a")).json()["schools"]
    assert schools == [
        {"id": "school-a", "name": "Tiểu học A", "level": "primary", "networks": ["127.0.0.1/32", "::1/128"]}
    ]
    assert [s["id"] for s in (await api.call("GET", "/v1/schools", "viewer")).json()["schools"]] == [
        "school-a",
        "school-b",
    ]
    status = (await api.call("GET", "/v1/status", "school-a")).json()
    assert status["role"] == "school:school-a" and "sync" not in status
    assert status["generation"] == 1 and status["version"]


async def test_a_valid_edit_is_written_kept_installed_and_audited(api):
    before = (api.policies / "school-a.yaml").read_bytes()
    assert (await api.edit("school-a", "school-a", "# a first edit\n")).status == 200
    text = before.decode().replace("deny: [denied.example.org]", "deny: [denied.example.org, newly-denied.example.net]")
    current = await api.call("GET", "/v1/schools/school-a/policy")
    reply = await api.call(
        "PUT", "/v1/schools/school-a/policy", "school-a", text.encode(), {"If-Match": current.headers["ETag"]}
    )
    assert reply.status == 200, reply.text
    body = reply.json()
    assert body == {"generation": 3, "etag": f'"{hashlib.sha256(text.encode()).hexdigest()}"'}
    assert reply.headers["ETag"] == body["etag"]
    assert (api.policies / "school-a.yaml").read_text() == text
    assert api.running.worker.state().generation == 3
    answer = await api.running.udp("newly-denied.example.net")  # from 127.0.0.1: school A
    assert answer.rcode() == dns.rcode.NXDOMAIN

    kept = sorted((api.running.config.state_dir / "policy-history" / "school-a").iterdir())  # 1-..., 2-...
    assert [path.read_bytes() for path in kept] == [before, current.text.encode()]

    entries = (await api.call("GET", "/v1/audit?limit=1", "school-a")).json()["entries"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry | {"time": None} == {
        "time": None,
        "who": "it-a",
        "role": "school:school-a",
        "action": "policy.write",
        "result": "ok",
        "school": "school-a",
        "old_sha256": current.headers["ETag"].strip('"'),
        "new_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "token": None,
        "request": None,
        "decision": None,
        "name": None,
    }
    assert len((await api.call("GET", "/v1/audit", "viewer")).json()["entries"]) == 2


async def test_an_invalid_policy_gets_422_naming_the_real_file_and_changes_nothing(api):
    path = api.policies / "school-a.yaml"
    before = path.read_bytes()
    reply = await api.edit("school-a", "school-a", "block: [gamez]\n")
    assert reply.status == 422
    assert reply.json() == {
        "message": "school-a.yaml does not pass the checks",
        "errors": [
            {
                "file": str(path),
                "line": 7,
                "path": "block[0]",
                "message": "unknown category 'gamez' (did you mean 'games'?) "
                "(known categories: adult, games, malware, bypass, csam)",
            }
        ],
    }
    assert path.read_bytes() == before
    assert api.running.worker.state().generation == 1
    assert not (api.running.config.state_dir / "policy-history").exists()
    [entry] = (await api.call("GET", "/v1/audit")).json()["entries"]
    assert (entry["result"], entry["old_sha256"]) == ("invalid", hashlib.sha256(before).hexdigest())

    # A mandatory category cannot be unblocked: the check's own error.
    reply = await api.edit("school-a", "province", "unblock: [csam]\n")
    assert reply.status == 422
    assert "category 'csam' is mandatory in province.yaml and cannot be unblocked" in reply.text
    assert path.read_bytes() == before


async def test_a_school_token_may_not_change_what_the_province_sets(api):
    path = api.policies / "school-a.yaml"
    before = path.read_text()
    current = await api.call("GET", "/v1/schools/school-a/policy")
    for changed, key in [
        (before.replace("level: primary", "level: upper_secondary"), "level"),
        (before.replace("127.0.0.1/32", "127.0.0.9/32"), "networks"),
        (before.replace("id: school-a\n", ""), "id"),
    ]:
        reply = await api.call(
            "PUT", "/v1/schools/school-a/policy", "school-a", changed.encode(), {"If-Match": current.headers["ETag"]}
        )
        assert reply.status == 403 and f"may not change {key}:" in reply.json()["message"], reply.text
    assert path.read_text() == before
    # The province may.
    changed = before.replace("level: primary", "level: upper_secondary").encode()
    reply = await api.call(
        "PUT", "/v1/schools/school-a/policy", "province", changed, {"If-Match": current.headers["ETag"]}
    )
    assert reply.status == 200, reply.text
    assert [e["result"] for e in (await api.call("GET", "/v1/audit")).json()["entries"]] == ["ok"] + ["refused"] * 3


async def test_problems_in_other_files_are_shown_to_the_province_only(api):
    (api.policies / "school-b.yaml").write_text(harness.SCHOOL_B + "colour: blue\n")
    school = (await api.edit("school-a", "school-a")).json()
    assert school["errors"] == [
        {
            "file": str(api.policies / "school-a.yaml"),
            "line": 1,
            "path": "",
            "message": "1 problem(s) in other files (province.yaml, the config or other schools' files): "
            "the province's administrators must fix them first",
        }
    ]
    province = (await api.edit("school-a", "province")).json()
    assert [(e["file"], e["path"]) for e in province["errors"]] == [(str(api.policies / "school-b.yaml"), "colour")]


async def test_two_edits_of_the_same_version_one_wins_the_other_is_stale(api):
    current = await api.call("GET", "/v1/schools/school-a/policy")
    etag = current.headers["ETag"]

    def put(change: str):
        body = (current.text + change).encode()
        return api.call("PUT", "/v1/schools/school-a/policy", "province", body, {"If-Match": etag})

    first, second = await asyncio.gather(put("# one\n"), put("# two\n"))
    assert sorted([first.status, second.status]) == [200, 412]
    won = "# one\n" if first.status == 200 else "# two\n"
    assert (api.policies / "school-a.yaml").read_text() == current.text + won
    stale = second if first.status == 200 else first
    assert "changed since you read it" in stale.json()["message"]


async def test_a_write_needs_a_precondition_and_the_province_creates_a_school(api):
    reply = await api.call("PUT", "/v1/schools/school-a/policy", "province", b"id: school-a\n")
    assert reply.status == 428 and "If-Match" in reply.json()["message"]
    school_c = b"id: school-c\nlevel: primary\nnetworks: [127.0.0.3/32]\n"
    reply = await api.call("PUT", "/v1/schools/school-c/policy", "province", school_c, {"If-Match": '"abc"'})
    assert reply.status == 412
    reply = await api.call("PUT", "/v1/schools/school-c/policy", "province", school_c, {"If-None-Match": "*"})
    assert reply.status == 200, reply.text
    assert (api.policies / "school-c.yaml").read_bytes() == school_c
    assert "school-c" in [s["id"] for s in (await api.call("GET", "/v1/schools", "viewer")).json()["schools"]]
    assert (await api.running.udp("adult.example.com", source="127.0.0.3")).rcode() == dns.rcode.NXDOMAIN
    reply = await api.call("PUT", "/v1/schools/school-c/policy", "province", school_c, {"If-None-Match": "*"})
    assert reply.status == 412 and "exists already" in reply.json()["message"]


async def test_bounds_body_size_yaml_bombs_and_ids(api):
    path = api.policies / "school-a.yaml"
    before = path.read_bytes()
    etag = {"If-Match": (await api.call("GET", "/v1/schools/school-a/policy")).headers["ETag"]}

    big = b"# " + b"x" * 70_000 + b"\n"
    reply = await api.call("PUT", "/v1/schools/school-a/policy", "province", big, etag)
    assert reply.status == 413 and "larger than 65536 bytes" in reply.json()["message"]

    async def chunked():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"#" * 4096 + b"\n"

    url = yarl.URL(api.base + "/v1/schools/school-a/policy")
    headers = {"Authorization": f"Bearer {api.secrets['province']}", **etag}
    async with api.session.put(url, data=chunked(), headers=headers) as response:
        assert response.status == 413 and (await response.json())["message"]

    bomb = "id: school-a\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    )
    started = time.monotonic()
    reply = await api.call("PUT", "/v1/schools/school-a/policy", "province", bomb.encode(), etag)
    assert time.monotonic() - started < 2
    assert reply.status == 422
    assert reply.json()["errors"] == [
        {
            "file": str(path),
            "line": 2,
            "path": "",
            "message": "invalid YAML: anchors and aliases (&name, *name) are not allowed: write the values out",
        }
    ]
    deep = "id: school-a\nx: " + "[" * 50 + "]" * 50 + "\n"
    reply = await api.call("PUT", "/v1/schools/school-a/policy", "province", deep.encode(), etag)
    assert reply.status == 422 and "nested deeper than 16 levels" in reply.text

    for school in ("..%2F..%2Fconfig", "..", "School-A", "a.b", "a%00b", "x" * 64):
        for method in ("GET", "PUT"):
            reply = await api.call(method, f"/v1/schools/{school}/policy", "province", b"id: x\n", etag)
            assert reply.status in (400, 404), (school, reply)
    for reserved in ("province", "unknown"):
        reply = await api.call("GET", f"/v1/schools/{reserved}/policy", "province")
        assert reply.status == 404, reply
    assert (await api.call("GET", "/v1/schools/school-z/policy", "province")).status == 404
    assert path.read_bytes() == before
    assert (await api.call("GET", "/v1/audit")).json()["entries"][0]["result"] == "invalid"


async def test_explain_is_what_the_command_prints_and_withholds_the_csam_list(api):
    reply = await api.call(
        "GET", "/v1/explain?school=school-a&name=Games.Example.com.&at=2026-11-25%2010:00", "school-a"
    )
    assert reply.status == 200
    body = reply.json()
    snapshot = api.running.worker.pipeline.snapshot
    at = checks.parse_time("2026-11-25 10:00", "Asia/Ho_Chi_Minh").timestamp()
    cfg = api.running.config
    assert body["lines"] == checks.explain(snapshot, "school-a", "Games.Example.com.", at, cfg.blocklists_dir)
    assert body["decision"] == {"verdict": "block", "category": "games", "authority": "school", "action": "nxdomain"}
    assert body["listed"] == [
        {
            "name": "games.example.com",
            "match": "subtree",
            "kind": "block",
            "categories": ["games"],
            "found_in": ["games.txt:1 (block)"],
        }
    ]
    assert (body["name"], body["input"], body["at"]) == (
        "games.example.com",
        "Games.Example.com.",
        "2026-11-25T03:00:00+00:00",
    )

    reply = await api.call("GET", "/v1/explain?school=school-b&name=www.csam-listed.example", "province")
    body = reply.json()
    assert body["decision"]["category"] == "csam" and body["decision"]["authority"] == "province"
    assert body["listed"] == [
        {"name": None, "match": "subtree", "kind": "block", "categories": ["csam"], "found_in": []}
    ]
    assert "listed: (withheld) (block, subtree) in csam" in body["lines"]
    assert "csam.txt" not in reply.text and "csam-listed.example (" not in reply.text
    # The command line, on the server's own files, traces it.
    assert "  from csam.txt:2 (block)" in checks.explain(
        snapshot, "school-b", "www.csam-listed.example", time.time(), cfg.blocklists_dir
    )

    for query, status in [
        ("school=school-a", 400),
        ("school=school-a&name=http://x.com/a", 400),
        ("school=school-a&name=x.com&at=tomorrow", 400),
        ("school=school-z&name=x.com", 404),
    ]:
        reply = await api.call("GET", f"/v1/explain?{query}", "viewer")
        assert reply.status == status, (query, reply)


async def test_reload_installs_a_new_generation_and_is_audited(api):
    reply = await api.call("POST", "/v1/reload")
    assert (reply.status, reply.json()) == (200, {"generation": 2})
    (api.policies / "school-b.yaml").write_text("id: school-b\nlevel: nope\n")
    reply = await api.call("POST", "/v1/reload")
    assert reply.status == 422 and "still serving generation 2" in reply.json()["message"]
    entries = (await api.call("GET", "/v1/audit", "viewer")).json()["entries"]
    assert [(e["action"], e["result"]) for e in entries] == [("reload", "failed"), ("reload", "ok")]


async def test_failed_authentications_are_limited_per_source(tmp_path):
    limits = admin.Limits(failed_auth_allowed=3, failed_auth_window_seconds=60)
    async with serving(tmp_path, limits) as api:
        for _ in range(3):
            assert (await api.call("GET", "/v1/status", None)).status == 401  # no token is no attempt
        for _ in range(3):
            assert (await api.call("GET", "/v1/status", "unknown")).status == 401
        for who in ("unknown", "province", None):  # this source is refused, whatever it sends
            reply = await api.call("GET", "/v1/status", who)
            assert reply.status == 429 and 55 <= int(reply.headers["Retry-After"]) <= 60, reply
        async with api.session.get(api.base + "/healthz") as response:
            assert response.status == 200  # the endpoints without a token are not limited
        assert await api.running.metric("schooldns_admin_auth_rate_limited_total") == 3.0


async def test_audit_entries_dropped_with_the_oldest_rotated_file_are_counted(tmp_path):
    async with serving(tmp_path) as api:
        log = api.running.config.state_dir / audit.AUDIT_FILE
        line = b'{"action":"reload","result":"ok","who":"x","role":"province","time":"2026-01-01T00:00:00.000Z"}\n'
        log.write_bytes(line * (audit.MAX_FILE_BYTES // len(line)))  # full: the next entry rotates
        for n in range(1, audit.KEEP_ROTATED + 1):
            log.with_name(f"{log.name}.{n}").write_bytes(line * n)  # the oldest, .4, holds 4 entries
        assert (await api.call("POST", "/v1/reload")).status == 200
        assert log.with_name(f"{log.name}.4").read_bytes() == line * 3  # .3 moved on; .4 went
        assert await api.running.metric("schooldns_audit_entries_dropped_total") == 4.0


async def test_an_instance_with_sync_refuses_edits_and_names_the_hub(tmp_path):
    extra = "sync: {repository: 'https://hub.example/repo/', trusted_root: root.json}\n"
    async with serving(tmp_path, config_extra=extra) as api:
        reply = await api.edit("school-a", "province")
        assert reply.status == 409
        assert reply.json()["message"] == (
            "this instance takes its policies from the hub (https://hub.example/repo/): edit at the hub"
        )


async def test_slow_clients_are_cut_off(tmp_path):
    limits = dataclasses.replace(GENEROUS, body_timeout_seconds=0.3, idle_timeout_seconds=0.5)
    async with serving(tmp_path, limits) as api:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.running.admin_port)
        writer.write(
            b"PUT /v1/schools/school-a/policy HTTP/1.1\r\nHost: x\r\nIf-Match: *\r\n"
            + f"Authorization: Bearer {api.secrets['province']}\r\n".encode()
            + b"Content-Length: 100\r\n\r\nid: school-a\n"
        )
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 ")
        writer.close()

        # Headers that never end: the connection is closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", api.running.admin_port)
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()


async def test_curl_as_a_client(api):
    async def curl(*args: str) -> str:  # the server runs in this event loop: curl must not block it
        process = await asyncio.create_subprocess_exec(
            "curl", "-s", "-i", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, err
        return out.decode()

    out = await curl(f"{api.base}/v1/schools/school-a/policy")
    assert out.startswith("HTTP/1.1 401 ") and 'WWW-Authenticate: Bearer realm="schooldns"' in out
    auth = f"Authorization: Bearer {api.secrets['school-a']}"
    out = await curl("-H", auth, f"{api.base}/v1/schools/school-a/policy")
    etag = '"' + hashlib.sha256((api.policies / "school-a.yaml").read_bytes()).hexdigest() + '"'
    assert f"ETag: {etag}" in out and "Content-Type: application/yaml; charset=utf-8" in out
    assert out.endswith(harness.SCHOOL_A)


async def test_every_route_is_in_the_openapi_document_and_every_path_there_is_served(api):
    document = (await api.call("GET", "/v1/openapi.json", "viewer")).json()
    assert document == admin.openapi_document() and document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method != "parameters"
    }

    async def no_feed() -> None:
        return None

    control = admin.Control(
        api.running.worker.state, api.running.worker.reload, api.running.config, None, rpz=no_feed
    )  # every route, the RPZ feed's too
    app = admin.make_app(control)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == documented


async def test_a_malformed_request_is_logged_without_the_client_address(api, caplog):
    caplog.set_level("DEBUG")
    for request in (b"GARBAGE\r\n\r\n", b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.running.admin_port)
        writer.write(request)
        async with asyncio.timeout(5):
            assert re.match(rb"HTTP/1\.[01] 400 ", await reader.read())
        writer.close()
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("resolver.operations")]
    assert len([message for message in logged if message.startswith("Error handling request: ")]) == 2, logged
    assert "127.0.0.1" not in caplog.text
