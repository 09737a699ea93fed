"""The annual report from rollup rows: per-school numbers, coverage, merges, and its JSON, CSV and Markdown forms."""

from __future__ import annotations

import csv
import datetime
import io
import json

import pytest

from resolver.operations import report
from resolver.operations.rollups import EMPTY_TOTALS, SchoolTotal, Totals

SCHOOLS = [("school-a", "Tiểu học A"), ("school-b", "THPT B"), ("school-c", "THCS C")]
D1, D2, D3 = datetime.date(2026, 3, 2), datetime.date(2026, 3, 3), datetime.date(2026, 3, 4)
NOW = datetime.datetime(2026, 12, 7, 3, 0, tzinfo=datetime.UTC)
TOTALS = Totals(
    recorded_days=(D1, D2),
    schools={
        "school-a": SchoolTotal(150, (D1, D2)),
        "school-b": SchoolTotal(7, (D2,)),
        "school-c": SchoolTotal(0, ()),  # configured, silent
        "unknown": SchoolTotal(4, (D1,)),
        "gone": SchoolTotal(3, (D2,)),  # a school no longer configured
    },
    blocked={
        ("school-a", "adult", "school"): 6,
        ("school-a", "malware", "province"): 2,
        ("school-b", "deny", "deny"): 3,
        ("school-b", "bypass", "province"): 1,
        ("school-b", "bypass", "school"): 1,
    },
)


def made() -> report.Report:
    return report.build(2026, SCHOOLS, TOTALS, "Asia/Ho_Chi_Minh", NOW)


def test_one_row_per_configured_school_and_the_province_coverage():
    built = made()
    a, b, c = built.schools
    assert (a.id, a.days_active, a.queries, a.blocked_total, a.first_day, a.last_day) == ("school-a", 2, 150, 8, D1, D2)
    assert a.blocked == {"adult": 6, "malware": 2} and a.blocked_by_authority == {"province": 2, "school": 6}
    assert (b.days_active, b.queries, b.first_day, b.last_day) == (1, 7, D2, D2)
    assert b.blocked == {"bypass": 2, "deny": 3} and b.blocked_by_authority == {"province": 1, "school": 1, "deny": 3}
    assert (c.days_active, c.queries, c.first_day, c.last_day) == (0, 0, None, None)
    summary = built.summary()
    assert (summary.schools_configured, summary.schools_active, summary.silent) == (3, 2, ("school-c",))
    assert summary.coverage == pytest.approx(2 / 3)
    assert summary.days_recorded == 2 and (summary.first_day, summary.last_day) == (D1, D2)
    assert summary.mean_daily_coverage == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert (summary.queries, summary.blocked, built.unknown_queries) == (157, 13, 4)
    assert list(summary.blocked_by_category) == ["adult", "deny", "malware", "bypass"]  # the most blocked first
    assert summary.blocked_by_authority == {"province": 3, "school": 7, "deny": 3}


def test_a_school_token_gets_its_own_school_alone():
    own = made().only("school-b")
    assert [school.id for school in own.schools] == ["school-b"] and own.unknown_queries == 0
    assert own.summary().schools_configured == 1 and own.summary().coverage == 1.0


def test_json_reads_back_as_the_same_report():
    built = made()
    text = report.render(built, report.Format.JSON)
    assert report.load_json(text, "a.json") == built
    data = json.loads(text)
    assert data["summary"]["coverage"] == 0.6667 and data["summary"]["silent_schools"] == ["school-c"]
    assert data["schools"][0]["active_days"] == ["2026-03-02", "2026-03-03"]
    assert data["generated_at"] == "2026-12-07T03:00:00Z"


def test_merged_instances_add_their_numbers_and_count_a_day_once():
    other = report.build(
        2026,
        [("school-c", "THCS C"), ("school-a", "Tiểu học A"), ("school-d", "TH D")],
        Totals(
            (D2, D3),
            {"school-a": SchoolTotal(5, (D2,)), "school-c": SchoolTotal(2, (D3,)), "school-d": SchoolTotal(0, ())},
            {("school-c", "adult", "school"): 1},
        ),
        "Asia/Ho_Chi_Minh",
        NOW + datetime.timedelta(hours=1),
    )
    merged = report.merge(
        [("here", made()), ("b.json", report.load_json(report.render(other, report.Format.JSON), "b.json"))]
    )
    assert [school.id for school in merged.schools] == ["school-a", "school-b", "school-c", "school-d"]
    a, _, c, d = merged.schools
    assert (a.queries, a.days_active) == (155, 2)  # D2 on both instances: one day
    assert (c.queries, c.active_days, c.blocked) == (2, (D3,), {"adult": 1})
    assert d.days_active == 0
    summary = merged.summary()
    assert (summary.schools_active, summary.schools_configured, summary.silent) == (3, 4, ("school-d",))
    assert summary.days_recorded == 3 and merged.instances == 2 and merged.generated_at == other.generated_at


@pytest.mark.parametrize(
    "change, message",
    [
        ({"year": 2025}, "b.json: a report of 2025, not 2026"),
        ({"timezone": "Asia/Bangkok"}, "b.json: its days are in Asia/Bangkok, not Asia/Ho_Chi_Minh"),
    ],
)
def test_reports_of_another_year_or_zone_are_not_merged(change, message):
    data = {**report.to_json(made()), **change}
    with pytest.raises(report.ReportError, match=message):
        report.merge([("here", made()), ("b.json", report.from_json(data, "b.json"))])


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "b.json:1: not JSON: "),
        ('{"format": "other"}', "b.json: not a schooldns annual report in JSON"),
        ('{"format": "schooldns-annual-report", "version": 7}', "b.json: a report of format 7; this schooldns reads 1"),
    ],
)
def test_a_file_that_is_no_report_is_said_in_one_line(text, message):
    with pytest.raises(report.ReportError, match=message):
        report.load_json(text, "b.json")


def test_a_report_with_a_wrong_value_names_its_key():
    data = report.to_json(made())
    data["schools"][1]["queries"] = "7"
    with pytest.raises(report.ReportError, match=r"^b.json: schools\[1\].queries: expected a whole number$"):
        report.from_json(data, "b.json")
    data = report.to_json(made())
    data["schools"][0]["active_days"] = ["2026-02-30"]
    with pytest.raises(report.ReportError, match=r"schools\[0\].active_days: expected a list of dates"):
        report.from_json(data, "b.json")


def test_csv_has_a_row_per_school_and_a_column_per_category_and_authority():
    rows = list(csv.DictReader(io.StringIO(report.render(made(), report.Format.CSV))))
    assert [row["school"] for row in rows] == ["school-a", "school-b", "school-c"]
    assert rows[0] == {
        "school": "school-a",
        "name": "Tiểu học A",
        "days_active": "2",
        "queries": "150",
        "blocked": "8",
        "first_day": "2026-03-02",
        "last_day": "2026-03-03",
        "blocked_adult": "6",
        "blocked_bypass": "0",
        "blocked_deny": "0",
        "blocked_malware": "2",
        "by_province": "2",
        "by_school": "6",
        "by_deny": "0",
    }
    assert rows[2]["first_day"] == "" and rows[2]["days_active"] == "0"


def test_markdown_in_vietnamese_and_english():
    text = report.render(made(), report.Format.MD)
    assert text.startswith(
        "# Báo cáo năm 2026: lọc DNS tại các trường học\n# Annual report 2026: DNS filtering in schools\n"
    )
    assert "Lập lúc / Generated: 2026-12-07 10:00" in text  # in the province's time zone
    assert "| Trường có truy vấn trong năm / Schools with queries during the year | 2/3 (66%) |" in text
    assert "| Trường chưa có truy vấn nào / Schools never seen | THCS C (`school-c`) |" in text
    assert "| Tiểu học A | `school-a` | 2 | 150 | 8 | 2026-03-02 | 2026-03-03 |" in text
    assert "| Nội dung người lớn / Adult content | 6 |" in text
    assert "| Tỉnh (bắt buộc) / Province (mandatory) | 3 |" in text


def test_numbers_and_shares_read_alike_in_both_languages():
    assert report.number(1234567) == "1 234 567"
    assert [report.percent(x) for x in (0.0, 0.0001, 0.999, 1.0, 2 / 3)] == ["0%", "<1%", "99%", "100%", "66%"]


def test_a_name_cannot_break_a_markdown_table():
    built = report.build(2026, [("school-a", "A | B\nC")], EMPTY_TOTALS, "Asia/Ho_Chi_Minh", NOW)
    assert "| A \\| B C | `school-a` | 0 |" in report.render(built, report.Format.MD)


@pytest.mark.parametrize("text", ["1999", "2101", "20x6", "", "-2026"])
def test_a_year_out_of_range_is_refused(text):
    with pytest.raises(report.ReportError, match=r"--year: expected a year 2000 to 2100"):
        report.check_year(text, "--year")


def test_a_format_is_named_by_its_short_name():
    assert report.Format.named("csv", "format") is report.Format.CSV
    with pytest.raises(report.ReportError, match=r"^--format: one of md, csv, json, got 'pdf'$"):
        report.Format.named("pdf", "--format")
