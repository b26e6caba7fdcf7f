"""One finished bundle measured on one device outside its export run (the device lab's per-device
workers): the inputs are made on the host as `edge-export bench` makes them (the bundle's own
tokenizer on the built-in text), a decoder's prompt is shortened to fit the model's positions as
the export run does, and the device returns the same latency entry (`latency_entry`, with every
sample in `samples_ms`).

The export run's device-side accuracy check needs the loaded PyTorch model, which is gone by the
time a device's turn comes; the entry says so instead (see `NO_DEVICE_ACCURACY`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.config import LatencyConfig
from edge_export.devices.base import Device
from edge_export.run.bench import bench_inputs
from edge_export.run.device_latency import latency_entry

NO_DEVICE_ACCURACY = (
    "not checked: the lab measures devices after the export run has released the PyTorch reference "
    "(the host's accuracy is in the row; `edge-export validate BUNDLE --device NAME` gates the "
    "device's own outputs)"
)


@dataclass(frozen=True)
class Measurement:
    """What a device needs to time a bundle: the folder, its inputs, and how to run it."""

    bundle: Path
    inputs: dict[str, np.ndarray]
    decoder: bool
    notes: list[str] = field(default_factory=list)


def source_max_positions(folder: Path) -> int | None:
    """The model's position limit from its config.json (`max_position_embeddings`, or GPT-2's
    `n_positions`), as the loader reads it; None when there is none to read (a GGUF file)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def fitted(lat: LatencyConfig, decoder: bool, max_positions: int | None) -> LatencyConfig:
    """The latency settings with a decoder's prompt shortened so that the prompt and every decode
    step fit the model's positions (GPT-2 style learned positions fail past them), exactly as
    ExportRun.measure_latency shortens it: a 64-position model measures a 32-token prompt."""
    if not decoder or max_positions is None:
        return lat
    tokens = max(1, min(lat.prompt_tokens, max_positions - lat.decode_tokens))
    return lat if tokens == lat.prompt_tokens else lat.model_copy(update={"prompt_tokens": tokens})


def prepare_measurement(bundle: Path, lat: LatencyConfig, max_positions: int | None = None) -> Measurement:
    """The inputs every device of a bundle is timed on (host work: the tokenizer loads here once,
    not on each device's turn). InputError when the bundle's tokenizer is broken."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    decoder = manifest["io"]["kind"] == "decoder"
    inputs, notes = bench_inputs(bundle, manifest, fitted(lat, decoder, max_positions))
    return Measurement(bundle, inputs, decoder, notes)


def measure(device: Device, job: Measurement, lat: LatencyConfig, gated: bool) -> dict[str, Any]:
    """The device's latency entry for the bundle (a device failure is an entry with `error`, as in
    an export run). `gated`: the export run would have gated this device's outputs (validation on,
    a device other than this machine); the entry then says that check was not run."""
    entry = latency_entry(device, job.bundle, job.inputs, lat, job.decoder)
    if gated and "error" not in entry and not entry.get("not_run") and "accuracy" not in entry:
        entry["accuracy"] = {"not_run": NO_DEVICE_ACCURACY}
    return entry
