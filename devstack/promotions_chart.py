"""The day's promotions as a picture, from Prometheus data: what `./dev demo` leaves beside its logs.

SVG written by hand (no plotting library: a chart of a few step lines needs none), so it opens in
any browser. Pure: `render_svg` takes the series, `promotions_svg` asks a Prometheus for them.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Series = Mapping[str, Sequence[tuple[float, float]]]  # legend -> [(unix time, value)]
QUERY = 'sum by (action, result) (tradingmodel_operator_promotions_total{job="tradingmodel-operator"})'
_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 720, 360, 56, 180, 40, 40


def render_svg(series: Series, title: str) -> str:
    """Step lines of cumulative counts over time, a legend with each series' total, axes in UTC."""
    points = [p for values in series.values() for p in values]
    if not points:
        return _frame(title, ['<text x="50%" y="50%" text-anchor="middle">no promotions recorded</text>'])
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = max(1.0, max(v for _, v in points))
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * (_W - _LEFT - _RIGHT)

    def y(v: float) -> float:
        return _H - _BOTTOM - v / top * (_H - _TOP - _BOTTOM)

    parts = [
        f'<line x1="{_LEFT}" y1="{y(0)}" x2="{_W - _RIGHT}" y2="{y(0)}" stroke="#333"/>',
        f'<line x1="{_LEFT}" y1="{y(0)}" x2="{_LEFT}" y2="{_TOP}" stroke="#333"/>',
        f'<text x="{_LEFT - 6}" y="{y(top) + 4}" text-anchor="end">{top:g}</text>',
        f'<text x="{_LEFT - 6}" y="{y(0) + 4}" text-anchor="end">0</text>',
        f'<text x="{_LEFT}" y="{_H - 16}">{_clock(t0)}</text>',
        f'<text x="{_W - _RIGHT}" y="{_H - 16}" text-anchor="end">{_clock(t1)} UTC</text>',
    ]
    for i, (legend, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        path, last = [], None
        for t, v in values:
            if last is None:
                path.append(f"M{x(t):.1f},{y(v):.1f}")
            elif v != last:  # a step: the count holds until it moves
                path.append(f"L{x(t):.1f},{y(last):.1f} L{x(t):.1f},{y(v):.1f}")
            last = v
        if values:
            path.append(f"L{x(values[-1][0]):.1f},{y(values[-1][1]):.1f}")
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        total = values[-1][1] if values else 0
        row = _TOP + 18 * i
        parts.append(f'<rect x="{_W - _RIGHT + 12}" y="{row - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{_W - _RIGHT + 28}" y="{row}">{html.escape(legend)}: {total:g}</text>')
    return _frame(title, parts)


def _frame(title: str, parts: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" font-family="sans-serif" '
            'font-size="12">',
            f'<rect width="{_W}" height="{_H}" fill="white"/>',
            f'<text x="{_LEFT}" y="22" font-size="15">{html.escape(title)}</text>',
            *parts,
            "</svg>",
            "",
        ]
    )


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S")


def promotions_svg(
    query_range: Callable[[str, float, float, float], list[dict[str, Any]]], start: float, end: float
) -> str:
    """The promotions counter by action and result between start and end, as `render_svg` draws it."""
    step = max(1.0, (end - start) / 200)
    series = {
        f"{r['metric'].get('action', '?')} {r['metric'].get('result', '?')}": [
            (float(t), float(v)) for t, v in r["values"]
        ]
        for r in query_range(QUERY, start, end, step)
    }
    return render_svg(series, "Promotions by action and result (tradingmodel_operator_promotions_total)")
