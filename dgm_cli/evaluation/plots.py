"""Line plots as PNG files, drawn with Pillow (a dependency already; no plotting library needed).

``line_plot`` draws one or more series (a name, x values, y values, optional standard errors drawn
as error bars) on one pair of axes with 1-2-5 ticks, a log-scaled x axis where asked, categorical x
values (strings) at even spacing, and a legend. `dgm report` uses it for a metric against a
hyperparameter and for learning curves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from PIL import Image, ImageDraw, ImageFont

#: matplotlib's "tab10" colours, so plots look familiar
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
WIDTH, HEIGHT = 960, 560
LEFT, RIGHT, TOP, BOTTOM = 90, 260, 50, 70  # margins; the legend sits in the right one
GRID, AXIS, TEXT = (230, 230, 230), (60, 60, 60), (20, 20, 20)

Number = Union[int, float]


@dataclass
class Series:
    name: str
    x: Sequence[Union[Number, str]]
    y: Sequence[Number]
    err: Optional[Sequence[Optional[Number]]] = None  # y's standard error at each point: drawn as a bar of ±1


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """log10 of the round values (1, 2 and 5 times a power of ten; every digit over less than a
    decade) within [10^lo, 10^hi]."""
    for mantissas in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [
            math.log10(m) + e
            for e in range(math.floor(lo), math.ceil(hi) + 1)
            for m in mantissas
            if lo - 1e-9 <= math.log10(m) + e <= hi + 1e-9
        ]
        if len(ticks) >= 3:
            return ticks
    return ticks or [lo]


def _label(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


class Axes:
    """Data -> pixel coordinates of the plotting area."""

    def __init__(self, xlo: float, xhi: float, ylo: float, yhi: float):
        self.xlo, self.xhi, self.ylo, self.yhi = xlo, xhi, ylo, yhi

    def px(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.xlo) / ((self.xhi - self.xlo) or 1)
        fy = (y - self.ylo) / ((self.yhi - self.ylo) or 1)
        return LEFT + fx * (WIDTH - LEFT - RIGHT), HEIGHT - BOTTOM - fy * (HEIGHT - TOP - BOTTOM)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def line_plot(series: Sequence[Series], path: Path, title: str, xlabel: str, ylabel: str, log_x: bool = False) -> Path:
    """Write the PNG and return its path. Points whose y is missing or not finite are left out."""
    categories = sorted({v for s in series for v in s.x if isinstance(v, str)})

    def x_of(v):  # noqa: E306
        return float(categories.index(v)) if isinstance(v, str) else (math.log10(v) if log_x else float(v))

    def error(e) -> float:
        return float(e) if e is not None and math.isfinite(e) else 0.0

    points = [
        [
            (x_of(x), float(y), error(e))
            for x, y, e in zip(s.x, s.y, s.err or [None] * len(s.y))
            if y is not None and math.isfinite(y)
        ]
        for s in series
    ]
    xs = [p[0] for ps in points for p in ps] or [0.0]
    ys = [y + sign * e for ps in points for _, y, e in ps for sign in (-1, 1)] or [0.0]
    yticks = nice_ticks(min(ys), max(ys))
    if categories:
        xticks = [float(i) for i in range(len(categories))]
        xlo, xhi = -0.5, len(categories) - 0.5
    else:
        xticks = (
            log_ticks(min(xs), max(xs))
            if log_x
            else ([t for t in nice_ticks(min(xs), max(xs)) if min(xs) - 1e-12 <= t <= max(xs) + 1e-12] or [min(xs)])
        )
        pad = 0.04 * ((max(xs) - min(xs)) or 1)
        xlo, xhi = min(xs) - pad, max(xs) + pad
    ax = Axes(xlo, xhi, yticks[0], yticks[-1])
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    for t in yticks:
        _, py = ax.px(xlo, t)
        draw.line([(LEFT, py), (WIDTH - RIGHT, py)], fill=GRID)
        draw.text((LEFT - 8, py), _label(t), fill=TEXT, font=small, anchor="rm")
    for i, t in enumerate(xticks):
        px, _ = ax.px(t, yticks[0])
        draw.line([(px, TOP), (px, HEIGHT - BOTTOM)], fill=GRID)
        text = categories[i] if categories else (f"{10**t:.3g}" if log_x else _label(t))
        draw.text((px, HEIGHT - BOTTOM + 8), text, fill=TEXT, font=small, anchor="mt")
    draw.rectangle([LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM], outline=AXIS)
    for k, ps in enumerate(points):
        color = PALETTE[k % len(PALETTE)]
        pixels = [ax.px(x, y) for x, y, _ in sorted(ps)]
        for x, y, e in ps:  # error bars with caps
            if e > 0:
                (px, top), (_, bottom) = ax.px(x, y + e), ax.px(x, y - e)
                draw.line([(px, top), (px, bottom)], fill=color, width=1)
                draw.line([(px - 5, top), (px + 5, top)], fill=color, width=1)
                draw.line([(px - 5, bottom), (px + 5, bottom)], fill=color, width=1)
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        if len(pixels) <= 50:  # markers where they can be told apart
            for px, py in pixels:
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        ly = TOP + 10 + 22 * k
        draw.line([(WIDTH - RIGHT + 15, ly), (WIDTH - RIGHT + 40, ly)], fill=color, width=3)
        draw.text((WIDTH - RIGHT + 48, ly), series[k].name[:30], fill=TEXT, font=small, anchor="lm")
    draw.text(((LEFT + WIDTH - RIGHT) / 2, TOP / 2), title, fill=TEXT, font=font, anchor="mm")
    draw.text(
        ((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 22),
        xlabel + (" (log scale)" if log_x else ""),
        fill=TEXT,
        font=font,
        anchor="mm",
    )
    label = Image.new("RGB", (HEIGHT - TOP - BOTTOM, 24), "white")
    ImageDraw.Draw(label).text((label.width / 2, 12), ylabel, fill=TEXT, font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, TOP))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
