"""GET /v1/report by role, and the /ui/ pages: sign-in sessions over HTTP, then in a real headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import sqlite3
import zoneinfo
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from resolver.operations import admin, tokens
from resolver.processes import app
from tests.support import harness
from tests.support.chromium import chromium
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import serve

SCHOOL_C = {"policies/school-c.yaml": 'id: school-c\nname: "THCS C"\nlevel: primary\nnetworks: [127.0.0.4/32]\n'}
GENEROUS = admin.Limits(failed_auth_allowed=1_000)  # these tests fail authentications on purpose
WHO = ("province", "viewer", "school-a", None, "unknown")  # None: no Authorization header
YEAR = str(datetime.datetime.now(zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")).year)


@dataclasses.dataclass
class Site:
    running: harness.Running
    session: aiohttp.ClientSession
    secrets: dict[str, str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.running.admin_port}"

    async def get(self, path: str, who: str | None = "province", headers: Mapping[str, str] | None = None):
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.secrets.get(who, 'sdns_not-a-token')}"
        async with self.session.get(self.base + path, headers=sent, allow_redirects=False) as response:
            return response.status, response.headers.copy(), await response.text()

    async def post(self, path: str, form: Mapping[str, str], headers: Mapping[str, str] | None = None):
        async with self.session.post(self.base + path, data=dict(form), headers=headers, allow_redirects=False) as r:
            return r.status, r.headers.copy(), await r.text()


@contextlib.asynccontextmanager
async def site(root: Path) -> AsyncIterator[Site]:
    """The real resolver and admin API over three schools; school-a and school-b asked, school-c silent;
    the day's rollups written by the serving process's writer."""
    async with (
        harness.running_resolver(
            root, ["192.0.2.53:53"], "", SCHOOL_C, with_admin=True, admin_limits=GENEROUS
        ) as running,  # the upstream is never asked: only blocked names are
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
    ):
        for source, name in (("127.0.0.1", "adult.example.com"), ("127.0.0.1", "malware.example.com")):
            assert (await running.udp(name, source=source)).rcode() == dns.rcode.NXDOMAIN
        assert (await running.udp("adult.example.com", source="127.0.0.2")).rcode() == dns.rcode.NXDOMAIN

        assert await app.recorder(running.config, running.worker.state).flush()
        path = running.config.admin.tokens_file
        secrets = {
            "province": tokens.add(path, tokens.Role.parse("province"), "prov")[1],
            "viewer": tokens.add(path, tokens.Role.parse("viewer"), "view")[1],
            "school-a": tokens.add(path, tokens.Role.parse("school:school-a"), "it-a")[1],
        }
        yield Site(running, session, secrets)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Site]:
    async with site(tmp_path) as made:
        yield made


async def test_the_report_by_role(served):
    statuses = {}
    for who in WHO:
        status, headers, text = await served.get(f"/v1/report?year={YEAR}", who)
        statuses[who] = status
        if who in ("province", "viewer"):
            body = json.loads(text)
            assert [school["id"] for school in body["schools"]] == ["school-a", "school-b", "school-c"]
            assert body["summary"]["schools_active"] == 2 and body["summary"]["silent_schools"] == ["school-c"]
            assert body["summary"]["blocked_by_authority"] == {"province": 1, "school": 2}
        elif who == "school-a":
            body = json.loads(text)
            assert [school["id"] for school in body["schools"]] == ["school-a"]
            assert "THPT B" not in text and "THCS C" not in text and body["summary"]["unknown_queries"] == 0
        else:
            assert headers["WWW-Authenticate"] == 'Bearer realm="schooldns"'
    assert [statuses[who] for who in WHO] == [200, 200, 200, 401, 401]

    status, headers, text = await served.get("/v1/report?format=csv", "school-a")  # this year by default
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    assert [line.split(",")[0] for line in text.splitlines()] == ["school", "school-a"]
    status, headers, text = await served.get(f"/v1/report?year={YEAR}&format=md", "viewer")
    assert status == 200 and headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert "| Trường có truy vấn trong năm / Schools with queries during the year | 2/3 (66%) |" in text
    for query, message in (("year=1999", "year: expected a year 2000 to 2100"), ("format=pdf", "format: one of")):
        status, _, text = await served.get(f"/v1/report?{query}")
        assert status == 400 and message in json.loads(text)["message"]


def cookie_of(headers: Mapping[str, str]) -> tuple[str, str]:
    """The session cookie a response sets: (its value, the whole Set-Cookie header)."""
    header = headers["Set-Cookie"]
    match = re.match(r"schooldns_session=([^;]*)", header)
    assert match, header
    return match[1], header


async def test_a_token_given_once_becomes_a_session_that_ends_with_the_token(served):
    status, headers, _ = await served.get("/ui", None)
    assert status == 308 and headers["Location"] == "/ui/"
    status, headers, text = await served.get("/ui/", None)
    assert status == 200 and 'name="token" type="password"' in text and "Set-Cookie" not in headers
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"

    status, headers, text = await served.post("/ui/sign-in", {"token": "sdns_wrong"})
    assert status == 401 and "Mã truy cập không đúng." in text and "Set-Cookie" not in headers
    secret = served.secrets["province"]
    status, headers, _ = await served.post(
        "/ui/sign-in", {"token": secret}, {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403 and "Set-Cookie" not in headers  # another site's form signs nobody in
    for older_browser in ({"Origin": "http://attacker.example"}, {"Origin": "null"}):
        assert (await served.post("/ui/sign-in", {"token": secret}, older_browser))[0] == 403
    # Behind a TLS proxy that passes the Host header on, the page's origin is https://, and welcome.
    proxied = {"Origin": served.base.replace("http://", "https://")}
    assert (await served.post("/ui/sign-in", {"token": secret}, proxied))[0] == 303

    status, headers, _ = await served.post("/ui/sign-in?lang=en", {"token": secret}, {"Origin": served.base})
    assert status == 303 and headers["Location"] == "/ui/?lang=en"
    value, set_cookie = cookie_of(headers)
    assert secret not in set_cookie and tokens.digest(secret) not in set_cookie  # the session is no token
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/ui/", "Max-Age=28800"):
        assert attribute in set_cookie
    cookie = {"Cookie": f"schooldns_session={value}"}

    status, _, text = await served.get("/ui/?lang=en", None, cookie)
    assert status == 200 and "Signed in as <b>prov</b> (province)" in text
    assert '<div class="big warn">2/3</div>' in text and "THCS C" in text
    status, _, text = await served.get("/ui/schools/school-b?lang=en", None, cookie)
    assert status == 200 and "THPT B" in text and "Tiểu học A" not in text
    assert (await served.get("/v1/status", None, cookie))[0] == 401  # a session is not a token for /v1

    forged = value[:-4] + ("0000" if not value.endswith("0000") else "1111")
    assert 'name="token"' in (await served.get("/ui/", None, {"Cookie": f"schooldns_session={forged}"}))[2]
    tokens.revoke(served.running.config.admin.tokens_file, "prov")
    assert 'name="token"' in (await served.get("/ui/", None, cookie))[2]  # revoked: the session is over

    status, headers, _ = await served.post("/ui/sign-out", {}, {**cookie, "Origin": served.base})
    assert status == 303 and cookie_of(headers)[0] in ("", '""') and "Max-Age=0" in headers["Set-Cookie"]


async def test_a_school_session_sees_its_own_school_only(served):
    status, headers, _ = await served.post("/ui/sign-in", {"token": served.secrets["school-a"]})
    assert status == 303
    cookie = {"Cookie": f"schooldns_session={cookie_of(headers)[0]}"}
    status, _, text = await served.get("/ui/", None, cookie)
    assert status == 200 and "Tiểu học A" in text and "THPT B" not in text and "THCS C" not in text
    status, _, text = await served.get("/ui/schools/school-b", None, cookie)
    assert status == 403 and "THPT B" not in text
    assert (await served.get("/ui/schools/school-b", None))[0] == 401  # no session at all


# ---------------------------------------------------------------------------------------------
# In a real browser, against the real `schooldns serve`.


async def test_the_dashboard_in_chromium_for_the_province_and_for_a_school(tmp_path):
    artifacts = tmp_path / "screenshots"  # kept by pytest with the test's tmp_path
    artifacts.mkdir()
    async with (
        FakeUpstream() as upstream,
        serve(tmp_path / "site", upstream, 1, SCHOOL_C, "rollups: {interval_seconds: 0.1}\n") as server,
    ):
        for source in ("127.0.0.1", "127.0.0.2"):
            query = dns.message.make_query("adult.example.com", "A")
            await dns.asyncquery.udp(query, "127.0.0.1", port=server.dns_port, source=source, timeout=3)
        await until_rollups(tmp_path / "site" / "var", 2)
        tokens_file = tmp_path / "site" / "var" / "tokens.yaml"
        province = tokens.add(tokens_file, tokens.Role.parse("province"), "prov")[1]
        school = tokens.add(tokens_file, tokens.Role.parse("school:school-a"), "it-a")[1]
        base = f"http://127.0.0.1:{server.admin_port}/ui/"
        async with chromium("MAP * ~NOTFOUND, EXCLUDE 127.0.0.1") as browser:  # asks no DNS server
            page = await browser.new_page()
            await page.open(base)
            assert "Sign in" in await page.text()  # Chromium asks for English (Accept-Language)
            await page.open(base + "?lang=vi")
            assert "Đăng nhập" in await page.text()
            await page.submit("form.signin", {"#token": province})
            text = await page.text()
            assert "Trường hoạt động trong 24 giờ qua\n2/3" in text, text
            silent = await page.evaluate("document.querySelector('#silent').nextElementSibling.innerText")
            assert "THCS C" in silent and "Tiểu học A" not in silent and "THPT B" not in silent
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
            await page.screenshot(artifacts / "ui-province.png")
            await page.open(base + "?lang=en")
            assert "Schools active in the last 24 hours\n2/3" in await page.text()
            await page.screenshot(artifacts / "ui-province-en.png")

            await page.submit("header form", {})  # sign out
            assert "Sign in" in await page.text()
            await page.submit("form.signin", {"#token": school})
            text = await page.text()
            assert "Tiểu học A" in text and "THPT B" not in text and "THCS C" not in text
            await page.screenshot(artifacts / "ui-school.png")
            assert not [line for line in page.console if "Content Security Policy" in line], page.console
    if os.environ.get("SCHOOLDNS_SCREENSHOTS"):  # e.g. docs/images, to refresh the documentation's
        shutil.copy(artifacts / "ui-province-en.png", Path(os.environ["SCHOOLDNS_SCREENSHOTS"]) / "ui.png")


async def until_rollups(state_dir: Path, schools: int) -> None:
    """Until the rollups file holds a day with queries for `schools` schools (written ten times a second)."""
    async with asyncio.timeout(15):
        while True:
            if (state_dir / "rollups.sqlite").exists():
                with (
                    contextlib.closing(sqlite3.connect(state_dir / "rollups.sqlite", timeout=5)) as db,
                    contextlib.suppress(sqlite3.OperationalError),  # the tables are being made
                ):
                    if db.execute("SELECT count(*) FROM school_days WHERE queries > 0").fetchone()[0] >= schools:
                        return
            await asyncio.sleep(0.05)
