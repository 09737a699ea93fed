"""The annual report: a year of daily rollups per configured school, merged over instances, as JSON, CSV or Markdown.

A value first (`Report`, built from rollup rows and the configured schools), then its forms: JSON
(what `--merge` reads back, so it keeps every active day), CSV (one row per school, for a
spreadsheet) and Markdown in Vietnamese and English (to attach to the province's annual report).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import enum
import io
import json
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from resolver.errors import ResolverError
from resolver.filtering import policy
from resolver.operations import rollups

FORMAT = "schooldns-annual-report"
FORMAT_VERSION = 1


class Format(enum.Enum):
    """The forms a report is given in, and their media types."""

    MD = ("md", "text/markdown")
    CSV = ("csv", "text/csv")
    JSON = ("json", "application/json")

    @property
    def name_given(self) -> str:
        return self.value[0]

    @property
    def media_type(self) -> str:
        return self.value[1]

    @classmethod
    def named(cls, text: str, what: str) -> Format:
        """The format called `text`; ReportError saying which there are."""
        for form in cls:
            if form.name_given == text:
                return form
        raise ReportError(f"{what}: one of {', '.join(form.name_given for form in cls)}, got {text!r}")


AUTHORITIES = ("province", "school", "deny")  # policy.Authority, in the order a report lists them


class ReportError(ResolverError):
    """A report that cannot be made or read: another year, time zone or format, or a file that is no report."""


@dataclasses.dataclass(frozen=True, slots=True)
class School:
    """One configured school's year."""

    id: str
    name: str
    queries: int
    blocked: Mapping[str, int]  # category -> blocked queries
    blocked_by_authority: Mapping[str, int]  # province / school / deny -> blocked queries
    active_days: tuple[datetime.date, ...]  # days with at least one query, in order

    @property
    def days_active(self) -> int:
        return len(self.active_days)

    @property
    def blocked_total(self) -> int:
        return sum(self.blocked.values())

    @property
    def first_day(self) -> datetime.date | None:
        return self.active_days[0] if self.active_days else None

    @property
    def last_day(self) -> datetime.date | None:
        return self.active_days[-1] if self.active_days else None


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """The province's coverage over the year, and its totals."""

    schools_configured: int
    schools_active: int  # with at least one active day
    silent: tuple[str, ...]  # ids of the schools never seen in the year
    days_recorded: int  # days on which an instance wrote rollups
    mean_daily_coverage: float  # over the recorded days: schools active that day / schools configured
    queries: int
    blocked: int
    blocked_by_category: Mapping[str, int]
    blocked_by_authority: Mapping[str, int]
    first_day: datetime.date | None  # the first and last recorded days
    last_day: datetime.date | None

    @property
    def coverage(self) -> float:
        return self.schools_active / self.schools_configured if self.schools_configured else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """A year of one instance's rollups, or of several merged; `schools` in the order they are configured."""

    year: int
    timezone: str
    generated_at: datetime.datetime  # in UTC
    instances: int  # how many instances' reports it holds
    recorded_days: tuple[datetime.date, ...]  # days on which some instance wrote rollups
    schools: tuple[School, ...]
    unknown_queries: int  # queries from addresses in no school's network (refused)

    def summary(self) -> Summary:
        by_category: Counter[str] = Counter()
        by_authority: Counter[str] = Counter()
        active_per_day: Counter[datetime.date] = Counter()
        for school in self.schools:
            by_category.update(school.blocked)
            by_authority.update(school.blocked_by_authority)
            active_per_day.update(school.active_days)
        configured = len(self.schools)
        days = self.recorded_days
        return Summary(
            schools_configured=configured,
            schools_active=sum(1 for school in self.schools if school.active_days),
            silent=tuple(school.id for school in self.schools if not school.active_days),
            days_recorded=len(days),
            mean_daily_coverage=(
                sum(active_per_day[day] for day in days) / (configured * len(days)) if configured and days else 0.0
            ),
            queries=sum(school.queries for school in self.schools),
            blocked=sum(school.blocked_total for school in self.schools),
            blocked_by_category=dict(by_category.most_common()),
            blocked_by_authority={a: by_authority[a] for a in AUTHORITIES if by_authority[a]},
            first_day=days[0] if days else None,
            last_day=days[-1] if days else None,
        )

    def only(self, school_id: str) -> Report:
        """The report of one school alone (what a school's token is given)."""
        return dataclasses.replace(
            self, schools=tuple(school for school in self.schools if school.id == school_id), unknown_queries=0
        )


FIRST_YEAR, LAST_YEAR = 2000, 2100  # the years a report may be asked for


def year_span(year: int) -> tuple[datetime.date, datetime.date]:
    return datetime.date(year, 1, 1), datetime.date(year, 12, 31)


def check_year(text: str, what: str) -> int:
    """A year as given on the command line or in ?year=; ReportError saying what a year is."""
    if not text.isdigit() or not FIRST_YEAR <= int(text) <= LAST_YEAR:
        raise ReportError(f"{what}: expected a year {FIRST_YEAR} to {LAST_YEAR}, got {text!r}")
    return int(text)


def this_year(zone: datetime.tzinfo, now: datetime.datetime | None = None) -> int:
    return (now or datetime.datetime.now(datetime.UTC)).astimezone(zone).year


def of_year(state_dir: Path, policies: policy.Policies, year: int, now: datetime.datetime) -> Report:
    """This instance's report of `year`: its rollups (state_dir) for the schools of `policies`."""
    totals = rollups.RollupStore(state_dir).totals(*year_span(year))
    schools = [(school.id, school.name) for school in policies.schools]
    return build(year, schools, totals, policies.province.timezone, now)


def build(
    year: int,
    schools: Sequence[tuple[str, str]],
    totals: rollups.Totals,
    timezone: str,
    generated_at: datetime.datetime,
) -> Report:
    """The report of `year` for the configured `schools` ((id, name), in order) from the rollups' totals."""
    blocked: dict[str, Counter[str]] = {}
    by_authority: dict[str, Counter[str]] = {}
    for (school, category, authority), count in totals.blocked.items():
        blocked.setdefault(school, Counter())[category] += count
        by_authority.setdefault(school, Counter())[authority] += count
    nothing = rollups.SchoolTotal(0, ())
    unknown = totals.schools.get(rollups.UNKNOWN, nothing)
    return Report(
        year=year,
        timezone=timezone,
        generated_at=generated_at.astimezone(datetime.UTC),
        instances=1,
        recorded_days=totals.recorded_days,
        schools=tuple(
            School(
                id=school_id,
                name=name,
                queries=totals.schools.get(school_id, nothing).queries,
                blocked=dict(sorted(blocked.get(school_id, Counter()).items())),
                blocked_by_authority=_authorities(by_authority.get(school_id, Counter())),
                active_days=totals.schools.get(school_id, nothing).active_days,
            )
            for school_id, name in schools
        ),
        unknown_queries=unknown.queries,
    )


def merge(reports: Sequence[tuple[str, Report]]) -> Report:
    """Reports of several instances as one: (where each came from, report), the first's schools first.

    Queries and blocks add up (each query reaches one instance); a school is active on a day when
    it was on any instance, so two instances that serve it the same day count that day once.
    """
    (_, first), *_ = reports
    for where, other in reports[1:]:
        if other.year != first.year:
            raise ReportError(f"{where}: a report of {other.year}, not {first.year}")
        if other.timezone != first.timezone:
            raise ReportError(f"{where}: its days are in {other.timezone}, not {first.timezone}")
    merged: dict[str, School] = {}
    for _, one in reports:
        for school in one.schools:
            seen = merged.get(school.id)
            if seen is None:
                merged[school.id] = school
                continue
            merged[school.id] = School(
                id=school.id,
                name=seen.name or school.name,
                queries=seen.queries + school.queries,
                blocked=dict(sorted((Counter(seen.blocked) + Counter(school.blocked)).items())),
                blocked_by_authority=_authorities(
                    Counter(seen.blocked_by_authority) + Counter(school.blocked_by_authority)
                ),
                active_days=tuple(sorted({*seen.active_days, *school.active_days})),
            )
    return Report(
        year=first.year,
        timezone=first.timezone,
        generated_at=max(one.generated_at for _, one in reports),
        instances=sum(one.instances for _, one in reports),
        recorded_days=tuple(sorted({day for _, one in reports for day in one.recorded_days})),
        schools=tuple(merged.values()),
        unknown_queries=sum(one.unknown_queries for _, one in reports),
    )


def _authorities(counts: Mapping[str, int]) -> dict[str, int]:
    return {authority: counts[authority] for authority in AUTHORITIES if counts.get(authority)}


# ---------------------------------------------------------------------------------------------
# JSON: every number of the report, and each school's active days (what a merge needs).


def to_json(report: Report) -> dict[str, Any]:
    summary = report.summary()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "year": report.year,
        "timezone": report.timezone,
        "generated_at": report.generated_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "instances": report.instances,
        "summary": {
            "schools_configured": summary.schools_configured,
            "schools_active": summary.schools_active,
            "coverage": round(summary.coverage, 4),
            "silent_schools": list(summary.silent),
            "days_recorded": summary.days_recorded,
            "mean_daily_coverage": round(summary.mean_daily_coverage, 4),
            "first_day": _day(summary.first_day),
            "last_day": _day(summary.last_day),
            "queries": summary.queries,
            "blocked": summary.blocked,
            "blocked_by_category": dict(summary.blocked_by_category),
            "blocked_by_authority": dict(summary.blocked_by_authority),
            "unknown_queries": report.unknown_queries,
        },
        "recorded_days": [day.isoformat() for day in report.recorded_days],
        "schools": [
            {
                "id": school.id,
                "name": school.name,
                "days_active": school.days_active,
                "queries": school.queries,
                "blocked": school.blocked_total,
                "blocked_by_category": dict(school.blocked),
                "blocked_by_authority": dict(school.blocked_by_authority),
                "first_day": _day(school.first_day),
                "last_day": _day(school.last_day),
                "active_days": [day.isoformat() for day in school.active_days],
            }
            for school in report.schools
        ],
    }


def _day(day: datetime.date | None) -> str | None:
    return day.isoformat() if day else None


def from_json(data: Any, where: str) -> Report:
    """A report read back from its JSON (`schooldns report --format json`); ReportError naming `where` and the key."""

    def fail(key: str, expected: str) -> ReportError:
        return ReportError(f"{where}: {key}: expected {expected}")

    def field(container: Any, key: str, kind: type[int] | type[str], path: str) -> Any:
        value = container.get(key) if isinstance(container, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(path, "a whole number" if kind is int else "a string")
        return value

    def days(values: Any, path: str) -> tuple[datetime.date, ...]:
        if not isinstance(values, list):
            raise fail(path, "a list of dates")
        try:
            return tuple(sorted(datetime.date.fromisoformat(value) for value in values))
        except (TypeError, ValueError):
            raise fail(path, "a list of dates (YYYY-MM-DD)") from None

    def counts(values: Any, path: str) -> dict[str, int]:
        if not isinstance(values, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in values.values()
        ):
            raise fail(path, "a mapping of names to counts")
        return {str(name): n for name, n in values.items()}

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f"{where}: not a schooldns annual report in JSON (`schooldns report --format json`)")
    if data.get("version") != FORMAT_VERSION:
        raise ReportError(f"{where}: a report of format {data.get('version')!r}; this schooldns reads {FORMAT_VERSION}")
    schools = data.get("schools")
    if not isinstance(schools, list):
        raise fail("schools", "a list")
    try:
        generated_at = datetime.datetime.fromisoformat(field(data, "generated_at", str, "generated_at"))
    except ValueError:
        raise fail("generated_at", "a time (ISO 8601)") from None
    summary = data.get("summary")
    return Report(
        year=field(data, "year", int, "year"),
        timezone=field(data, "timezone", str, "timezone"),
        generated_at=generated_at.astimezone(datetime.UTC),
        instances=field(data, "instances", int, "instances"),
        recorded_days=days(data.get("recorded_days"), "recorded_days"),
        schools=tuple(
            School(
                id=field(school, "id", str, f"schools[{i}].id"),
                name=field(school, "name", str, f"schools[{i}].name"),
                queries=field(school, "queries", int, f"schools[{i}].queries"),
                blocked=counts(school.get("blocked_by_category"), f"schools[{i}].blocked_by_category"),
                blocked_by_authority=counts(school.get("blocked_by_authority"), f"schools[{i}].blocked_by_authority"),
                active_days=days(school.get("active_days"), f"schools[{i}].active_days"),
            )
            for i, school in enumerate(schools)
        ),
        unknown_queries=field(summary, "unknown_queries", int, "summary.unknown_queries"),
    )


def load_json(text: str, where: str) -> Report:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{where}:{exc.lineno}: not JSON: {exc.msg}") from None
    return from_json(data, where)


def render(report: Report, form: Format) -> str:
    """The report as text in `form`."""
    if form is Format.JSON:
        return json.dumps(to_json(report), ensure_ascii=False, indent=1) + "\n"
    if form is Format.CSV:
        return to_csv(report)
    return to_markdown(report)


# ---------------------------------------------------------------------------------------------
# CSV: one row per school, one column per category and authority (for a spreadsheet).


def to_csv(report: Report) -> str:
    categories = sorted({category for school in report.schools for category in school.blocked})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "school",
            "name",
            "days_active",
            "queries",
            "blocked",
            "first_day",
            "last_day",
            *(f"blocked_{category}" for category in categories),
            *(f"by_{authority}" for authority in AUTHORITIES),
        ]
    )
    for school in report.schools:
        writer.writerow(
            [
                school.id,
                school.name,
                school.days_active,
                school.queries,
                school.blocked_total,
                _day(school.first_day) or "",
                _day(school.last_day) or "",
                *(school.blocked.get(category, 0) for category in categories),
                *(school.blocked_by_authority.get(authority, 0) for authority in AUTHORITIES),
            ]
        )
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Markdown, in Vietnamese and English: each label "Vietnamese / English".

# (Vietnamese, English) of the shipped categories and of the pipeline's own (deny, safe_search).
CATEGORY_NAMES: Mapping[str, tuple[str, str]] = {
    "adult": ("Nội dung người lớn", "Adult content"),
    "gambling": ("Cờ bạc", "Gambling"),
    "violence": ("Bạo lực", "Violence"),
    "drugs": ("Ma túy", "Drugs"),
    "malware": ("Mã độc", "Malware"),
    "phishing": ("Lừa đảo", "Phishing"),
    "csam": ("Xâm hại tình dục trẻ em", "Child sexual abuse material"),
    "games": ("Trò chơi", "Games"),
    "social": ("Mạng xã hội", "Social networks"),
    "bypass": ("Vượt bộ lọc", "Filter bypass"),
    "deny": ("Danh sách chặn của trường", "School's deny list"),
    "safe_search": ("Máy tìm kiếm không có chế độ an toàn", "Search engines without safe search"),
}
AUTHORITY_NAMES: Mapping[str, tuple[str, str]] = {
    "province": ("Tỉnh (bắt buộc)", "Province (mandatory)"),
    "school": ("Trường chọn chặn", "Chosen by the school"),
    "deny": ("Danh sách chặn của trường", "School's deny list"),
}


def category_name(category: str) -> str:
    """ "Vietnamese / English" for a known category, else its id."""
    names = CATEGORY_NAMES.get(category)
    return " / ".join(names) if names else category


def number(value: int) -> str:
    """Digits in groups of three with a space: read alike in Vietnamese (1.234) and English (1,234)."""
    return f"{value:,}".replace(",", " ")


def percent(part: float) -> str:
    """A share as a whole percent, rounded down (99.9% is not 100%); under 1% but not 0: "<1%"."""
    whole = int(part * 100 + 1e-9)
    return "<1%" if whole == 0 and part > 0 else f"{whole}%"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: int = 1) -> list[str]:
    """A Markdown table whose columns from `right` on are numbers (aligned right)."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < right else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def to_markdown(report: Report) -> str:
    s = report.summary()
    span = f"{_day(s.first_day)} – {_day(s.last_day)}" if s.first_day else "–"
    names = {school.id: school.name for school in report.schools}
    silent = ", ".join(f"{_cell(names[id_])} (`{id_}`)" for id_ in s.silent) or "không có / none"
    share = f" ({percent(s.blocked / s.queries)})" if s.queries else ""
    try:
        generated = report.generated_at.astimezone(zoneinfo.ZoneInfo(report.timezone)).strftime("%Y-%m-%d %H:%M")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # a merged file's zone this machine lacks
        generated = report.generated_at.strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"# Báo cáo năm {report.year}: lọc DNS tại các trường học",
        f"# Annual report {report.year}: DNS filtering in schools",
        "",
        f"Múi giờ / Time zone: {report.timezone} · Lập lúc / Generated: {generated} · "
        f"Số máy chủ / Instances: {report.instances}",
        "",
        "## Tóm tắt / Summary",
        "",
        *_table(
            ["Mục / Item", "Số liệu / Figure"],
            [
                ["Trường được cấu hình / Schools configured", number(s.schools_configured)],
                [
                    "Trường có truy vấn trong năm / Schools with queries during the year",
                    f"{number(s.schools_active)}/{number(s.schools_configured)} ({percent(s.coverage)})",
                ],
                ["Trường chưa có truy vấn nào / Schools never seen", silent],
                ["Số ngày có số liệu / Days recorded", f"{number(s.days_recorded)} ({span})"],
                [
                    "Tỉ lệ trường hoạt động trung bình mỗi ngày / Mean share of schools active per day",
                    percent(s.mean_daily_coverage),
                ],
                ["Truy vấn / Queries", number(s.queries)],
                ["Truy vấn bị chặn / Blocked queries", number(s.blocked) + share],
                [
                    "Truy vấn từ mạng không thuộc trường nào (bị từ chối) / From no school's network (refused)",
                    number(report.unknown_queries),
                ],
            ],
            right=2,
        ),
        "",
        "## Bị chặn theo danh mục / Blocked by category",
        "",
        *_table(
            ["Danh mục / Category", "Bị chặn / Blocked"],
            [[category_name(c), number(n)] for c, n in s.blocked_by_category.items()] or [["–", "0"]],
        ),
        "",
        "## Bị chặn theo cấp quyết định / Blocked by who decided",
        "",
        *_table(
            ["Cấp / Authority", "Bị chặn / Blocked"],
            [[" / ".join(AUTHORITY_NAMES[a]), number(s.blocked_by_authority.get(a, 0))] for a in AUTHORITIES],
        ),
        "",
        "## Từng trường / Each school",
        "",
        *_table(
            [
                "Trường / School",
                "Mã / ID",
                "Ngày hoạt động / Days active",
                "Truy vấn / Queries",
                "Bị chặn / Blocked",
                "Ngày đầu / First day",
                "Ngày cuối / Last day",
            ],
            [
                [
                    _cell(school.name),
                    f"`{school.id}`",
                    number(school.days_active),
                    number(school.queries),
                    number(school.blocked_total),
                    _day(school.first_day) or "–",
                    _day(school.last_day) or "–",
                ]
                for school in report.schools
            ],
            right=2,
        ),
    ]
    categories = list(s.blocked_by_category)
    if categories:
        out += [
            "",
            "## Bị chặn theo danh mục, từng trường / Blocked per category, each school",
            "",
            *_table(
                ["Trường / School", *(f"`{c}`" for c in categories)],
                [
                    [_cell(school.name), *(number(school.blocked.get(c, 0)) for c in categories)]
                    for school in report.schools
                ],
            ),
        ]
    out += [
        "",
        "## Ghi chú / Notes",
        "",
        "- Một ngày hoạt động là một ngày (theo múi giờ trên) trường có ít nhất một truy vấn DNS được trả lời. "
        "/ A day active is a day (in the time zone above) on which the school had at least one DNS query answered.",
        "- Số liệu chỉ là số đếm theo trường, danh mục và cấp quyết định; không lưu địa chỉ thiết bị hay tên miền "
        "được truy vấn. / The numbers are counts per school, category and authority; no device address or "
        "queried name is kept.",
        "- Ngày không có số liệu là ngày máy chủ không chạy. / A day without numbers is a day no instance ran.",
    ]
    return "\n".join(out) + "\n"
