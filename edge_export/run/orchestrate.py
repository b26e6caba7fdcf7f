"""The export run: plan, load, then per (target, recipe) export -> bundle -> validate -> measure.

Everything that can be checked cheaply (ids, paths, data files, the output folder) is checked
before the model loads. A failing target is recorded and the others still run.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_export.cache import ExportCache, library_versions, model_files_sha256, text_sha256
from edge_export.config import ExportConfig
from edge_export.devices.agent.measure import peak_rss_mb
from edge_export.errors import ExportError, Interrupted
from edge_export.files import USER_ERRNOS, describe_os_error, file_hashes
from edge_export.quiet import native_stderr_captured
from edge_export.report.progress import Progress
from edge_export.report.result import Result, exit_code
from edge_export.report.schema import REPORT_SCHEMA, tool_versions, write_report
from edge_export.run.bundle import StagedOutput, write_manifest
from edge_export.run.plan import PlannedRun
from edge_export.run.session import ExportRun, timed
from edge_export.targets.base import Artifact
from edge_export.validation.gates import resolve_thresholds

# Called per finished result while the run is alive: (run, planned recipe, result, staging folder).
OnResult = Callable[[ExportRun, PlannedRun, Result, Path], None]


def export_one(run: ExportRun, planned: PlannedRun, staging: Path) -> Result:
    """Export, bundle, validate and measure one recipe; never raises for target failures.

    With an export cache (cfg.cache) a verified cached bundle replaces export and validation (its
    recorded accuracy is reused); a miss exports as usual and stores the validated bundle. Latency
    is measured on the devices either way."""
    recipe = planned.recipe
    result = Result(planned.target.name, recipe.id, recipe.precision)
    bundle = staging / f"{planned.target.name}-{recipe.name}"
    bundle.mkdir()
    cache = ExportCache(run.cfg.cache) if run.cfg.cache is not None else None
    key = cache_key(run, planned) if cache is not None else None
    built = _from_cache(run, planned, cache, key, bundle, result) if cache is not None else None
    if built is None:
        built = _export_and_validate(run, planned, bundle, result)
        if built is None:
            return result
        if cache is not None:
            _store(cache, key, bundle, result)
    manifest, hashes = built
    result.residency_failure = residency_failure(run.cfg, result)
    if run.cfg.latency.enabled:
        with timed(result.timings_s, "latency"):
            result.latency_by_device = [run.measure_latency(d, bundle, planned) for d in run.devices]
    manifest.update(validation=result.accuracy, latency=result.latency_by_device)
    write_manifest(bundle, manifest, hashes)
    return result


def _export_and_validate(
    run: ExportRun, planned: PlannedRun, bundle: Path, result: Result
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """Convert into `bundle`, write its manifest and validate it: (manifest, file hashes), or None
    when the export failed or the artifact does not run (recorded as the result's error)."""
    recipe = planned.recipe
    try:
        with run.progress.task(f"{recipe.id}: exporting"), timed(result.timings_s, "export"):
            artifact = planned.target.export(run.model, recipe, run.calibration, bundle)
    except ExportError as exc:
        shutil.rmtree(bundle, ignore_errors=True)
        result.error = {"type": "ExportError", "stage": exc.stage, "message": exc.one_line()}
        if trace := exc.library_trace():
            result.error["trace"] = trace
        return None
    manifest = _manifest(run, planned, artifact)
    run.model.save_tokenizer(bundle)
    hashes = file_hashes(bundle)
    write_manifest(bundle, manifest, hashes)
    result.produced = True
    result.bundle, result.artifact = bundle.name, f"{bundle.name}/{artifact.path.name}"
    result.size_bytes = sum(f.stat().st_size for f in artifact.files)
    result.inspect = planned.target.inspect(artifact.path, artifact.details)
    # facts and decisions the user should see (no tokenizer, a raised OS target)
    result.notes = [*run.model.notes, *artifact.details.get("notes", []), *result.notes]
    if run.validator is not None and not _validate(run, planned, artifact, manifest, result):
        return None
    return manifest, hashes


def cache_key(run: ExportRun, planned: PlannedRun) -> str:
    """The export cache key of one planned recipe: the model's content (weights + config, and the
    tokenizer and code files beside them), the recipe id and its resolved options, what validation
    uses and gates on, and the versions of edge-export and the target's libraries. Computable before
    the model loads (a lab's dry run shows what is cached), and the same after."""
    cfg, recipe, source = run.cfg, planned.recipe, run.resolve_source()
    validation = cfg.validation
    # the calibration set a run builds is sized by its largest request (see ExportRun.load)
    calibration = (
        max(int(r.recipe.options.get("calibration_samples", 16)) for r in run.plan)
        if recipe.needs_calibration
        else None
    )
    thresholds = resolve_thresholds(recipe.id, recipe.precision, recipe.gates, validation.gates)
    return ExportCache.key({
        "model_sha256": run.model.sha256 if run.model is not None else source.sha256(),
        "model_files": model_files_sha256(source.folder, source.weight_files, source.kind == "gguf"),
        "task": cfg.task, "trust_remote_code": cfg.trust_remote_code,
        "target": planned.target.name, "recipe": recipe.id, "options": recipe.options,
        "calibration_samples": calibration,
        "text_sha256": text_sha256(run.text.samples, run.text.passage),
        "validation": {"enabled": validation.enabled, "generate_tokens": validation.generate_tokens,
                       "thresholds": thresholds if validation.enabled else None},
        "versions": library_versions(planned.target.extra, type(planned.target).__module__),
    })  # fmt: skip


def _from_cache(
    run: ExportRun, planned: PlannedRun, cache: ExportCache, key: str, bundle: Path, result: Result
) -> tuple[dict[str, Any], dict[str, str]] | None:
    """A verified cached bundle copied into `bundle` with its recorded result (artifact, size,
    inspection, accuracy, notes): (manifest, file hashes), or None on a miss (a corrupt entry is
    deleted by the cache and counts as one). Cache trouble (unreadable, locked) is a miss too."""
    result.cache = {"hit": False, "key": key}
    started = time.perf_counter()
    try:
        with run.progress.task(f"{planned.recipe.id}: checking the export cache"):
            entry = cache.fetch(key, bundle)
        if entry is None:
            return None
        manifest = json.loads((bundle / "manifest.json").read_text())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # OUT's disk is full: the run stops (run_export says so)
        result.notes.append(f"export cache not read: {describe_os_error(exc, '--cache').one_line()}")
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.mkdir()
        return None
    cached = Result.from_dict(entry)
    hashes = manifest.pop("files")
    manifest.pop("schema", None)
    manifest["model"] = _model_entry(run)  # same content; this run's source path
    result.produced, result.cache = True, {"hit": True, "key": key}
    result.bundle, result.artifact = bundle.name, f"{bundle.name}/{manifest['artifact']}"
    result.size_bytes, result.inspect, result.accuracy = cached.size_bytes, cached.inspect, cached.accuracy
    notes = [n for n in cached.notes if not n.startswith("export cache not ")]  # that run's cache trouble
    result.notes = [*notes, f"cached export {key[:12]}"]
    result.timings_s["cache_hit"] = round(time.perf_counter() - started, 3)
    return manifest, hashes


def _store(cache: ExportCache, key: str, bundle: Path, result: Result) -> None:
    """Put a validated bundle into the cache. An error result is never stored; a cache that cannot
    be written (read-only, full) costs this run nothing but a note."""
    result.cache = {"hit": False, "key": key}
    if result.status == "error":
        return
    try:
        with timed(result.timings_s, "cache_store"):
            cache.put(key, bundle, result.to_dict())
    except OSError as exc:
        result.notes.append(f"export cache not written: {describe_os_error(exc, '--cache').one_line()}")


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


def _model_entry(run: ExportRun) -> dict[str, Any]:
    model = run.model
    return {"source": model.source.given, "kind": model.source.kind, "sha256": model.sha256,
            "task": model.task, "family": model.family.name, "weights": model.weights}  # fmt: skip


def _manifest(run: ExportRun, planned: PlannedRun, artifact: Artifact) -> dict[str, Any]:
    model = run.model
    return {
        "model": _model_entry(run),
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


def run_export(
    cfg: ExportConfig, progress: Progress | None = None, on_result: OnResult | None = None
) -> tuple[dict[str, Any], int]:
    """Run a whole export; returns (report, exit code). Raises EdgeExportError for usage errors.

    `on_result(run, planned, result, staging)` runs after each recipe's result, while the run (its
    loaded model and PyTorch reference) is alive; `staging` is the folder the bundles are staged in
    (`result.bundle` names the result's own; the folder becomes cfg.out when the run commits). What
    it raises ends the run like any other error."""
    started = time.perf_counter()
    run = ExportRun(cfg, progress or Progress(enabled=False))  # ids, data, devices: checked first
    source = run.resolve_source()  # the model's files, so OUT can never be where they live
    staged = StagedOutput(cfg.out, cfg.force, protect=source.protected_paths())
    try:
        model = run.load()
        results = []
        for planned in run.plan:
            results.append(export_one(run, planned, staged.path))
            if on_result is not None:
                on_result(run, planned, results[-1], staged.path)
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
