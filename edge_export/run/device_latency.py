"""Run a bundle on a device and turn its raw timings into a report.json latency entry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.config import LatencyConfig
from edge_export.devices.base import Device
from edge_export.errors import DeviceError, NotRunnableHere
from edge_export.validation.latency import NOISY_CV, decode_rate, summarize


def latency_entry(
    device: Device,
    bundle: Path,
    inputs: dict[str, np.ndarray],
    lat: LatencyConfig,
    decoder: bool,
    check: Callable[[dict[str, np.ndarray]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Timings on one device; a device failure becomes an entry with `error` (exit 4), not a raise.

    `check` scores the outputs the device returned (gated accuracy against the PyTorch reference
    on the same inputs); its result goes in the entry as `accuracy`.
    """
    mode = "generate" if decoder else "graph"
    try:
        res = device.run(
            bundle, inputs, lat.warmup, lat.iterations, mode=mode, decode_tokens=lat.decode_tokens
        )
    except DeviceError as exc:
        return {"device": device.name, "error": {"type": "DeviceError", "message": exc.one_line()}}
    except NotRunnableHere as exc:  # a valid bundle this device cannot execute: no numbers, no failure
        return {"device": device.name, "not_run": str(exc)}
    native = res.extra.get("native")
    timings = summarize(res.latencies_ms) if res.latencies_ms else summary_only(res.extra.get("stats") or {})
    entry: dict[str, Any] = {
        "device": device.name,
        **timings,
        "load_ms": res.load_ms,
        "peak_rss_mb": res.peak_rss_mb,
        "runtime": res.runtime,
        "providers": res.extra.get("providers"),
    }
    if res.latencies_ms:  # every sample, so a results store can test a change statistically
        entry["samples_ms"] = [round(float(v), 4) for v in res.latencies_ms]
    if "compute" in res.extra:  # Core ML on a Mac: where each operation was planned to run
        entry["compute_plan"] = res.extra["compute"]
    if decoder:
        entry.update(
            prompt_tokens=int(inputs["prompt_ids"].size),
            ttft_ms=entry.get("p50_ms"),
            decode_tokens=lat.decode_tokens,
            decode_tokens_per_s=decode_rate(res.extra.get("decode_ms", [])),
        )
        if res.extra.get("decode_ms"):  # every decode step, so a store can test the decode rate too
            entry["decode_samples_ms"] = [round(float(v), 4) for v in res.extra["decode_ms"]]
    elif native:  # the device's benchmark binary: the shape it really ran, and no outputs to gate
        entry.update(batch_size=native["batch_size"], sequence_length=native["sequence_length"],
                     native_tool=native["tool"], note=native["note"] or None)  # fmt: skip
    else:
        entry.update(
            batch_size=int(inputs["input_ids"].shape[0]), sequence_length=int(inputs["input_ids"].shape[1])
        )
    if check is not None and native:
        entry["accuracy"] = {"not_run": f"{res.runtime} returns no outputs: accuracy on this device needs "
                                        "the Python agent"}  # fmt: skip
    elif check is not None:
        entry["accuracy"] = check(res.outputs)
    return entry


def summary_only(stats: dict[str, Any]) -> dict[str, Any]:
    """Latency fields from a tool that prints only a summary (no per-iteration times)."""
    entry = {"per_iteration": False, **stats}
    mean, std = stats.get("mean_ms"), stats.get("std_ms")
    if mean and std is not None:
        entry["cv"] = std / mean
        entry["noisy"] = bool(entry["cv"] > NOISY_CV)
    return entry
