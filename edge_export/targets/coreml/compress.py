"""Compression of a converted fp16 package with coremltools.optimize.coreml, one config per recipe.

Every float weight with at least `_THRESHOLD` elements is compressed (linear layers and the token
tables, which are half of a small encoder's bytes); norms and biases stay fp16. For LMs the
output head (often the tied token table) gets int8 per channel unless head_bits is 4: int4 on it
costs most of an int4 model's perplexity. int8-w8a8 is built in PyTorch first (w8a8.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_export.exporter.prepared import PreparedModel
from edge_export.targets.base import Recipe

_THRESHOLD = 2048


def _weight_config(recipe: Recipe) -> Any:
    import coremltools.optimize as cto

    opts = recipe.options
    if recipe.name in ("int8-weight", "int8-w8a8"):
        return cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                  granularity="per_channel", weight_threshold=_THRESHOLD)  # fmt: skip
    if recipe.name == "int4-block":
        return cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                  block_size=int(opts["block_size"]), weight_threshold=_THRESHOLD)  # fmt: skip
    nbits = {"palettize-4bit": 4, "palettize-6bit": 6}[recipe.name]
    group = int(opts["group_size"])
    grouping: dict[str, Any] = {"granularity": "per_grouped_channel", "group_size": group} if group else {}
    return cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=_THRESHOLD,
                                         num_kmeans_workers=1, **grouping)  # fmt: skip


def head_weight(program: Any, vocab_size: int) -> str | None:
    """The MIL const the LM head's `linear` reads (its weight has vocab_size rows), if any."""
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type != "linear":
                continue
            weight = op.weight
            if weight.op is not None and weight.op.op_type == "const" and weight.shape[0] == vocab_size:
                return str(weight.op.name)
    return None


def _tables(program: Any) -> list[str]:
    """The stateful LM's rotary cos/sin lookup tables (small; int4 on them is needless error)."""
    return [
        str(op.name)
        for function in program.functions.values()
        for op in function.operations
        if op.op_type == "const" and ("cos_table" in op.name or "sin_table" in op.name)
    ]


def compress(
    base: Path, out: Path, recipe: Recipe, model: PreparedModel, feeds: Any = None
) -> dict[str, Any]:
    """Compress the package at `base` for the recipe and save it at `out`; returns what was done."""
    import coremltools as ct
    import coremltools.optimize as cto

    from edge_export.targets.coreml.package import load_program

    mlmodel = ct.models.MLModel(str(base), skip_model_load=True)
    config = _weight_config(recipe)
    overrides: dict[str, Any] = {}
    info: dict[str, Any] = {"weight_threshold": _THRESHOLD}
    if model.io.kind == "decoder" and recipe.options.get("head_bits", 4) == 8 and recipe.precision == "int4":
        head = head_weight(load_program(base), int(model.hf_model.config.vocab_size))
        if head:
            overrides[head] = cto.coreml.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=_THRESHOLD
            )
            info["head"] = {"weight": head, "bits": 8}
    for name in _tables(load_program(base)):  # fp32-computed rotary tables: keep them exact
        overrides[name] = None
    optimization = cto.coreml.OptimizationConfig(global_config=config, op_name_configs=overrides or None)
    if recipe.name.startswith("palettize"):
        compressed = cto.coreml.palettize_weights(mlmodel, optimization)
    else:
        compressed = cto.coreml.linear_quantize_weights(mlmodel, optimization)
    compressed.save(str(out))
    info["config"] = _describe(config)
    return info


def _describe(config: Any) -> Mapping[str, Any]:
    """The config's public fields, JSON-ready (recorded in the manifest)."""
    fields = config.as_dict() if hasattr(config, "as_dict") else vars(config)
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in fields.items()
    }
