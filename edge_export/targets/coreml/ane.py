"""Neural Engine pre-flight: what in a package is known to keep Core ML off the ANE.

Core ML decides per operator at load time on the device, and nothing on Linux can ask it. What can
be said ahead is what Apple and coremltools document: the ANE computes in fp16 only, compiles fixed
or enumerated shapes ahead but not open ranges, and does not execute per-block int4 weights
(coremltools#2510: such models run on the CPU/GPU). The prediction is recorded in the report as a
prediction; the Mac runner measures what really ran where.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_export.targets.base import Recipe

_ANE_UNITS = ("ALL", "CPU_AND_NE")


def _reasons(ops: Mapping[str, int], recipe: Recipe, io: Mapping[str, Any]) -> list[str]:
    """Documented reasons this package would leave the Neural Engine."""
    reasons = []
    if recipe.name == "fp32":
        reasons.append("fp32 compute: the Neural Engine computes in fp16 only, so fp32 runs on CPU/GPU")
    if ops.get("constexpr_blockwise_shift_scale") and recipe.options.get("block_size"):
        reasons.append(
            "per-block int4 weights (constexpr_blockwise_shift_scale with blocks) run on CPU/GPU, "
            "not the Neural Engine (coremltools#2510); use palettize-4bit for the ANE"
        )
    ranged = [t["name"] for t in io.get("inputs", []) if t.get("flexible") == "range"]
    if ranged:
        reasons.append(
            f"inputs {', '.join(ranged)} have a range of lengths; the Neural Engine compiles fixed or "
            "enumerated shapes, so a range usually runs on CPU/GPU (shape_mode: enumerated)"
        )
    return reasons


def _short(reason: str) -> str:
    """The head of a reason, for the one-line note."""
    return reason.split(":")[0].split(";")[0]


def preflight(package: Path, recipe: Recipe, io: Mapping[str, Any]) -> dict[str, Any]:
    """The prediction for this package and its compute units; `warnings` are the user-facing lines."""
    from edge_export.targets.coreml.package import op_histogram

    units = str(recipe.options["compute_units"])
    if units not in _ANE_UNITS:
        return {"compute_units": units, "neural_engine_requested": False, "prediction": "not requested",
                "reasons": [], "warnings": []}  # fmt: skip
    reasons = _reasons(op_histogram(package), recipe, io)
    prediction = "cpu-or-gpu" if reasons else "neural-engine"
    return {
        "compute_units": units,
        "neural_engine_requested": True,
        "prediction": prediction,
        "reasons": reasons,
        "warnings": [f"Neural Engine pre-flight: likely CPU/GPU ({'; '.join(_short(r) for r in reasons)})"]
        if reasons
        else [],
    }
