"""`edge-export validate BUNDLE`: the export run's accuracy and latency steps on an existing bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_export.config import ExportConfig, explain
from edge_export.errors import ConfigError, InputError
from edge_export.report.progress import Progress
from edge_export.report.result import Result
from edge_export.report.schema import single_result_report
from edge_export.run.bundle import read_bundle
from edge_export.run.orchestrate import checked_accuracy
from edge_export.run.plan import PlannedRun
from edge_export.run.session import ExportRun
from edge_export.targets.registry import create, factories, get_recipe
from edge_export.validation.drift import compare


def validate_bundle(
    bundle: Path, overrides: dict[str, Any], progress: Progress
) -> tuple[dict[str, Any], int]:
    """Re-check a bundle: rebuild the reference from the recorded model source, re-run the gates."""
    manifest = read_bundle(bundle)
    if manifest["target"] not in factories():
        raise ConfigError(f"bundle target {manifest['target']} is not available here")
    return revalidate(bundle, manifest, overrides, progress)


def revalidate(
    bundle: Path, manifest: dict[str, Any], overrides: dict[str, Any], progress: Progress
) -> tuple[dict[str, Any], int]:
    """Reload the model the bundle came from (hash-checked), then measure the bundle as shipped."""
    recipe = get_recipe(manifest["recipe"]["id"]).with_options(manifest["recipe"].get("options", {}))
    values = {"model": manifest["model"]["source"], "task": manifest["task"], "recipes": [recipe.id],
              "out": bundle, "force": True, **overrides}  # fmt: skip
    try:
        cfg = ExportConfig.model_validate(values)
    except ValidationError as exc:
        flags = {(k, n) for k, v in overrides.items() if isinstance(v, dict) for n in v}
        raise explain(exc, ExportConfig, flags) from exc
    run = ExportRun(cfg, progress)
    run.plan = [PlannedRun(create(manifest["target"]), recipe)]
    try:
        model = run.load()
        if model.sha256 != manifest["model"]["sha256"]:
            raise InputError(
                f"the model at {cfg.model} is not the one this bundle was exported from (sha256 differs)",
                hint="validate against the original model files",
            )
        planned = run.plan[0]
        artifact = bundle / manifest["artifact"]
        result = Result(planned.target.name, recipe.id, recipe.precision, bundle=str(bundle),
                        artifact=manifest["artifact"], size_bytes=_size(artifact), produced=True)  # fmt: skip
        if run.validator is not None:
            result.accuracy, result.error = checked_accuracy(run, planned, artifact, manifest)
            if result.error is not None:
                return single_result_report(manifest, result)
            result.accuracy = with_drift(result.accuracy, manifest)
        if cfg.latency.enabled:
            result.latency_by_device = [run.measure_latency(d, bundle, planned) for d in run.devices]
    finally:
        run.close()
    return single_result_report(manifest, result)


def with_drift(accuracy: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The accuracy with its drift from the manifest's recorded metrics; drift fails it."""
    drift = compare(manifest.get("validation"), accuracy)
    accuracy["drift"] = drift
    if drift["failure"]:
        accuracy["failure"] = "; ".join(f for f in (accuracy.get("failure"), drift["failure"]) if f)
    return accuracy


def _size(path: Path) -> int:
    """Bytes of an artifact file, or of every file in an artifact folder (.mlpackage)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
