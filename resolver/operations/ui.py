"""The report and the dashboard over HTTP: GET /v1/report, and /ui/, read-only pages behind a sign-in (vi and en).

The pages are HTML made here, with their charts drawn as inline SVG (charts.py): no script, no
library and nothing from the internet, so they work on a school network without one. A token is
given once, in a form (POST /ui/sign-in, never in a URL), and becomes a session cookie
(sessions.py): HttpOnly, so no script can read it, and SameSite=Strict, so no other site's page
sends it; the sign-in and sign-out forms are refused from another origin as well. A school's token
sees its own school only, as in /v1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import enum
import hashlib
import html
import time
import urllib.parse
import zoneinfo
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web

from resolver.control import config, syncstate
from resolver.dataplane import pipeline, workerstate
from resolver.errors import ResolverError
from resolver.filtering import policyfile
from resolver.operations import access, charts, report, rollups, sessions, tokens
from resolver.operations.refusals import Failure, Refused

WINDOW_DAYS = 30  # the days the charts show, today included
SILENT_AFTER_SECONDS = 86_400.0  # a school without a query for this long is silent (as schooldns_schools_active)
FORM_TIMEOUT_SECONDS = 10.0
ANYONE = frozenset(tokens.RoleKind)


class Served(Protocol):
    """What these pages read of the serving process (admin.Control has it)."""

    @property
    def state(self) -> Callable[[], workerstate.WorkerState]: ...

    @property
    def config(self) -> config.Config: ...

    @property
    def snapshot(self) -> Callable[[], Awaitable[pipeline.Snapshot]]: ...

    @property
    def sync(self) -> syncstate.Syncing | None: ...


# ---------------------------------------------------------------------------------------------
# GET /v1/report


async def _snapshot(served: Served) -> pipeline.Snapshot:
    try:
        return await served.snapshot()
    except ResolverError as exc:
        raise Refused(
            Failure.UNAVAILABLE, f"the policies or lists do not build now ({str(exc).splitlines()[0]})"
        ) from None


async def _report(served: Served, caller: access.Caller, query: dict[str, str]) -> web.Response:
    snapshot = await _snapshot(served)
    only = caller.role.school if caller.role.kind is tokens.RoleKind.SCHOOL else None
    try:
        form = report.Format.named(query.get("format", "json"), "format")
        year = report.check_year(query["year"], "year") if "year" in query else report.this_year(snapshot.province.tz)
        # In a thread: a year of a thousand schools takes seconds to add up and render.
        text = await asyncio.to_thread(_report_text, served.config.state_dir, snapshot, year, only, form)
    except report.ReportError as exc:
        raise Refused(Failure.BAD_REQUEST, str(exc)) from None
    except rollups.RollupError as exc:
        raise Refused(Failure.UNAVAILABLE, str(exc)) from None
    return web.Response(
        text=text,
        content_type=form.media_type,
        charset="utf-8",
        headers={"Content-Disposition": f'inline; filename="schooldns-report-{year}.{form.name_given}"'},
    )


def _report_text(state_dir: Path, snapshot: pipeline.Snapshot, year: int, only: str | None, form: report.Format) -> str:
    made = report.of_year(state_dir, snapshot.policies, year, datetime.datetime.now(datetime.UTC))
    return report.render(made if only is None else made.only(only), form)


# ---------------------------------------------------------------------------------------------
# Words: every text of the pages in Vietnamese and English.


class Lang(enum.Enum):
    VI = "vi"
    EN = "en"


class T(enum.Enum):
    """A text of the pages: (Vietnamese, English)."""

    TITLE = ("Bảng điều khiển schooldns", "schooldns dashboard")
    SIGN_IN = ("Đăng nhập", "Sign in")
    SIGN_IN_HELP = (
        "Dán mã truy cập (token) do tỉnh hoặc quản trị viên cấp (lệnh schooldns token add).",
        "Paste the access token the province or your administrator gave you (schooldns token add).",
    )
    TOKEN = ("Mã truy cập", "Token")
    SIGN_OUT = ("Đăng xuất", "Sign out")
    UNKNOWN_TOKEN = ("Mã truy cập không đúng.", "That token is not known.")
    TOO_MANY = ("Quá nhiều lần thử sai; hãy thử lại sau.", "Too many failed attempts; try again later.")
    FOREIGN = ("Biểu mẫu này không được gửi từ trang này.", "This form was not sent from this page.")
    SIGNED_IN_AS = ("Đăng nhập với", "Signed in as")
    COVERAGE_NOW = ("Trường hoạt động trong 24 giờ qua", "Schools active in the last 24 hours")
    LAST_HOUR = ("trong 1 giờ qua", "in the last hour")
    COVERAGE_DAYS = ("Tỉ lệ trường hoạt động mỗi ngày (30 ngày)", "Share of schools active each day (30 days)")
    SILENT = ("Trường không có truy vấn trong 24 giờ", "Schools silent for 24 hours")
    NONE_SILENT = ("Không có: mọi trường đều có truy vấn.", "None: every school has queries.")
    SCHOOLS = ("Các trường", "Schools")
    SCHOOL = ("Trường", "School")
    ID = ("Mã", "ID")
    STATUS = ("Trạng thái", "Status")
    ACTIVE = ("hoạt động", "active")
    SILENT_ONE = ("im lặng", "silent")
    LAST_QUERY = ("Truy vấn gần nhất", "Last query")
    LAST_SEEN = ("Lần cuối thấy", "Last seen")
    NEVER = ("chưa thấy trong 30 ngày", "not in 30 days")
    QUERIES_TODAY = ("Truy vấn hôm nay", "Queries today")
    BLOCKED_TODAY = ("Bị chặn hôm nay", "Blocked today")
    DAYS_30 = ("30 ngày", "30 days")
    QUERIES_PER_DAY = (
        "Truy vấn và truy vấn bị chặn mỗi ngày (30 ngày)",
        "Queries and blocked queries per day (30 days)",
    )
    QUERIES = ("Truy vấn", "Queries")
    BLOCKED = ("Bị chặn", "Blocked")
    NO_DATA = ("không có số liệu", "no data")
    TOP_CATEGORIES = ("Danh mục bị chặn nhiều nhất (30 ngày)", "Most blocked categories (30 days)")
    NOTHING_BLOCKED = ("Chưa có truy vấn nào bị chặn.", "Nothing blocked yet.")
    LISTS = ("Danh sách chặn", "Block lists")
    ENTRIES = ("mục", "entries")
    UPDATED = ("cập nhật", "updated")
    UPSTREAMS = ("Máy chủ DNS phía trên", "Upstream resolvers")
    UP = ("hoạt động", "up")
    FAILING = ("lỗi", "failing")
    NO_ANSWER_YET = ("chưa trả lời", "no answer yet")
    DEGRADED = ("mọi máy chủ phía trên đều lỗi", "every upstream is failing")
    SYNC = ("Đồng bộ từ hub", "Sync from the hub")
    NO_SYNC = (
        "Không đồng bộ: danh sách và chính sách là tệp của máy này.",
        "No sync: lists and policies are this machine's files.",
    )
    VERSION = ("phiên bản", "version")
    LAST_SUCCESS = ("thành công lần cuối", "last success")
    FAILURES = ("lần lỗi liên tiếp", "failures in a row")
    EXPIRED = ("siêu dữ liệu đã hết hạn", "metadata expired")
    ADDRESS = ("Địa chỉ", "Address")
    LATENCY = ("Độ trễ", "Latency")
    BACK = ("Tất cả các trường", "All schools")
    NOT_YOURS = ("Mã truy cập này chỉ xem được trường của mình.", "This token sees its own school only.")
    NO_SUCH_SCHOOL = ("Không có trường này.", "No such school.")
    ROLLUPS_PROBLEM = ("Không đọc được số liệu theo ngày", "The daily numbers cannot be read")
    UPDATED_EVERY = (
        "Số liệu theo ngày được ghi ít nhất mỗi phút một lần.",
        "The daily numbers are written at least once a minute.",
    )
    AGO = ("trước", "ago")
    NEVER_YET = ("chưa bao giờ", "never")

    def __call__(self, lang: Lang) -> str:
        return self.value[0] if lang is Lang.VI else self.value[1]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ago(seconds: float, lang: Lang) -> str:
    units = (("ngày", "d", 86_400), ("giờ", "h", 3_600), ("phút", "min", 60))
    for vi, en, size in units:
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {vi} {T.AGO(lang)}" if lang is Lang.VI else f"{count} {en} {T.AGO(lang)}"
    return f"{int(seconds)} {'giây' if lang is Lang.VI else 's'} {T.AGO(lang)}"


def _category(category: str, lang: Lang) -> str:
    names = report.CATEGORY_NAMES.get(category)
    return names[0 if lang is Lang.VI else 1] if names else category


# ---------------------------------------------------------------------------------------------
# What the pages show: read from the live state, the installed policies and the rollups.


@dataclasses.dataclass(frozen=True, slots=True)
class SchoolView:
    id: str
    name: str
    last_query: float | None  # when this instance last answered it (since it started); None: not since
    queries: tuple[int | None, ...]  # per day of the window; None: no rollups that day
    blocked: tuple[int, ...]
    categories: tuple[tuple[str, int], ...]  # blocked per category over the window, the most first
    last_active: datetime.date | None  # the window's last day with queries

    def active(self, now: float) -> bool:
        return self.last_query is not None and self.last_query > now - SILENT_AFTER_SECONDS


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    now: float
    zone: datetime.tzinfo
    days: tuple[datetime.date, ...]  # the window, oldest first
    recorded: frozenset[datetime.date]  # its days with rollups
    schools: tuple[SchoolView, ...]  # the ones the caller may see
    state: workerstate.WorkerState
    sync: syncstate.SyncStatus | None
    rollups_problem: str | None

    def categories(self) -> list[tuple[str, int]]:
        total: Counter[str] = Counter()
        for school in self.schools:
            total.update(dict(school.categories))
        return total.most_common()

    def silent(self) -> list[SchoolView]:
        return [school for school in self.schools if not school.active(self.now)]


async def overview(served: Served, only: str | None) -> Overview:
    """The pages' numbers now; `only`: one school's (a school token's). Made in a thread: a thousand
    schools' days are 30,000 rows."""
    state = served.state()  # here: one process's live numbers are read on its event loop
    try:
        snapshot: pipeline.Snapshot | None = await served.snapshot()
    except ResolverError:
        snapshot = None  # the ids stand in for the names
    synced = served.sync.status() if served.sync is not None else None
    return await asyncio.to_thread(_overview, state, snapshot, synced, served.config.state_dir, only, time.time())


def _overview(
    state: workerstate.WorkerState,
    snapshot: pipeline.Snapshot | None,
    synced: syncstate.SyncStatus | None,
    state_dir: Path,
    only: str | None,
    now: float,
) -> Overview:
    zone = snapshot.province.tz if snapshot else zoneinfo.ZoneInfo(policyfile.DEFAULT_TIMEZONE)
    names = {school.id: school.name for school in snapshot.policies.schools} if snapshot else {}
    ids = [school for school in state.schools if only is None or school == only]
    today = rollups.local_day(now, zone)
    days = tuple(today - datetime.timedelta(days=back) for back in range(WINDOW_DAYS - 1, -1, -1))
    problem = None
    try:
        daily = rollups.RollupStore(state_dir).daily(days[0], days[-1], only)
    except rollups.RollupError as exc:
        daily, problem = rollups.EMPTY_DAILY, str(exc)
    views = []
    for school in ids:
        active_days = [day for day in days if daily.queries.get((school, day))]
        views.append(
            SchoolView(
                id=school,
                name=names.get(school, school),
                last_query=state.last_query.get(school) or None,
                queries=tuple(daily.queries.get((school, day)) for day in days),
                blocked=tuple(daily.blocked.get((school, day), 0) for day in days),
                categories=tuple(Counter(daily.categories.get(school, {})).most_common()),
                last_active=active_days[-1] if active_days else None,
            )
        )
    return Overview(
        now=now,
        zone=zone,
        days=days,
        recorded=daily.recorded_days,
        schools=tuple(views),
        state=state,
        sync=synced,
        rollups_problem=problem,
    )


# ---------------------------------------------------------------------------------------------
# The pages.

STYLE = """
:root{color-scheme:light;--ink:#1f2933;--muted:#616e7c;--line:#d9e2ec;--bg:#f5f7fa;--card:#fff;
--blue:#2f6fb0;--red:#c0392b;--green:#2e7d32;--amber:#b26a00}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--ink);
background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;justify-content:space-between;padding:10px 20px;
background:#102a43;color:#fff}
header h1{font-size:18px;margin:0}
header nav{display:flex;flex-wrap:wrap;gap:12px;align-items:center}
header a,header button{color:#fff}
header form{display:inline;margin:0}
header button{background:none;border:1px solid #829ab1;border-radius:4px;padding:3px 10px;cursor:pointer;font:inherit}
main{padding:16px 20px;max-width:1100px}
h2{font-size:16px;margin:22px 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px 16px;min-width:200px;flex:1}
.card .big{font-size:30px;font-weight:600}
.card .note{color:var(--muted)}
.ok{color:var(--green)}.bad{color:var(--red)}.warn{color:var(--amber)}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line)}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.chart{display:block;background:var(--card);border:1px solid var(--line);border-radius:4px;max-width:100%;height:auto}
.spark{border:none;background:none}
.bar{fill:var(--blue)}.bar-blocked{fill:var(--red)}.bar-share{fill:var(--green)}.bar-none{fill:#bcccdc}
.axis{stroke:#9fb3c8}.grid{stroke:#e4e7eb;stroke-dasharray:3 3}.label{fill:var(--muted);font-size:11px}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.swatch.q{background:var(--blue)}.swatch.b{background:var(--red)}
.signin{max-width:420px;margin:60px auto;background:var(--card);border:1px solid var(--line);border-radius:6px;
padding:24px}
.signin input{width:100%;padding:8px;font:inherit;margin:6px 0 12px}
.signin button{padding:8px 16px;font:inherit}
.message{color:var(--red)}
footer{color:var(--muted);padding:8px 20px 24px}
"""
# The Content-Security-Policy allows this one style sheet, no script, and forms sent here only.
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it a browser sends "Origin: null" with the pages' own forms, which
    # _same_origin then cannot tell from a sandboxed page elsewhere. No URL here holds a secret.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _lang_of(request: web.Request) -> Lang:
    asked = request.query.get("lang")
    if asked in ("vi", "en"):
        return Lang(asked)
    first = request.headers.get("Accept-Language", "").split(",")[0].strip().lower()
    return Lang.EN if first.startswith("en") else Lang.VI


def _page(lang: Lang, title: str, body: str, who: tokens.Token | None = None, here: str = "/ui/") -> str:
    other = Lang.EN if lang is Lang.VI else Lang.VI
    name = "English" if other is Lang.EN else "Tiếng Việt"
    switch = f'<a href="{_e(here)}?lang={other.value}" hreflang="{other.value}">{name}</a>'
    account = ""
    if who is not None:
        account = (
            f"<span>{T.SIGNED_IN_AS(lang)} <b>{_e(who.name)}</b> ({_e(who.role)})</span>"
            f'<form method="post" action="/ui/sign-out?lang={lang.value}">'
            f'<button type="submit">{T.SIGN_OUT(lang)}</button></form>'
        )
    return (
        f'<!doctype html><html lang="{lang.value}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><nav>{account}{switch}</nav></header>{body}</body></html>"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: frozenset[int] = frozenset()) -> str:
    """A table of already-escaped cells; columns in `numeric` aligned right."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(at: float, ov: Overview, lang: Lang) -> str:
    local = datetime.datetime.fromtimestamp(at, ov.zone).strftime("%Y-%m-%d %H:%M")
    return f"{local} ({_ago(max(ov.now - at, 0.0), lang)})"


def _ticks(days: Sequence[datetime.date]) -> list[tuple[int, str]]:
    """The first and last day, and every seventh between them not too close to the last."""
    last = len(days) - 1
    return [(i, day.strftime("%d/%m")) for i, day in enumerate(days) if i in (0, last) or (i % 7 == 0 and last - i > 3)]


def _day_chart(ov: Overview, school: SchoolView, lang: Lang) -> str:
    bars = []
    for day, queries, blocked in zip(ov.days, school.queries, school.blocked, strict=True):
        label = day.strftime("%d/%m/%Y")
        if queries is None:
            bars.append(charts.Column(None, f"{label}: {T.NO_DATA(lang)}"))
        else:
            bars.append(
                charts.Column(queries, f"{label}: {T.QUERIES(lang)} {queries}, {T.BLOCKED(lang)} {blocked}", blocked)
            )
    top = max((q or 0 for q in school.queries), default=0)
    label = f"{school.name}: {T.QUERIES_PER_DAY(lang)}"
    return charts.columns(bars, label, top_label=f"{T.QUERIES(lang)}: {report.number(top)}", ticks=_ticks(ov.days))


def _spark(school: SchoolView, lang: Lang) -> str:
    """The school's days in a table cell: bars without text, its totals in the label."""
    queries, blocked = sum(q or 0 for q in school.queries), sum(school.blocked)
    label = (
        f"{school.name}, {T.DAYS_30(lang)}: {T.QUERIES(lang)} {report.number(queries)}, "
        f"{T.BLOCKED(lang)} {report.number(blocked)}"
    )
    return charts.spark(school.queries, school.blocked, label)


def _cards(ov: Overview, lang: Lang, schools_card: str) -> str:
    s = ov.state
    entries = sum(s.list_entries.values())
    lists = f'<div class="big">{report.number(entries)}</div><div class="note">{T.ENTRIES(lang)}'
    if s.lists_updated_at:
        lists += f", {T.UPDATED(lang)} {_ago(max(ov.now - s.lists_updated_at, 0.0), lang)}"
    lists += "</div>"
    up = sum(1 for u in s.upstreams if u.up)
    health = "bad" if s.failing_upstreams() else "ok" if up == len(s.upstreams) else "warn"
    upstreams = f'<div class="big {health}">{up}/{len(s.upstreams)}</div>'
    upstreams += f'<div class="note">{T.UP(lang)}{"; " + T.DEGRADED(lang) if s.failing_upstreams() else ""}</div>'
    if ov.sync is None:
        synced = f'<div class="note">{T.NO_SYNC(lang)}</div>'
    else:
        st = ov.sync
        state = "bad" if st.metadata_expired or st.consecutive_failures else "ok"
        synced = f'<div class="big {state}">{T.VERSION(lang)} {_e(st.version or 0)}</div><div class="note">'
        synced += (
            f"{T.LAST_SUCCESS(lang)}: {_when(st.last_success, ov, lang) if st.last_success else T.NEVER_YET(lang)}"
        )
        if st.consecutive_failures:
            synced += (
                f'<br><span class="bad">{st.consecutive_failures} {T.FAILURES(lang)}: {_e(st.last_error or "")}</span>'
            )
        if st.metadata_expired:
            synced += f'<br><span class="bad">{T.EXPIRED(lang)}</span>'
        synced += "</div>"
    return (
        f'<div class="cards">{schools_card}'
        f'<div class="card" id="lists"><div>{T.LISTS(lang)}</div>{lists}</div>'
        f'<div class="card" id="upstreams"><div>{T.UPSTREAMS(lang)}</div>{upstreams}</div>'
        f'<div class="card" id="sync"><div>{T.SYNC(lang)}</div>{synced}</div></div>'
    )


def _categories(items: list[tuple[str, int]], lang: Lang) -> str:
    if not items:
        return f"<p>{T.NOTHING_BLOCKED(lang)}</p>"
    named = [(_category(category, lang), count) for category, count in items[:10]]
    return charts.rows(named, T.TOP_CATEGORIES(lang), shown=report.number)


def _upstreams(ov: Overview, lang: Lang) -> str:
    rows = []
    for u in ov.state.upstreams:
        health = (
            f'<span class="bad">{T.FAILING(lang)}</span>'
            if u.failing
            else f'<span class="ok">{T.UP(lang)}</span>'
            if u.up
            else f'<span class="warn">{T.NO_ANSWER_YET(lang)}</span>'
        )
        latency = f"{u.latency_seconds * 1000:.1f} ms" if u.latency_seconds is not None else "–"
        rows.append([_e(u.address), health, latency])
    return _table([T.ADDRESS(lang), T.STATUS(lang), T.LATENCY(lang)], rows, frozenset({2}))


def _today(values: Sequence[int | None]) -> str:
    return report.number(values[-1] or 0)


def render_overview(ov: Overview, lang: Lang, who: tokens.Token) -> str:
    """The province's (or a viewer's) page: coverage now and over the days, silent schools, each school."""
    now = ov.now
    configured = len(ov.schools)
    active = sum(1 for school in ov.schools if school.active(now))
    last_hour = sum(1 for school in ov.schools if school.last_query and school.last_query > now - 3600)
    share = report.percent(active / configured) if configured else "–"
    coverage_card = (
        f'<div class="card" id="coverage"><div>{T.COVERAGE_NOW(lang)}</div>'
        f'<div class="big {"ok" if configured and active == configured else "warn"}">{active}/{configured}</div>'
        f'<div class="note">{share}; {last_hour}/{configured} {T.LAST_HOUR(lang)}</div></div>'
    )
    shares = []
    for i, day in enumerate(ov.days):
        label = day.strftime("%d/%m/%Y")
        if day not in ov.recorded or not configured:
            shares.append(charts.Column(None, f"{label}: {T.NO_DATA(lang)}"))
            continue
        on = sum(1 for school in ov.schools if school.queries[i])
        shares.append(charts.Column(on / configured, f"{label}: {on}/{configured} ({report.percent(on / configured)})"))
    coverage_chart = charts.columns(
        shares, T.COVERAGE_DAYS(lang), top=1.0, top_label="100%", ticks=_ticks(ov.days), share=True
    )
    silent = ov.silent()
    if silent:
        silent_table = _table(
            [T.SCHOOL(lang), T.ID(lang), T.LAST_SEEN(lang)],
            [[_school_link(s, lang), f"<code>{_e(s.id)}</code>", _last_seen(s, ov, lang)] for s in silent],
        )
    else:
        silent_table = f'<p class="ok">{T.NONE_SILENT(lang)}</p>'
    schools = _table(
        [
            T.SCHOOL(lang),
            T.STATUS(lang),
            T.QUERIES_TODAY(lang),
            T.BLOCKED_TODAY(lang),
            T.LAST_QUERY(lang),
            T.DAYS_30(lang),
        ],
        [
            [
                _school_link(s, lang),
                _status(s, now, lang),
                _today(s.queries),
                report.number(s.blocked[-1]),
                _when(s.last_query, ov, lang) if s.last_query else "–",
                _spark(s, lang),
            ]
            for s in ov.schools
        ],
        frozenset({2, 3}),
    )
    body = (
        f"<main>{_cards(ov, lang, coverage_card)}{_problem(ov, lang)}"
        f"<h2>{T.COVERAGE_DAYS(lang)}</h2>{coverage_chart}"
        f'<h2 id="silent">{T.SILENT(lang)}</h2>{silent_table}'
        f"<h2>{T.TOP_CATEGORIES(lang)}</h2>{_categories(ov.categories(), lang)}"
        f'<h2>{T.SCHOOLS(lang)}</h2><p class="legend">{_legend(lang)}</p>{schools}'
        f"<h2>{T.UPSTREAMS(lang)}</h2>{_upstreams(ov, lang)}</main>"
        f"<footer>{T.UPDATED_EVERY(lang)}</footer>"
    )
    return _page(lang, T.TITLE(lang), body, who)


def render_school(ov: Overview, school: SchoolView, lang: Lang, who: tokens.Token, back: bool) -> str:
    """One school's page (what a school token sees at /ui/)."""
    status_card = (
        f'<div class="card" id="coverage"><div>{_e(school.name)} (<code>{_e(school.id)}</code>)</div>'
        f'<div class="big">{_status(school, ov.now, lang)}</div>'
        f'<div class="note">{T.LAST_QUERY(lang)}: {_when(school.last_query, ov, lang) if school.last_query else "–"}'
        f"<br>{T.QUERIES_TODAY(lang)}: {_today(school.queries)}; {T.BLOCKED_TODAY(lang)}: "
        f"{report.number(school.blocked[-1])}</div></div>"
    )
    link = f'<p><a href="/ui/?lang={lang.value}">← {T.BACK(lang)}</a></p>' if back else ""
    body = (
        f"<main>{link}{_cards(ov, lang, status_card)}{_problem(ov, lang)}"
        f'<h2>{T.QUERIES_PER_DAY(lang)}</h2><p class="legend">{_legend(lang)}</p>{_day_chart(ov, school, lang)}'
        f"<h2>{T.TOP_CATEGORIES(lang)}</h2>{_categories(list(school.categories), lang)}"
        f"<h2>{T.UPSTREAMS(lang)}</h2>{_upstreams(ov, lang)}</main>"
        f"<footer>{T.UPDATED_EVERY(lang)}</footer>"
    )
    return _page(lang, f"{school.name} · schooldns", body, who, f"/ui/schools/{school.id}")


def render_sign_in(lang: Lang, message: str = "") -> str:
    note = f'<p class="message" role="alert">{_e(message)}</p>' if message else ""
    body = (
        f'<main><form class="signin" method="post" action="/ui/sign-in?lang={lang.value}">'
        f"<h2>{T.SIGN_IN(lang)}</h2><p>{T.SIGN_IN_HELP(lang)}</p>{note}"
        f'<label for="token">{T.TOKEN(lang)}</label>'
        f'<input id="token" name="token" type="password" autocomplete="off" required autofocus>'
        f'<button type="submit">{T.SIGN_IN(lang)}</button></form></main>'
    )
    return _page(lang, T.TITLE(lang), body)


def render_message(lang: Lang, message: str, who: tokens.Token) -> str:
    body = (
        f'<main><p class="message">{_e(message)}</p><p><a href="/ui/?lang={lang.value}">← {T.BACK(lang)}</a></p></main>'
    )
    return _page(lang, T.TITLE(lang), body, who)


def _school_link(school: SchoolView, lang: Lang) -> str:
    return f'<a href="/ui/schools/{_e(school.id)}?lang={lang.value}">{_e(school.name)}</a>'


def _status(school: SchoolView, now: float, lang: Lang) -> str:
    if school.active(now):
        return f'<span class="ok">{T.ACTIVE(lang)}</span>'
    return f'<span class="bad">{T.SILENT_ONE(lang)}</span>'


def _last_seen(school: SchoolView, ov: Overview, lang: Lang) -> str:
    if school.last_query:
        return _when(school.last_query, ov, lang)
    if school.last_active:
        return school.last_active.strftime("%d/%m/%Y")
    return T.NEVER(lang)


def _legend(lang: Lang) -> str:
    return (
        f'<span><i class="swatch q"></i>{T.QUERIES(lang)}</span><span><i class="swatch b"></i>{T.BLOCKED(lang)}</span>'
    )


def _problem(ov: Overview, lang: Lang) -> str:
    if ov.rollups_problem is None:
        return ""
    return f'<p class="message">{T.ROLLUPS_PROBLEM(lang)}: {_e(ov.rollups_problem)}</p>'


# ---------------------------------------------------------------------------------------------
# Routes.


class Pages:
    """The handlers of /v1/report and /ui/ over one serving process's state."""

    def __init__(self, served: Served, gate: access.Gate):
        self.served = served
        self.gate = gate
        self.sessions = sessions.Sessions()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/report", self.report),
            web.get("/ui", self.to_home),
            web.get("/ui/", self.home),
            web.get("/ui/schools/{id}", self.school),
            web.post("/ui/sign-in", self.sign_in),
            web.post("/ui/sign-out", self.sign_out),
        ]

    async def report(self, request: web.Request) -> web.Response:
        caller = self.gate.caller(request.headers.get("Authorization"), request.remote or "", ANYONE)
        return await _report(self.served, caller, dict(request.query))

    async def to_home(self, request: web.Request) -> web.Response:
        return web.Response(status=308, headers={**HEADERS, "Location": "/ui/"})

    def _signed_in(self, request: web.Request) -> tokens.Token | None:
        return self.sessions.check(request.cookies.get(sessions.COOKIE), self.gate.token_file.current())

    async def home(self, request: web.Request) -> web.Response:
        lang = _lang_of(request)
        who = self._signed_in(request)
        if who is None:
            return _html(render_sign_in(lang))
        if who.role.kind is tokens.RoleKind.SCHOOL:
            return await self._school_page(who, who.role.school or "", lang, back=False)
        ov = await overview(self.served, None)
        return _html(await asyncio.to_thread(render_overview, ov, lang, who))

    async def school(self, request: web.Request) -> web.Response:
        lang = _lang_of(request)
        who = self._signed_in(request)
        if who is None:
            return _html(render_sign_in(lang), status=401)
        school_id = request.match_info["id"]
        if not who.role.may_read_school(school_id):
            return _html(render_message(lang, T.NOT_YOURS(lang), who), status=403)
        return await self._school_page(who, school_id, lang, back=who.role.kind is not tokens.RoleKind.SCHOOL)

    async def _school_page(self, who: tokens.Token, school_id: str, lang: Lang, back: bool) -> web.Response:
        ov = await overview(self.served, school_id)
        if not ov.schools:
            return _html(render_message(lang, T.NO_SUCH_SCHOOL(lang), who), status=404)
        return _html(render_school(ov, ov.schools[0], lang, who, back))

    async def sign_in(self, request: web.Request) -> web.Response:
        lang = _lang_of(request)
        if not _same_origin(request):
            return _html(render_sign_in(lang, T.FOREIGN(lang)), status=403)
        try:
            async with asyncio.timeout(FORM_TIMEOUT_SECONDS):
                form = await request.post()
        except TimeoutError:
            raise Refused(Failure.TIMEOUT, f"the form did not arrive within {FORM_TIMEOUT_SECONDS:g} s") from None
        secret = form.get("token")
        secret = secret.strip() if isinstance(secret, str) else ""
        try:
            caller = self.gate.caller(f"Bearer {secret}", request.remote or "", ANYONE)
        except Refused as exc:
            if exc.failure is Failure.RATE_LIMITED:
                headers = {"Retry-After": str(exc.retry_after_seconds)} if exc.retry_after_seconds else {}
                return _html(render_sign_in(lang, T.TOO_MANY(lang)), status=429, headers=headers)
            return _html(render_sign_in(lang, T.UNKNOWN_TOKEN(lang)), status=401)
        response = _see_other(f"/ui/?lang={lang.value}")
        response.set_cookie(
            sessions.COOKIE,
            self.sessions.issue(caller.name, tokens.digest(secret)),
            max_age=sessions.SESSION_SECONDS,
            path="/ui/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        lang = _lang_of(request)
        if not _same_origin(request):
            return _html(render_sign_in(lang, T.FOREIGN(lang)), status=403)
        response = _see_other(f"/ui/?lang={lang.value}")
        response.del_cookie(sessions.COOKIE, path="/ui/")
        return response


def _same_origin(request: web.Request) -> bool:
    """A form sent from a page of this server: refused when the browser says it came from another site.

    The session cookie is SameSite=Strict already; this also stops another site from signing a
    browser in with a token of its choosing. Browsers say where a request comes from in
    Sec-Fetch-Site; older ones in Origin, whose host is compared alone (a TLS proxy in front
    changes the scheme, and must pass the Host header on). A request with neither (curl) is no
    other site's page.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")  # none: the user's own doing (typed, a bookmark)
    origin = request.headers.get("Origin")
    return origin is None or urllib.parse.urlsplit(origin).netloc == request.host


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers={**HEADERS, **(headers or {})}
    )


def routes(served: Served, gate: access.Gate) -> list[web.RouteDef]:
    """GET /v1/report and the /ui/ pages, for admin.make_app."""
    return Pages(served, gate).routes()
