"""`lab compare`: what moved between two runs, and whether any of it is a regression (exit 1).

Rows are matched by cell ("model|recipe|device"). Per matched cell:
- latency, from every stored sample: a bootstrap confidence interval of the ratio of medians
  (current / baseline). "slower" needs BOTH the whole interval above 1 (the change is not noise)
  AND the point ratio at least 1 + min_effect (the change is big enough to matter): a
  statistically certain 1% change on a quiet device never fails a build, and neither does a 30%
  swing of a noisy one whose interval still reaches 1. Medians, because device timings have
  outliers (a page fault, a thermal dip) that move a mean but not the middle;
- accuracy, per gate metric (direction from validation.gates.METRICS): worse than the baseline by
  more than its tolerance (TOLERANCES) is a regression, also for the metrics a remote device
  measured on its own outputs;
- status: a cell that passed (or was not run) and now fails or errors is a regression.
A cell the current run lacks is reported ("missing"), not failed: a shard or an interrupted run
is not a slowdown.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edge_export.report.schema import json_safe
from edge_export.validation.gates import METRICS

RESAMPLES = 2000
TAIL_RESAMPLES = 25
MAX_RESAMPLES = 100_000  # 40 ms a cell; reached from 36 cells at 95% for the whole comparison
MIN_SAMPLES = 3  # fewer timed iterations than this give no interval worth the name

# metric -> (absolute, relative): a regression when the metric got worse by more than
# absolute + relative * |baseline|. Host accuracy is deterministic (an unchanged bundle re-measures
# to the last digit, see validation/drift.py), so these bound what a re-export or another host's
# kernels may move without it mattering, not run-to-run noise. The gates still fail a result on
# their own; these catch a recipe that got worse while staying above its gate.
TOLERANCES: dict[str, tuple[float, float]] = {
    # the single worst element of the output: the most volatile metric, so only a 50% rise counts
    "max_abs_error": (1e-4, 0.5),
    # 1 dB less SQNR is 26% more quantization noise power
    "sqnr_db": (1.0, 0.0),
    "other_outputs_sqnr_db": (1.0, 0.0),
    # worst-row cosines: int8 recipes sit at 0.99-0.999, int4 at 0.93-0.96 (docs/validation.md);
    # 0.002 is a fifth of int8's distance from its 0.99 gate
    "cosine_min": (0.002, 0.0),
    "embedding_cosine_min": (0.002, 0.0),
    "other_outputs_cosine_min": (0.002, 0.0),
    # the scale error: int8 0.009, int4 0.15 on SmolLM2; a quarter more is a changed recipe
    "norm_ratio_dev": (0.005, 0.25),
    # fractions of predictions: two points is a few tokens of the built-in text
    "top1_agreement": (0.02, 0.0),
    "next_token_agreement": (0.02, 0.0),
    # the leading run of 32 greedy tokens: one early flip moves it by a lot, so 3 tokens' worth
    "generation_match": (0.1, 0.0),
    # the decode path's 32 forced tokens: 0.07 is two of them; its SQNR like the prompt path's
    "decode_agreement": (0.07, 0.0),
    "decode_sqnr_db": (1.0, 0.0),
    # percentage points: int8 recipes +0.06..+1.6%, int4 +4..+12%
    "perplexity_delta_pct": (0.5, 0.1),
    "perplexity_drop_pct": (0.05, 0.0),
}
# A gate metric added to validation without a tolerance here is still compared, at 5% of its value
# (a test asks for an entry per metric, so this is a fallback, not a policy).
DEFAULT_TOLERANCE = (0.0, 0.05)
_BAD = ("failed", "error")
_KIND_ORDER = ("status", "slower", "accuracy_regression", "missing", "new", "incomparable",
               "untested", "throughput", "faster", "accuracy_improved", "same")  # fmt: skip


def _change(cell: str, kind: str, metric: str, baseline: Any = None, current: Any = None, *,
            ratio: float | None = None, ci_low: float | None = None, ci_high: float | None = None,
            regression: bool = False, detail: str | None = None) -> dict[str, Any]:  # fmt: skip
    baseline, current, ratio = json_safe(baseline), json_safe(current), json_safe(ratio)  # `--json` is strict
    return {"cell": cell, "kind": kind, "metric": metric, "baseline": baseline, "current": current,
            "ratio": ratio, "ci_low": ci_low, "ci_high": ci_high, "regression": regression,
            "detail": detail}  # fmt: skip


def _samples(row: Mapping[str, Any]) -> np.ndarray:
    """The row's timed iterations as positive finite floats (stored non-finite ones are strings)."""
    values = []
    stored = row.get("samples_ms")
    for value in [] if stored is None else stored:
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            continue
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array) & (array > 0)]


def bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of `resamples` bootstrap resamples of `samples`, without building the resamples.

    A resample draws n indices uniformly with replacement, i.e. floor(n * U) for n uniforms U, so
    its middle order statistics are those of n uniforms, mapped through the sorted samples: the
    k-th of n uniforms is Beta(k, n - k + 1), and the next one is u + (1 - u) * Beta(1, n - k).
    Same distribution as resampling (a test checks it), O(resamples) instead of O(resamples * n)."""
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    n = ordered.size

    def pick(u: np.ndarray) -> np.ndarray:
        return ordered[np.minimum((u * n).astype(np.int64), n - 1)]

    if n % 2:
        return pick(rng.beta((n + 1) / 2, (n + 1) / 2, resamples))
    k = n // 2
    lower = rng.beta(k, n - k + 1, resamples)
    upper = lower + (1.0 - lower) * rng.beta(1, n - k, resamples)
    return (pick(lower) + pick(upper)) / 2


def bootstrap_ratio_ci(
    current: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, *,
    confidence: float = 0.95, resamples: int = RESAMPLES, seed: int | Sequence[int] = 0,
) -> tuple[float, float, float]:  # fmt: skip
    """(ratio of medians, interval low, interval high) of current/baseline: the percentile
    bootstrap interval over `resamples` resamples of both runs. Percentile, not the normal interval
    from the bootstrap's standard deviation: a median's bootstrap SE is itself so noisy that
    normal intervals at 99.9% miss two to three times as often as they claim (measured), while
    percentile intervals held their level from 20 samples up."""
    cur = np.asarray(current, dtype=np.float64)
    base = np.asarray(baseline, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ratios = bootstrap_medians(cur, resamples, rng) / bootstrap_medians(base, resamples, rng)
    alpha = 1.0 - confidence
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(np.median(cur) / np.median(base)), float(low), float(high)


def resamples_for(confidence: float, minimum: int = RESAMPLES) -> int:
    """Enough resamples that each tail of the interval rests on TAIL_RESAMPLES of them (a 99.9%
    interval from 2000 would be the 1st and 1999th value), within MAX_RESAMPLES."""
    return max(minimum, min(MAX_RESAMPLES, math.ceil(TAIL_RESAMPLES / ((1.0 - confidence) / 2))))


def cell_confidence(confidence: float, cells: int, familywise: bool = True) -> float:
    """The confidence of each cell's interval. `confidence` holds for the whole comparison
    (Bonferroni), because a build fails when any cell does. Measured on unchanged matrices with
    CV 10% and 20 samples: at 95% per cell, 18% of 12-cell and 45% of 36-cell builds failed on
    noise alone; at 1 - 5%/cells, 1.5% and 0.5%. The price: a real 20% slowdown of one cell was
    missed in 4% (12 cells) and 8% (36 cells) of those builds, against 0.3% alone; more samples
    buy it back. Without `familywise`, every cell gets `confidence` itself."""
    if not familywise or cells <= 1:
        return confidence
    return 1.0 - (1.0 - confidence) / cells


def testable(row: Mapping[str, Any]) -> bool:
    """Whether a row has enough samples for a latency test."""
    return _samples(row).size >= MIN_SAMPLES


def latency_change(
    cell: str, current: Mapping[str, Any], baseline: Mapping[str, Any], *, min_effect: float = 0.05,
    confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0,
) -> dict[str, Any] | None:  # fmt: skip
    """The latency verdict of one cell (slower | faster | same | untested) at `confidence` (this
    cell's own), None when neither run has samples. The bootstrap is seeded per cell, so a verdict
    does not depend on which other cells were compared."""
    cur, base = _samples(current), _samples(baseline)
    if cur.size == 0 and base.size == 0:
        return None
    if min(cur.size, base.size) < MIN_SAMPLES:
        detail = f"too few samples to test (baseline {base.size}, current {cur.size}; need {MIN_SAMPLES})"
        return _change(cell, "untested", "latency_ms", detail=detail,
                       baseline=float(np.median(base)) if base.size else None,
                       current=float(np.median(cur)) if cur.size else None)  # fmt: skip
    ratio = float(np.median(cur) / np.median(base))
    if ratio >= 1.0 + min_effect or ratio <= 1.0 - min_effect:  # the interval decides: precise tails
        resamples = resamples_for(confidence, resamples)
    ratio, low, high = bootstrap_ratio_ci(
        cur, base, confidence=confidence, resamples=resamples, seed=[seed, zlib.crc32(cell.encode())]
    )
    if low > 1.0 and ratio >= 1.0 + min_effect:
        kind = "slower"
    elif high < 1.0 and ratio <= 1.0 - min_effect:
        kind = "faster"
    else:
        kind = "same"
    detail = (f"{base.size} vs {cur.size} samples, {confidence:.4%} interval ({resamples} resamples), "
              f"min effect {min_effect:.0%}")  # fmt: skip
    return _change(cell, kind, "latency_ms", float(np.median(base)), float(np.median(cur)), ratio=ratio,
                   ci_low=low, ci_high=high, regression=kind == "slower", detail=detail)  # fmt: skip


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _metric_changes(
    cell: str, current: Mapping[str, Any], baseline: Mapping[str, Any], tolerances: Mapping[str, Any],
    suffix: str = "",
) -> list[dict[str, Any]]:  # fmt: skip
    """Accuracy metrics that moved past their tolerance (worse: a regression; better: reported)."""
    changes = []
    cur_metrics, base_metrics = current.get("metrics") or {}, baseline.get("metrics") or {}
    for metric, base_raw in base_metrics.items():
        if metric not in METRICS or metric not in cur_metrics:
            continue
        base, cur = _as_float(base_raw), _as_float(cur_metrics[metric])
        if base is None or cur is None or math.isnan(base):
            continue
        absolute, relative = _tolerance(tolerances.get(metric, DEFAULT_TOLERANCE))
        higher = METRICS[metric][0]
        worse = math.inf if math.isnan(cur) else (base - cur if higher else cur - base)
        allowed = absolute + relative * abs(base)
        if abs(worse) <= allowed:
            continue
        kind = "accuracy_regression" if worse > 0 else "accuracy_improved"
        detail = f"{'higher' if higher else 'lower'} is better; tolerance {allowed:.4g}"
        changes.append(_change(cell, kind, metric + suffix, base, cur, regression=worse > 0,
                               ratio=cur / base if base else None, detail=detail))  # fmt: skip
    return changes


def _tolerance(value: Any) -> tuple[float, float]:
    """A tolerance given as (absolute, relative) or as one absolute number."""
    if isinstance(value, (int, float)):
        return float(value), 0.0
    absolute, relative = value
    return float(absolute), float(relative)


def accuracy_changes(
    cell: str, current: Mapping[str, Any], baseline: Mapping[str, Any],
    tolerances: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Gate metrics of one cell that moved past their tolerance: the host's (or host estimate's)
    accuracy, and the metrics a device measured on its own outputs. Metrics measured on different
    paths (host vs host estimate) are not compared: reported as "incomparable"."""
    limits = {**TOLERANCES, **(tolerances or {})}
    cur_acc, base_acc = current.get("accuracy") or {}, baseline.get("accuracy") or {}
    changes = []
    if cur_acc.get("measured_on") and base_acc.get("measured_on"):
        if cur_acc["measured_on"] != base_acc["measured_on"]:
            detail = f"measured on {base_acc['measured_on']} then {cur_acc['measured_on']}: not compared"
            changes.append(_change(cell, "incomparable", "accuracy", detail=detail))
        else:
            changes += _metric_changes(cell, cur_acc, base_acc, limits)
    cur_dev = (current.get("latency") or {}).get("accuracy") or {}
    base_dev = (baseline.get("latency") or {}).get("accuracy") or {}
    if cur_dev.get("metrics") and base_dev.get("metrics"):
        changes += _metric_changes(
            cell, cur_dev, base_dev, limits, f" on {current.get('device') or 'device'}"
        )
    return changes


def _cell_changes(
    cell: str, cur: Mapping[str, Any], base: Mapping[str, Any], options: Mapping[str, Any]
) -> list[dict[str, Any]]:
    changes = []
    if cur.get("status") != base.get("status"):
        regression = cur.get("status") in _BAD and base.get("status") not in _BAD
        detail = "; ".join(cur.get("failures") or []) or None
        changes.append(_change(cell, "status", "status", base.get("status"), cur.get("status"),
                               regression=regression, detail=detail))  # fmt: skip
    latency = latency_change(cell, cur, base, min_effect=options["min_effect"], confidence=options["confidence"],
                             resamples=options["resamples"], seed=options["seed"])  # fmt: skip
    if latency is not None:
        changes.append(latency)
    changes += accuracy_changes(cell, cur, base, options.get("tolerances"))
    decode = decode_change(cell, cur, base, options)
    if decode is not None:
        changes.append(decode)
        return changes
    cur_rate, base_rate = (
        _as_float(cur.get("decode_tokens_per_s")),
        _as_float(base.get("decode_tokens_per_s")),
    )
    if cur_rate and base_rate and abs(cur_rate / base_rate - 1) >= options["min_effect"]:
        # one number per run, no samples: reported for a person to look at, never a failure
        changes.append(_change(cell, "throughput", "decode_tokens_per_s", base_rate, cur_rate,
                               ratio=cur_rate / base_rate, detail="no samples stored: reported, not tested"))  # fmt: skip
    return changes or [_change(cell, "same", "cell", base.get("status"), cur.get("status"))]


def _decode_samples(row: Mapping[str, Any]) -> dict[str, Any]:
    """A decoder row's per-step decode times (the latency entry's `decode_samples_ms`) in the
    shape latency_change reads."""
    return {"samples_ms": (row.get("latency") or {}).get("decode_samples_ms")}


def decode_change(
    cell: str, cur: Mapping[str, Any], base: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The decode-step verdict of a decoder cell, by the same test as its prompt latency, when both
    runs stored their decode steps (None otherwise: older rows keep the report-only rate)."""
    cur_steps, base_steps = _decode_samples(cur), _decode_samples(base)
    if not (testable(cur_steps) and testable(base_steps)):
        return None
    change = latency_change(cell + "#decode", cur_steps, base_steps, min_effect=options["min_effect"],
                            confidence=options["confidence"], resamples=options["resamples"],
                            seed=options["seed"])  # fmt: skip
    assert change is not None  # both sides have samples
    return change | {"cell": cell, "metric": "decode_step_ms"}


def _by_cell(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """One row per cell (the newest when a list holds several)."""
    found: dict[str, Mapping[str, Any]] = {}
    for row in sorted(rows, key=lambda r: str(r.get("time") or "")):
        found[str(row["cell"])] = row
    return found


def compare_runs(
    current: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]], min_effect: float = 0.05,
    confidence: float = 0.95, tolerances: Mapping[str, Any] | None = None, seed: int = 0,
    *, resamples: int = RESAMPLES, familywise: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every change between two runs' rows, regressions first. Each change: cell, kind (status |
    slower | faster | same | untested | accuracy_regression | accuracy_improved | incomparable |
    throughput | missing | new), metric, baseline, current, ratio, ci_low, ci_high, regression,
    detail. Every matched cell gets at least one change ("same" when nothing moved; latency
    "same" carries its interval). `confidence` holds for all cells together (see cell_confidence)
    unless `familywise` is False."""
    if not 0.0 < confidence < 1.0 or min_effect < 0:
        raise ValueError(f"need 0 < confidence < 1 and min_effect >= 0 (got {confidence}, {min_effect})")
    cur, base = _by_cell(current), _by_cell(baseline)
    matched = cur.keys() & base.keys()
    tested = sum(1 for cell in matched if testable(cur[cell]) and testable(base[cell])) + sum(
        1
        for cell in matched
        if testable(_decode_samples(cur[cell])) and testable(_decode_samples(base[cell]))
    )
    options = {"min_effect": min_effect, "confidence": cell_confidence(confidence, tested, familywise),
               "resamples": resamples, "seed": seed}  # fmt: skip
    changes = []
    for cell in sorted(cur.keys() & base.keys()):
        changes += _cell_changes(cell, cur[cell], base[cell], {**options, "tolerances": tolerances})
    changes += [_change(cell, "missing", "cell", base[cell].get("status"), None,
                        detail="not in the current run") for cell in sorted(base.keys() - cur.keys())]  # fmt: skip
    changes += [_change(cell, "new", "cell", None, cur[cell].get("status"),
                        detail="not in the baseline") for cell in sorted(cur.keys() - base.keys())]  # fmt: skip
    changes.sort(key=lambda c: (not c["regression"], _KIND_ORDER.index(c["kind"]), c["cell"], c["metric"]))
    return changes


def has_regression(changes: Iterable[Mapping[str, Any]]) -> bool:
    """Whether `lab compare` exits 1."""
    return any(change["regression"] for change in changes)


def _value(value: Any, metric: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return {"latency_ms": f"{value:.2f} ms", "ratio": f"{value:.3f}"}.get(metric, f"{value:.6g}")
    return str(value)


def format_changes(changes: Sequence[Mapping[str, Any]], *, show_same: bool = False) -> list[str]:
    """The changes as an aligned plain-text table (one line each, header first), ending with a
    summary line; latency cells that did not move are left out unless `show_same`."""
    shown = [c for c in changes if show_same or c["kind"] != "same"]
    table = [("", "cell", "kind", "metric", "baseline", "current", "ratio [interval]")]
    for c in shown:
        ratio = "" if c["ratio"] is None else f"x{_value(c['ratio'], 'ratio')}"
        if c["ci_low"] is not None:
            ratio += f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
        table.append(("REGRESSION" if c["regression"] else "", c["cell"], c["kind"], c["metric"],
                      _value(c["baseline"], c["metric"]), _value(c["current"], c["metric"]), ratio))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return [*(lines if shown else []), summary_line(changes)]


def summary_line(changes: Sequence[Mapping[str, Any]]) -> str:
    """One line: how many cells were compared and what moved."""
    cells = {c["cell"] for c in changes if c["kind"] not in ("missing", "new")}
    counts: dict[str, int] = {}
    for change in changes:
        counts[change["kind"]] = counts.get(change["kind"], 0) + 1
    regressions = sum(1 for c in changes if c["regression"])
    moved = ", ".join(f"{counts[k]} {k}" for k in _KIND_ORDER if k in counts)
    verdict = f"{regressions} regression{'s' if regressions != 1 else ''}" if regressions else "no regression"
    return f"{len(cells)} cells compared: {verdict}" + (f" ({moved})" if moved else "")
