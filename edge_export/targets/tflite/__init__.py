"""The TFLite / LiteRT target: litert-torch conversion, ai-edge-quantizer recipes, ai-edge-litert
as the host runtime (the same adapter the device agent uses).

Every recipe of a model shares one fp32 conversion (made once per model and signature set, then
quantized per recipe), so asking for fp32,int8,int4 converts once.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.errors import ConfigError
from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.quiet import native_stderr_captured
from edge_export.targets.base import Artifact, Recipe, Runnable, TargetBase
from edge_export.targets.stages import Scratch, require_divisible, require_linear_layers, run_stage
from edge_export.targets.tflite.recipes import RECIPES

_AUTO_BUCKETS = (16, 32, 64, 128, 256, 512)
_AUTO_PREFILL = (8, 64)


class TfliteTarget(TargetBase):
    """.tflite flatbuffers for LiteRT (Android, Linux boards) with the XNNPACK CPU delegate."""

    name = "tflite"
    extra = "tflite"
    quantizes = "after-export"

    def __init__(self) -> None:
        self._scratch = Scratch("edge-export-tflite-")
        # (model sha256, task, signature options) -> fp32 file and its signature table
        self._base: dict[tuple[Any, ...], tuple[Path, dict[str, Any]]] = {}

    def recipes(self) -> list[Recipe]:
        """fp32, fp16, int8-dynamic, int8-weight, int8-static, int4-block."""
        return list(RECIPES)

    def missing_dependency(self) -> str | None:
        """The first of litert_torch / ai_edge_litert / ai_edge_quantizer that is not installed."""
        for module in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"):
            if importlib.util.find_spec(module) is None:
                return module
        return None

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        """Refuse what this model cannot take, before any conversion (option values themselves are
        checked by the recipe's options model, recipes.py)."""
        opts = resolve_options(recipe, model).options
        limit = model.max_positions
        if model.io.kind == "decoder":
            if recipe.needs_calibration:
                raise ConfigError(f"{recipe.id}: static activation quantization breaks decoders (SmolLM2 "
                                  "perplexity +19000% with int8, also with int16 MLP activations)",
                                  hint="use tflite:int8-dynamic or tflite:int4-block for LLMs")  # fmt: skip
            if not 2 <= opts["max_seq_len"] <= limit:
                raise ConfigError(f"{recipe.id}: max_seq_len {opts['max_seq_len']} is outside 2..{limit}",
                                  hint="use 0 for automatic or a length the model supports")  # fmt: skip
            bad = [n for n in opts["prefill_lengths"] if not 2 <= n <= opts["max_seq_len"]]
            if bad or not opts["prefill_lengths"]:
                raise ConfigError(f"{recipe.id}: prefill_lengths {opts['prefill_lengths']} must lie in "
                                  f"2..max_seq_len ({opts['max_seq_len']})")  # fmt: skip
        elif not opts["seq_buckets"] or max(opts["seq_buckets"]) > limit:
            raise ConfigError(f"{recipe.id}: seq_buckets {opts['seq_buckets']} must lie in 1..{limit}",
                              hint="list sequence lengths the model supports, e.g. [32, 128, 512]")  # fmt: skip
        linears = require_linear_layers(model, recipe, "tflite:fp32 or tflite:fp16")
        if "block_size" in opts:
            require_divisible(recipe, linears, "block_size")

    def _fp32(self, model: PreparedModel, recipe: Recipe) -> tuple[Path, dict[str, Any]]:
        """The fp32 conversion for this signature set, made once and shared by every recipe."""
        from edge_export.targets.tflite import convert

        opts = recipe.options
        decoder = model.io.kind == "decoder"
        shape_key = (
            (opts["max_seq_len"], tuple(opts["prefill_lengths"])) if decoder else tuple(opts["seq_buckets"])
        )
        key = (model.sha256, model.task, shape_key)
        if key not in self._base:
            out = self._scratch.fresh() / "fp32.tflite"
            if decoder:
                table = run_stage("tflite", "convert", convert.decoder, model, opts["max_seq_len"],
                                  list(opts["prefill_lengths"]), out)  # fmt: skip
            else:
                table = run_stage("tflite", "convert", convert.encoder, model, list(opts["seq_buckets"]), out)
            self._base[key] = (out, table)
        return self._base[key]

    def export(
        self, model: PreparedModel, recipe: Recipe, calibration: CalibrationSet | None, workdir: Path
    ) -> Artifact:
        """Convert (once per model), quantize for the recipe, write workdir/model.tflite."""
        from edge_export.targets.tflite import quantize

        recipe = resolve_options(recipe, model)
        fp32, table = self._fp32(model, recipe)
        decoder = model.io.kind == "decoder"
        out = workdir / "model.tflite"
        details: dict[str, Any] = {"options": dict(recipe.options), "signatures": table}
        if decoder:
            details["max_seq_len"] = int(recipe.options["max_seq_len"])
        else:
            details["output_map"] = {f"output_{i}": name for i, name in enumerate(model.io.output_names)}
        if recipe.name == "fp32":
            shutil.copyfile(fp32, out)
        else:
            data = None
            if recipe.needs_calibration:
                data = calibration_feeds(recipe, calibration, table, model.io.input_names)
            info = run_stage("tflite", "quantize", quantize.quantize, fp32, out, recipe, data)
            details["quantization"] = info
        io = _decoder_io(model, recipe) if decoder else _encoder_io(model, recipe)
        return Artifact(self.name, recipe, out, [out], details, io=io)

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Runnable:
        """The ai-edge-litert adapter (XNNPACK delegate applied by default)."""
        from edge_export.devices.agent.tflite_model import TfliteModel

        with native_stderr_captured():  # the interpreter logs delegate creation on fd 2
            return TfliteModel(artifact_path, manifest)

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Operator histogram per signature and what XNNPACK takes (see residency.py)."""
        from edge_export.targets.tflite.residency import histograms, residency

        with native_stderr_captured():
            res = residency(artifact_path)
            ops = histograms(artifact_path)
        return {"file_bytes": artifact_path.stat().st_size, "signatures": ops, "residency": res}


def resolve_options(recipe: Recipe, model: PreparedModel) -> Recipe:
    """Automatic buckets / cache length / prefill lengths for this model (recorded in the manifest)."""
    opts = dict(recipe.options)
    limit = model.max_positions
    changes: dict[str, Any] = {}
    if model.io.kind == "decoder":
        if opts["max_seq_len"] == 0:
            changes["max_seq_len"] = opts["max_seq_len"] = min(1024, limit)
        if not opts["prefill_lengths"]:
            changes["prefill_lengths"] = sorted({min(n, opts["max_seq_len"]) for n in _AUTO_PREFILL})
    elif not opts["seq_buckets"]:
        changes["seq_buckets"] = sorted({min(n, limit) for n in _AUTO_BUCKETS})
    return recipe.with_options(changes) if changes else recipe


def _encoder_io(model: PreparedModel, recipe: Recipe) -> dict[str, Any]:
    io = model.io.to_dict()
    buckets = sorted(recipe.options["seq_buckets"])
    io["bounds"] = {"batch": 1, "sequence": buckets[-1]}
    io["buckets"] = {f"seq_{n}": n for n in buckets}
    return io


def _decoder_io(model: PreparedModel, recipe: Recipe) -> dict[str, Any]:
    """prefill_<n> / decode signatures: tokens, input_pos, additive mask, kv_cache_{k,v}_<i>."""
    cfg = model.hf_model.config
    size = int(recipe.options["max_seq_len"])
    return {
        "kind": "decoder",
        "inputs": [
            {"name": "tokens", "dtype": "int32", "shape": [1, "sequence"]},
            {"name": "input_pos", "dtype": "int32", "shape": ["sequence"]},
            {"name": "mask", "dtype": "float32", "shape": [1, 1, "sequence", size]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 1, int(cfg.vocab_size)]}],
        "primary_output": "logits",
        "cache": dict(model.io.cache) | {"max_seq_len": size, "names": "kv_cache_k_<i>, kv_cache_v_<i>"},
        "extras": dict(model.io.extras),
        "bounds": {"batch": 1, "sequence": size},
    }


def calibration_feeds(
    recipe: Recipe, calibration: CalibrationSet | None, signatures: Mapping[str, Any], inputs: list[str]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Signature name -> feeds: each calibration sample cut or zero-padded to every bucket's length
    (ai-edge-quantizer needs activation ranges for every signature)."""
    if calibration is None or not calibration.feeds:
        raise ConfigError(
            f"{recipe.id} needs calibration data", hint="pass real text with --data FILE (.txt or .jsonl)"
        )
    feeds = calibration.feeds[: int(recipe.options["calibration_samples"])]
    data: dict[str, list[dict[str, np.ndarray]]] = {}
    for name, length in ((k, v["sequence"]) for k, v in signatures.items()):
        rows = []
        for feed in feeds:
            row = {}
            for key in inputs:
                value = np.zeros((1, length), dtype=np.int32)
                part = feed[key][:, :length]
                value[:, : part.shape[1]] = part
                row[key] = value
            rows.append(row)
        data[name] = rows
    return data
