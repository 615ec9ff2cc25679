"""Stacked bar charts drawn server-side as SVG: the geometry, for a template to emit.

Pure: columns of (series, value) pairs in, rectangles and axis ticks out. The cost page draws
cost per day stacked by tenant; the workforce page, busy workers per hour. Each series gets a
CSS class (`series-0` ... `series-7`, colours in the stylesheet: no inline style).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

WIDTH = 720
HEIGHT = 200
LEFT = 84
BOTTOM = 36
TOP = 10
SERIES_CLASSES = 8


@dataclasses.dataclass(frozen=True)
class Column:
    label: str
    values: Sequence[tuple[str, float]]  # (series, value), drawn bottom up


@dataclasses.dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclasses.dataclass(frozen=True)
class Tick:
    at: float  # y for the value axis, x for the label axis
    label: str


@dataclasses.dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    base_y: float
    rects: list[Rect]
    value_ticks: list[Tick]
    label_ticks: list[Tick]
    legend: list[tuple[str, str]]  # (series, css class)


def stacked(columns: Sequence[Column], *, unit: str, decimals: int = 2) -> Chart:
    """The columns as stacked bars on one value axis starting at 0."""
    series: list[str] = []
    for column in columns:
        for name, _ in column.values:
            if name not in series:
                series.append(name)
    css = {name: f"series-{i % SERIES_CLASSES}" for i, name in enumerate(series)}
    top = max((sum(v for _, v in c.values) for c in columns), default=0.0)
    step = nice_step(top / 4) if top > 0 else 1.0
    ceiling = max(step, math.ceil(top / step) * step)
    plot_height = HEIGHT - BOTTOM - TOP
    base_y = float(HEIGHT - BOTTOM)
    slot = (WIDTH - LEFT) / max(len(columns), 1)
    bar = max(slot * 0.7, 1.0)
    rects: list[Rect] = []
    label_ticks: list[Tick] = []
    every = max(1, math.ceil(len(columns) / 12))  # at most about 12 labels
    for index, column in enumerate(columns):
        x = LEFT + index * slot + (slot - bar) / 2
        y = base_y
        for name, value in column.values:
            height = value / ceiling * plot_height
            y -= height
            rects.append(
                Rect(
                    x,
                    y,
                    bar,
                    height,
                    css[name],
                    f"{column.label} {name}: {value:.{decimals}f} {unit}",
                )
            )
        if index % every == 0:
            label_ticks.append(Tick(x + bar / 2, column.label))
    value_ticks = [
        Tick(base_y - i * step / ceiling * plot_height, f"{i * step:g} {unit}")
        for i in range(round(ceiling / step) + 1)
    ]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        base_y=base_y,
        rects=rects,
        value_ticks=value_ticks,
        label_ticks=label_ticks,
        legend=[(name, css[name]) for name in series],
    )


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least `raw`."""
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0):
        if raw <= factor * power:
            return factor * power
    return 10.0 * power
