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


class CoremlModel:  # pragma: no cover - predictions need macOS; the feed helpers above are tested
    """A loaded ML Program plus the manifest's IO names."""

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        import coremltools as ct

        units = getattr(ct.ComputeUnit, compute_units(manifest))
        self.model = ct.models.MLModel(str(path), compute_units=units)
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

    def lm_session(self) -> CoremlStateSession | None:
        """A KV-cache session for stateful LM packages, None for encoders."""
        return CoremlStateSession(self.model, int(self.capacity)) if self.kind == "decoder" else None


class CoremlStateSession:  # pragma: no cover - needs macOS
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
