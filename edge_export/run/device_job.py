"""One finished bundle measured on one device outside its export run (the device lab's per-device
workers): the inputs are made on the host as `edge-export bench` makes them (the bundle's own
tokenizer on the built-in text), a decoder's prompt is shortened to fit the model's positions as
the export run does, and the device returns the same latency entry (`latency_entry`, with every
sample in `samples_ms`).

The export run's device-side accuracy check needs the PyTorch model, which is gone by the time a
device's turn comes: the lab makes the reference for these very inputs while the export run is
alive (`with_gate`, a `DeviceGate`: reference outputs or greedy tokens and the thresholds, no
model) and the device's outputs are scored and gated against it exactly as in an export run.
Without one the entry says the check was not run (see `NO_DEVICE_ACCURACY`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_export.config import LatencyConfig
from edge_export.devices.base import Device
from edge_export.files import USER_ERRNOS
from edge_export.run.bench import bench_inputs
from edge_export.run.device_latency import latency_entry

if TYPE_CHECKING:
    from edge_export.run.plan import PlannedRun
    from edge_export.run.session import DeviceGate, ExportRun

NO_DEVICE_ACCURACY = (
    "not checked: no PyTorch reference was made for this device's inputs during the export run "
    "(the host's accuracy is in the row; `edge-export validate BUNDLE --device NAME` gates the "
    "device's own outputs)"
)


@dataclass(frozen=True)
class Measurement:
    """What a device needs to time a bundle: the folder, its inputs, and how to run it; and, to
    gate the outputs a remote device returns, the reference for those inputs (`gate`) or the
    reason there is none (`gate_note`)."""

    bundle: Path
    inputs: dict[str, np.ndarray]
    decoder: bool
    notes: list[str] = field(default_factory=list)
    gate: DeviceGate | None = None
    gate_note: str | None = None

    def with_gate(self, run: ExportRun, planned: PlannedRun) -> Measurement:
        """This measurement with the device-output gate of `planned` made by its live export run
        (the PyTorch reference on exactly these inputs); a reference that fails to compute leaves
        the reason in `gate_note` instead (the host's accuracy already passed or failed the row)."""
        try:
            return replace(self, gate=run.device_gate(planned, self.inputs))
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = f"{type(exc).__name__}: {first}"
            return replace(
                self, gate_note=f"not checked: the PyTorch reference failed on these inputs: {reason}"
            )


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


def prepare_measurement(
    bundle: Path, lat: LatencyConfig, max_positions: int | None = None, committed: Path | None = None
) -> Measurement:
    """The inputs every device of a bundle is timed on (host work: the tokenizer loads here once,
    not on each device's turn). InputError when the bundle's tokenizer is broken. `committed`: where
    devices find the bundle, when it is read here from an export run's staging folder."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    decoder = manifest["io"]["kind"] == "decoder"
    inputs, notes = bench_inputs(bundle, manifest, fitted(lat, decoder, max_positions))
    return Measurement(committed or bundle, inputs, decoder, notes)


def measure(device: Device, job: Measurement, lat: LatencyConfig, gated: bool) -> dict[str, Any]:
    """The device's latency entry for the bundle (a device failure is an entry with `error`, as in
    an export run). `gated`: the export run would have gated this device's outputs (validation on,
    a device other than this machine); they are scored against the job's `gate` into the entry's
    `accuracy` (a failing gate fails the cell), or the entry says why that check was not run."""
    check = partial(job.gate.score, device.name, job.inputs) if gated and job.gate is not None else None
    entry = latency_entry(device, job.bundle, job.inputs, lat, job.decoder, check)
    if gated and "error" not in entry and not entry.get("not_run") and "accuracy" not in entry:
        entry["accuracy"] = {"not_run": job.gate_note or NO_DEVICE_ACCURACY}
    return entry
