"""Bar charts as inline SVG, drawn on the server: no script, no library, nothing fetched by the browser.

Each chart is a string of SVG to put in a page. Colours come from CSS classes (`bar`, `bar-blocked`,
`bar-share`, `bar-none`, `axis`, `grid`, `label`), so the page's style sheet decides them; every
bar carries a <title> (its tooltip and what a screen reader says) and the chart an aria-label.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable, Sequence

FONT_PX = 11


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One bar of a column chart: its value (None: no data that day), its tooltip and, optionally, a
    second value drawn over it (blocked queries over queries)."""

    value: float | None
    title: str
    inner: float = 0.0


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def columns(
    bars: Sequence[Column],
    label: str,
    *,
    width: int = 640,
    height: int = 160,
    top: float | None = None,
    top_label: str = "",
    ticks: Sequence[tuple[int, str]] = (),
    share: bool = False,
) -> str:
    """A column chart, one bar per item, scaled to `top` (default: the largest value).

    `ticks`: (bar index, text) written under the bars; `top_label` at the top of the scale; `share`:
    values are 0..1, drawn in the share colour against a full-height guide.
    """
    left, right, above, below = 4.0, 4.0, FONT_PX + 4.0, (FONT_PX + 6.0 if ticks else 2.0)
    plot_w, plot_h = width - left - right, height - above - below
    scale = top if top is not None else max((bar.value or 0.0 for bar in bars), default=0.0)
    step = plot_w / max(len(bars), 1)
    gap = min(step * 0.2, 3.0)
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">',
        f"<title>{_e(label)}</title>",
        f'<line class="grid" x1="{_n(left)}" y1="{_n(above)}" x2="{_n(width - right)}" y2="{_n(above)}"/>',
        f'<line class="axis" x1="{_n(left)}" y1="{_n(above + plot_h)}" x2="{_n(width - right)}" '
        f'y2="{_n(above + plot_h)}"/>',
    ]
    if top_label:
        out.append(f'<text class="label" x="{_n(left)}" y="{_n(FONT_PX)}">{_e(top_label)}</text>')
    for i, bar in enumerate(bars):
        x = left + i * step + gap / 2
        w = max(step - gap, 1.0)
        if bar.value is None:  # no data: a thin mark on the axis
            out.append(
                f'<rect class="bar-none" x="{_n(x)}" y="{_n(above + plot_h - 2)}" width="{_n(w)}" height="2">'
                f"<title>{_e(bar.title)}</title></rect>"
            )
            continue
        h = plot_h * min(bar.value / scale, 1.0) if scale > 0 else 0.0
        kind = "bar-share" if share else "bar"
        out.append(
            f'<rect class="{kind}" x="{_n(x)}" y="{_n(above + plot_h - h)}" width="{_n(w)}" height="{_n(h)}">'
            f"<title>{_e(bar.title)}</title></rect>"
        )
        if bar.inner > 0 and scale > 0:
            inner_h = max(plot_h * min(bar.inner / scale, 1.0), 1.0)
            out.append(
                f'<rect class="bar-blocked" x="{_n(x)}" y="{_n(above + plot_h - inner_h)}" width="{_n(w)}" '
                f'height="{_n(inner_h)}"><title>{_e(bar.title)}</title></rect>'
            )
    for index, text in ticks:
        x = left + index * step + step / 2
        anchor = "start" if index == 0 else "end" if index == len(bars) - 1 else "middle"
        out.append(f'<text class="label" x="{_n(x)}" y="{_n(height - 3)}" text-anchor="{anchor}">{_e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def spark(values: Sequence[int | None], inner: Sequence[int], label: str, *, width: int = 180, height: int = 36) -> str:
    """A small column chart with no text but its label, for a table cell.

    Two paths (every bar, then the `inner` parts) in whole units of a viewBox stretched to the size
    (6 per bar, 100 high): a table of a thousand schools stays 1.7 MB and 0.1 s to make, where a
    rectangle per bar measured 8 MB and 1.1 s.
    """
    scale = max((value or 0 for value in values), default=0)

    def path(heights: Iterable[int | None]) -> str:
        units = (round(100 * (h or 0) / scale) if scale else 0 for h in heights)
        return "".join(f"M{6 * i} 100v-{max(u, 1)}h5v{max(u, 1)}z" for i, u in enumerate(units) if u or 0)

    outer = path(values) or "M0 0"
    blocked = path(inner) or "M0 0"
    return (
        f'<svg class="chart spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {6 * max(len(values), 1)} 100" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}"><title>{_e(label)}</title>'
        f'<path class="bar" d="{outer}"/><path class="bar-blocked" d="{blocked}"/></svg>'
    )


def rows(
    items: Sequence[tuple[str, int]],
    label: str,
    *,
    width: int = 640,
    row_height: int = 22,
    shown: Callable[[int], str] = str,
) -> str:
    """Horizontal bars, one per (name, value), in the order given; the value written after each bar as `shown`."""
    name_w, value_w = width * 0.42, 70.0
    bar_w = width - name_w - value_w
    top = max((value for _, value in items), default=0)
    height = max(len(items), 1) * row_height
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">',
        f"<title>{_e(label)}</title>",
    ]
    for i, (name, value) in enumerate(items):
        y = i * row_height
        w = bar_w * value / top if top else 0.0
        middle = y + row_height / 2 + FONT_PX / 2 - 1
        out.append(
            f'<text class="label" x="{_n(name_w - 6)}" y="{_n(middle)}" text-anchor="end">{_e(name)}</text>'
            f'<rect class="bar-blocked" x="{_n(name_w)}" y="{_n(y + 4)}" width="{_n(max(w, 1.0))}" '
            f'height="{_n(row_height - 8)}"><title>{_e(f"{name}: {shown(value)}")}</title></rect>'
            f'<text class="label" x="{_n(name_w + w + 4)}" y="{_n(middle)}">{_e(shown(value))}</text>'
        )
    out.append("</svg>")
    return "".join(out)
