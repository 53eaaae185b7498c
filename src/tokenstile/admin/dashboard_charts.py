"""Charts as inline SVG, drawn on the server: no chart library, no script, no external file.

Every chart carries a ``<title>``/``<desc>`` for screen readers and a ``<title>`` per bar
for a tooltip; the pages put the same numbers in a table next to it. Colours come from
CSS classes (``c0`` … ``c6``), so the light and dark themes restyle them; only
presentation attributes are used, which the page's strict content security policy allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

SERIES_CLASSES = 7  # c0 … c5 for named series, c6 for "other"


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10^n at or above ``value`` (the y axis top)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    scale = 10.0 ** exponent
    for step in (1.0, 2.0, 2.5, 5.0):
        if step * scale >= value * (1 - 1e-12):
            return step * scale
    return 10.0 * scale


def money(value: float) -> str:
    """``$1,234``, ``$12.34``, ``$0.1234``, ``$0.000123``: enough digits to tell apart."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "$0.00"
    if value >= 1000:
        return f"{sign}${value:,.0f}"
    if value >= 1:
        return f"{sign}${value:,.2f}"
    if value >= 0.01:
        return f"{sign}${value:.4f}"
    return f"{sign}${value:.6f}"


def compact(value: float) -> str:
    """``950``, ``12.3k``, ``4.56M``, ``1.2B``."""
    value = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}" if scaled < 1000 else f"{scaled:,.0f}{suffix}"
    return f"{value:,.0f}"


def _axis_label(value: float, unit: str) -> str:
    if unit == "usd":
        if value == 0:
            return "$0"
        if value >= 1:
            return f"${compact(value)}" if value >= 1000 else f"${value:g}"
        return f"${value:g}"
    return compact(value)


@dataclass(frozen=True, slots=True)
class Column:
    label: str
    """The bucket's full name (tooltip), e.g. ``2026-11-05``."""
    tick: str
    """What the x axis shows under it, or empty."""
    values: tuple[float, ...]
    """One value per series (stacked bottom-up)."""
    projected: float | None = None
    """A forecast drawn as a hatched bar on top (or instead, for days to come)."""


_LEFT, _RIGHT, _TOP, _BOTTOM = 56.0, 12.0, 12.0, 28.0


def columns_chart(columns: Sequence[Column], *, title: str, description: str,
                  series: Sequence[str] = ("",), unit: str = "usd",
                  fmt: Callable[[float], str] = money,
                  series_classes: Sequence[str] | None = None,
                  width: float = 720.0, height: float = 220.0) -> Markup:
    """A column chart (stacked when there are several series) with a y axis; ``width`` and
    ``height`` set the drawing's proportions (it scales to its box, text included)."""
    classes = list(series_classes or [f"c{i % SERIES_CLASSES}" for i in range(len(series))])
    totals = [sum(c.values) + (c.projected or 0.0) for c in columns]
    top = 4 * nice_ceiling(max(totals, default=0.0) / 4)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    n = max(len(columns), 1)
    slot = plot_w / n
    bar = max(1.0, slot * 0.72)
    parts = [f'<svg class="chart" viewBox="0 0 {width:g} {height:g}" role="img" '
             f'aria-labelledby="{_id(title)}-t {_id(title)}-d" '
             f'preserveAspectRatio="xMidYMid meet">',
             f'<title id="{_id(title)}-t">{escape(title)}</title>',
             f'<desc id="{_id(title)}-d">{escape(description)}</desc>']
    for i in range(5):
        value = top * i / 4
        y = _TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{_LEFT:g}" x2="{width - _RIGHT:g}" '
                     f'y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{_LEFT - 6:g}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(_axis_label(value, unit))}</text>')
    for i, column in enumerate(columns):
        x = _LEFT + slot * i + (slot - bar) / 2
        y = _TOP + plot_h
        tip = [column.label]
        for value, name, cls in zip(column.values, series, classes, strict=False):
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            tip.append(f"{name + ': ' if name else ''}{fmt(value)}")
            parts.append(f'<rect class="bar {cls}" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" '
                         f'height="{max(h, 0.5):.2f}"><title>{escape(column.label)} '
                         f'{escape(name)} {escape(fmt(value))}</title></rect>')
        if column.projected:
            h = plot_h * column.projected / top
            y -= h
            tip.append(f"forecast: {fmt(column.projected)}")
            parts.append(f'<rect class="bar projected" x="{x:.2f}" y="{y:.2f}" '
                         f'width="{bar:.2f}" height="{max(h, 0.5):.2f}"><title>'
                         f'{escape(column.label)} forecast {escape(fmt(column.projected))}'
                         '</title></rect>')
        if column.tick:
            parts.append(f'<text class="axis" x="{x + bar / 2:.2f}" y="{height - 8:g}" '
                         f'text-anchor="middle">{escape(column.tick)}</text>')
    parts.append(f'<line class="baseline" x1="{_LEFT:g}" x2="{width - _RIGHT:g}" '
                 f'y1="{_TOP + plot_h:g}" y2="{_TOP + plot_h:g}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(fraction: float, level: str = "ok", marks: Sequence[float] = (),
          label: str = "") -> Markup:
    """A horizontal bar filled to ``fraction`` (capped at 1), with threshold marks."""
    filled = max(0.0, min(fraction, 1.0)) * 100
    parts = [f'<svg class="meter" viewBox="0 0 100 10" preserveAspectRatio="none" '
             f'role="img" aria-label="{escape(label or f"{fraction * 100:.0f} %")}">',
             '<rect class="track" x="0" y="0" width="100" height="10" rx="0"/>',
             f'<rect class="fill {escape(level)}" x="0" y="0" width="{filled:.2f}" '
             'height="10"/>']
    for mark in marks:
        if 0 < mark < 1:
            parts.append(f'<rect class="mark" x="{mark * 100 - 0.25:.2f}" y="0" width="0.5" '
                         'height="10"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _id(title: str) -> str:
    return "chart-" + "".join(ch if ch.isalnum() else "-" for ch in title.lower())[:40]
