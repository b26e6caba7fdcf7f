"""`edge-export bench BUNDLE`: latency of an existing bundle on each device, on real text made
into ids by the bundle's own tokenizer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.config import LatencyConfig
from edge_export.devices import get_device
from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import InputError
from edge_export.exporter.loading import TOKENIZER_FILES
from edge_export.report.result import Result
from edge_export.report.schema import single_result_report
from edge_export.run.bundle import read_bundle
from edge_export.run.device_latency import latency_entry

NO_TOKENIZER_NOTE = "the bundle has no tokenizer: latency was measured on synthetic token ids"


def bench_inputs(
    bundle: Path, manifest: dict[str, Any], lat: LatencyConfig
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Real-text inputs from the bundle's own tokenizer (synthetic ids, with a note, when it ships
    none); a tokenizer that is there but broken is an InputError, never silently replaced."""
    from edge_export.exporter.textdata import builtin_text
    from edge_export.validation.cases import latency_feeds, latency_text

    decoder = manifest["io"]["kind"] == "decoder"
    limit = lat.prompt_tokens if decoder else lat.sequence_length
    notes: list[str] = []
    if any((bundle / name).is_file() for name in TOKENIZER_FILES):
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(bundle))
            ids = tokenizer(latency_text(builtin_text()), truncation=True, max_length=limit)["input_ids"]
        except Exception as exc:  # tokenizers raises plain Exception for a broken model
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(
                f"the tokenizer in bundle {bundle} fails to load: {first}", hint="re-export the bundle"
            ) from exc
    else:
        ids, notes = [5 + i % 90 for i in range(limit)], [NO_TOKENIZER_NOTE]
    token_types = any(t["name"] == "token_type_ids" for t in manifest["io"]["inputs"])
    return latency_feeds(ids, lat.batch_size, decoder, token_types), notes


def bench_bundle(
    bundle: Path, devices: list[str], lat: LatencyConfig, inventory: Mapping[str, DeviceSpec] | None = None
) -> tuple[dict[str, Any], int]:
    """Latency of an existing bundle on each device; exit 4 when a device fails."""
    manifest = read_bundle(bundle)
    inputs, notes = bench_inputs(bundle, manifest, lat)
    decoder = manifest["io"]["kind"] == "decoder"
    result = Result(manifest["target"], manifest["recipe"]["id"], manifest["recipe"]["precision"],
                    bundle=str(bundle), artifact=manifest["artifact"], notes=notes, produced=True)  # fmt: skip
    chosen = [get_device(name, inventory) for name in dict.fromkeys(devices or ["local"])]  # names first
    for device in chosen:
        try:
            result.latency_by_device.append(latency_entry(device, bundle, inputs, lat, decoder))
        finally:
            device.cleanup()
    return single_result_report(manifest, result)
