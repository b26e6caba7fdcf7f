"""What the lab's reports read from a measurement row (see lab/store.py for the row format).

The HTML and JUnit reports both need the same answers: why a cell failed (the failing gates,
or the error), why it was not run, which accuracy metric stands for a model, the latency
samples, how long a cell took. Rows come from a store, from an interrupted run or from an older
schema, so every field may be missing; each function here answers None / [] instead of raising.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from edge_export.validation.gates import METRICS

STATUSES = ("passed", "failed", "error", "not_run")

# The metric that stands for a model's accuracy in the Pareto plot, first present wins: sentence
# embedding cosine for encoders, perplexity change (continuous, unlike next-token agreement, which
# is 1.0 for most recipes) for decoders, top-1 agreement for classifiers, then generic ones.
MAIN_METRICS = (
    "embedding_cosine_min",
    "perplexity_delta_pct",
    "next_token_agreement",
    "top1_agreement",
    "cosine_min",
    "sqnr_db",
    "max_abs_error",
)

# C0 controls (but tab, newline, return), DEL, lone surrogates and U+FFFE/U+FFFF: not allowed in
# XML 1.0 and parse errors in HTML. Error messages can carry them (ANSI colours from a tool's log).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def printable(value: Any) -> str:
    """`value` as text that XML and HTML can carry: forbidden characters become U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", str(value))


def esc(value: Any) -> str:
    """`value` as HTML text or attribute content: printable, then escaped (quotes too)."""
    return escape(printable(value), quote=True)


def number(value: Any) -> float | None:
    """A finite float, or None (stored metrics may be "nan" strings, None or missing)."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def status_of(row: Mapping[str, Any]) -> str:
    """The row's status, "error" when it is missing or unknown (a row that says nothing did not pass)."""
    status = row.get("status")
    return status if status in STATUSES else "error"


def device_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's latency entry for its device: `latency`, else the result's entry for that device."""
    if isinstance(row.get("latency"), Mapping):
        return dict(row["latency"])
    result = row.get("result") or {}
    for entry in result.get("latency_by_device") or []:
        if isinstance(entry, Mapping) and entry.get("device") == row.get("device"):
            return dict(entry)
    return {}


def failing_gates(accuracy: Mapping[str, Any] | None) -> list[str]:
    """One `metric=value (needs >= threshold)` line per failing gate of an accuracy dict."""
    lines = []
    for gate in (accuracy or {}).get("gates") or []:
        if isinstance(gate, Mapping) and gate.get("passed") is False:
            value = number(gate.get("value"))
            shown = f"{value:.6g}" if value is not None else str(gate.get("value"))
            lines.append(
                f"{gate.get('metric')}={shown} (needs {gate.get('direction')} {gate.get('threshold')})"
            )
    return lines


def failure_lines(row: Mapping[str, Any]) -> list[str]:
    """Why the cell did not pass, one line each: the row's recorded failures; else the failing
    gates (host accuracy and the device's own), the export error and the device error."""
    recorded = [str(line) for line in row.get("failures") or [] if line]
    if recorded:
        return recorded
    entry = device_entry(row)
    result = row.get("result") or {}
    lines = [(row.get("accuracy") or {}).get("failure"), (entry.get("accuracy") or {}).get("failure")]
    lines += [(result.get("error") or {}).get("message"), (entry.get("error") or {}).get("message")]
    lines = [str(line) for line in lines if line]
    if lines:
        return lines
    return failing_gates(row.get("accuracy")) + failing_gates(entry.get("accuracy"))


def not_run_reason(row: Mapping[str, Any]) -> str:
    """Why a cell has no measurement (the device's or the validation's own words)."""
    entry = device_entry(row)
    for source in (entry, row.get("accuracy") or {}, (row.get("result") or {}).get("accuracy") or {}):
        if source.get("not_run"):
            return str(source["not_run"])
    lines = [str(line) for line in row.get("failures") or [] if line]
    return "; ".join(lines) or "not run"


def main_metric(rows: Iterable[Mapping[str, Any]]) -> tuple[str, bool] | None:
    """(metric, higher_is_better) standing for these rows' accuracy: the first of MAIN_METRICS any
    row measured, so all points of one model's plot use the same metric. None when none did."""
    measured: set[str] = set()
    for row in rows:
        measured.update(((row.get("accuracy") or {}).get("metrics") or {}).keys())
    for metric in MAIN_METRICS:
        if metric in measured:
            return metric, METRICS[metric][0]
    return None


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """The row's host accuracy value of `metric`, or None."""
    return number(((row.get("accuracy") or {}).get("metrics") or {}).get(metric))


def samples_ms(row: Mapping[str, Any]) -> list[float]:
    """Every timed iteration of the cell (ms), finite values only."""
    raw = row.get("samples_ms") or device_entry(row).get("samples_ms") or []
    values = (number(v) for v in raw)
    return [v for v in values if v is not None]


def p50_ms(row: Mapping[str, Any]) -> float | None:
    """The cell's median latency: the recorded p50, else the median of its samples."""
    recorded = number(row.get("p50_ms"))
    if recorded is None:
        recorded = number(device_entry(row).get("p50_ms"))
    if recorded is None:
        values = samples_ms(row)
        recorded = quantile(values, 0.5) if values else None
    return recorded


def size_bytes(row: Mapping[str, Any]) -> float | None:
    """The artifact's size in bytes, from the row or its result."""
    size = number(row.get("size_bytes"))
    return size if size is not None else number((row.get("result") or {}).get("size_bytes"))


def cell_seconds(row: Mapping[str, Any]) -> float | None:
    """Seconds the cell's result spent exporting, validating and measuring latency (None if unknown)."""
    timings = (row.get("result") or {}).get("timings_s") or {}
    parts = [number(timings.get(key)) for key in ("export", "validate", "latency")]
    known = [part for part in parts if part is not None]
    return round(sum(known), 3) if known else None


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of a non-empty sequence."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def pareto_front(points: Sequence[Sequence[float | None]], better: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates. Each point is a tuple of objectives;
    `better[i]` is True when higher is better for objective i. A missing value (None) counts as
    the worst, so a cell without a latency can only be on the front through its other objectives."""

    def key(point: Sequence[float | None]) -> list[float]:
        return [
            (-math.inf if value is None else value) if higher else (-math.inf if value is None else -value)
            for value, higher in zip(point, better, strict=True)
        ]  # every objective as "higher is better"

    keys = [key(point) for point in points]
    front = []
    for i, mine in enumerate(keys):
        dominated = any(
            all(o >= m for o, m in zip(other, mine, strict=True)) and other != mine
            for j, other in enumerate(keys)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
