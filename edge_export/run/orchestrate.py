"""The export run: plan, load, then per (target, recipe) export -> bundle -> validate -> measure.

Everything that can be checked cheaply (ids, paths, data files, the output folder) is checked
before the model loads. A failing target is recorded and the others still run.
"""

from __future__ import annotations

import errno
import shutil
import time
from pathlib import Path
from typing import Any

from edge_export.config import ExportConfig
from edge_export.devices.agent.measure import peak_rss_mb
from edge_export.errors import ExportError, Interrupted
from edge_export.files import USER_ERRNOS, describe_os_error
from edge_export.quiet import native_stderr_captured
from edge_export.report.progress import Progress
from edge_export.report.result import Result, exit_code
from edge_export.report.schema import REPORT_SCHEMA, tool_versions, write_report
from edge_export.run.bundle import StagedOutput, file_hashes, write_manifest
from edge_export.run.plan import PlannedRun
from edge_export.run.session import ExportRun, timed
from edge_export.targets.base import Artifact


def export_one(run: ExportRun, planned: PlannedRun, staging: Path) -> Result:
    """Export, bundle, validate and measure one recipe; never raises for target failures."""
    recipe = planned.recipe
    result = Result(planned.target.name, recipe.id, recipe.precision)
    bundle = staging / f"{planned.target.name}-{recipe.name}"
    bundle.mkdir()
    try:
        with run.progress.task(f"{recipe.id}: exporting"), timed(result.timings_s, "export"):
            artifact = planned.target.export(run.model, recipe, run.calibration, bundle)
    except ExportError as exc:
        shutil.rmtree(bundle, ignore_errors=True)
        result.error = {"type": "ExportError", "stage": exc.stage, "message": exc.one_line()}
        if trace := exc.library_trace():
            result.error["trace"] = trace
        return result
    manifest = _manifest(run, planned, artifact)
    run.model.save_tokenizer(bundle)
    hashes = file_hashes(bundle)
    write_manifest(bundle, manifest, hashes)
    result.produced = True
    result.bundle, result.artifact = bundle.name, f"{bundle.name}/{artifact.path.name}"
    result.size_bytes = sum(f.stat().st_size for f in artifact.files)
    result.inspect = planned.target.inspect(artifact.path, artifact.details)
    # facts and decisions the user should see (no tokenizer, a raised OS target)
    result.notes = [*run.model.notes, *artifact.details.get("notes", [])]
    if run.validator is not None and not _validate(run, planned, artifact, manifest, result):
        return result
    result.residency_failure = residency_failure(run.cfg, result)
    if run.cfg.latency.enabled:
        with timed(result.timings_s, "latency"):
            result.latency_by_device = [run.measure_latency(d, bundle, planned) for d in run.devices]
    manifest.update(validation=result.accuracy, latency=result.latency_by_device)
    write_manifest(bundle, manifest, hashes)
    return result


def _validate(
    run: ExportRun, planned: PlannedRun, artifact: Artifact, manifest: dict, result: Result
) -> bool:
    """Gated accuracy into `result`; False when the artifact does not run on its own host runtime
    (an export failure, recorded as the result's error)."""
    with (
        run.progress.task(f"{planned.recipe.id}: validating"),
        timed(result.timings_s, "validate"),
        native_stderr_captured(),  # native runtimes log per call on fd 2
    ):
        result.accuracy, result.error = checked_accuracy(run, planned, artifact.path, manifest)
    return result.error is None


def checked_accuracy(
    run: ExportRun, planned: PlannedRun, path: Path, manifest: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(accuracy, None), or (None, error) when the artifact does not run on its own host runtime:
    that is an export failure of this result (exit 3), not a crash of the run."""
    try:
        return run.validate_artifact(planned, path, manifest), None
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
            raise  # the machine (a full disk, a permission), not the artifact: the run stops
        message = (
            f"{planned.recipe.id}: the artifact does not run on the host runtime: {type(exc).__name__}: {exc}"
        )
        return None, {"type": "ExportError", "stage": "validate", "message": message.splitlines()[0]}


def residency_failure(cfg: ExportConfig, result: Result) -> str | None:
    """--require-full-delegation: the line that fails a result with anything on the CPU fallback
    (also with --no-validate, where there is no accuracy)."""
    residency = (result.inspect or {}).get("residency")
    if not cfg.require_full_delegation or residency is None or residency["fully_delegated"]:
        return None
    ops = ", ".join(f"{op} x{n}" for op, n in list(residency["fallback_by_op"].items())[:6])
    return f"{result.recipe}: {residency['fallback_ops']} operators run outside the delegate ({ops})"


def _manifest(run: ExportRun, planned: PlannedRun, artifact: Artifact) -> dict[str, Any]:
    model = run.model
    return {
        "model": {"source": model.source.given, "kind": model.source.kind, "sha256": model.sha256,
                  "task": model.task, "family": model.family.name, "weights": model.weights},
        "task": model.task,
        "target": planned.target.name,
        "recipe": artifact.recipe.to_dict(),  # options as resolved for this model
        "artifact": artifact.path.name,
        "io": artifact.io or model.io.to_dict(),
        "runtime": {"name": {"onnx": "onnxruntime"}.get(planned.target.name, planned.target.name),
                    "extra": planned.target.extra},
        "export": artifact.details,
        "versions": tool_versions(),
    }  # fmt: skip


def run_export(cfg: ExportConfig, progress: Progress | None = None) -> tuple[dict[str, Any], int]:
    """Run a whole export; returns (report, exit code). Raises EdgeExportError for usage errors."""
    started = time.perf_counter()
    run = ExportRun(cfg, progress or Progress(enabled=False))  # ids, data, devices: checked first
    source = run.resolve_source()  # the model's files, so OUT can never be where they live
    staged = StagedOutput(cfg.out, cfg.force, protect=source.protected_paths())
    try:
        model = run.load()
        results = [export_one(run, planned, staged.path) for planned in run.plan]
        report = {
            "schema": REPORT_SCHEMA,
            "model": {"source": cfg.model, "task": model.task, "sha256": model.sha256,
                      "family": model.family.name, "weights": model.weights},
            "versions": tool_versions(),
            "validation_data": run.text.origin,
            "devices": run.device_info(),
            "run": {**run.timings, "wall_s": round(time.perf_counter() - started, 3), "peak_rss_mb": peak_rss_mb()},
            "results": [r.to_dict() for r in results],
        }  # fmt: skip
        write_report(staged.path, report)
        staged.commit()
    except KeyboardInterrupt as exc:
        staged.discard()
        raise Interrupted("interrupted; nothing was written", hint="run the command again") from exc
    except OSError as exc:
        staged.discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise describe_os_error(exc, "--out", needed_bytes=run.space_needed()) from exc
        raise
    except Exception:
        staged.discard()
        raise
    finally:
        run.close()
    return report, exit_code(results)
