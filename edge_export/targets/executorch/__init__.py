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
from edge_export.targets.executorch.recipes import RECIPES, backend_of
from edge_export.targets.stages import require_divisible, require_linear_layers, run_stage


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
        """Refuse what this model cannot take, before any export runs (option values themselves
        are checked by the recipe's options model, recipes.py)."""
        length, limit = recipe.options["max_seq_len"], model.max_positions
        if length > limit or length == 1:  # 0 is automatic
            raise ConfigError(f"{recipe.id}: max_seq_len {length} is outside 2..{limit}",
                              hint="use 0 for automatic or a length the model supports")  # fmt: skip
        if backend_of(recipe) == "coreml" and importlib.util.find_spec("coremltools") is None:
            raise ConfigError(f"{recipe.id} needs coremltools", hint="install edge-export[coreml]")
        from edge_export.targets.stages import conv1d_shapes

        # GPT-2's Conv1D layers become nn.Linear in the exported module (stages.conv1d_to_linear)
        linears = require_linear_layers(model, recipe, "executorch:xnnpack-fp32") + conv1d_shapes(
            model.hf_model
        )
        if "group_size" in recipe.options:
            require_divisible(recipe, linears, "group_size")

    def check_full_delegation(self, model: PreparedModel, recipe: Recipe) -> None:
        """--require-full-delegation pre-flight: fail early where the graph cannot be delegated."""
        if model.io.kind == "decoder" and recipe.options.get("custom_ops"):
            raise ConfigError(f"{recipe.id}: ExecuTorch's custom SDPA/KV-cache ops run outside any delegate",
                              hint=f"set recipe_options {recipe.id}: {{custom_ops: false}} or drop "
                                   "--require-full-delegation")  # fmt: skip
        if model.io.kind == "decoder" and backend_of(recipe) == "xnnpack":
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
                   "backend": backend_of(recipe)}  # fmt: skip
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
