"""Inline SVG charts: bars scaled to their values, days without data marked, every text escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from resolver.operations import charts

SVG = "{http://www.w3.org/2000/svg}"


def rects(svg: str) -> list[ET.Element]:
    return list(ET.fromstring(svg).iter(f"{SVG}rect"))


def test_columns_are_scaled_to_the_largest_and_the_blocked_part_drawn_over():
    svg = charts.columns(
        [
            charts.Column(10, "day 1: 10"),
            charts.Column(5, "day 2: 5, 2 blocked", 2),
            charts.Column(None, "day 3: none"),
        ],
        "Queries",
        width=300,
        height=120,
    )
    bars = rects(svg)
    assert [bar.get("class") for bar in bars] == ["bar", "bar", "bar-blocked", "bar-none"]
    tall, half, blocked, _ = (float(bar.get("height")) for bar in bars)
    assert half == tall / 2 and blocked == tall / 5
    assert [bar.find(f"{SVG}title").text for bar in bars] == [
        "day 1: 10",
        "day 2: 5, 2 blocked",
        "day 2: 5, 2 blocked",
        "day 3: none",
    ]
    assert ET.fromstring(svg).get("aria-label") == "Queries"


def test_shares_are_drawn_against_a_full_scale():
    svg = charts.columns([charts.Column(0.5, "half")], "Coverage", height=120, top=1.0, share=True)
    [bar] = rects(svg)
    assert bar.get("class") == "bar-share"
    plot = 120 - (charts.FONT_PX + 4) - 2
    assert float(bar.get("height")) == plot / 2


def test_no_text_can_break_out_of_the_svg():
    svg = charts.rows([('<script>alert("x")</script>', 3), ("b & c", 1)], "A <label>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "b &amp; c" in svg
    assert ET.fromstring(svg).get("aria-label") == "A <label>"
    widths = [float(bar.get("width")) for bar in rects(svg)]
    assert widths[0] == pytest.approx(3 * widths[1], abs=0.2)  # coordinates are written to 0.1


def test_an_empty_chart_is_still_an_svg():
    for svg in (charts.columns([], "none"), charts.rows([], "none")):
        assert ET.fromstring(svg).tag == f"{SVG}svg" and not re.search(r"nan|inf", svg)
