"""Core ML adapter: load a model.mlpackage with coremltools and predict from numpy feeds (macOS only).

Core ML predictions exist only on Apple hardware; on any other system `host_can_run` says why and
callers report "not run here" (never a made-up number). Encoders predict with int32 token inputs
named as in the manifest. Stateful LMs keep the KV cache in Core ML state (`make_state()`), driven
through `lm_session()`: every call feeds `input_ids [1, n]` and `cache_position [n]`.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def runtime_version() -> str:
    """coremltools' version (raises ImportError when it is not installed)."""
    from coremltools import __version__

    return str(__version__)


def host_can_run() -> str | None:
    """None on macOS, else why Core ML cannot predict here."""
    if platform.system() != "Darwin":
        return "not run here: needs macOS (Core ML predictions run only on Apple hardware)"
    return None


def compute_units(manifest: Mapping[str, Any]) -> str:
    """The compute units recorded in the bundle (ALL when absent)."""
    units = manifest.get("recipe", {}).get("options", {}).get("compute_units", "ALL")
    if units not in COMPUTE_UNITS:
        raise ValueError(f"unknown compute units {units!r} in the manifest")
    return str(units)


def int32_feeds(feeds: Mapping[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The model's inputs as int32 arrays (Core ML ML Programs take no int64)."""
    return {name: np.ascontiguousarray(feeds[name], dtype=np.int32) for name in names}


def padded_feeds(feeds: Mapping[str, Any], names: list[str], buckets: list[int]) -> dict[str, np.ndarray]:
    """int32 feeds of one row, zero-padded (attention mask 0) to the smallest enumerated length
    that holds them; unchanged for a range-shaped package (no buckets)."""
    out = int32_feeds(feeds, names)
    if not buckets:
        return out
    length = int(out[names[0]].shape[1])
    fitting = [b for b in buckets if b >= length]
    if not fitting:
        raise ValueError(f"{length} tokens exceed the largest enumerated length ({buckets[-1]})")
    padded = {}
    for name, value in out.items():
        padded[name] = np.zeros((value.shape[0], fitting[0]), dtype=np.int32)
        padded[name][:, :length] = value
    return padded


_DEVICE_NAMES = {
    "MLNeuralEngineComputeDevice": "neural_engine",
    "MLGPUComputeDevice": "gpu",
    "MLCPUComputeDevice": "cpu",
}


def _operations(block: Any) -> list[Any]:
    found = []
    for op in block.operations:
        found.append(op)
        for inner in getattr(op, "blocks", None) or []:
            found += _operations(inner)
    return found


def summarize_compute_plan(plan: Any) -> dict[str, Any]:
    """Where Core ML plans to run each ML Program operation (MLComputePlan, macOS 14.4+): operation
    counts and estimated cost share per preferred device, and which operator types stay on the CPU."""
    program = plan.model_structure.program
    counts: dict[str, int] = {}
    cost: dict[str, float] = {}
    cpu_ops: dict[str, int] = {}
    total = 0
    for function in program.functions.values():
        for op in _operations(function.block):
            if op.operator_name in ("const",):
                continue
            total += 1
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            kind = type(usage.preferred_compute_device).__name__ if usage is not None else "unknown"
            device = _DEVICE_NAMES.get(kind, kind)
            counts[device] = counts.get(device, 0) + 1
            estimate = plan.get_estimated_cost_for_mlprogram_operation(op)
            cost[device] = cost.get(device, 0.0) + (float(estimate.weight) if estimate is not None else 0.0)
            if device == "cpu":
                cpu_ops[op.operator_name] = cpu_ops.get(op.operator_name, 0) + 1
    spent = sum(cost.values()) or 1.0
    return {
        "operations": total,
        "by_device": counts,
        "cost_share_by_device": {k: round(v / spent, 4) for k, v in cost.items()},
        "neural_engine_ops_pct": round(100.0 * counts.get("neural_engine", 0) / max(1, total), 1),
        "cpu_ops_by_type": dict(sorted(cpu_ops.items(), key=lambda kv: -kv[1])),
    }


class CoremlModel:  # pragma: no cover - predictions need macOS; the feed helpers above are tested
    """A loaded ML Program plus the manifest's IO names."""

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        import coremltools as ct

        self.units = compute_units(manifest)
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, self.units))
        io = manifest["io"]
        self.kind = io.get("kind", "encoder")
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.capacity = io.get("bounds", {}).get("sequence")
        self.buckets = sorted(io.get("buckets", {}).values())

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One prediction per batch row (the package is batch 1), outputs stacked back."""
        rows = int(np.asarray(feeds[self.input_names[0]]).shape[0])
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for row in range(rows):
            one = {k: np.asarray(v)[row : row + 1] for k, v in feeds.items()}
            length = int(one[self.input_names[0]].shape[1])
            pred = self.model.predict(padded_feeds(one, self.input_names, self.buckets))
            for name in self.output_names:
                value = np.asarray(pred[name], dtype=np.float32)
                outs[name].append(value[:, :length] if value.ndim >= 3 else value)
        return {name: np.concatenate(parts, axis=0) for name, parts in outs.items()}

    def providers(self) -> None:
        """Core ML reports where work ran through the compute plan, not as providers."""
        return None

    def compute_plan(self) -> dict[str, Any]:
        """The per-operation compute-device plan of the loaded package (ANE residency)."""
        import coremltools as ct
        from coremltools.models.compute_plan import MLComputePlan

        try:
            plan = MLComputePlan.load_from_path(
                self.model.get_compiled_model_path(), compute_units=getattr(ct.ComputeUnit, self.units)
            )
            return summarize_compute_plan(plan)
        except Exception as exc:  # older macOS: the plan API is missing; say so instead of guessing
            return {"unavailable": f"{type(exc).__name__}: {exc}"[:300]}

    def fixed_shape_variants(self) -> dict[str, Any]:
        """One program for every allowed sequence length (range or enumerated shapes)."""
        return {}

    def lm_session(self) -> CoremlStateSession | None:
        """A KV-cache session for stateful LM packages, None for encoders."""
        return CoremlStateSession(self.model, int(self.capacity)) if self.kind == "decoder" else None


class CoremlStateSession:  # pragma: no cover - needs macOS
    prefill = None  # no separate prompt path: `step` takes the whole prompt
    """Prefill and decode through one stateful `predict`, the cache living in Core ML state."""

    def __init__(self, model: Any, capacity: int) -> None:
        self.model = model
        self.capacity = capacity
        self.reset()

    def reset(self) -> None:
        """A fresh, empty cache."""
        self.state = self.model.make_state()
        self.position = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Logits [1, n, vocab] for the next n tokens, appended to the cache."""
        count = int(ids.shape[1])
        feeds = {
            "input_ids": np.ascontiguousarray(ids, dtype=np.int32),
            "cache_position": np.arange(self.position, self.position + count, dtype=np.int32),
        }
        out = self.model.predict(feeds, state=self.state)
        self.position += count
        return np.asarray(out["logits"], dtype=np.float32)
