"""Re-validation drift: `validate` compares what it measures with the metrics the manifest recorded
at export. Host runtimes on the same CPU and library versions are deterministic (an untouched
bundle re-measures to 6+ digits), so a change beyond float noise means the bundle behaves
differently from when it was exported: a weight or cache edited inside the quantization noise,
which the gates (distances to fp32) cannot tell from the recipe's own error.

Drift is gated only where the comparison is meaningful: the same measurement path (host or host
estimate) on a host with the same fingerprint (CPU, core count, runtime versions); elsewhere it is
reported, not gated, because other kernels legitimately round differently.
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

# |new - old| <= ABS + REL * |old|: well above the run-to-run spread of a deterministic runtime
# (0: identical to the last digit), well below what a 0.5% weight change moves (sqnr by decibels).
ABS_TOLERANCE = 1e-6
REL_TOLERANCE = 1e-5
_RUNTIMES = ("onnxruntime", "executorch", "ai-edge-litert", "coremltools", "torch", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_fingerprint() -> dict[str, Any]:
    """What decides whether two host measurements must agree to the last digit."""
    import importlib.metadata

    versions = {}
    for name in _RUNTIMES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    import torch

    return {"machine": platform.machine(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "versions": versions}  # fmt: skip


def _differs(old: float, new: float) -> bool:
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) != math.isnan(new)
    if math.isinf(old) or math.isinf(new):
        return old != new
    return abs(new - old) > ABS_TOLERANCE + REL_TOLERANCE * abs(old)


def compare(recorded: dict[str, Any] | None, measured: dict[str, Any]) -> dict[str, Any]:
    """Drift of `measured` (this validation's accuracy) from `recorded` (the manifest's)."""
    if not recorded or not recorded.get("metrics") or measured.get("measured_on") is None:
        return {"gated": False, "reason": "no metrics recorded at export to compare with", "failure": None}
    same_path = recorded.get("measured_on") == measured.get("measured_on")
    same_host = recorded.get("fingerprint") == measured.get("fingerprint")
    moved = {
        name: [old, measured["metrics"][name]]
        for name, old in recorded["metrics"].items()
        if name in measured["metrics"] and _differs(float(old), float(measured["metrics"][name]))
    }
    gated = same_path and same_host
    entry: dict[str, Any] = {"gated": gated, "moved": moved, "failure": None}
    if not gated:
        entry["reason"] = "measured on another host or path than at export: reported, not gated"
    elif moved:
        shown = ", ".join(f"{k} {v[0]:.6g} -> {v[1]:.6g}" for k, v in list(moved.items())[:4])
        entry["failure"] = f"bundle behaves differently from when it was exported ({shown})"
    return entry
