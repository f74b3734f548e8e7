"""Charts as inline SVG, drawn on the server: no JavaScript, no chart library.

``bars`` draws one bar per bucket, stacked by series (a refusal category each), with a
few axis labels and a ``<title>`` per bar (the browser's tooltip). Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 200
LEFT, BOTTOM, TOP = 44, 22, 8
#: one colour per series, in order (the legend repeats them)
PALETTE = ("#3b6ea5", "#d9822b", "#c23b3b", "#5a9e5a", "#8a5fb0", "#b0853d", "#4aa3a3", "#777")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int]


def _ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = max(1, _nice(top / 4))
    return list(range(0, top + 1, step))


def _nice(raw: float) -> int:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    power = 1
    while power * 10 <= raw:
        power *= 10
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def bars(chart_id: str, labels: Sequence[str], series: Sequence[Series], title: str) -> Markup:
    """A stacked bar chart of ``series`` (each as long as ``labels``) as an ``<svg>``."""
    n = max(len(labels), 1)
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = _nice(max(totals, default=0)) if any(totals) else 1
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / n
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in _ticks(top):
        y = TOP + plot_h - plot_h * tick / top
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick}</text>'
        )
    for i, label in enumerate(labels):
        x, base = LEFT + i * slot, float(TOP + plot_h)
        for colour, s in zip(PALETTE * 4, series, strict=False):
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            base -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{base:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}" data-series="{escape(s.name)}" '
                f'data-value="{value}"><title>{escape(label)} · {escape(s.name)}: {value}'
                "</title></rect>"
            )
        if i % max(1, n // 8) == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
                f'class="tick">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every piece of text above is escaped)


def legend(series: Sequence[Series]) -> Markup:
    items = "".join(
        f'<li><svg class="swatch" width="10" height="10" aria-hidden="true">'
        f'<rect width="10" height="10" fill="{colour}"/></svg> {escape(s.name)}</li>'
        for colour, s in zip(PALETTE * 4, series, strict=False)
    )
    return Markup(f'<ul class="legend">{items}</ul>')  # noqa: S704 (escaped above)
