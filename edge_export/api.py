"""Library entry points: export, validate, bench, targets, devices. The CLI is a thin layer over
these; the work itself lives in run/ (and the listings' rendering in report/)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_export.config import ExportConfig, LatencyConfig
from edge_export.devices import get_device
from edge_export.devices.inventory import DeviceSpec
from edge_export.errors import DeviceError
from edge_export.report.progress import Progress


def export(cfg: ExportConfig, progress: Progress | None = None) -> tuple[dict[str, Any], int]:
    """Export, validate and measure; returns (report, exit code) and writes OUT atomically."""
    from edge_export.run.orchestrate import run_export

    return run_export(cfg, progress)


def validate(
    bundle: Path, cfg_overrides: dict[str, Any], progress: Progress | None = None
) -> tuple[dict[str, Any], int]:
    """Re-check a bundle: rebuild the reference from the recorded model source, re-run the gates."""
    from edge_export.run.revalidate import validate_bundle

    return validate_bundle(bundle, cfg_overrides, progress or Progress(enabled=False))


def bench(
    bundle: Path, devices: list[str], lat: LatencyConfig, inventory: Mapping[str, DeviceSpec] | None = None
) -> tuple[dict[str, Any], int]:
    """Latency of an existing bundle on each device; exit 4 when a device fails."""
    from edge_export.run.bench import bench_bundle

    return bench_bundle(bundle, devices, lat, inventory)


def families_info() -> list[dict[str, Any]]:
    """Every supported model type with its family, tasks, and per target "yes" or why it cannot."""
    from edge_export.targets.registry import family_table

    return family_table()


def targets_info() -> list[dict[str, Any]]:
    """Every target with its recipes and whether its extra is installed."""
    from edge_export.targets.registry import catalog

    info = []
    for name, target in sorted(catalog().items()):
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
