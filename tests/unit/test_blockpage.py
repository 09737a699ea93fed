"""The block page's pieces: the name in a Host header or a report, the forms' tokens, the page's HTML."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from resolver.control import config
from resolver.filtering import policy
from resolver.operations import blockpage, pages
from resolver.operations.requestbox import Kind
from tests.support import harness


@pytest.mark.parametrize(
    "host, name",
    [
        ("games.example.com", "games.example.com"),
        ("Games.Example.COM:8080", "games.example.com"),
        ("games.example.com.", "games.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("192.0.2.80", None),
        ("192.0.2.80:80", None),
        ("[2001:db8::80]:80", None),
        ("", None),
        ("not a name", None),
        ("a..b", None),
    ],
)
def test_the_name_in_a_host_header(host, name):
    assert blockpage._host_name(host) == name


@pytest.mark.parametrize(
    "typed, name",
    [
        ("bad.example.net", "bad.example.net"),
        ("  Bad.Example.net ", "bad.example.net"),
        ("https://bad.example.net/some/page?x=1", "bad.example.net"),
        ("bad.example.net/some/page", "bad.example.net"),
        ("http://user@bad.example.net:8080/", "bad.example.net"),
        ("https://192.0.2.1/", None),
        ("x" * 301, None),
        ("", None),
    ],
)
def test_the_name_a_child_types_or_pastes_into_a_report(typed, name):
    assert blockpage._site_name(typed) == name


def test_a_token_holds_for_its_form_school_and_name_for_an_hour(tmp_path):
    now = [1_800_000_000.0]
    cfg = config.load_config(harness.write_site(tmp_path, ["192.0.2.53:53"]))
    page = blockpage.Blockpage(cfg, snapshot=None, clock=lambda: now[0])  # type: ignore[arg-type]
    token = page._token(Kind.UNBLOCK, "school-a", "games.example.com", int(now[0]))
    assert page._valid(token, Kind.UNBLOCK, "school-a", "games.example.com")
    assert not page._valid(token, Kind.REPORT, "school-a", "games.example.com")
    assert not page._valid(token, Kind.UNBLOCK, "school-b", "games.example.com")
    assert not page._valid(token, Kind.UNBLOCK, "school-a", "other.example.com")
    issued, mac = token.split(".")
    assert not page._valid(f"{int(issued) - 1}.{mac}", Kind.UNBLOCK, "school-a", "games.example.com")
    tampered = ("B" if mac.startswith("A") else "A") + mac[1:]  # the first character: all six of its bits count
    assert not page._valid(f"{issued}.{tampered}", Kind.UNBLOCK, "school-a", "games.example.com")
    assert not page._valid("", Kind.UNBLOCK, "school-a", "games.example.com")
    assert not page._valid("x.y", Kind.UNBLOCK, "school-a", "games.example.com")
    now[0] += blockpage.TOKEN_LIFETIME_SECONDS
    assert page._valid(token, Kind.UNBLOCK, "school-a", "games.example.com")
    now[0] += 1
    assert not page._valid(token, Kind.UNBLOCK, "school-a", "games.example.com")
    other = blockpage.Blockpage(cfg, snapshot=None, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not other._valid(page._token(Kind.REPORT, "school-a", "", int(now[0])), Kind.REPORT, "school-a", "")


BLOCK = policy.Block("games", policy.Authority.SCHOOL, policy.Action.BLOCKPAGE, "category 'games'")


def test_the_page_escapes_what_it_shows_and_loads_nothing():
    html = pages.render(pages.Page("games.example.com", BLOCK, 'Trường <b>"A"</b>', "1.t", "2.r"))
    assert "Trường &lt;b&gt;&quot;A&quot;&lt;/b&gt;" in html and "<b>" not in html
    assert not re.search(r"""(src|href)=["'](?!tel:111)""", html)  # no asset, no link but the hotline
    assert "<script" not in html
    style = re.search(r"<style>(.*?)</style>", html, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style[1].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in pages.HEADERS["Content-Security-Policy"]


def test_what_each_page_offers():
    blocked = pages.render(pages.Page("games.example.com", BLOCK, "Tiểu học A", "1.t", "2.r"))
    assert 'action="/_schooldns/unblock"' in blocked and 'action="/_schooldns/report"' in blocked
    assert "Send to my school" in blocked and "Trò chơi" in blocked and "Your school" in blocked
    province = block_by(policy.Authority.PROVINCE, "csam")
    withheld = pages.render(pages.Page("x.example", province, "Tiểu học A", None, "2.r"))
    assert "unblock" not in withheld and "Send to my school" not in withheld
    assert "Content the law forbids" in withheld and "The province (every school)" in withheld
    nobody = pages.render(pages.Page("games.example.com", BLOCK, None, None, None))
    assert "<form" not in nobody and "School" not in nobody and "111" in nobody
    own = pages.render(pages.Page(None, None, "Tiểu học A", None, "2.r"))
    assert "Your school&#x27;s block page" in own and 'action="/_schooldns/report"' in own
    assert pages.label_of("the-provinces-own") == ("the-provinces-own", "the-provinces-own")


def block_by(authority: policy.Authority, category: str) -> policy.Block:
    return policy.Block(category, authority, policy.Action.BLOCKPAGE, "")


@pytest.mark.parametrize("answer", list(pages.Answer))
def test_every_answer_has_its_words_and_the_hotline(answer):
    status, title, _ = pages.ANSWERS[answer]
    html = pages.render_answer(answer)
    assert status in (200, 400, 403, 429, 503)
    assert title[0] in html and pages.HOTLINE in html
