"""`lab compare`: the latency test's error rates on synthetic timings, measured over many draws
rather than a few lucky seeds, and what counts as a regression for status and accuracy.

The noise model is log-normal (timings are positive and right-skewed) with the stated coefficient
of variation. The rates asserted are the ones this test measures with margin for sampling, next to
what the method promises: at 95% a single cell's noise-only false alarm is bounded by the one-sided
2.5%; the minimum effect then removes every false alarm where noise is small against it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_export.lab.compare import (
    TOLERANCES,
    bootstrap_medians,
    bootstrap_ratio_ci,
    compare_runs,
    format_changes,
    has_regression,
    latency_change,
)
from edge_export.lab.store import open_store
from edge_export.validation.gates import METRICS


def timings(rng: np.random.Generator, n: int, median: float, cv: float) -> list[float]:
    sigma = np.sqrt(np.log1p(cv**2))
    return (median * rng.lognormal(0.0, sigma, n)).tolist()


def verdicts(
    effect: float, cv: float, n: int, trials: int, seed: int, **options: Any
) -> list[dict[str, Any]]:
    """`trials` single-cell comparisons of baseline ~ 10 ms against 10 ms * (1 + effect)."""
    rng = np.random.default_rng(seed)
    return [
        latency_change(
            f"m|r|d{t}",
            {"samples_ms": timings(rng, n, 10 * (1 + effect), cv)},
            {"samples_ms": timings(rng, n, 10.0, cv)},
            **options,
        )
        for t in range(trials)
    ]


def rate(found: list[dict[str, Any]], kind: str = "slower") -> float:
    return sum(v["kind"] == kind for v in found) / len(found)


def test_fast_bootstrap_medians_match_resampling() -> None:
    """The order-statistic shortcut draws the same distribution as resampling the samples: every
    possible resample median (a sample, or the mean of two) comes up as often."""
    rng = np.random.default_rng(0)
    for n in (3, 4, 7, 20):
        samples = rng.lognormal(0, 0.3, n)
        fast = bootstrap_medians(samples, 200_000, np.random.default_rng(1))
        naive = np.median(samples[np.random.default_rng(2).integers(0, n, (200_000, n))], axis=1)
        values = np.union1d(fast, naive)
        share_fast = np.searchsorted(np.sort(fast), values, side="right") / fast.size
        share_naive = np.searchsorted(np.sort(naive), values, side="right") / naive.size
        assert np.abs(share_fast - share_naive).max() < 0.006, n  # CDFs agree everywhere


def test_bootstrap_is_seeded_and_takes_milliseconds() -> None:
    rng = np.random.default_rng(3)
    cur, base = timings(rng, 50, 11, 0.1), timings(rng, 50, 10, 0.1)
    assert bootstrap_ratio_ci(cur, base, seed=5) == bootstrap_ratio_ci(cur, base, seed=5)
    ratio, low, high = bootstrap_ratio_ci(cur, base)
    assert low < ratio < high and ratio == pytest.approx(np.median(cur) / np.median(base))
    started = time.perf_counter()
    for _ in range(20):
        bootstrap_ratio_ci(cur, base, resamples=2000)
    assert (time.perf_counter() - started) / 20 < 0.02  # measured ~1.5 ms


def test_noise_alone_does_not_flag() -> None:
    # realistic noise (CV 10%, 20 samples): bounded by the interval's one-sided 2.5% (measured
    # 1.6% over 2000 comparisons); a matrix divides it among its cells (see below)
    noisy = verdicts(0.0, 0.10, 20, 500, seed=10)
    assert rate(noisy) <= 0.035 and rate(noisy, "faster") <= 0.035
    # a quiet device (CV 3%): noise never reaches the 5% minimum effect
    quiet = verdicts(0.0, 0.03, 20, 500, seed=11)
    assert rate(quiet) == 0 and rate(quiet, "faster") == 0


def test_a_real_20_percent_slowdown_flags() -> None:
    noisy = verdicts(0.20, 0.10, 20, 500, seed=12)  # measured 99.7% over 2000
    assert rate(noisy) >= 0.98
    assert all(v["regression"] == (v["kind"] == "slower") for v in noisy)
    assert all(v["ci_low"] <= v["ratio"] <= v["ci_high"] for v in noisy)
    assert rate(verdicts(0.20, 0.05, 20, 200, seed=13)) == 1.0
    assert rate(verdicts(0.30, 0.05, 5, 200, seed=14)) >= 0.99  # even from 5 iterations


def test_a_real_change_below_the_minimum_effect_does_not_flag() -> None:
    # 3% slower on a quiet device: the interval excludes 1 (significance alone would fail the
    # build) and the minimum effect of 5% keeps it passing
    small = verdicts(0.03, 0.02, 50, 300, seed=15)
    assert sum(v["ci_low"] > 1 for v in small) / len(small) >= 0.95
    assert rate(small) == 0
    # where noise is as large as the minimum effect (CV 10%), the point estimate of a 3% change
    # crosses 5% with its interval above 1 in about one comparison in ten (measured 9.4% over
    # 2000): min_effect is a threshold on the estimate, not a guarantee about the true change
    assert rate(verdicts(0.03, 0.10, 20, 300, seed=16)) <= 0.15
    # raising min_effect moves the threshold
    assert rate(verdicts(0.20, 0.02, 20, 50, seed=17, min_effect=0.25)) == 0


def _matrix(rng: np.random.Generator, cells: int, slow: dict[int, float], cv: float = 0.1) -> list[dict]:
    return [{"cell": f"m|r{i}|d", "status": "passed",
             "samples_ms": timings(rng, 20, 10 * slow.get(i, 1.0), cv)} for i in range(cells)]  # fmt: skip


def test_a_matrix_of_unchanged_cells_rarely_fails_a_build() -> None:
    """`confidence` holds for the whole comparison: 12 unchanged cells at CV 10% fail few builds
    (measured 1.5% of 200), where 95% per cell fails about one build in five (18%)."""
    rng = np.random.default_rng(20)
    pairs = [(_matrix(rng, 12, {}), _matrix(rng, 12, {})) for _ in range(60)]
    familywise = sum(has_regression(compare_runs(cur, base, seed=k)) for k, (cur, base) in enumerate(pairs))
    per_cell = sum(
        has_regression(compare_runs(cur, base, seed=k, familywise=False))
        for k, (cur, base) in enumerate(pairs)
    )
    assert familywise <= 3 and per_cell > familywise


def test_a_slow_cell_in_a_matrix_is_found() -> None:
    rng = np.random.default_rng(21)
    changes = compare_runs(_matrix(rng, 12, {4: 1.3}), _matrix(rng, 12, {}))
    assert [c["cell"] for c in changes if c["regression"]] == ["m|r4|d"]
    first = changes[0]
    assert first["kind"] == "slower" and first["ci_low"] > 1 and first["ratio"] > 1.2
    assert "99.5833% interval" in first["detail"]  # 1 - 5%/12 per cell
    assert len([c for c in changes if c["metric"] == "latency_ms"]) == 12  # a verdict for every cell


def row(cell: str, status: str = "passed", metrics: dict | None = None, **extra: Any) -> dict[str, Any]:
    accuracy = None if metrics is None else {"measured_on": "host", "metrics": metrics}
    return {"cell": cell, "status": status, "accuracy": accuracy, "samples_ms": [], **extra}


def by_kind(changes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for change in changes:
        found.setdefault(change["kind"], []).append(change)
    return found


def test_status_changes() -> None:
    base = [row("a"), row("b", "failed"), row("c", "not_run"), row("d"), row("gone")]
    cur = [row("a", "failed", failures=["embedding_cosine_min=0.95 (needs >= 0.99)"]), row("b"),
           row("c", "error"), row("d"), row("added")]  # fmt: skip
    changes = compare_runs(cur, base)
    regressions = {c["cell"]: c for c in changes if c["regression"]}
    assert set(regressions) == {"a", "c"}  # passed -> failed, not_run -> error; failed -> passed is not
    assert regressions["a"]["detail"] == "embedding_cosine_min=0.95 (needs >= 0.99)"
    kinds = by_kind(changes)
    assert [c["cell"] for c in kinds["missing"]] == ["gone"] and not kinds["missing"][0]["regression"]
    assert [c["cell"] for c in kinds["new"]] == ["added"]
    assert [c["cell"] for c in kinds["same"]] == ["d"]  # every matched cell is accounted for
    assert [c["regression"] for c in changes[:2]] == [True, True]  # regressions first


def test_accuracy_regressions_follow_each_metrics_direction_and_tolerance() -> None:
    base = {"embedding_cosine_min": 0.990, "sqnr_db": 20.0, "max_abs_error": 0.010,
            "perplexity_delta_pct": 1.0, "next_token_agreement": 0.90, "norm_ratio_dev": 0.01}  # fmt: skip
    cases = {
        "within": {"embedding_cosine_min": 0.9885, "sqnr_db": 19.2, "max_abs_error": 0.0140},
        "worse": {"embedding_cosine_min": 0.985, "sqnr_db": 18.5, "max_abs_error": 0.0200,
                  "perplexity_delta_pct": 1.8, "next_token_agreement": float("nan")},
        "better": {"perplexity_delta_pct": 0.2, "sqnr_db": 25.0},
    }  # fmt: skip
    cur = [row(cell, metrics=base | moved) for cell, moved in cases.items()]
    changes = compare_runs(cur, [row(cell, metrics=base) for cell in cases])
    regressed = sorted(c["metric"] for c in changes if c["kind"] == "accuracy_regression")
    assert regressed == ["embedding_cosine_min", "max_abs_error", "next_token_agreement",
                         "perplexity_delta_pct", "sqnr_db"]  # fmt: skip
    assert {c["cell"] for c in changes if c["regression"]} == {"worse"}
    improved = sorted(c["metric"] for c in changes if c["kind"] == "accuracy_improved")
    assert improved == ["perplexity_delta_pct", "sqnr_db"]
    # a looser tolerance given by the caller (one number: absolute)
    loose = compare_runs(cur, [row(cell, metrics=base) for cell in cases],
                         tolerances={"sqnr_db": 5.0, "embedding_cosine_min": 0.01, "max_abs_error": 1.0,
                                     "perplexity_delta_pct": 1.0, "next_token_agreement": 2.0})  # fmt: skip
    # NaN is worse than any number, whatever the tolerance; it stays strict JSON for --json
    [nan] = [c for c in loose if c["regression"]]
    assert nan["metric"] == "next_token_agreement" and nan["current"] == "nan" and nan["ratio"] == "nan"
    json.dumps(changes, allow_nan=False)
    assert any("REGRESSION  worse" in line and "nan" in line for line in format_changes(changes))


def test_every_gate_metric_has_a_stated_tolerance() -> None:
    assert set(TOLERANCES) == set(METRICS)


def test_device_measured_accuracy_and_incomparable_paths() -> None:
    def on_device(value: float) -> dict[str, Any]:
        return {"device": "pi", "accuracy": {"measured_on": "pi", "metrics": {"cosine_min": value}}}

    base = [row("a", latency=on_device(0.999), device="pi"), row("b", metrics={"sqnr_db": 20.0})]
    estimate = {"measured_on": "host-estimate", "metrics": {"sqnr_db": 5.0}}
    cur = [row("a", latency=on_device(0.99), device="pi"), row("b") | {"accuracy": estimate}]
    kinds = by_kind(compare_runs(cur, base))
    assert [c["metric"] for c in kinds["accuracy_regression"]] == ["cosine_min on pi"]
    assert kinds["incomparable"][0]["cell"] == "b" and not kinds["incomparable"][0]["regression"]


def test_too_few_samples_and_decode_rate_are_reported_not_failed() -> None:
    base = [row("a", samples_ms=[10.0, 10.1]), row("b", samples_ms=[5.0] * 10, decode_tokens_per_s=60.0)]
    cur = [row("a", samples_ms=[30.0, 31.0]), row("b", samples_ms=[5.0] * 10, decode_tokens_per_s=40.0)]
    changes = compare_runs(cur, base)
    kinds = by_kind(changes)
    assert kinds["untested"][0]["cell"] == "a" and "too few samples" in kinds["untested"][0]["detail"]
    assert kinds["throughput"][0]["ratio"] == pytest.approx(40 / 60)
    assert not has_regression(changes)
    with pytest.raises(ValueError, match="confidence"):
        compare_runs(cur, base, confidence=1.5)


def test_verdicts_are_reproducible_and_per_cell() -> None:
    rng = np.random.default_rng(30)
    base, cur = _matrix(rng, 6, {}), _matrix(rng, 6, {2: 1.15})
    assert compare_runs(cur, base, seed=4) == compare_runs(list(reversed(cur)), base, seed=4)
    alone = compare_runs(cur[2:3], base[2:3], familywise=False)
    among = [c for c in compare_runs(cur, base, familywise=False) if c["cell"] == cur[2]["cell"]]
    assert alone == among  # a cell's interval does not depend on the others (seeded per cell)


def test_format_changes_table() -> None:
    rng = np.random.default_rng(31)
    changes = compare_runs(_matrix(rng, 3, {1: 1.4}), _matrix(rng, 3, {}))
    lines = format_changes(changes)
    assert lines[0].split() == ["cell", "kind", "metric", "baseline", "current", "ratio", "[interval]"]
    assert lines[1].startswith("REGRESSION  m|r1|d") and " ms " in lines[1] and "[" in lines[1]
    assert lines[-1] == "3 cells compared: 1 regression (1 slower, 2 same)"
    assert len(lines) == 3 and len(format_changes(changes, show_same=True)) == 5
    assert format_changes(compare_runs(_matrix(rng, 2, {}), _matrix(rng, 2, {}))) == [
        "2 cells compared: no regression (2 same)"
    ]


def test_compares_rows_read_back_from_a_store(tmp_path: Path) -> None:
    """Samples, metrics and a non-finite metric survive the store on their way to compare."""
    rng = np.random.default_rng(40)
    with open_store(tmp_path / "lab.sqlite") as store:
        for run_id, factor, cosine in (("base", 1.0, 0.99), ("cur", 1.3, float("nan"))):
            store.begin_run(run_id, {}, None, None, [])
            store.record({"run_id": run_id, "cell": "m|onnx:int8|local", "status": "passed",
                          "samples_ms": timings(rng, 20, 10 * factor, 0.05),
                          "accuracy": {"measured_on": "host", "metrics": {"cosine_min": cosine}}})  # fmt: skip
        changes = compare_runs(store.rows("cur"), store.rows(store.resolve_run("previous", before="cur")))
    assert sorted(c["kind"] for c in changes if c["regression"]) == ["accuracy_regression", "slower"]


def test_decode_steps_are_tested_like_prompt_latency() -> None:
    """A decoder cell whose stored decode steps got 20% slower is a regression (metric
    decode_step_ms); the same steps redrawn from one distribution are not."""
    rng = np.random.default_rng(11)

    def decoder(steps_ms: float) -> dict[str, Any]:
        latency = {"decode_samples_ms": timings(rng, 96, steps_ms, 0.05)}
        return row("m|onnx:int4-weight|pi", samples_ms=timings(rng, 20, 40.0, 0.05), latency=latency)

    slower = compare_runs([decoder(12.0)], [decoder(10.0)])
    decode = [c for c in slower if c["metric"] == "decode_step_ms"]
    assert has_regression(slower) and decode[0]["kind"] == "slower" and decode[0]["regression"]
    assert decode[0]["ratio"] == pytest.approx(1.2, rel=0.05)
    same = compare_runs([decoder(10.0)], [decoder(10.0)])
    assert not has_regression(same)
    assert [c["kind"] for c in same if c["metric"] == "decode_step_ms"] == ["same"]
