"""Charts as small inline SVG: they need no JavaScript, no network and no trust, so a saved notebook shows
them anywhere (reopened offline, nbviewer, GitHub, VS Code, an HTML export) for a few kilobytes."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 28, 36
MAX_POINTS = 400  # per series: enough for the eye, keeps a 100k-step run's snapshot small


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = "#1f77b4"
    width: float = 1.5
    dash: bool = False
    markers: bool = False


def _thin(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / MAX_POINTS
    return [points[int(i * stride)] for i in range(MAX_POINTS - 1)] + [points[-1]]


def _ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    if high <= low:
        return [low]
    raw = max((high - low) / count, 1.0 if whole else 0.0)  # whole: counts have no half rows
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"


class _Frame:
    """Maps data coordinates to pixels and draws axes, ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], width: int, height: int,
                 whole_y: bool = False) -> None:
        self.whole_y = whole_y
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 1, self.y1 + 1
        self.width, self.height = width, height

    def px(self, x: float) -> float:
        return _LEFT + (x - self.x0) / (self.x1 - self.x0) * (self.width - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        return self.height - _BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (self.height - _TOP - _BOTTOM)

    def axes(self, x_title: str, y_title: str) -> str:
        parts = []
        for y in _ticks(self.y0, self.y1, whole=self.whole_y):
            parts.append(f"<line x1='{_LEFT}' x2='{self.width - _RIGHT}' y1='{self.py(y):.1f}' "
                         f"y2='{self.py(y):.1f}' stroke='#eee'/>"
                         f"<text x='{_LEFT - 4}' y='{self.py(y) + 3:.1f}' text-anchor='end'>"
                         f"{_label(y)}</text>")
        for x in _ticks(self.x0, self.x1):
            parts.append(f"<text x='{self.px(x):.1f}' y='{self.height - _BOTTOM + 14}' text-anchor='middle'>"
                         f"{_label(x)}</text>")
        bottom = self.height - _BOTTOM
        parts.append(f"<line x1='{_LEFT}' x2='{self.width - _RIGHT}' y1='{bottom}' y2='{bottom}' "
                     "stroke='#999'/>")
        parts.append(f"<text x='{(self.width + _LEFT) / 2:.0f}' y='{self.height - 4}' text-anchor='middle'>"
                     f"{html.escape(x_title)}</text>")
        parts.append(f"<text transform='translate(12 {(self.height - _BOTTOM + _TOP) / 2:.0f}) rotate(-90)' "
                     f"text-anchor='middle'>{html.escape(y_title)}</text>")
        return "".join(parts)


def _svg(body: str, width: int, height: int, title: str) -> str:
    heading = f"<text x='{_LEFT}' y='14' font-weight='bold'>{html.escape(title)}</text>" if title else ""
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='nbft-chart' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' font-family='sans-serif' font-size='10' fill='#333'>"
            f"<rect width='{width}' height='{height}' fill='white'/>{heading}{body}</svg>")


def line_chart(series: Sequence[Series], title: str = "", x_title: str = "step", y_title: str = "loss",
               width: int = WIDTH, height: int = HEIGHT) -> str:
    """Lines (a path per series) with a legend; an empty chart says so instead of drawing bare axes."""
    thinned = [(s, _thin(s.xs, s.ys)) for s in series]
    points = [p for _s, pts in thinned for p in pts]
    if not points:
        return _svg(f"<text x='{width / 2:.0f}' y='{height / 2:.0f}' text-anchor='middle'>no data yet</text>",
                    width, height, title)
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    pad = (high - low) * 0.05
    frame = _Frame((min(p[0] for p in points), max(p[0] for p in points)), (low - pad, high + pad),
                   width, height)
    body = [frame.axes(x_title, y_title)]
    legend_x = width - _RIGHT
    for s, pts in reversed(thinned):
        if not pts:
            continue
        dash = " stroke-dasharray='4 3'" if s.dash else ""
        path = "M" + " L".join(f"{frame.px(x):.1f} {frame.py(y):.1f}" for x, y in pts)
        body.append(f"<path d='{path}' fill='none' stroke='{s.color}' stroke-width='{s.width}'{dash}>"
                    f"<title>{html.escape(s.name)}</title></path>")
        if s.markers:
            body.extend(f"<circle cx='{frame.px(x):.1f}' cy='{frame.py(y):.1f}' r='2.5' fill='{s.color}'/>"
                        for x, y in pts)
        legend_x -= 7 * len(s.name) + 26
        body.append(f"<line x1='{legend_x}' x2='{legend_x + 14}' y1='10' y2='10' stroke='{s.color}' "
                    f"stroke-width='2'{dash}/><text x='{legend_x + 18}' y='13'>{html.escape(s.name)}</text>")
    return _svg("".join(body), width, height, title)


def histogram(values: Sequence[float], bins: int = 40, clip: float | None = None, marker: float | None = None,
              marker_label: str = "", title: str = "", x_title: str = "tokens", y_title: str = "rows",
              width: int = WIDTH, height: int = 200) -> str:
    """Bars of counts; values above `clip` are counted in the last bar (the caller says so in words)."""
    if not values:
        return _svg(f"<text x='{width / 2:.0f}' y='{height / 2:.0f}' text-anchor='middle'>no rows</text>",
                    width, height, title)
    top = clip if clip is not None else max(values)
    low = min(min(values), top)
    size = max((top - low) / bins, 1e-9)
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((min(value, top) - low) / size))] += 1
    frame = _Frame((low, low + size * bins), (0, max(counts)), width, height, whole_y=True)
    body = [frame.axes(x_title, y_title)]
    for index, count in enumerate(counts):
        if count:
            x0, x1 = frame.px(low + index * size), frame.px(low + (index + 1) * size)
            body.append(f"<rect class='bar' x='{x0:.1f}' y='{frame.py(count):.1f}' "
                        f"width='{max(1.0, x1 - x0 - 1):.1f}' height='{frame.py(0) - frame.py(count):.1f}' "
                        f"fill='#1f77b4'><title>{count}</title></rect>")
    if marker is not None and low <= marker <= low + size * bins:
        x = frame.px(marker)
        body.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{_TOP}' y2='{frame.py(0):.1f}' stroke='#dc3545' "
                    f"stroke-dasharray='4 3'/>"
                    f"<text x='{x - 3:.1f}' y='{_TOP + 8}' text-anchor='end' fill='#dc3545'>"
                    f"{html.escape(marker_label)}</text>")
    return _svg("".join(body), width, height, title)
