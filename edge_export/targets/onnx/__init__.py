"""The ONNX target: dynamo export, ORT quantization recipes, onnxruntime as the host runtime."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_export.errors import ConfigError, ExportError
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.targets.base import Artifact, Recipe, Runnable, TargetBase
from edge_export.targets.onnx.recipes import RECIPES
from edge_export.targets.stages import Scratch

if TYPE_CHECKING:
    from edge_export.validation.provenance import StoredTensor


class OnnxTarget(TargetBase):
    """ONNX files for onnxruntime (CPU) and ONNX-consuming NPU stacks (QDQ)."""

    name = "onnx"
    extra = "onnx"
    quantizes = "after-export"

    def __init__(self) -> None:
        self._scratch = Scratch("edge-export-onnx-")
        # (model sha256, task) -> the clean fp32 export and the facts recorded about it
        self._base: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}

    def recipes(self) -> list[Recipe]:
        """onnx:fp32, fp16, int8-dynamic, int8-static, int4-weight."""
        return list(RECIPES)

    def missing_dependency(self) -> str | None:
        """The first of onnx / onnxruntime / onnxscript that is not installed."""
        for module in ("onnx", "onnxruntime", "onnxscript"):
            if importlib.util.find_spec(module) is None:
                return module
        return None

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        """Nothing model-dependent to refuse: every option value is checked by the recipe's options
        model (recipes.py) when the recipe is built or its options overridden."""
        return None

    def _base_model(self, model: PreparedModel) -> tuple[Path, dict[str, Any]]:
        """The clean fp32 export, made once per model and shared by every recipe."""
        from edge_export.targets.onnx.graph import (
            load_proto,
            retie_transposed_copies,
            save_clean,
            torch_to_onnx,
        )

        key = (model.sha256, model.task)
        if key not in self._base:
            folder = self._scratch.fresh()
            raw = folder / "raw" / "model.onnx"
            raw.parent.mkdir()
            try:
                exporter = torch_to_onnx(model, raw)
            except Exception as exc:
                raise ExportError(self.name, "export", _first_line(exc)) from exc
            proto = load_proto(raw)
            retie_transposed_copies(proto)
            save_clean(proto, folder / "model.onnx")
            shutil.rmtree(raw.parent)
            self._base[key] = (folder / "model.onnx", {"exporter": exporter, "base_opset": _opset(proto)})
        return self._base[key]

    def export(
        self,
        model: PreparedModel,
        recipe: Recipe,
        calibration: CalibrationSet | None,
        workdir: Path,
    ) -> Artifact:
        """Export (cached fp32 base), apply the recipe, save a clean model.onnx in workdir."""
        from edge_export.targets.onnx import quantize
        from edge_export.targets.onnx.graph import save_clean

        recipe = resolve_auto_options(recipe, model)
        base, facts = self._base_model(model)
        out = workdir / "model.onnx"
        details: dict[str, Any] = {"exporter": facts["exporter"]}
        if recipe.name == "fp32":  # the base is already clean: ship it as it is
            files = [
                Path(shutil.copy2(f, workdir / f.name)) for f in sorted(base.parent.glob(base.name + "*"))
            ]
            details.update(opset=facts["base_opset"], options=dict(recipe.options))
            return self._with_runtime_configs(Artifact(self.name, recipe, out, files, details), model)
        try:
            if recipe.name == "int8-static":
                if calibration is None:
                    raise ConfigError(f"{recipe.id} needs calibration data")
                proto, extra = quantize.int8_static(base, out, recipe.options, calibration)
                details.update(extra)
            else:
                step = {"fp16": quantize.to_fp16, "int8-dynamic": quantize.int8_dynamic,
                        "int4-weight": quantize.int4_weight}[recipe.name]  # fmt: skip
                proto = step(base, out, recipe.options)
        except (ConfigError, ExportError):
            raise
        except Exception as exc:
            raise ExportError(self.name, "quantize", _first_line(exc)) from exc
        try:
            files = save_clean(proto, out)
        except Exception as exc:
            raise ExportError(self.name, "save", _first_line(exc)) from exc
        details.update(opset=_opset(proto), options=dict(recipe.options))
        return self._with_runtime_configs(Artifact(self.name, recipe, out, files, details), model)

    def _with_runtime_configs(self, artifact: Artifact, model: PreparedModel) -> Artifact:
        """Add what other runtimes need to load the bundle unchanged: genai_config.json for
        decoders (onnxruntime-genai). Side files, not model files: not in `files` (the size)."""
        if model.io.kind == "decoder":
            from edge_export.targets.onnx.genai import write_genai_config

            try:
                folder, name = artifact.path.parent, artifact.path.name
                artifact.details["genai_config"] = write_genai_config(model, folder, name)
            except OSError:
                raise  # the machine (a full disk), not the model
            except Exception as exc:  # a config attribute this family lacks
                raise ExportError(self.name, "genai-config", _first_line(exc)) from exc
        return artifact

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Runnable:
        """An onnxruntime session (the same adapter the device agent uses)."""
        from edge_export.devices.agent.onnx_model import OnnxModel

        return OnnxModel(artifact_path)

    def stored_weights(self, path: Path) -> list[StoredTensor]:
        """Every initializer of the graph (external data included), as stored."""
        import onnx
        from edge_export.validation.provenance import StoredTensor
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        return [StoredTensor(i.name, numpy_helper.to_array(i)) for i in graph.initializer]

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Operator histogram, weight bytes by dtype, opsets, file size."""
        from edge_export.targets.onnx.graph import inspect_graph

        return inspect_graph(artifact_path)


def resolve_auto_options(recipe: Recipe, model: PreparedModel) -> Recipe:
    """Turn method "auto" into the concrete method for this model kind (recorded in the manifest)."""
    if recipe.options.get("method") == "auto":
        method = "blockwise" if model.io.kind == "decoder" else "matmul-integer"
        return recipe.with_options({"method": method})
    return recipe


def _opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
