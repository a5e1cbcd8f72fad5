"""Charts as server-rendered SVG: a picture without a JavaScript charting library.
Pure functions of the numbers (``reads.ChartsData``), so tests can read the shapes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from markupsafe import Markup

from ..states import RunState
from .reads import Latency

COLORS = {
    RunState.COMPLETED: "#2e7d32", RunState.FAILED: "#c62828", RunState.DEAD_LETTERED: "#6a1b9a",
    RunState.CANCELLED: "#f9a825", RunState.RUNNING: "#0277bd", RunState.PENDING: "#4fc3f7",
    RunState.SLEEPING: "#5c6bc0", RunState.WAITING: "#9fa8da",
}
WIDTH, HEIGHT, PAD = 900, 220, 40


def runs_per_bucket(counts: dict[int, dict[str, int]], since: float, until: float, width: float) -> Markup:
    """Stacked bars: runs created per bucket of ``width`` seconds, by current status."""
    first, last = int(since // width), int(until // width)
    buckets = list(range(first, last + 1))
    top = max((sum(c.values()) for c in counts.values()), default=0) or 1
    bar = (WIDTH - 2 * PAD) / len(buckets)
    parts = [Markup('<svg class="chart" viewBox="0 0 {0} {1}" role="img" aria-label="runs per {2}">').format(
        WIDTH, HEIGHT + 30, _span(width))]
    parts.append(_axis(top))
    for i, b in enumerate(buckets):
        y = float(HEIGHT)
        for status in RunState:
            n = counts.get(b, {}).get(status, 0)
            if not n:
                continue
            h = (HEIGHT - PAD) * n / top
            y -= h
            parts.append(Markup(
                '<rect x="{0:.1f}" y="{1:.1f}" width="{2:.1f}" height="{3:.1f}" fill="{4}">'
                '<title>{5}: {6} {7}</title></rect>').format(
                PAD + i * bar, y, max(bar - 1, 1), h, COLORS[status], _at(b * width), n, status.value))
    for i in (0, len(buckets) // 2, len(buckets) - 1):
        parts.append(Markup('<text x="{0:.1f}" y="{1}" class="tick">{2}</text>').format(
            PAD + i * bar, HEIGHT + 16, _at(buckets[i] * width)))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def latency_bars(rows: Sequence[Latency]) -> Markup:
    """Per name, three bars: the 50th, 90th and 99th percentile."""
    if not rows:
        return Markup('<p class="dim">nothing recorded in this window</p>')
    top = max(r.p99 for r in rows) or 1.0
    row_h, label_w = 26, 220
    height = row_h * len(rows) + 10
    span = WIDTH - label_w - 150
    parts = [Markup('<svg class="chart" viewBox="0 0 {0} {1}" role="img" aria-label="percentiles">').format(
        WIDTH, height)]
    for i, r in enumerate(rows):
        y = 5 + i * row_h
        parts.append(Markup('<text x="0" y="{0}" class="label">{1} ({2})</text>').format(y + 15, r.name, r.count))
        for value, shade, dy in ((r.p99, "#ffcc80", 0), (r.p90, "#ffa726", 5), (r.p50, "#ef6c00", 10)):
            parts.append(Markup('<rect x="{0}" y="{1}" width="{2:.1f}" height="{3}" fill="{4}"></rect>').format(
                label_w, y + dy / 2, max(1.0, span * value / top), 20 - dy, shade))
        parts.append(Markup('<text x="{0:.1f}" y="{1}" class="tick">p50 {2} · p90 {3} · p99 {4}</text>').format(
            label_w + span + 6, y + 15, _secs(r.p50), _secs(r.p90), _secs(r.p99)))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _axis(top: int) -> Markup:
    return Markup('<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" class="axis"></line>'
                  '<text x="0" y="{3}" class="tick">{4}</text><text x="0" y="{1}" class="tick">0</text>').format(
        PAD, HEIGHT, WIDTH - PAD, PAD + 4, top)


def _at(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%m-%d %H:%M")


def _span(width: float) -> str:
    return f"{int(width // 60)} min" if width >= 60 else f"{width:g} s"


def _secs(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"
