"""Small PNG charts drawn with Pillow (a core dependency): lines, grouped bars, tiling.

No plotting library is needed; the charts are plain and readable: axes with ticks, one colour
per series, a legend, optional error bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
from PIL import Image, ImageDraw, ImageFont

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
WIDTH, HEIGHT = 560, 400
LEFT, RIGHT, BOTTOM = 70, 20, 60
LEGEND_ROW = 16


@attrs.frozen
class Series:
    """One line (or one bar group member): y values at the chart's x positions."""

    label: str
    ys: tuple[float, ...]
    errors: tuple[float, ...] | None = None
    xs: tuple[float, ...] | None = None  # numeric x (line charts); None: categorical positions


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    start = math.floor(low / step) * step
    ticks, value = [], start
    while not ticks or ticks[-1] < high - step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if len(ticks) < 2:
        ticks.append(round(ticks[0] + step, 12))
    return ticks


class _Canvas:
    """A white chart: title, legend rows under it, then the axes box."""

    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        y_range: tuple[float, float],
        labels: Sequence[str],
    ):
        self.font, self.small = _font(15), _font(12)
        self.legend_rows = self._layout_legend(labels)
        self.top = top = 34 + LEGEND_ROW * len(self.legend_rows)
        self.image = Image.new("RGB", (WIDTH, HEIGHT + top), "white")
        self.draw = ImageDraw.Draw(self.image)
        self._draw_legend()
        self.yticks = nice_ticks(*y_range)
        self.y0, self.y1 = self.yticks[0], self.yticks[-1]
        self.draw.text((WIDTH / 2, 8), title, fill="black", font=self.font, anchor="mt")
        self.bottom = HEIGHT + top - BOTTOM
        self.draw.text(
            ((LEFT + WIDTH - RIGHT) / 2, HEIGHT + top - 8),
            xlabel,
            fill="black",
            font=self.small,
            anchor="mb",
        )
        label = Image.new("RGB", (self.bottom - top, 18), "white")
        ImageDraw.Draw(label).text(
            (label.width / 2, 9), ylabel, fill="black", font=self.small, anchor="mm"
        )
        self.image.paste(label.rotate(90, expand=True), (4, top))
        for tick in self.yticks:
            y = self.py(tick)
            self.draw.line((LEFT - 4, y, LEFT, y), fill="black")
            self.draw.line((LEFT + 1, y, WIDTH - RIGHT - 1, y), fill="#e6e6e6")
            self.draw.text((LEFT - 6, y), f"{tick:g}", fill="black", font=self.small, anchor="rm")
        self.draw.rectangle((LEFT, top, WIDTH - RIGHT, self.bottom), outline="black")

    def py(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.bottom - (value - self.y0) / span * (self.bottom - self.top)

    def xtick(self, x: float, text: str) -> None:
        self.draw.line((x, self.bottom, x, self.bottom + 4), fill="black")
        self.draw.text((x, self.bottom + 6), text, fill="black", font=self.small, anchor="mt")

    def _layout_legend(self, labels: Sequence[str]) -> list[list[tuple[int, str, float]]]:
        """Legend entries ``(colour index, label, x)`` in rows that fit the chart's width."""
        rows: list[list[tuple[int, str, float]]] = [[]] if labels else []
        x = LEFT
        for i, label in enumerate(labels):
            width = 24 + self.small.getlength(label) + 14
            if x + width > WIDTH - RIGHT and rows[-1]:
                rows.append([])
                x = LEFT
            rows[-1].append((i, label, x))
            x += width
        return rows

    def _draw_legend(self) -> None:
        for r, row in enumerate(self.legend_rows):
            y = 30 + LEGEND_ROW * r
            for i, label, x in row:
                colour = PALETTE[i % len(PALETTE)]
                self.draw.rectangle((x, y + 3, x + 14, y + 11), fill=colour)
                self.draw.text((x + 20, y), label, fill="black", font=self.small)


def _y_range(series: Sequence[Series]) -> tuple[float, float]:
    values = [
        y + sign * (s.errors[i] if s.errors else 0.0)
        for s in series
        for i, y in enumerate(s.ys)
        for sign in (-1, 1)
        if math.isfinite(y)
    ]
    return (min(values), max(values)) if values else (0.0, 1.0)


def line_chart(
    title: str,
    xlabel: str,
    ylabel: str,
    series: Sequence[Series],
    categories: Sequence[str] | None = None,
    y_range: tuple[float, float] | None = None,
) -> Image.Image:
    """Lines with markers; x is categorical (``categories``) or numeric (each series' ``xs``)."""
    canvas = _Canvas(title, xlabel, ylabel, y_range or _y_range(series), [s.label for s in series])
    inner = WIDTH - LEFT - RIGHT
    if categories is not None:
        positions = [LEFT + inner * (i + 0.5) / len(categories) for i in range(len(categories))]
        for x, text in zip(positions, categories):
            canvas.xtick(x, text)

        def px(i: int, _: Series) -> float:
            return positions[i]
    else:
        xs = [x for s in series for x in (s.xs or ())]
        xticks = nice_ticks(min(xs), max(xs))
        x0, x1 = xticks[0], xticks[-1]
        for tick in xticks:
            canvas.xtick(LEFT + (tick - x0) / ((x1 - x0) or 1) * inner, f"{tick:g}")

        def px(i: int, s: Series) -> float:
            return LEFT + (s.xs[i] - x0) / ((x1 - x0) or 1) * inner

    for k, s in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        points = [(px(i, s), canvas.py(y)) for i, y in enumerate(s.ys) if math.isfinite(y)]
        if len(points) > 1:
            canvas.draw.line(points, fill=colour, width=2)
        if len(points) <= 40:
            for (x, y), i in zip(points, range(len(s.ys))):
                canvas.draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
                if s.errors:
                    e = s.errors[i]
                    canvas.draw.line(
                        (x, canvas.py(s.ys[i] - e), x, canvas.py(s.ys[i] + e)), fill=colour
                    )
    return canvas.image


def bar_chart(
    title: str, ylabel: str, categories: Sequence[str], series: Sequence[Series]
) -> Image.Image:
    """Grouped bars: one group per category, one bar per series, with error bars if given."""
    low, high = _y_range(series)
    labels = [s.label for s in series] if len(series) > 1 else []
    canvas = _Canvas(title, "", ylabel, (min(0.0, low), high), labels)
    inner = WIDTH - LEFT - RIGHT
    group = inner / max(1, len(categories))
    bar = group * 0.8 / max(1, len(series))
    for c, text in enumerate(categories):
        canvas.xtick(LEFT + group * (c + 0.5), text)
        for k, s in enumerate(series):
            colour = PALETTE[k % len(PALETTE)]
            x = LEFT + group * (c + 0.1) + bar * k
            y = s.ys[c]
            if not math.isfinite(y):
                continue
            canvas.draw.rectangle((x, canvas.py(y), x + bar - 2, canvas.py(0.0)), fill=colour)
            if s.errors:
                mid, e = x + bar / 2 - 1, s.errors[c]
                canvas.draw.line((mid, canvas.py(y - e), mid, canvas.py(y + e)), fill="black")
    return canvas.image


def tile(images: Sequence[Image.Image], columns: int = 2) -> Image.Image:
    """Images side by side, ``columns`` per row."""
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = max(i.width for i in images), max(i.height for i in images)
    sheet = Image.new("RGB", (width * columns, height * rows), "white")
    for n, image in enumerate(images):
        sheet.paste(image, ((n % columns) * width, (n // columns) * height))
    return sheet
