"""The ExecuTorch target: .pte programs for XNNPACK (CPU) and the Core ML delegate.

Quantization happens before export (torchao source transforms, PT2E on the exported graph);
the host runtime is `executorch.runtime` (the same adapter the device agent uses).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_export.errors import ConfigError, NotRunnableHere
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.quiet import native_stderr_captured
from edge_export.targets.base import Artifact, Recipe, Runnable, TargetBase
from edge_export.targets.executorch.recipes import RECIPES
from edge_export.targets.stages import linear_shapes, run_stage

_GROUP_SIZES = (16, 32, 64, 128, 256)
_EMBEDDING_BITS = (4, 8, 32)
_DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")


class ExecutorchTarget(TargetBase):
    """.pte files for the ExecuTorch runtime (Android/iOS apps, its LLM runner)."""

    name = "executorch"
    extra = "executorch"
    quantizes = "before-export"

    def recipes(self) -> list[Recipe]:
        """xnnpack-fp32, xnnpack-int8, xnnpack-int8-static, xnnpack-8da4w, coreml-fp16, coreml-int8."""
        return list(RECIPES)

    def missing_dependency(self) -> str | None:
        """executorch or torchao when not installed (coremltools only matters for coreml-*)."""
        for module in ("executorch", "torchao"):
            if importlib.util.find_spec(module) is None:
                return module
        return None

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        """Reject options and recipes that cannot apply to this model, before any export runs."""
        opts = recipe.options
        limit = model.max_positions
        if not 0 <= opts["max_seq_len"] <= limit or opts["max_seq_len"] == 1:
            raise ConfigError(f"{recipe.id}: max_seq_len {opts['max_seq_len']} is outside 2..{limit}",
                              hint="use 0 for automatic or a length the model supports")  # fmt: skip
        if opts["max_batch_size"] < 1:
            raise ConfigError(f"{recipe.id}: max_batch_size must be at least 1")
        if opts.get("head_bits", 8) not in (4, 8):
            raise ConfigError(f"{recipe.id}: head_bits must be 4 or 8")
        if opts.get("embedding_bits", 32) not in _EMBEDDING_BITS:
            raise ConfigError(f"{recipe.id}: embedding_bits must be 4, 8 or 32 (float)")
        if opts.get("minimum_deployment_target", "iOS17") not in _DEPLOYMENT_TARGETS:
            raise ConfigError(f"{recipe.id}: unknown minimum_deployment_target {opts['minimum_deployment_target']!r}",
                              hint=f"use one of {', '.join(_DEPLOYMENT_TARGETS)}")  # fmt: skip
        if recipe.name.startswith("coreml") and importlib.util.find_spec("coremltools") is None:
            raise ConfigError(f"{recipe.id} needs coremltools", hint="install edge-export[coreml]")
        if recipe.precision in ("int8", "int4") and not linear_shapes(model):
            raise ConfigError(f"{recipe.id}: the model has no linear layers to quantize",
                              hint="use executorch:xnnpack-fp32")  # fmt: skip
        if "group_size" in opts:
            self._check_groups(model, recipe)

    @staticmethod
    def _check_groups(model: PreparedModel, recipe: Recipe) -> None:
        size = recipe.options["group_size"]
        if size not in _GROUP_SIZES:
            raise ConfigError(f"{recipe.id}: group_size {size} is not supported",
                              hint=f"use one of {', '.join(map(str, _GROUP_SIZES))}")  # fmt: skip
        bad = [name for name, shape in linear_shapes(model) if shape[-1] % size]
        if bad:
            raise ConfigError(f"{recipe.id}: {len(bad)} linear layers (e.g. {bad[0]}) have an input size "
                              f"not divisible by group_size {size}", hint="choose a smaller group_size")  # fmt: skip

    def check_full_delegation(self, model: PreparedModel, recipe: Recipe) -> None:
        """--require-full-delegation pre-flight: fail early where the graph cannot be delegated."""
        if model.io.kind == "decoder" and recipe.options.get("custom_ops"):
            raise ConfigError(f"{recipe.id}: ExecuTorch's custom SDPA/KV-cache ops run outside any delegate",
                              hint=f"set recipe_options {recipe.id}: {{custom_ops: false}} or drop "
                                   "--require-full-delegation")  # fmt: skip
        if model.io.kind == "decoder" and recipe.name.startswith("xnnpack"):
            raise ConfigError(f"{recipe.id}: XNNPACK cannot take token embeddings (aten.embedding), "
                              "so a decoder always keeps CPU kernels",
                              hint="drop --require-full-delegation for LLMs on XNNPACK")  # fmt: skip

    def export(
        self, model: PreparedModel, recipe: Recipe, calibration: CalibrationSet | None, workdir: Path
    ) -> Artifact:
        """Build the module, quantize, export, lower and write workdir/model.pte."""
        from edge_export.targets.executorch import build, lower

        recipe = resolve_options(recipe, model)
        spec = build.module_for(model, recipe)
        spec.module = _stage("quantize", build.quantize, spec, recipe, calibration)
        program = _stage("export", lower.export, spec.module, spec.example, spec.dynamic_shapes)
        partitioners = _stage("lower", build.partitioners, recipe)
        edge = _stage("lower", lower.lower, program, partitioners, spec.metadata)
        delegated = lower.delegated_ops(edge)
        out = workdir / "model.pte"
        _stage("serialize", lower.serialize, edge, out)
        details = {"options": dict(recipe.options), "methods": spec.metadata, "delegated_ops": delegated,
                   "backend": "coreml" if recipe.name.startswith("coreml") else "xnnpack"}  # fmt: skip
        return Artifact(self.name, recipe, out, [out], details, io=spec.io)

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Runnable:
        """The executorch.runtime adapter; Core ML programs cannot run off Apple hardware."""
        from edge_export.devices.agent.executorch_model import ExecutorchModel, host_can_run

        reason = host_can_run(manifest)
        if reason:
            raise NotRunnableHere(reason)
        with native_stderr_captured():  # the runtime logs CPU probing on first use
            model = ExecutorchModel(artifact_path, manifest)
            model.warm_up()
        return model

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Methods, residency (delegated vs CPU-fallback operators per backend) and size."""
        from edge_export.targets.executorch.residency import residency

        with native_stderr_captured():  # loading ExecuTorch's bindings probes the CPU on fd 2
            res = residency(artifact_path, (details or {}).get("delegated_ops"))
        return {"file_bytes": artifact_path.stat().st_size, "methods": res.pop("methods"), "residency": res}


def resolve_options(recipe: Recipe, model: PreparedModel) -> Recipe:
    """max_seq_len 0 -> the automatic bound for this model (recorded in the manifest)."""
    if recipe.options["max_seq_len"] == 0:
        auto = 1024 if model.io.kind == "decoder" else 512
        return recipe.with_options({"max_seq_len": min(auto, model.max_positions)})
    return recipe


def _stage(stage: str, fn: Any, *args: Any) -> Any:
    """One ExecuTorch step; any library failure becomes ExportError naming the stage."""
    return run_stage("executorch", stage, fn, *args)
