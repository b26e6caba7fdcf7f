"""Inline SVG charts for the lab's HTML report, drawn in Python: no JS library, no network.

Each builder returns one `<svg class="chart" id=...>` element (the id lets the browser test find
its area in a screenshot). A chart with nothing to draw still has its frame and says "no data",
so a report of an all-error run has the same layout as a good one. Every text is escaped here;
callers pass user text (model names, recipe ids, failure messages) as it is. Tooltips are SVG
<title> elements: the browser shows them on hover without any script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge_export.lab.reportdata import esc as escape
from edge_export.lab.reportdata import pareto_front, quantile

STATUS_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#e65100", "not_run": "#757575"}
GROUP_COLOURS = {"onnx": "#1f77b4", "tflite": "#ff7f0e", "executorch": "#2ca02c", "coreml": "#9467bd"}
EXTRA_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MAX_DOTS = 200  # samples drawn per latency row (every one still counts in the box)


@dataclass
class ParetoPoint:
    """One (model, recipe) in a Pareto plot."""

    label: str
    group: str  # the target: it picks the colour
    size_bytes: float
    value: float
    latency_ms: float | None
    status: str
    detail: str = ""  # extra tooltip lines (latency per device)


@dataclass
class TrendPoint:
    """One run of a cell in its trend sparkline."""

    run_id: str
    time: str
    p50_ms: float | None
    status: str
    current: bool


class Scale:
    """Maps data values onto pixels, linear or log10 (log when the data spans a wide range)."""

    def __init__(self, low: float, high: float, start: float, end: float, log: bool = False) -> None:
        self.log = log and low > 0
        if self.log:
            low, high = math.log10(low), math.log10(high)
        if high - low <= 0:  # one value: give it room either side
            pad = abs(low) * 0.05 or 0.5
            low, high = low - pad, high + pad
        self.low, self.high, self.start, self.end = low, high, start, end
        self.step = 0.0  # of the last ticks(): how many decimals a tick label needs

    def __call__(self, value: float) -> float:
        value = math.log10(value) if self.log else value
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        """Round-numbered tick values inside the range."""
        if self.log:
            decades = range(math.floor(self.low), math.ceil(self.high) + 1)
            values = [m * 10.0**d for d in decades for m in (1, 2, 5)]
            return [v for v in values if self.low <= math.log10(v) <= self.high + 1e-9]
        raw = (self.high - self.low) / max(count, 1)
        magnitude = 10.0 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        self.step = step
        first = math.ceil(self.low / step) * step
        return [first + i * step for i in range(int((self.high - first) / step + 1e-9) + 1)]

    def label(self, tick: float) -> str:
        """A tick's text with just enough decimals to tell it from its neighbours."""
        if self.log or not self.step or abs(tick) >= 1e6:
            return short(tick)
        exponent = math.floor(math.log10(self.step) + 1e-9)
        quarter = round(self.step / 10.0**exponent, 6) == 2.5  # 2.5, 0.25, ...: one digit more
        decimals = max(0, -exponent + (1 if quarter else 0))
        return f"{tick:.{decimals}f}"


def short(value: float) -> str:
    """A number in at most ~5 significant characters for axes and labels."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.5g}" if abs(value) < 1 else f"{value:.4g}"


def group_colour(group: str, known: list[str]) -> str:
    """A stable colour per target; unknown targets take the extra palette in order of appearance."""
    if group in GROUP_COLOURS:
        return GROUP_COLOURS[group]
    if group not in known:
        known.append(group)
    return EXTRA_COLOURS[known.index(group) % len(EXTRA_COLOURS)]


def _open(chart_id: str, width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" id="{escape(chart_id)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg"><rect class="frame" x="0.5" y="0.5" width="{width - 1}" '
        f'height="{height - 1}" rx="4"/>'
    )


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "start") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'


def no_data(chart_id: str, width: int, height: int, title: str, reason: str = "no data", *,
            show_title: bool = True) -> str:  # fmt: skip
    """A framed chart that says it has nothing to show (and why); its aria-label ends in "no data"."""
    heading = _text(12, 20, title, "title") if show_title else ""
    return (
        _open(chart_id, width, height, f"{title}: no data")
        + heading
        + _text(width / 2, height / 2 + 4, reason, "nodata", "middle")
        + "</svg>"
    )


def pareto_chart(chart_id: str, title: str, points: Sequence[ParetoPoint], metric: str, higher: bool,
                 latency_device: str | None) -> str:  # fmt: skip
    """Size (x) vs accuracy (y, better is up) per recipe; marker area grows with latency on
    `latency_device`; the Pareto front over (size, accuracy, latency) is ringed and joined."""
    width, height, left, right, top, bottom = 540, 360, 70, 20, 52, 46
    if not points:
        return no_data(chart_id, width, height, title, "no data: no cell has both a size and accuracy")
    sizes = [p.size_bytes / 1e6 for p in points]
    values = [p.value for p in points]
    wide = min(sizes) > 0 and max(sizes) / min(sizes) > 8
    x = Scale(min(sizes), max(sizes), left + 14, width - right - 14, log=wide)
    pad = (max(values) - min(values)) * 0.08
    y = Scale(min(values) - pad, max(values) + pad, height - bottom, top)
    if not higher:  # lower is better: flip so that better is still up
        y = Scale(min(values) - pad, max(values) + pad, top, height - bottom)
    parts = [_open(chart_id, width, height, title), _text(12, 20, title, "title")]
    parts += _axes(x, y, width, height, left, right, top, bottom)
    parts.append(_text(left + (width - left - right) / 2, height - 8, "size (MB)", "axis", "middle"))
    arrow = "↑ better" if higher else "↑ better (lower)"
    parts.append(f'<text class="axis" transform="translate(14 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(f"{metric} {arrow}")}</text>')  # fmt: skip
    latencies = [p.latency_ms for p in points if p.latency_ms is not None]
    note = f"marker area: p50 on {latency_device}" if latency_device and latencies else "no latency data"
    parts.append(_text(12, 38, f"{note}; ringed + dashed: Pareto front", "note"))
    objectives = [(p.size_bytes, p.value, p.latency_ms) for p in points]
    front = pareto_front(objectives, (False, higher, False))
    ordered = sorted(front, key=lambda i: sizes[i])
    line = " ".join(f"{x(sizes[i]):.1f},{y(values[i]):.1f}" for i in ordered)
    parts.append(f'<polyline class="front" points="{line}"/>')
    known: list[str] = []
    labels: list[tuple[float, float, float, str]] = []
    top_latency = max(latencies) if latencies else 1.0
    for i in sorted(range(len(points)), key=lambda i: -(points[i].latency_ms or 0)):  # big ones first
        point = points[i]
        radius = 4 + 12 * math.sqrt(point.latency_ms / top_latency) if point.latency_ms else 4
        colour = group_colour(point.group, known)
        cls = "pt front-pt" if i in front else "pt"
        cls += " failed" if point.status in ("failed", "error") else ""
        tip = (f"{point.label}\nsize {sizes[i]:.2f} MB\n{metric} {point.value:.6g}\n"
               f"status {point.status}{point.detail}")  # fmt: skip
        parts.append(
            f'<circle class="{cls}" cx="{x(sizes[i]):.1f}" cy="{y(values[i]):.1f}" r="{radius:.1f}" '
            f'fill="{colour}"><title>{escape(tip)}</title></circle>'
        )
        labels.append((x(sizes[i]), y(values[i]), radius, point.label))
    parts += _point_labels(labels, (left + width - right) / 2)
    legend_x = width - right
    for group in sorted({p.group for p in points}, reverse=True):
        legend_x -= 8 + 7 * len(group) + 14
        colour = group_colour(group, known)
        parts.append(f'<circle cx="{legend_x + 5}" cy="16" r="5" fill="{colour}"/>')
        parts.append(_text(legend_x + 13, 20, group, "legend"))
    return "".join(parts) + "</svg>"


def _point_labels(labels: list[tuple[float, float, float, str]], middle: float) -> list[str]:
    """Recipe labels beside their markers (left of the ones in the right half, so they stay in
    the frame), each moved down until it overlaps no label placed before it."""
    placed: list[tuple[float, float, float]] = []
    parts = []
    for cx, cy, radius, label in sorted(labels, key=lambda item: item[1]):
        width = 5.6 * len(label)
        right_side = cx < middle
        x0 = cx + radius + 3 if right_side else cx - radius - 3 - width
        y = cy + 4
        while any(x0 < px1 and px0 < x0 + width and abs(y - py) < 11 for px0, px1, py in placed):
            y += 11
        placed.append((x0, x0 + width, y))
        parts.append(
            _text(x0 if right_side else x0 + width, y, label, "ptlabel", "start" if right_side else "end")
        )
    return parts


def _axes(
    x: Scale, y: Scale, width: int, height: int, left: int, right: int, top: int, bottom: int
) -> list[str]:
    parts = [
        f'<rect class="plot" x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}"/>'
    ]
    for tick in x.ticks():
        px = x(tick)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}"/>')
        parts.append(_text(px, height - bottom + 14, x.label(tick), "tick", "middle"))
    for tick in y.ticks():
        py = y(tick)
        parts.append(f'<line class="grid" x1="{left}" y1="{py:.1f}" x2="{width - right}" y2="{py:.1f}"/>')
        parts.append(_text(left - 5, py + 4, y.label(tick), "tick", "end"))
    return parts  # fmt: skip


@dataclass
class LatencySeries:
    """One cell's samples on a device."""

    label: str
    samples: list[float]
    status: str
    reason: str = "no data"  # shown instead of a box when there are no samples


def latency_chart(chart_id: str, title: str, series: Sequence[LatencySeries]) -> str:
    """One row per cell: every sample as a dot, a box from p25 to p75 with the median, whiskers
    from min to max, and the p50 printed at the right. Log axis when the cells differ by >20x."""
    row_h, top, bottom, left, right = 24, 40, 34, 300, 110
    width = 1100
    height = top + bottom + row_h * max(len(series), 1)
    everything = [v for s in series for v in s.samples]
    if not everything:
        return no_data(chart_id, width, max(height, 90), title, "no data: no latency samples on this device")
    low, high = min(everything), max(everything)
    x = Scale(low * 0.95, high * 1.05, left, width - right, log=low > 0 and high / low > 20)
    parts = [_open(chart_id, width, height, title), _text(12, 20, title, "title")]
    parts.append(_text(12, 34, "dots: every timed iteration; box: p25-p75, line: median; whiskers: min-max",
                       "note"))  # fmt: skip
    for tick in x.ticks(8):
        px = x(tick)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}"/>')
        parts.append(_text(px, height - bottom + 14, x.label(tick), "tick", "middle"))
    parts.append(_text(left + (width - left - right) / 2, height - 6, "latency (ms)", "axis", "middle"))
    for row, item in enumerate(series):
        mid = top + row_h * row + row_h / 2
        parts.append(_text(left - 8, mid + 4, item.label, "rowlabel", "end"))
        if not item.samples:
            parts.append(_text(left + 6, mid + 4, item.reason, "nodata small"))
            continue
        parts.append(_box(x, mid, item))
    return "".join(parts) + "</svg>"


def _box(x: Scale, mid: float, item: LatencySeries) -> str:
    values = item.samples
    q1, median, q3 = (quantile(values, q) for q in (0.25, 0.5, 0.75))
    colour = STATUS_COLOURS.get(item.status, "#555")
    step = max(1, math.ceil(len(values) / MAX_DOTS))
    dots = "".join(
        f'<circle class="dot" cx="{x(v):.1f}" cy="{mid + ((i * 0.618) % 1 - 0.5) * 14:.1f}" r="2" fill="{colour}"/>'
        for i, v in enumerate(values[::step])
    )
    tip = f"{item.label}\nn={len(values)} p50={median:.4g} ms p25={q1:.4g} p75={q3:.4g} min={min(values):.4g} max={max(values):.4g}"
    return (
        f'<g><title>{escape(tip)}</title>'
        f'<line class="whisker" x1="{x(min(values)):.1f}" y1="{mid:.1f}" x2="{x(max(values)):.1f}" y2="{mid:.1f}"/>'
        f'<rect class="box" x="{x(q1):.1f}" y="{mid - 8:.1f}" width="{max(x(q3) - x(q1), 1.5):.1f}" height="16" '
        f'stroke="{colour}"/>{dots}'
        f'<line class="median" x1="{x(median):.1f}" y1="{mid - 9:.1f}" x2="{x(median):.1f}" y2="{mid + 9:.1f}"/>'
        f"</g>" + _text(x.end + 8, mid + 4, f"p50 {median:.4g} ms", "value")
    )  # fmt: skip


def trend_chart(chart_id: str, title: str, points: Sequence[TrendPoint]) -> str:
    """A sparkline of a cell's p50 over the stored runs (oldest left, this run ringed); runs
    without a latency are red ticks on the baseline."""
    width, height, left, right, top, bottom = 260, 80, 46, 10, 10, 16
    values = [p.p50_ms for p in points if p.p50_ms is not None]
    if not values:
        statuses = sorted({p.status.replace("_", " ") for p in points})
        reason = f"no data ({', '.join(statuses)})" if statuses else "no data"
        return no_data(chart_id, width, height, title, reason, show_title=False)
    x = Scale(0, max(len(points) - 1, 1), left, width - right)
    if len(points) == 1:
        x = Scale(-1, 1, left, width - right)
    y = Scale(min(values), max(values), height - bottom, top)
    parts = [_open(chart_id, width, height, title)]
    parts.append(_text(left - 4, top + 8, f"{max(values):.4g}", "tick", "end"))
    parts.append(_text(left - 4, height - bottom, f"{min(values):.4g}", "tick", "end"))
    parts.append(_text(left, height - 3, f"{len(points)} runs, p50 ms", "tick"))
    line = " ".join(f"{x(i):.1f},{y(p.p50_ms):.1f}" for i, p in enumerate(points) if p.p50_ms is not None)
    parts.append(f'<polyline class="trend" points="{line}"/>')
    for i, point in enumerate(points):
        tip = f"{point.run_id}\n{point.time}\n{point.status}: " + (
            f"p50 {point.p50_ms:.4g} ms" if point.p50_ms is not None else "no latency"
        )
        colour = STATUS_COLOURS.get(point.status, "#555")
        if point.p50_ms is None:
            bottom_y = height - bottom
            parts.append(f'<line class="miss" x1="{x(i):.1f}" y1="{bottom_y - 6}" x2="{x(i):.1f}" '
                         f'y2="{bottom_y + 2}" stroke="{colour}"><title>{escape(tip)}</title></line>')  # fmt: skip
            continue
        cls = "tp current" if point.current else "tp"
        parts.append(f'<circle class="{cls}" cx="{x(i):.1f}" cy="{y(point.p50_ms):.1f}" '
                     f'r="{4.5 if point.current else 3}" fill="{colour}"><title>{escape(tip)}</title></circle>')  # fmt: skip
    return "".join(parts) + "</svg>"
