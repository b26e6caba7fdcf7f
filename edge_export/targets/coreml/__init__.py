"""The Core ML target: .mlpackage ML Programs for iPhone / Mac (CPU, GPU, Neural Engine).

Conversion is torch.export + coremltools (with the op fixes transformers 5 graphs need);
compression is coremltools.optimize.coreml on the converted fp16 program, which is made once per
model and shared by every compressed recipe. Core ML predictions exist only on macOS, so on this
machine a result is validated as a *host estimate*: the compressed weights are read back out of
the saved package, decompressed, loaded into the PyTorch model, and that model goes through the
shared gates, labelled `"measured_on": "host-estimate"`. Real numbers come from the Mac runner.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from edge_export.errors import ConfigError, NotRunnableHere
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.quiet import native_stderr_captured, quiet
from edge_export.targets.base import Artifact, Recipe, Runnable, TargetBase
from edge_export.targets.coreml.recipes import RECIPES
from edge_export.targets.stages import (
    LinearShapes,
    Scratch,
    require_divisible,
    require_linear_layers,
    run_stage,
)

_AUTO_BUCKETS = (16, 32, 64, 128, 256, 512)


class CoremlTarget(TargetBase):
    """.mlpackage ML Programs for Core ML; validated on Linux as host estimates."""

    name = "coreml"
    extra = "coreml"
    quantizes = "after-export"
    # every decoder family converts; DeBERTa converts too, but its package cannot be proven here
    unsupported_families: ClassVar[Mapping[str, str]] = {
        "deberta-v2": "Core ML folds DeBERTa's relative-position embeddings (a LayerNorm over a "
        "constant) into new constants, so the Linux host estimate cannot read its weights back "
        "and nothing could validate the package",
    }

    def __init__(self) -> None:
        self._scratch = Scratch("edge-export-coreml-")
        # (model sha256, task, shape options, deployment target, precision) -> saved base package
        self._base: dict[tuple[Any, ...], Path] = {}

    def recipes(self) -> list[Recipe]:
        """fp16, fp32, int8-weight, int8-w8a8, int4-block, palettize-4bit, palettize-6bit."""
        return list(RECIPES)

    def missing_dependency(self) -> str | None:
        """coremltools when it is not installed."""
        return None if importlib.util.find_spec("coremltools") else "coremltools"

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        """Refuse what this model cannot take, before any conversion (option values themselves are
        checked by the recipe's options model, recipes.py)."""
        resolved = resolve_options(recipe, model)
        self._check_lengths(model, resolved)
        deployment_target(resolved, model)  # raises when an explicit target is too old
        linears = require_linear_layers(model, recipe, "coreml:fp16 or coreml:fp32")
        if "block_size" in recipe.options:
            require_divisible(recipe, linears, "block_size")
        if "group_size" in recipe.options:
            self._check_palette(recipe, linears)

    @staticmethod
    def _check_lengths(model: PreparedModel, recipe: Recipe) -> None:
        """The cache / range bound and the enumerated lengths must fit the model's positions."""
        opts, limit = recipe.options, model.max_positions
        buckets = opts["seq_buckets"]
        if not 2 <= opts["max_seq_len"] <= limit:
            raise ConfigError(f"{recipe.id}: max_seq_len {opts['max_seq_len']} is outside 2..{limit}",
                              hint="use 0 for automatic or a length the model supports")  # fmt: skip
        enumerated = model.io.kind == "encoder" and opts["shape_mode"] == "enumerated"
        if enumerated and (not buckets or max(buckets) > limit):
            raise ConfigError(f"{recipe.id}: seq_buckets {buckets} must lie in 1..{limit}",
                              hint="list sequence lengths the model supports, e.g. [32, 128, 512]")  # fmt: skip

    @staticmethod
    def _check_palette(recipe: Recipe, linears: LinearShapes) -> None:
        """Palettes group output channels: some linear weight must have rows that divide into them."""
        group = recipe.options["group_size"]
        eligible = [name for name, shape in linears if not group or shape[0] % group == 0]
        if not eligible:
            raise ConfigError(f"{recipe.id}: no linear weight has an output size divisible by group_size {group}",
                              hint="use group_size 0 (per tensor) or a divisor of the layers' output sizes")  # fmt: skip

    def _converted(self, model: PreparedModel, recipe: Recipe, target: str) -> Path:
        """The uncompressed package (fp16, or fp32 for coreml:fp32), converted once per model."""
        from edge_export.targets.coreml import convert

        opts = recipe.options
        precision = "fp32" if recipe.name == "fp32" else "fp16"
        key = (model.sha256, model.task, opts["shape_mode"], tuple(opts["seq_buckets"]),
               opts["max_seq_len"], target, precision)  # fmt: skip
        if key not in self._base:
            out = self._scratch.fresh() / "base.mlpackage"
            run_stage("coreml", "convert", convert.convert, model, recipe, target, precision, out)
            self._base[key] = out
        return self._base[key]

    def export(
        self, model: PreparedModel, recipe: Recipe, calibration: CalibrationSet | None, workdir: Path
    ) -> Artifact:
        """Convert (once per model), compress for the recipe, write workdir/model.mlpackage."""
        from edge_export.targets.coreml import ane, compress, convert

        recipe = resolve_options(recipe, model)
        target, reason = deployment_target(recipe, model)
        base = self._converted(model, recipe, target)
        out = workdir / "model.mlpackage"
        details: dict[str, Any] = {"options": dict(recipe.options), "minimum_deployment_target": target}
        notes = [f"minimum deployment target raised to {target}: {reason}"] if reason else []
        if recipe.name in ("fp16", "fp32"):
            shutil.copytree(base, out, copy_function=_link_or_copy)
        else:
            info = run_stage("coreml", "compress", compress.compress, base, out, recipe, model, calibration)
            details["compression"] = info
        io = convert.artifact_io(model, recipe)
        details["ane_preflight"] = ane.preflight(out, recipe, io)
        details["notes"] = notes + details["ane_preflight"]["warnings"]
        files = sorted(p for p in out.rglob("*") if p.is_file())
        return Artifact(self.name, recipe, out, files, details, io=io)

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Runnable:
        """Core ML itself, on macOS only; elsewhere NotRunnableHere (then `host_estimate` runs)."""
        from edge_export.devices.agent.coreml_model import CoremlModel, host_can_run

        reason = host_can_run()
        if reason:
            raise NotRunnableHere(reason)
        return CoremlModel(artifact_path, manifest)  # pragma: no cover - needs a Mac

    def host_estimate(
        self, model: PreparedModel, artifact_path: Path, manifest: Mapping[str, Any]
    ) -> Runnable:
        """The PyTorch model with the package's weights, decompressed (see estimate.py)."""
        from edge_export.targets.coreml.estimate import host_estimate

        return run_stage("coreml", "validate", host_estimate, model, artifact_path, manifest)

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Spec version, IO, MIL operator histogram, weights by dtype, Neural Engine pre-flight."""
        from edge_export.targets.coreml.package import structure

        with quiet(), native_stderr_captured():  # coremltools reports its missing macOS parts
            info = structure(artifact_path)
        if details and "ane_preflight" in details:
            info["ane_preflight"] = details["ane_preflight"]
        return info


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link to the base package's file (never written again), or a copy across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def resolve_options(recipe: Recipe, model: PreparedModel) -> Recipe:
    """Automatic max_seq_len and buckets for this model (recorded in the manifest)."""
    opts, limit = recipe.options, model.max_positions
    changes: dict[str, Any] = {}
    if opts["max_seq_len"] == 0:
        changes["max_seq_len"] = min(512, limit)
    if model.io.kind == "encoder" and opts["shape_mode"] == "enumerated" and not opts["seq_buckets"]:
        cap = changes.get("max_seq_len", opts["max_seq_len"])
        changes["seq_buckets"] = sorted({min(n, cap) for n in _AUTO_BUCKETS})
    return recipe.with_options(changes) if changes else recipe


def deployment_target(recipe: Recipe, model: PreparedModel) -> tuple[str, str | None]:
    """(iOS17 | iOS18, why it was raised or None). An explicit iOS17 that cannot work is an error."""
    opts = recipe.options
    needs = []
    if "block_size" in opts:
        needs.append("int4 per-block weights need iOS18")
    if opts.get("group_size"):
        needs.append("per-grouped-channel palettes need iOS18")
    if model.io.kind == "decoder":
        needs.append("the KV cache is Core ML state, which needs iOS18")
    elif opts["shape_mode"] == "enumerated" and len(model.io.input_names) > 1:
        needs.append("enumerated shapes on more than one input need iOS18")
    requested = opts["minimum_deployment_target"]
    if requested == "iOS17" and needs:
        raise ConfigError(f"{recipe.id}: minimum_deployment_target iOS17 is too old: {needs[0]}",
                          hint="set minimum_deployment_target to iOS18 or auto")  # fmt: skip
    if requested != "auto":
        return requested, None
    return ("iOS18", "; ".join(needs)) if needs else ("iOS17", None)
