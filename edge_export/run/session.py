"""One run's shared state: the config, the plan, the loaded model and its PyTorch reference, the
devices; and the steps both `export` and `validate` take on an artifact (gated accuracy on the
host or a host estimate, latency and device-side accuracy on each device)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_export.config import ExportConfig
from edge_export.devices import get_device
from edge_export.devices.base import Device
from edge_export.errors import DeviceError, InputError, NotRunnableHere
from edge_export.exporter.loading import prepare
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.exporter.source import ModelSource, resolve
from edge_export.exporter.textdata import TextData, load_text
from edge_export.report.progress import Progress
from edge_export.run.device_latency import latency_entry
from edge_export.run.plan import PlannedRun, plan_runs
from edge_export.targets.base import Target
from edge_export.targets.registry import require_family
from edge_export.validation.accuracy import DeviceReference, Validator
from edge_export.validation.cases import calibration_set, latency_inputs
from edge_export.validation.drift import host_fingerprint
from edge_export.validation.gates import evaluate, failure_message, resolve_thresholds
from edge_export.validation.provenance import SourceWeights, check_provenance, source_parameters
from edge_export.validation.tokenizer_check import check_bundle_tokenizer


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall time of a block in seconds under `key` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 3)


def gate_entry(
    recipe_id: str, thresholds: dict[str, float], metrics: dict[str, float], measured_on: str
) -> dict[str, Any]:
    """An accuracy entry: `metrics` checked against `thresholds`, the failure line (if any) naming
    the recipe, and the device when measured anywhere but on the host."""
    gates = evaluate(metrics, thresholds)
    label = recipe_id if measured_on in ("host", "host-estimate") else f"{recipe_id} on {measured_on}"
    return {
        "measured_on": measured_on,
        "metrics": metrics,
        "gates": [g.to_dict() for g in gates],
        "failure": failure_message(label, gates),
    }


@dataclass(frozen=True)
class DeviceGate:
    """The gate of the outputs a device returns for one set of inputs: the recipe, its thresholds
    and the PyTorch reference for those inputs (no model: the device lab keeps it with a device's
    job after the export run has ended)."""

    recipe_id: str
    thresholds: dict[str, float]
    reference: DeviceReference

    def score(self, device: str, feeds: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        """The device's accuracy entry (as an export run records it): gated metrics, or `not_run`
        when the device returned no outputs to score."""
        if missing := self.reference.missing(outputs):
            return {"not_run": f"not checked: {device} returned no {', '.join(missing)} output"}
        return gate_entry(self.recipe_id, self.thresholds, self.reference.score(feeds, outputs), device)


class ExportRun:
    """State shared by the runs of one export: model, reference results, devices."""

    def __init__(self, cfg: ExportConfig, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        self.targets: dict[str, Target] = {}  # this run's own instances (their caches end with it)
        self.plan: list[PlannedRun] = plan_runs(cfg, self.targets)
        self.text: TextData = load_text(cfg.validation.data)
        self.devices: list[Device] = [get_device(name, cfg.inventory) for name in dict.fromkeys(cfg.devices)]
        self.source: ModelSource | None = None
        self.model: PreparedModel | None = None
        self.validator: Validator | None = None
        self._params: SourceWeights | None = None  # the source weights, for weight provenance
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
            require_family(run.target, model, run.recipe)
            run.target.check(model, run.recipe)
            if cfg.require_full_delegation:
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

    def validate_artifact(self, run: PlannedRun, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Gated accuracy of an artifact (see `artifact_accuracy`), and the bundle's own tokenizer
        checked against the source's on the same text: a different one fails the result too."""
        accuracy = self.artifact_accuracy(run, path, manifest)
        if accuracy.get("measured_on"):  # what a later `validate` must reproduce to the last digit
            accuracy["fingerprint"] = host_fingerprint()
        texts = [*self.text.samples, self.text.passage]
        accuracy["tokenizer"] = check_bundle_tokenizer(self.model.tokenizer, path.parent, texts)
        if self._params is None:
            self._params = source_parameters(self.model)
        stored = run.target.stored_weights(path)
        accuracy["provenance"] = check_provenance(self._params, stored, run.recipe.precision)
        for check in (accuracy["tokenizer"], accuracy["provenance"]):
            if check["failure"]:
                failures = [accuracy.get("failure"), f"{run.recipe.id}: {check['failure']}"]
                accuracy["failure"] = "; ".join(f for f in failures if f)
        return accuracy

    def artifact_accuracy(self, run: PlannedRun, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Accuracy of an artifact in its host runtime. Where that runtime cannot exist here (Core ML
        off macOS) a target's `host_estimate` (if it has one) is measured instead, labelled so;
        without one the result says it was not run."""
        try:
            return self.measure_accuracy(run, run.target.load(path, manifest))
        except NotRunnableHere as exc:
            estimate = run.target.host_estimate(self.model, path, manifest)
            if estimate is None:
                return {"measured_on": None, "not_run": str(exc), "metrics": {}, "gates": []}
            return self.measure_accuracy(run, estimate, measured_on="host-estimate") | {
                "estimate_reason": str(exc),
                "estimate_coverage": estimate.coverage,
            }

    def measure_accuracy(self, run: PlannedRun, runnable: Any, measured_on: str = "host") -> dict[str, Any]:
        """Gated accuracy of a loaded artifact against the PyTorch reference."""
        measured = self.validator.measure(runnable)
        return self.gated(run, measured.metrics, measured_on) | {"details": measured.details}

    def thresholds(self, run: PlannedRun) -> dict[str, float]:
        """The recipe's thresholds with the config's overrides."""
        recipe = run.recipe
        return resolve_thresholds(recipe.id, recipe.precision, recipe.gates, self.cfg.validation.gates)

    def gated(self, run: PlannedRun, metrics: dict[str, float], measured_on: str) -> dict[str, Any]:
        """Metrics checked against the recipe's thresholds (and the config's overrides)."""
        return gate_entry(run.recipe.id, self.thresholds(run), metrics, measured_on)

    def device_gate(self, run: PlannedRun, feeds: dict[str, Any]) -> DeviceGate:
        """The gate of a device's outputs for `feeds`: the PyTorch reference on those feeds and the
        recipe's thresholds (small: it outlives this run in the device lab)."""
        return DeviceGate(run.recipe.id, self.thresholds(run), self.validator.device_reference(feeds))

    def measure_latency(self, device: Device, bundle: Path, run: PlannedRun) -> dict[str, Any]:
        """Latency of one bundle on one device, on real-text inputs of the configured size.

        A device other than this machine also has its outputs gated against the PyTorch reference
        (the host runtime's accuracy was already measured on the full validation set)."""
        lat = self.cfg.latency
        decoder = self.model.io.kind == "decoder"
        tokens = lat.prompt_tokens if decoder else lat.sequence_length
        if decoder:  # the prompt and every decode step must fit the model's positions (GPT-2 style
            # learned positions fail past them): a 64-position model measures a 32-token prompt
            tokens = max(1, min(tokens, self.model.max_positions - lat.decode_tokens))
        inputs = latency_inputs(self.model, self.text, lat.batch_size, tokens)
        check = None
        if self.validator is not None and device.kind != "local":
            check = self._device_check(run, device.name, inputs)
        with self.progress.task(f"{run.recipe.id}: measuring on {device.name}"):
            return latency_entry(device, bundle, inputs, lat, decoder, check)

    def _device_check(self, run: PlannedRun, device: str, inputs: dict[str, Any]) -> Any:
        def check(outputs: dict[str, Any]) -> dict[str, Any]:
            return self.device_gate(run, inputs).score(device, inputs, outputs)

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
