"""The block page and its requests over loopback: what a page shows, its forms' guards and bounds, the decisions."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import dns.rcode
import pytest

from resolver.control import config
from resolver.errors import ResolverError
from resolver.operations import admin, pages, requestbox, tlscert, tokens
from resolver.processes import app
from tests.support import harness, served, testca
from tests.support.fake_upstream import FakeUpstream

# School A (127.0.0.1) answers blocked names with the block page's address, and blocks games;
# school B (127.0.0.2) does not block games; 127.0.0.3 is in no school. csam is withheld.
FILES = {
    "policies/province.yaml": harness.PROVINCE.replace("mandatory: [malware]", "mandatory: [malware, csam]")
    + "blockpage: {ipv4: 127.0.0.1}\n",
    "policies/school-a.yaml": harness.SCHOOL_A + "action: blockpage\n",
    "blocklists/sources.yaml": harness.SOURCES + "  csam:\n    sources:\n      - {file: csam.txt, format: domains}\n",
    "blocklists/csam.txt": "csam-listed.example\n",
}
BLOCKPAGE = 'blockpage: {listen: ["127.0.0.1:0"], submissions_per_source: 100}\n'
WHO = {"province": "province", "viewer": "viewer", "it-a": "school:school-a", "it-b": "school:school-b"}


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str

    def token(self, form: str) -> str:
        found = re.search(rf'id="{form}".*?name="token" value="([^"]+)"', self.text)
        assert found, self.text
        return found[1]

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def words(self) -> str:
        """The text with HTML's escapes undone."""
        return html.unescape(self.text)


@dataclasses.dataclass
class Site:
    running: harness.Running
    secrets: dict[str, str]

    async def get(self, host: str, source: str = "127.0.0.1", path: str = "/") -> Reply:
        return await self._http("GET", path, source, {"Host": host})

    async def post(
        self, form: str, fields: Mapping[str, str], host: str, source: str = "127.0.0.1", **headers: str
    ) -> Reply:
        path = pages.UNBLOCK_PATH if form == "unblock" else pages.REPORT_PATH
        return await self._http("POST", path, source, {"Host": host, **headers}, data=dict(fields))

    async def ask(self, name: str, reason: str = "schoolwork", source: str = "127.0.0.1") -> Reply:
        """What the unblock form sends from the page of `name`."""
        token = (await self.get(name, source)).token("unblock")
        return await self.post("unblock", {"token": token, "name": name, "reason": reason}, name, source)

    async def report(self, site: str, reason: str = "scam", source: str = "127.0.0.1") -> Reply:
        token = (await self.get("blocked.example.vn", source)).token("report")
        return await self.post("report", {"token": token, "site": site, "reason": reason}, "blocked.example.vn", source)

    async def api(self, method: str, path: str, who: str, body: object = None) -> Reply:
        url = f"http://127.0.0.1:{self.running.admin_port}{path}"
        headers = {"Authorization": f"Bearer {self.secrets[who]}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, headers=headers, data=None if body is None else json.dumps(body)) as response,
        ):
            return Reply(response.status, response.headers.copy(), await response.text())

    async def decide(self, request_id: int, decision: str, who: str) -> Reply:
        return await self.api("POST", f"/v1/requests/{request_id}/decision", who, {"decision": decision})

    async def _http(self, method: str, path: str, source: str, headers: dict[str, str], **kwargs: Any) -> Reply:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with (
            aiohttp.ClientSession(connector=connector, skip_auto_headers=["Host"]) as session,
            session.request(
                method, f"http://127.0.0.1:{self.running.blockpage_port}{path}", headers=headers, **kwargs
            ) as response,
        ):
            return Reply(response.status, response.headers.copy(), await response.text())


@contextlib.asynccontextmanager
async def site_at(root: Path, config_extra: str = BLOCKPAGE) -> AsyncIterator[Site]:
    async with harness.running_resolver(
        root,
        ["192.0.2.53:53"],
        config_extra,
        FILES,
        with_admin=True,
        admin_limits=admin.Limits(failed_auth_allowed=100),
    ) as running:
        path = running.config.admin.tokens_file
        yield Site(running, {who: tokens.add(path, tokens.Role.parse(role), who)[1] for who, role in WHO.items()})


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with site_at(tmp_path) as served:
        yield served


async def test_the_page_says_what_is_blocked_for_the_childs_school_and_by_whom(site):
    reply = await site.get("games.example.com", path="/play?id=7")
    assert reply.status == 403 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Content-Security-Policy"].startswith("default-src 'none'")
    for words in ("This site is blocked", "games.example.com", "Trò chơi", "Tiểu học A", "Your school", "111"):
        assert words in reply.text
    assert "127.0.0.1" not in reply.text
    assert "Send to my school" in reply.text and "Report a harmful site" in reply.text

    for host, source, words in (
        ("malware.example.com", "127.0.0.1", "The province (every school)"),
        ("denied.example.org", "127.0.0.1", "A site your school blocks"),
        ("adult.example.com:80", "127.0.0.2", "THPT B"),
    ):
        reply = await site.get(host, source)
        assert reply.status == 403 and words in reply.text and "Send to my school" in reply.text, host

    withheld = await site.get("www.csam-listed.example")  # blocked, but no one may ask: the list is never shown
    assert withheld.status == 403 and "Content the law forbids" in withheld.text
    assert 'id="unblock"' not in withheld.text and 'id="report"' in withheld.text

    not_blocked = await site.get("games.example.com", "127.0.0.2")  # school B does not block games
    assert not_blocked.status == 200 and "This site is not blocked now" in not_blocked.text
    assert "<form" not in not_blocked.text.replace('<form method="post" action="/_schooldns/report"', "")

    for host in ("blocked.example.vn", "127.0.0.1:8080", "[::1]"):  # the page by its own name or address
        own = await site.get(host)
        assert own.status == 200 and "Your school's block page" in own.words, host
        assert 'id="report"' in own.text and 'id="unblock"' not in own.text

    nobody = await site.get("games.example.com", "127.0.0.3")  # in no school: blocked for no one, no forms
    assert nobody.status == 200 and "<form" not in nobody.text and "111" in nobody.text


async def test_a_form_needs_the_token_of_its_own_page(site):
    name = "games.example.com"
    page = await site.get(name)
    token = page.token("unblock")
    wrong = {
        "no token": {"name": name, "reason": "schoolwork"},
        "a token for another name": {"token": token, "name": "adult.example.com", "reason": "schoolwork"},
        "a report's token": {"token": page.token("report"), "name": name, "reason": "schoolwork"},
        "a changed token": {"token": token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "name": name},
        "an older time": {"token": f"{int(token.split('.')[0]) - 1}.{token.split('.')[1]}", "name": name},
    }
    for what, fields in wrong.items():
        reply = await site.post("unblock", {"reason": "schoolwork", **fields}, name)
        assert reply.status == 403 and "This page is too old" in reply.text, what
    # School B's page, sent from school A's address: another school's token.
    other = (await site.get("adult.example.com", "127.0.0.2")).token("unblock")
    reply = await site.post("unblock", {"token": other, "name": "adult.example.com", "reason": "other"}, name)
    assert reply.status == 403
    # A page of another site posting to the block page: refused by its Origin.
    fields = {"token": token, "name": name, "reason": "schoolwork"}
    reply = await site.post("unblock", fields, name, Origin="http://evil.example")
    assert reply.status == 403
    assert (await site.api("GET", "/v1/requests", "province")).json() == {"requests": []}

    reply = await site.post("unblock", fields, name, Origin=f"http://{name}")
    assert reply.status == 200 and "Sent to your school" in reply.text
    reply = await site.post("unblock", fields, name)  # the same page again: counted on the same request
    assert reply.status == 200 and "Someone has asked about this site already" in reply.text
    [request] = (await site.api("GET", "/v1/requests", "it-a")).json()["requests"]
    assert (request["name"], request["asked"], request["reason"]) == (name, 2, "schoolwork")


async def test_form_posts_are_limited_per_source(tmp_path):
    async with site_at(tmp_path, BLOCKPAGE.replace("100", "6")) as site:
        await _six_posts_then_429(site)


async def _six_posts_then_429(site: Site) -> None:
    for _ in range(3):
        assert (await site.report("bad.example.net")).status == 200
    for _ in range(3):
        assert (await site.post("report", {"site": "x.example"}, "blocked.example.vn")).status == 403
    reply = await site.report("other-bad.example.net")  # the seventh post from this source
    assert reply.status == 429 and "You have sent a lot" in reply.text
    assert 590 <= int(reply.headers["Retry-After"]) <= 601
    assert (await site.get("games.example.com")).status == 403  # the page itself is not limited
    assert (await site.report("other-bad.example.net", source="127.0.0.2")).status == 200  # another source
    found = (await site.api("GET", "/v1/requests", "viewer")).json()["requests"]
    assert [(r["school"], r["name"], r["asked"]) for r in found] == [
        ("school-b", "other-bad.example.net", 1),
        ("school-a", "bad.example.net", 3),
    ]


async def test_what_a_form_takes_and_what_it_keeps(site, caplog):
    caplog.set_level("DEBUG")
    token = (await site.get("blocked.example.vn")).token("report")
    reply = await site.post("report", {"token": token, "site": "x" * 5000, "reason": "scam"}, "blocked.example.vn")
    assert reply.status == 400 and "That is not the name of a website" in reply.text
    reply = await site.post("report", {"token": token, "site": "y" * 9000}, "blocked.example.vn")
    assert reply.status == 400  # over the body's bound
    reply = await site.post("report", {"token": token, "site": "ok.example", "reason": "?"}, "blocked.example.vn")
    assert reply.status == 400
    reply = await site.report("https://Adult.Example.com/x")  # blocked for this school already: nothing to keep
    assert reply.status == 200 and "That site is blocked already" in reply.text
    reply = await site.report("www.csam-listed.example")
    assert reply.status == 200 and "That site is blocked already" in reply.text
    reply = await site.post("report", {"token": token, "site": "ok.example", "reason": "scam"}, "x", "127.0.0.3")
    assert reply.status == 403 and "not on a school's network" in reply.words
    assert (await site.report("https://Bad.Example.net/page?child=someone")).status == 200
    assert (await site.ask("games.example.com", "not_harmful")).status == 200

    found = (await site.api("GET", "/v1/requests", "province")).json()["requests"]
    assert [(r["kind"], r["name"], r["reason"]) for r in found] == [
        ("unblock", "games.example.com", "not_harmful"),
        ("report", "bad.example.net", "scam"),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", r["created"]) for r in found)  # to the minute
    kept = (site.running.config.state_dir / requestbox.REQUESTS_FILE).read_bytes()
    assert b"127.0.0" not in kept and b"someone" not in kept
    assert "127.0.0" not in caplog.text


async def test_a_school_decides_its_own_requests_and_an_allow_unblocks_the_name(site):
    await site.ask("games.example.com")
    await site.ask("adult.example.com", source="127.0.0.2")
    await site.report("bad.example.net")
    listed = {who: (await site.api("GET", "/v1/requests", who)).json()["requests"] for who in WHO}
    assert [r["name"] for r in listed["province"]] == ["bad.example.net", "adult.example.com", "games.example.com"]
    assert listed["viewer"] == listed["province"]
    assert [r["name"] for r in listed["it-a"]] == ["bad.example.net", "games.example.com"]
    assert [r["name"] for r in listed["it-b"]] == ["adult.example.com"]
    assert (await site.api("GET", "/v1/requests?school=school-b", "it-a")).status == 403
    assert (await site.api("GET", "/v1/requests?status=maybe", "it-a")).status == 400
    assert (
        len((await site.api("GET", "/v1/requests?school=school-a&status=open&limit=1", "viewer")).json()["requests"])
        == 1
    )
    games, adult, report = (r["id"] for r in reversed(listed["province"]))

    assert (await site.decide(games, "allow", "viewer")).status == 403
    assert (await site.decide(games, "allow", "it-b")).status == 404  # another school's: as if there were none
    assert (await site.decide(999, "allow", "province")).status == 404
    assert (await site.api("POST", f"/v1/requests/{games}/decision", "it-a", {"decision": "maybe"})).status == 400
    assert (await site.api("POST", "/v1/requests/x/decision", "it-a", {"decision": "allow"})).status == 400
    assert (await site.decide(games, "deny", "it-a")).status == 400  # an unblock request is not denied
    assert (await site.decide(report, "allow", "it-a")).status == 400  # a report is not allowed
    assert (await site.running.udp("games.example.com")).answer[0][0].address == "127.0.0.1"  # the block page

    path = site.running.config.policies_dir / "school-a.yaml"
    before = path.read_text()
    reply = await site.decide(games, "allow", "it-a")
    assert reply.status == 200, reply.text
    assert reply.json()["request"]["status"] == "allowed" and reply.json()["generation"] == 2
    assert path.read_text() == before.replace(
        "allow: [allowed.example.com]", "allow: [allowed.example.com, games.example.com]"
    )
    answer = await site.running.udp("games.example.com", timeout=3)  # forwarded now; the upstream never answers
    assert answer.rcode() == dns.rcode.SERVFAIL
    assert (await site.decide(games, "reject", "it-a")).status == 409  # decided already

    reply = await site.decide(report, "deny", "it-a")
    assert reply.status == 200 and "deny: [denied.example.org, bad.example.net]" in path.read_text()
    assert (await site.running.udp("www.bad.example.net")).answer[0][0].address == "127.0.0.1"

    reply = await site.decide(adult, "forward", "it-b")
    assert reply.status == 200 and reply.json()["request"]["status"] == "forwarded"
    assert (await site.decide(adult, "reject", "it-b")).status == 409  # with the province now
    assert (await site.decide(adult, "forward", "province")).status == 409
    reply = await site.decide(adult, "reject", "province")
    assert reply.status == 200 and reply.json()["request"]["decided_by"] == "province"

    entries = (await site.api("GET", "/v1/audit", "province")).json()["entries"]
    assert [(e["action"], e["school"], e["request"], e["decision"], e["name"], e["who"]) for e in entries] == [
        ("request.decision", "school-b", adult, "reject", "adult.example.com", "province"),
        ("request.decision", "school-b", adult, "forward", "adult.example.com", "it-b"),
        ("request.decision", "school-a", report, "deny", "bad.example.net", "it-a"),
        ("policy.write", "school-a", None, None, None, "it-a"),
        ("request.decision", "school-a", games, "allow", "games.example.com", "it-a"),
        ("policy.write", "school-a", None, None, None, "it-a"),
    ]
    unblocked = await site.get("games.example.com")  # a browser that still has the blocked answer: no form
    assert unblocked.status == 200 and "This site is not blocked now" in unblocked.text
    assert 'id="unblock"' not in unblocked.text


async def test_an_allow_never_lifts_the_provinces_block_nor_edits_a_hubs_policies(tmp_path):
    extra = BLOCKPAGE + "sync: {repository: 'https://hub.example/repo/', trusted_root: root.json}\n"
    async with site_at(tmp_path, extra) as site:
        await site.ask("malware.example.com")
        await site.ask("games.example.com")
        malware, games = sorted(r["id"] for r in (await site.api("GET", "/v1/requests", "it-a")).json()["requests"])
        for who in ("it-a", "province"):
            reply = await site.decide(malware, "allow", who)
            assert reply.status == 409 and "blocked by the province (malware)" in reply.json()["message"]
        reply = await site.decide(games, "allow", "it-a")
        assert reply.status == 409 and "edit at the hub" in reply.json()["message"]
        assert (await site.decide(games, "forward", "it-a")).status == 200  # no policy change: fine on a hub's instance
        assert (await site.decide(malware, "forward", "it-a")).status == 200
        assert (await site.decide(malware, "reject", "province")).status == 200


async def _https(port: int, name: str, ca_file: Path) -> tuple[int, str]:
    trust = ssl.create_default_context(cafile=str(ca_file))
    connector = aiohttp.TCPConnector(ssl=trust, resolver=_Loopback())
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://{name}:{port}/") as response,
    ):
        return response.status, await response.text()


class _Loopback(aiohttp.abc.AbstractResolver):
    """Every name is 127.0.0.1 (what the block page's address is in these tests)."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def test_https_with_a_certificate_the_device_trusts_and_a_renewed_one(tmp_path):
    ca = testca.make_ca(tmp_path / "tls")  # the school CA a managed device trusts
    cert_file, key_file = ca.issue("page", "games.example.com")
    tls = f'{{listen: ["127.0.0.1:0"], cert_file: {cert_file}, key_file: {key_file}}}'
    extra = f'blockpage: {{listen: ["127.0.0.1:0"], tls: {tls}}}\n'
    async with site_at(tmp_path / "site", extra) as site:
        port = site.running.blockpage_tls_port
        status, text = await _https(port, "games.example.com", ca.ca_file)
        assert status == 403 and "games.example.com" in text and "Tiểu học A" in text
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await _https(port, "adult.example.com", ca.ca_file)  # a name the certificate does not hold

    # A renewed certificate is taken; a half-written one keeps the one served.
    cfg = config.load_config(tmp_path / "site" / "config.yaml")
    assert cfg.blockpage is not None and cfg.blockpage.tls is not None
    certificate = tlscert.Certificate(cfg.blockpage.tls, "blockpage.tls")
    assert not certificate.reload_if_changed()
    ca.issue("page", "adult.example.com")
    assert certificate.reload_if_changed()
    key_file.write_text("-----BEGIN PRIVATE KEY-----\ncut short")
    with pytest.raises(ResolverError, match=r"^blockpage.tls: cannot load the certificate .*page.pem with the key "):
        certificate.reload_if_changed()


def test_a_certificate_that_does_not_load_stops_the_start_in_one_line(tmp_path):
    path = harness.write_site(
        tmp_path,
        ["192.0.2.53:53"],
        'blockpage: {listen: ["127.0.0.1:0"], tls: {cert_file: no.pem, key_file: no.key}}\n',
    )
    cfg = config.load_config(path)
    with pytest.raises(ResolverError) as raised:
        app.bind_blockpage(cfg)
    assert str(raised.value) == (
        f"blockpage.tls in {path}: cannot load the certificate {tmp_path / 'no.pem'} with the key "
        f"{tmp_path / 'no.key'}: No such file or directory"
    )


def test_a_block_page_port_that_is_taken_stops_the_start_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = harness.write_site(tmp_path, ["192.0.2.53:53"], f'blockpage: {{listen: ["127.0.0.1:{port}"]}}\n')
        with pytest.raises(ResolverError) as raised:
            app.bind_blockpage(config.load_config(path))
    assert str(raised.value) == (
        f"cannot listen on 127.0.0.1:{port} (tcp): address already in use; "
        f"stop the other server or change blockpage.listen in {path}"
    )


async def test_schooldns_serve_in_one_process_serves_the_page(tmp_path):
    async with (
        FakeUpstream() as upstream,
        served.serve(tmp_path, upstream, workers=1, files=FILES, more_config=BLOCKPAGE) as server,
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.blockpage_port}/", headers={"Host": "games.example.com"}) as response,
    ):
        assert response.status == 403
        assert "Tiểu học A" in await response.text()


async def test_requests_deleted_to_stay_under_the_bound_are_counted_decided_first(tmp_path):
    extra = 'blockpage: {listen: ["127.0.0.1:0"], submissions_per_source: 100, max_requests: 10}\n'
    async with site_at(tmp_path, extra) as site:
        for number in range(10):
            assert (await site.ask(f"n{number}.games.example.com")).status == 200
        oldest = (await site.api("GET", "/v1/requests?limit=10", "it-a")).json()["requests"][-1]
        assert (await site.decide(oldest["id"], "reject", "it-a")).status == 200
        for number in range(10, 12):  # two over the bound: the decided one goes, then the oldest waiting
            assert (await site.ask(f"n{number}.games.example.com")).status == 200
        kept = (await site.api("GET", "/v1/requests", "province")).json()["requests"]
        assert [r["name"] for r in kept][-1] == "n2.games.example.com" and len(kept) == 10
        running = site.running
        assert await running.metric("schooldns_blockpage_requests_deleted_total", status="decided") == 1.0
        assert await running.metric("schooldns_blockpage_requests_deleted_total", status="waiting") == 1.0
