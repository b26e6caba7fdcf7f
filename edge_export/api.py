"""Library entry points: export, validate, bench, targets. The CLI is a thin layer over these."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.config import ExportConfig, LatencyConfig
from edge_export.devices import get_device
from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import ConfigError, DeviceError, InputError
from edge_export.exporter.bundle import verify_bundle
from edge_export.exporter.manifest_check import check_manifest
from edge_export.files import read_json_file
from edge_export.report.progress import Progress
from edge_export.report.schema import new_result, single_result_report
from edge_export.targets.base import registry
from edge_export.validation.device_latency import latency_entry


def export(cfg: ExportConfig, progress: Progress | None = None) -> tuple[dict[str, Any], int]:
    """Export, validate and measure; returns (report, exit code) and writes OUT atomically."""
    from edge_export.exporter.orchestrate import run_export

    return run_export(cfg, progress)


def targets_info() -> list[dict[str, Any]]:
    """Every target with its recipes and whether its extra is installed."""
    info = []
    for name, target in sorted(registry().items()):
        missing = target.missing_dependency()
        info.append({
            "name": name,
            "extra": target.extra,
            "installed": missing is None,
            "missing": missing,
            "quantizes": target.quantizes,
            "recipes": [r.to_dict() for r in target.recipes()],
        })  # fmt: skip
    return info


def devices_info(
    check: bool = False, inventory: Mapping[str, DeviceSpec] | None = None
) -> list[dict[str, Any]]:
    """Configured devices; with `check`, whether each answers, its facts and runtimes."""
    from edge_export.devices import known_devices

    info = []
    for name in known_devices(inventory):
        spec = (inventory or {}).get(name)
        entry: dict[str, Any] = {"name": name, "type": spec.type if spec else "local"}
        if spec is not None and spec.labels:
            entry["labels"] = spec.labels
        if check:
            device = get_device(name, inventory)
            try:
                entry.update(device.info(), runtimes=device.runtimes(), reachable=True)
            except DeviceError as exc:
                entry.update(reachable=False, error=exc.one_line())
            finally:
                device.cleanup()
        info.append(entry)
    return info


def read_bundle(bundle: Path) -> dict[str, Any]:
    """The manifest of an intact bundle; InputError when missing, malformed or modified."""
    if not bundle.exists():
        raise InputError(f"bundle {bundle} does not exist", hint="pass a bundle folder from OUT")
    if not bundle.is_dir():
        raise InputError(
            f"bundle {bundle} is a file, not a bundle folder", hint="pass a bundle folder from OUT"
        )
    manifest_file = bundle / "manifest.json"
    if not manifest_file.is_file():
        raise InputError(
            f"{bundle} is not a bundle (no manifest.json)", hint="pass a folder made by edge-export export"
        )
    manifest = read_json_file(manifest_file, "manifest")
    check_manifest(manifest, str(manifest_file))
    if not (bundle / manifest["artifact"]).exists():
        raise InputError(
            f"bundle {bundle} lacks its artifact {manifest['artifact']}", hint="re-export the bundle"
        )
    changed = verify_bundle(bundle, manifest)
    if changed:
        raise InputError(
            f"bundle files changed since export: {', '.join(changed[:5])}", hint="re-export the bundle"
        )
    return manifest


def bench_inputs(bundle: Path, manifest: dict[str, Any], lat: LatencyConfig) -> dict[str, np.ndarray]:
    """Real-text inputs from the bundle's own tokenizer (hashed ids when it has none)."""
    from edge_export.exporter.textdata import builtin_text
    from edge_export.validation.cases import latency_feeds, latency_text

    decoder = manifest["io"]["kind"] == "decoder"
    limit = lat.prompt_tokens if decoder else lat.sequence_length
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(bundle))
        ids = tokenizer(latency_text(builtin_text()), truncation=True, max_length=limit)["input_ids"]
    except (OSError, ValueError, TypeError):
        ids = [5 + i % 90 for i in range(limit)]
    token_types = any(t["name"] == "token_type_ids" for t in manifest["io"]["inputs"])
    return latency_feeds(ids, lat.batch_size, decoder, token_types)


def bench(
    bundle: Path, devices: list[str], lat: LatencyConfig, inventory: Mapping[str, DeviceSpec] | None = None
) -> tuple[dict[str, Any], int]:
    """Latency of an existing bundle on each device; exit 4 when a device fails."""
    manifest = read_bundle(bundle)
    inputs = bench_inputs(bundle, manifest, lat)
    decoder = manifest["io"]["kind"] == "decoder"
    result = new_result(manifest["target"], manifest["recipe"]["id"], manifest["recipe"]["precision"])
    result.update(status="passed", bundle=str(bundle), artifact=manifest["artifact"])
    chosen = [get_device(name, inventory) for name in dict.fromkeys(devices or ["local"])]
    for device in chosen:
        try:
            result["latency_by_device"].append(latency_entry(device, bundle, inputs, lat, decoder))
        finally:
            device.cleanup()
    result["latency"] = result["latency_by_device"][0] if result["latency_by_device"] else None
    if result["latency_by_device"] and all(e.get("not_run") for e in result["latency_by_device"]):
        result["status"] = "not_run"
    return single_result_report(manifest, result)


def validate(
    bundle: Path, cfg_overrides: dict[str, Any], progress: Progress | None = None
) -> tuple[dict[str, Any], int]:
    """Re-check a bundle: rebuild the reference from the recorded model source, re-run the gates."""
    from edge_export.exporter.revalidate import revalidate

    manifest = read_bundle(bundle)
    if manifest["target"] not in registry():
        raise ConfigError(f"bundle target {manifest['target']} is not available here")
    return revalidate(bundle, manifest, cfg_overrides, progress or Progress(enabled=False))
