"""The block page in a headless Chromium against `schooldns serve` (two workers): read it, ask, approve, unblocked."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import dns.rcode

from resolver.operations import tokens
from tests.support import harness, served
from tests.support.chromium import chromium
from tests.support.fake_upstream import FakeUpstream

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "blockpage"  # ignored by git
PHONE_WIDTH = 390

# School A (127.0.0.1, where Chromium connects from) answers blocked names with the block page's
# address; the province's block page address is the loopback one the server listens on.
FILES = {
    "policies/province.yaml": harness.PROVINCE + "blockpage: {ipv4: 127.0.0.1}\n",
    "policies/school-a.yaml": harness.SCHOOL_A + "action: blockpage\n",
}


async def test_a_child_reads_the_page_asks_and_the_school_unblocks_the_site(tmp_path):
    async with FakeUpstream() as upstream:
        upstream.answer("games.example.com", "A", "192.0.2.77")
        async with served.serve(
            tmp_path, upstream, workers=2, files=FILES, more_config='blockpage: {listen: ["127.0.0.1:0"]}\n'
        ) as server:
            page_at = f"127.0.0.1:{server.blockpage_port}"
            tokens_file = tmp_path / "var" / "tokens.yaml"
            secrets = {
                who: tokens.add(tokens_file, tokens.Role.parse(role), who)[1]
                for who, role in (("it-a", "school:school-a"), ("it-b", "school:school-b"), ("view", "viewer"))
            }

            # DNS sends a child of school A to the block page's address for a blocked name.
            answer = await server.query("games.example.com")
            assert [rr.address for rr in answer.answer[0]] == ["127.0.0.1"]

            # The browser resolves the blocked names to the block page, as that answer does; nothing else.
            rules = f"MAP games.example.com {page_at}, MAP blocked.example.vn {page_at}, MAP * ~NOTFOUND"
            async with chromium(rules) as browser:
                page = await browser.new_page()
                await page.phone(PHONE_WIDTH)
                text = await page.open("http://games.example.com/play?level=3")
                for words in ("Trang web này bị chặn", "This site is blocked", "games.example.com"):
                    assert words in text
                assert "Trò chơi" in text and "Games" in text  # the category
                assert "Tiểu học A" in text  # the school
                assert "Nhà trường của em" in text and "Your school" in text  # who decided
                assert "111" in text and "Em không làm gì sai cả." in text
                html = await page.evaluate("document.documentElement.outerHTML")
                assert "127.0.0.1" not in html  # nothing about the child's device
                # Readable on a phone: nothing wider than the screen, nothing loaded from anywhere.
                assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
                assert await page.evaluate("performance.getEntriesByType('resource').length") == 0
                await page.screenshot(ARTIFACTS / "blocked-phone.png")

                await page.evaluate(
                    "document.querySelector('#unblock-reason').value = 'schoolwork';"
                    "document.querySelector('#unblock button').click()"
                )
                sent = await page.until_text("Đã gửi cho nhà trường")
                assert "Sent to your school" in sent
                await page.screenshot(ARTIFACTS / "sent-phone.png")

                # The report form on the block page's own name.
                await page.open("http://blocked.example.vn/")
                await page.evaluate(
                    "document.querySelector('#report-site').value = 'https://Bad.Example.net/some/page';"
                    "document.querySelector('#report-reason').value = 'scam';"
                    "document.querySelector('#report button').click()"
                )
                await page.until_text("Cảm ơn em đã báo cáo")

                async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.admin_port}") as admin:

                    async def call(method: str, path: str, who: str, body: object = None) -> tuple[int, dict]:
                        headers = {"Authorization": f"Bearer {secrets[who]}"}
                        data = None if body is None else json.dumps(body)
                        async with admin.request(method, path, headers=headers, data=data) as response:
                            return response.status, await response.json()

                    status, listed = await call("GET", "/v1/requests", "it-a")
                    assert status == 200
                    report, unblock = listed["requests"]  # newest first
                    assert {k: unblock[k] for k in ("kind", "school", "name", "category", "authority", "reason")} == {
                        "kind": "unblock",
                        "school": "school-a",
                        "name": "games.example.com",
                        "category": "games",
                        "authority": "school",
                        "reason": "schoolwork",
                    }
                    assert (unblock["status"], unblock["asked"]) == ("open", 1)
                    assert (report["kind"], report["name"], report["reason"]) == ("report", "bad.example.net", "scam")
                    assert (await call("GET", "/v1/requests", "it-b")) == (200, {"requests": []})
                    assert len((await call("GET", "/v1/requests", "view"))[1]["requests"]) == 2

                    status, decided = await call(
                        "POST", f"/v1/requests/{unblock['id']}/decision", "it-a", {"decision": "allow"}
                    )
                    assert status == 200, decided
                    assert decided["request"]["status"] == "allowed" and decided["request"]["decided_by"] == "it-a"

                # Unblocked: the name is answered from the upstream now, and the page says so.
                answer = await server.query("games.example.com")
                assert answer.rcode() == dns.rcode.NOERROR
                assert [rr.address for rr in answer.answer[0]] == ["192.0.2.77"]
                assert upstream.count("games.example.com", "A") == 1
                assert (
                    "allow: [allowed.example.com, games.example.com]"
                    in (tmp_path / "policies/school-a.yaml").read_text()
                )
                text = await page.open("http://games.example.com/")
                assert "This site is not blocked now" in text
