"""What gets exported for a recipe: the module, its example inputs, dynamic shapes, the runner
metadata and the IO the .pte exposes; plus the quantization and partitioner choice per recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.targets.base import Recipe
from edge_export.targets.executorch.recipes import backend_of


@dataclass
class ExportSpec:
    """A module ready for torch.export plus what the bundle needs to describe it."""

    module: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_shapes: Any
    metadata: dict[str, Any]
    io: dict[str, Any]
    kind: str
    embedding: torch.nn.Module | None = None
    head: torch.nn.Module | None = None


def module_for(model: PreparedModel, recipe: Recipe) -> ExportSpec:
    """Decoders: a static-KV-cache LM; encoders: a copy of the export wrapper, bounded shapes."""
    max_len = int(recipe.options["max_seq_len"])
    if model.io.kind == "decoder":
        from edge_export.targets.executorch.llm import StaticCacheLM, runner_metadata

        custom_ops = bool(recipe.options["custom_ops"])
        module = StaticCacheLM(model.hf_model, max_len, custom_ops)
        meta = runner_metadata(model, max_len, custom_ops)
        return ExportSpec(module, module.example_inputs(), module.dynamic_shapes(), meta,
                          decoder_io(model, max_len), "decoder", module.model.get_input_embeddings(),
                          module.model.get_output_embeddings())  # fmt: skip
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=int(recipe.options["max_batch_size"]))
    seq = dim("sequence", min=1, max=max_len)
    shapes = tuple({0: batch, 1: seq} for _ in model.io.input_names)
    io = model.io.to_dict()
    io["bounds"] = {"batch": int(recipe.options["max_batch_size"]), "sequence": max_len}
    module = copy.deepcopy(model.module).eval()
    embedding = next(m for m in module.modules() if hasattr(m, "get_input_embeddings")).get_input_embeddings()
    return ExportSpec(module, model.example_inputs(), shapes, {}, io, "encoder", embedding)


def decoder_io(model: PreparedModel, max_len: int) -> dict[str, Any]:
    """forward(input_ids [1, n], cache_position [n]) -> logits [1, n, vocab], static cache inside."""
    from edge_export.targets.executorch.llm import text_config

    vocab = int(text_config(model.hf_model).vocab_size)
    return {
        "kind": "decoder",
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [1, "sequence"]},
            {"name": "cache_position", "dtype": "int64", "shape": ["sequence"]},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "sequence", vocab]}],
        "primary_output": "logits",
        "cache": {},
        "static_cache": {"max_seq_len": max_len, **model.io.cache},
        "bounds": {"batch": 1, "sequence": max_len - 1},
        "extras": dict(model.io.extras),
    }


def quantize(spec: ExportSpec, recipe: Recipe, calibration: CalibrationSet | None) -> torch.nn.Module:
    """Apply the recipe's quantization to spec.module; returns the module to export."""
    from edge_export.targets.executorch import quantize as q

    opts = recipe.options
    module = spec.module
    embedding_bits = int(opts.get("embedding_bits", 32))
    if embedding_bits < 32:
        q.torchao_embedding(module, spec.embedding, embedding_bits)
    if recipe.name == "xnnpack-8da4w":
        q.torchao_linears(module, int(opts["group_size"]), spec.head, int(opts["head_bits"]))
        return module
    if recipe.name == "xnnpack-int8":
        return q.pt2e_int8(module, spec.example, spec.dynamic_shapes, bool(opts["per_channel"]), None)
    if recipe.name == "xnnpack-int8-static":
        samples = calibration_args(spec, calibration, int(opts["calibration_samples"]))
        return q.pt2e_int8(module, spec.example, spec.dynamic_shapes, bool(opts["per_channel"]), samples)
    return module


def calibration_args(spec: ExportSpec, calibration: CalibrationSet | None, count: int) -> list[tuple]:
    """Calibration feeds as positional arguments of the exported module."""
    if calibration is None or not calibration.feeds:
        raise ValueError("static quantization needs calibration data")
    args = []
    for feed in calibration.feeds[:count]:
        if spec.kind == "decoder":
            ids = torch.from_numpy(np.ascontiguousarray(feed["input_ids"][:1]))
            args.append((ids, torch.arange(ids.shape[1], dtype=torch.long)))
        else:
            names = [t["name"] for t in spec.io["inputs"]]
            args.append(tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
    return args


def partitioners(recipe: Recipe) -> list[Any]:
    """The partitioners of the recipe's backend (XNNPACK or Core ML)."""
    from edge_export.targets.executorch import lower

    if backend_of(recipe) == "coreml":
        return lower.coreml_partitioners(recipe.precision, str(recipe.options["minimum_deployment_target"]))
    return lower.xnnpack_partitioners(dynamic_quant=recipe.name == "xnnpack-int8")
