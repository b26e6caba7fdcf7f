"""The export run: plan, load, then per (target, recipe) export -> bundle -> validate -> measure.

Everything that can be checked cheaply (ids, paths, data files, the output folder) is checked
before the model loads. A failing target is recorded and the others still run.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_export.config import ExportConfig
from edge_export.devices import get_device
from edge_export.devices.agent.measure import peak_rss_mb
from edge_export.devices.base import Device
from edge_export.errors import DeviceError, ExportError, InputError, Interrupted, NotRunnableHere
from edge_export.exporter.bundle import StagedOutput, file_hashes, write_manifest
from edge_export.exporter.loading import prepare
from edge_export.exporter.plan import PlannedRun, plan_runs
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.exporter.source import ModelSource, resolve
from edge_export.exporter.textdata import TextData, load_text
from edge_export.files import USER_ERRNOS, describe_os_error
from edge_export.quiet import native_stderr_captured
from edge_export.report.progress import Progress
from edge_export.report.schema import REPORT_SCHEMA, exit_code, new_result, tool_versions, write_report
from edge_export.targets.base import Artifact
from edge_export.validation.accuracy import Validator
from edge_export.validation.cases import calibration_set, latency_inputs
from edge_export.validation.device_latency import latency_entry
from edge_export.validation.gates import evaluate, failure_message, resolve_thresholds


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall time of a block in seconds under `key` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 3)


class ExportRun:
    """State shared by the runs of one export: model, reference results, devices."""

    def __init__(self, cfg: ExportConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        self.plan: list[PlannedRun] = plan_runs(cfg)
        self.text: TextData = load_text(cfg.validation.data)
        self.devices: list[Device] = [get_device(name, cfg.inventory) for name in dict.fromkeys(cfg.devices)]
        self.source: ModelSource | None = None
        self.model: PreparedModel | None = None
        self.validator: Validator | None = None
        self.calibration: CalibrationSet | None = None
        self.timings: dict[str, float] = {}

    def resolve_source(self) -> ModelSource:
        """Find and check the model's files (cheap: nothing loads yet)."""
        if self.source is None:
            cfg = self.cfg
            self.source = resolve(cfg.model, allow_pickle=cfg.allow_pickle, revision=cfg.revision)
        return self.source

    def load(self) -> PreparedModel:
        """Resolve and load the model, pre-flight every recipe, compute reference results."""
        cfg = self.cfg
        with self.progress.task(f"loading {cfg.model}"), timed(self.timings, "load_s"):
            model = prepare(self.resolve_source(), cfg.task, trust_remote_code=cfg.trust_remote_code)
        if cfg.validation.data is not None and model.tokenizer is None:
            raise InputError(
                f"--data {cfg.validation.data} is text, but {cfg.model} has no tokenizer to turn it into ids",
                hint="add the model's tokenizer files to its folder, or leave out --data",
            )
        for run in self.plan:
            run.target.check(model, run.recipe)
            if cfg.require_full_delegation and hasattr(run.target, "check_full_delegation"):
                run.target.check_full_delegation(model, run.recipe)
        if cfg.validation.enabled:
            with (
                self.progress.task("computing PyTorch reference outputs"),
                timed(self.timings, "reference_s"),
            ):
                try:
                    self.validator = Validator(model, self.text, cfg.validation.generate_tokens)
                except (RuntimeError, IndexError, ValueError) as exc:
                    raise InputError(
                        f"the model fails to run in PyTorch on the validation inputs: {exc}",
                        hint="check the model files and config, or pass --no-validate",
                    ) from exc
        if any(r.recipe.needs_calibration for r in self.plan):
            count = max(int(r.recipe.options.get("calibration_samples", 16)) for r in self.plan)
            self.calibration = calibration_set(model, self.text, count)
        self.model = model
        return model

    def run_one(self, run: PlannedRun, staging: Path) -> dict[str, Any]:
        """Export, bundle, validate and measure one recipe; never raises for target failures."""
        recipe = run.recipe
        result = new_result(run.target.name, recipe.id, recipe.precision)
        timings = result["timings_s"] = {}
        bundle = staging / f"{run.target.name}-{recipe.name}"
        bundle.mkdir()
        try:
            with self.progress.task(f"{recipe.id}: exporting"), timed(timings, "export"):
                artifact = run.target.export(self.model, recipe, self.calibration, bundle)
        except ExportError as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            result["error"] = {"type": "ExportError", "stage": exc.stage, "message": exc.one_line()}
            trace = exc.library_trace()
            if trace:
                result["error"]["trace"] = trace
            return result
        manifest = self._manifest(run, artifact)
        self.model.save_tokenizer(bundle)
        hashes = file_hashes(bundle)
        write_manifest(bundle, manifest, hashes)
        result.update(bundle=str(bundle.name), artifact=f"{bundle.name}/{artifact.path.name}",
                      size_bytes=sum(f.stat().st_size for f in artifact.files))  # fmt: skip
        result["inspect"] = run.target.inspect(artifact.path, artifact.details)
        notes = [*self.model.notes, *artifact.details.get("notes", [])]
        if notes:  # facts and decisions the user should see (no tokenizer, a raised OS target)
            result["notes"] = notes
        result["status"] = "passed"
        if self.validator is not None:
            try:
                with (
                    self.progress.task(f"{recipe.id}: validating"),
                    timed(timings, "validate"),
                    native_stderr_captured(),  # native runtimes log per call on fd 2
                ):
                    result["accuracy"] = self.validate_artifact(run, artifact.path, manifest)
                if result["accuracy"]["measured_on"] is None:
                    result["status"] = "not_run"
            except Exception as exc:  # a runtime that cannot run its own artifact is an export failure
                if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
                    raise  # the machine (a full disk, a permission), not the artifact: the run stops
                result["status"] = "error"
                message = (
                    f"{recipe.id}: the artifact does not run on the host runtime: {type(exc).__name__}: {exc}"
                )
                result["error"] = {
                    "type": "ExportError",
                    "stage": "validate",
                    "message": message.splitlines()[0],
                }
                return result
            if result["accuracy"].get("failure"):
                result["status"] = "failed"
        self._check_residency(result)
        if self.cfg.latency.enabled:
            with timed(timings, "latency"):
                result["latency_by_device"] = [self.measure_latency(d, bundle, run) for d in self.devices]
            result["latency"] = result["latency_by_device"][0]
            device_gates_failed(result)
        manifest.update(validation=result["accuracy"], latency=result["latency_by_device"])
        write_manifest(bundle, manifest, hashes)
        return result

    def _check_residency(self, result: dict[str, Any]) -> None:
        """--require-full-delegation: anything on the CPU fallback fails the result."""
        residency = result["inspect"].get("residency")
        if not self.cfg.require_full_delegation or residency is None or residency["fully_delegated"]:
            return
        ops = ", ".join(f"{op} x{n}" for op, n in list(residency["fallback_by_op"].items())[:6])
        message = (
            f"{result['recipe']}: {residency['fallback_ops']} operators run outside the delegate ({ops})"
        )
        result["status"] = "failed"  # also with --no-validate, where accuracy is None
        result["residency_failure"] = message

    def _manifest(self, run: PlannedRun, artifact: Artifact) -> dict[str, Any]:
        model = self.model
        return {
            "model": {"source": model.source.given, "kind": model.source.kind, "sha256": model.sha256,
                      "task": model.task, "family": model.family.name, "weights": model.weights},
            "task": model.task,
            "target": run.target.name,
            "recipe": artifact.recipe.to_dict(),  # options as resolved for this model
            "artifact": artifact.path.name,
            "io": artifact.io or model.io.to_dict(),
            "runtime": {"name": {"onnx": "onnxruntime"}.get(run.target.name, run.target.name),
                        "extra": run.target.extra},
            "export": artifact.details,
            "versions": tool_versions(),
        }  # fmt: skip

    def validate_artifact(self, run: PlannedRun, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Accuracy of an artifact in its host runtime. Where that runtime cannot exist here (Core ML
        off macOS) a target's `host_estimate` (if it has one) is measured instead, labelled so;
        without one the result says it was not run."""
        try:
            return self.measure_accuracy(run, run.target.load(path, manifest))
        except NotRunnableHere as exc:
            if not hasattr(run.target, "host_estimate"):
                return {"measured_on": None, "not_run": str(exc), "metrics": {}, "gates": []}
            estimate = run.target.host_estimate(self.model, path, manifest)
            return self.measure_accuracy(run, estimate, measured_on="host-estimate") | {
                "estimate_reason": str(exc),
                "estimate_coverage": getattr(estimate, "coverage", None),
            }

    def measure_accuracy(self, run: PlannedRun, runnable: Any, measured_on: str = "host") -> dict[str, Any]:
        """Gated accuracy of a loaded artifact against the PyTorch reference."""
        measured = self.validator.measure(runnable)
        return self.gated(run, measured.metrics, measured_on) | {"details": measured.details}

    def gated(self, run: PlannedRun, metrics: dict[str, float], measured_on: str) -> dict[str, Any]:
        """Metrics checked against the recipe's thresholds (and the config's overrides)."""
        thresholds = resolve_thresholds(
            run.recipe.id, run.recipe.precision, run.recipe.gates, self.cfg.validation.gates
        )
        gates = evaluate(metrics, thresholds)
        label = (
            run.recipe.id if measured_on in ("host", "host-estimate") else f"{run.recipe.id} on {measured_on}"
        )
        return {
            "measured_on": measured_on,
            "metrics": metrics,
            "gates": [g.to_dict() for g in gates],
            "failure": failure_message(label, gates),
        }

    def measure_latency(self, device: Device, bundle: Path, run: PlannedRun) -> dict[str, Any]:
        """Latency of one bundle on one device, on real-text inputs of the configured size.

        A device other than this machine also has its outputs gated against the PyTorch reference
        (the host runtime's accuracy was already measured on the full validation set)."""
        lat = self.cfg.latency
        decoder = self.model.io.kind == "decoder"
        tokens = lat.prompt_tokens if decoder else lat.sequence_length
        inputs = latency_inputs(self.model, self.text, lat.batch_size, tokens)
        check = None
        if self.validator is not None and getattr(device, "kind", "local") != "local":
            check = self._device_check(run, device.name, inputs)
        with self.progress.task(f"{run.recipe.id}: measuring on {device.name}"):
            return latency_entry(device, bundle, inputs, lat, decoder, check)

    def _device_check(self, run: PlannedRun, device: str, inputs: dict[str, Any]) -> Any:
        def check(outputs: dict[str, Any]) -> dict[str, Any]:
            return self.gated(run, self.validator.device_metrics(inputs, outputs), device)

        return check

    def space_needed(self) -> int:
        """Bytes this run's bundles take, estimated from the model's parameter count and each
        recipe's bits per weight (for the message when the disk is full)."""
        params = (self.model.weights or {}).get("parameters", 0) if self.model else 0
        if not params and self.source is not None:
            params = sum(p.stat().st_size for p in self.source.weight_files) // 2
        bytes_per = {"fp32": 4.0, "fp16": 2.0, "int8": 1.1, "int4": 0.65}
        return int(1.1 * params * sum(bytes_per.get(r.recipe.precision, 4.0) for r in self.plan))

    def device_info(self) -> list[dict[str, Any]]:
        """Facts of every device of the run; an unreachable one is listed with its error."""
        facts = []
        for device in self.devices:
            try:
                facts.append(device.info())
            except DeviceError as exc:
                facts.append({"name": device.name, "error": exc.one_line()})
        return facts

    def close(self) -> None:
        """Clean up what the run left on remote devices (best effort)."""
        for device in self.devices:
            device.cleanup()


def device_gates_failed(result: dict[str, Any]) -> None:
    """A device whose outputs fail the accuracy gates fails the result (exit 1), like the host."""
    failures = [
        e["accuracy"]["failure"]
        for e in result["latency_by_device"]
        if (e.get("accuracy") or {}).get("failure")
    ]
    if failures and result["status"] in ("passed", "not_run"):
        result["status"] = "failed"
    if failures:
        result["device_failures"] = failures


def run_export(cfg: ExportConfig, progress: Progress | None = None) -> tuple[dict[str, Any], int]:
    """Run a whole export; returns (report, exit code). Raises EdgeExportError for usage errors."""
    started = time.perf_counter()
    progress = progress or Progress(enabled=False)
    run = ExportRun(cfg, progress)  # ids, data file, devices: checked before anything is written
    source = run.resolve_source()  # the model's files, so OUT can never be where they live
    staged = StagedOutput(cfg.out, cfg.force, protect=source.protected_paths())
    try:
        model = run.load()
        results = [run.run_one(planned, staged.path) for planned in run.plan]
        report = {
            "schema": REPORT_SCHEMA,
            "model": {"source": cfg.model, "task": model.task, "sha256": model.sha256,
                      "family": model.family.name, "weights": model.weights},
            "versions": tool_versions(),
            "validation_data": run.text.origin,
            "devices": run.device_info(),
            "run": {**run.timings, "wall_s": round(time.perf_counter() - started, 3), "peak_rss_mb": peak_rss_mb()},
            "results": results,
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
