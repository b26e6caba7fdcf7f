"""Latency statistics: percentiles, spread, and a noise flag, from raw per-iteration timings."""

from __future__ import annotations

from typing import Any

import numpy as np

NOISY_CV = 0.10


def summarize(latencies_ms: list[float]) -> dict[str, Any]:
    """p50/p90/p99, mean, std, coefficient of variation; `noisy` when CV exceeds 10%."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"iterations": 0}
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    return {
        "iterations": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(values.min()),
        "cv": cv,
        "noisy": bool(cv > NOISY_CV),
    }


def decode_rate(decode_ms: list[float]) -> float:
    """Decode tokens per second from per-token step times (median step, robust to hiccups)."""
    if not decode_ms:
        return float("nan")
    return float(1000.0 / np.median(np.asarray(decode_ms)))
