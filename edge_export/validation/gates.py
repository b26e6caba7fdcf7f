"""Accuracy gates: metric definitions with their direction, threshold resolution, evaluation.

A gate compares one metric with a threshold; any failing gate fails the result (exit 1). Gates are
never downgraded to warnings. Thresholds come from the recipe's defaults, overridden by the config
(`validation.gates`), keyed by recipe id, precision, or "*" for all.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edge_export.errors import ConfigError

# metric -> (higher_is_better, description)
METRICS: dict[str, tuple[bool, str]] = {
    "max_abs_error": (False, "largest absolute difference of the primary output"),
    "sqnr_db": (True, "signal-to-quantization-noise ratio of the primary output (dB), worst case"),
    "cosine_min": (True, "lowest cosine similarity of any output row (token or sample)"),
    "norm_ratio_dev": (
        False,
        "|norm ratio - 1| of the primary output against the reference over all valid rows: the "
        "scale cosine gates cannot see (worst case over the cases)",
    ),
    "embedding_cosine_min": (True, "lowest cosine similarity of any sentence embedding"),
    "top1_agreement": (True, "fraction of predictions whose top-1 class/token matches"),
    "next_token_agreement": (True, "fraction of next-token predictions on real text that match"),
    "perplexity_delta_pct": (False, "perplexity increase on real text, percent of the reference"),
    "perplexity_drop_pct": (
        False,
        "perplexity decrease below the reference, percent: a quantized model does not get better, "
        "a changed weight or cache can",
    ),
    "other_outputs_sqnr_db": (
        True,
        "lowest SQNR (dB) of any output besides the primary one (hidden states, KV)",
    ),
    "other_outputs_cosine_min": (True, "lowest row cosine of any output besides the primary one"),
    "generation_match": (
        True,
        "fraction of the greedy-generated tokens identical to the reference (leading run)",
    ),
    "decode_agreement": (
        True,
        "fraction of single-token decode steps through the candidate's own cache, fed the "
        "reference's greedy continuation, whose top-1 token matches the reference's",
    ),
    "decode_sqnr_db": (True, "SQNR (dB) of the logits of those decode steps against the reference's"),
}

# Decode-path gates every decoder recipe gets, derived from its own prefill gates when its table
# does not set them: the decode steps see the same weights and the same quantization, only through
# the cache one token at a time, so they must agree about as well as the prompt path does. Margins:
# 32 forced tokens give a binomial spread of ~0.07 at 0.8 agreement (0.15 is two of them). SmolLM2
# ONNX: fp32 1.0 / 120.8 dB, int8-dynamic 1.0 / 30.5 dB, int4-weight 0.781 / 14.9 dB. The
# decode SQNR keeps the prompt path's floor: that one is the worst case over the prompt cases, and
# the decode path measured above it (SmolLM2 tflite:int8-dynamic 24.7 vs 21.4 dB, int4-block 12.3
# vs 7.4 dB; decode agreement 0.875 / 0.719 against next-token agreement 0.911 / 0.742).
DECODE_MARGINS = {"decode_agreement": ("next_token_agreement", -0.15), "decode_sqnr_db": ("sqnr_db", 0.0)}


# Default thresholds shared by the targets' recipe tables (targets import them; each table adds
# its own measured ones). Measured on the built-in text with all-MiniLM-L6-v2 and
# SmolLM2-135M-Instruct (docs/validation.md, "Measured accuracy").

# fp32 exports match the PyTorch reference to float rounding: onnx / executorch / tflite fp32 give
# MiniLM embedding cosine min 1.00000 and SmolLM2 32/32 greedy tokens identical, perplexity delta
# 0.0000% (executorch -0.00001%), max abs error 1e-4. The perplexity gates are two-sided (see
# PRECISION_GATES): 0.01% is 100x the largest fp32 change measured and far below the +-0.05%
# a 0.9x-scaled KV value of one layer causes.
FP32_GATES = {
    "max_abs_error": 1e-2,
    "sqnr_db": 60.0,
    "cosine_min": 0.9999,
    "embedding_cosine_min": 0.9999,
    "top1_agreement": 0.99,
    "next_token_agreement": 0.99,
    "perplexity_delta_pct": 0.01,
    "generation_match": 1.0,
    "decode_agreement": 1.0,
    # every other output (hidden states beside the pooled embedding, the KV presents) as exact as
    # the primary one: a swapped or stale output can no longer pass because nothing looked at it
    "other_outputs_sqnr_db": 60.0,
    "other_outputs_cosine_min": 0.9999,
}

# fp16 weights: onnx:fp16 MiniLM embedding cosine min 0.99998, sqnr 58.3 dB; coreml:fp16 (host
# estimate) SmolLM2 perplexity -0.004%, next-token agreement 1.0.
FP16_GATES = {"sqnr_db": 30.0, "cosine_min": 0.999, "embedding_cosine_min": 0.999,
              "top1_agreement": 0.95, "next_token_agreement": 0.95, "perplexity_delta_pct": 1.0,
              "other_outputs_sqnr_db": 30.0, "other_outputs_cosine_min": 0.999}  # fmt: skip

# Static int8 activations (calibrated per-tensor scales) cost more than dynamic ones; every
# target's static-activation recipe shares these thresholds. onnx:int8-static: MiniLM embedding
# cosine min 0.929, sqnr 8.9 dB; SmolLM2 perplexity +7.7%, next-token agreement 0.845. Their SQNR
# falls as low as int4's, so the scale bound is int4's.
# Their decode path is further from the prompt path than dynamic recipes' (activation ranges are
# calibrated on prompts, a decode step sees one token): onnx:int8-static SmolLM2 decode agreement
# 0.688 against next-token agreement 0.845 (int8-dynamic 1.0 / 0.966), hence its own floor.
STATIC_INT8_GATES = {"sqnr_db": 6.0, "embedding_cosine_min": 0.9, "top1_agreement": 0.8,
                     "next_token_agreement": 0.8, "perplexity_delta_pct": 15.0,
                     "norm_ratio_dev": 0.4, "decode_agreement": 0.5}  # fmt: skip


# Gates every recipe of a precision gets unless its own table sets them: the lower side of the
# perplexity gate. Measured decreases: fp32 -0.00001%, coreml:fp16 -0.004%, the lowest of any
# quantized recipe on SmolLM2 -0.17% (a block-wise int8 variant); a drop beyond these margins
# means the model changed, not that quantization helped.
# The scale check beside the cosine gates (`norm_ratio_dev`, the primary output's overall norm
# against the reference's): quantization noise adds energy, so it grows as SQNR falls. Measured:
# MiniLM (normalized embedding) 0.0 for every recipe; SmolLM2 logits onnx:fp16 < 0.002,
# int8-dynamic 0.0087, int4-weight 0.152 (SQNR 6.4 dB; at the int4 SQNR floor of 4 dB uncorrelated
# noise alone gives ~0.18). The bounds catch an embedding x1.2 at int8 and x1.5 at int4, which
# passed every cosine and SQNR gate before (issue 17).
PRECISION_GATES: dict[str, dict[str, float]] = {
    "fp32": {"perplexity_drop_pct": 0.01, "norm_ratio_dev": 0.001},
    "fp16": {"perplexity_drop_pct": 0.5, "norm_ratio_dev": 0.01},
    "int8": {"perplexity_drop_pct": 1.0, "norm_ratio_dev": 0.1},
    "int4": {"perplexity_drop_pct": 2.0, "norm_ratio_dev": 0.4},
}


@dataclass
class Gate:
    """One checked metric."""

    metric: str
    value: float
    threshold: float
    passed: bool
    direction: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN/inf become strings so report.json stays valid JSON)."""
        data = asdict(self)
        for key in ("value", "threshold"):
            if isinstance(data[key], float) and not math.isfinite(data[key]):
                data[key] = str(data[key])
        return data


def check_override_keys(overrides: Mapping[str, Mapping[str, float]]) -> None:
    """Reject unknown metric names in user gate overrides, suggesting the closest one."""
    for scope, metrics in overrides.items():
        for metric in metrics:
            if metric not in METRICS:
                close = difflib.get_close_matches(metric, list(METRICS), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(METRICS)}"
                raise ConfigError(f"unknown gate metric '{metric}' under validation.gates.{scope}", hint=hint)


def resolve_thresholds(
    recipe_id: str,
    precision: str,
    defaults: Mapping[str, float],
    overrides: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """Precision-wide defaults (PRECISION_GATES), the recipe's own, then '*' overrides, then
    precision, then the exact recipe id; decode-path gates not set anywhere are derived from the
    prompt-path ones (DECODE_MARGINS)."""
    thresholds = {**PRECISION_GATES.get(precision, {}), **defaults}
    for scope in ("*", precision, recipe_id):
        thresholds.update(overrides.get(scope, {}))
    for metric, (base, margin) in DECODE_MARGINS.items():
        if metric not in thresholds and base in thresholds:
            derived = thresholds[base] + margin
            thresholds[metric] = max(0.0, derived) if metric == "decode_agreement" else derived
    return thresholds


def evaluate(metrics: Mapping[str, float], thresholds: Mapping[str, float]) -> list[Gate]:
    """A gate for every threshold whose metric was measured; NaN always fails."""
    gates = []
    for metric, threshold in thresholds.items():
        if metric not in metrics:
            continue
        value = float(metrics[metric])
        higher = METRICS[metric][0]
        passed = not math.isnan(value) and (value >= threshold if higher else value <= threshold)
        gates.append(Gate(metric, value, float(threshold), passed, ">=" if higher else "<="))
    return gates


def failure_message(label: str, gates: list[Gate]) -> str | None:
    """One line listing every failing gate, or None when all passed."""
    failed = [g for g in gates if not g.passed]
    if not failed:
        return None
    parts = [f"{g.metric}={g.value:.6g} (needs {g.direction} {g.threshold:g})" for g in failed]
    return f"{label}: accuracy gates failed: " + "; ".join(parts)
