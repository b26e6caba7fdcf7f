"""Compression of a converted fp16 package with coremltools.optimize.coreml, one config per recipe.

Every float weight with at least `_THRESHOLD` elements is compressed (linear layers and the token
tables, which are half of a small encoder's bytes); norms and biases stay fp16. int4-block's zero
points come from zero_point.py unless the recipe asks for coremltools' int4 ones; an LM's output
head (often the tied token table) can stay int8 per channel (head_bits 8), as can layers named
in int8_layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.targets.base import Recipe

_THRESHOLD = 2048


def _weight_config(recipe: Recipe) -> Any:
    import coremltools.optimize as cto

    opts = recipe.options
    if recipe.name in ("int8-weight", "int8-w8a8"):
        return cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                  granularity="per_channel", weight_threshold=_THRESHOLD)  # fmt: skip
    if recipe.name == "int4-block":  # with a zero point per block: SmolLM2 +38% -> +27% perplexity
        return cto.coreml.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block",
                                                  block_size=int(opts["block_size"]), weight_threshold=_THRESHOLD)  # fmt: skip
    nbits = {"palettize-4bit": 4, "palettize-6bit": 6}[recipe.name]
    group = int(opts["group_size"])
    grouping: dict[str, Any] = {"granularity": "per_grouped_channel", "group_size": group} if group else {}
    return cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=_THRESHOLD,
                                         num_kmeans_workers=1, **grouping)  # fmt: skip


def float_consts(spec: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the program's float const tensors, from the proto (no weight is read)."""
    from edge_export.targets.coreml.package import const_tensors

    return {name: shape for name, dtype, shape in const_tensors(spec) if dtype in ("fp16", "fp32")}


def head_weight(spec: Any, consts: Mapping[str, tuple[int, ...]], vocab_size: int) -> str | None:
    """The const the LM head's `linear` reads (its weight has vocab_size rows), if any."""
    from edge_export.targets.coreml.package import linear_weights

    for weight in linear_weights(spec).values():
        shape = consts.get(weight)
        if shape and shape[0] == vocab_size:
            return weight
    return None


def _int8(cto: Any) -> Any:
    """int8 per-channel symmetric: what layers kept at 8 bits inside an int4 recipe get."""
    return cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                              weight_threshold=_THRESHOLD)  # fmt: skip


def _exact(consts: Mapping[str, tuple[int, ...]], model: PreparedModel) -> list[str]:
    """What stays as converted: the stateful LM's rotary cos/sin lookup tables (small; int4 on them
    is needless error) and MoE routers (fp32: quantized, they flip near-tied experts)."""
    tables = [name for name in consts if "cos_table" in name or "sin_table" in name]
    if model.io.kind != "decoder":
        return tables
    from edge_export.targets.coreml.decoder import is_router, router_keys

    keys = router_keys(model.hf_model)
    return tables + [name for name in consts if is_router(name, keys)]


def _ungroupable(consts: Mapping[str, tuple[int, ...]], group: int, skip: Mapping[str, Any]) -> list[str]:
    """Large float consts whose first axis is not a multiple of the palette group size."""
    return [
        name
        for name, shape in consts.items()
        if name not in skip and len(shape) >= 2 and int(np.prod(shape)) >= _THRESHOLD and shape[0] % group
    ]


def compress(
    base: Path, out: Path, recipe: Recipe, model: PreparedModel, calibration: CalibrationSet | None = None
) -> dict[str, Any]:
    """Compress the package at `base` for the recipe and save it at `out`; returns what was done.
    int8-w8a8 first puts int8 quantize/dequantize pairs on linear inputs (activations.py)."""
    import coremltools as ct
    import coremltools.optimize as cto

    mlmodel = ct.models.MLModel(str(base), skip_model_load=True)
    spec = mlmodel.get_spec()
    consts = float_consts(spec)  # names and shapes from the proto: the weights are read once, below
    config = _weight_config(recipe)
    info: dict[str, Any] = {"weight_threshold": _THRESHOLD}
    if recipe.needs_calibration:
        mlmodel, info["activation_quantization"] = _quantize_activations(
            mlmodel, base, recipe, model, calibration
        )
    head = _head(spec, consts, recipe, model)
    overrides = _overrides(recipe, consts, head, info, _exact(consts, model))
    optimization = cto.coreml.OptimizationConfig(global_config=config, op_name_configs=overrides or None)
    compressed = _compress_weights(mlmodel, recipe, optimization, head, overrides, info)
    compressed.save(str(out))
    info["config"] = _describe(config)
    return info


def _quantize_activations(
    mlmodel: Any, base: Path, recipe: Recipe, model: PreparedModel, calibration: CalibrationSet | None
) -> tuple[Any, dict[str, Any]]:
    """int8-w8a8's activation step on the recipe's first calibration samples: the package with
    quantize/dequantize pairs on linear inputs, and what was done (activations.py)."""
    from edge_export.targets.coreml.activations import quantize_activations
    from edge_export.targets.coreml.package import load_program

    if calibration is None or not calibration.feeds:
        raise ValueError("int8 activations need calibration data")
    count = int(recipe.options["calibration_samples"])
    feeds = CalibrationSet(calibration.feeds[:count], calibration.description)
    return quantize_activations(
        mlmodel, load_program(base), model, feeds, float(recipe.options["outlier_ratio"])
    )


def _head(
    spec: Any, consts: Mapping[str, tuple[int, ...]], recipe: Recipe, model: PreparedModel
) -> str | None:
    """The LM head's weight when the recipe treats it apart (head_bits: int4-block; palettes: no)."""
    if model.io.kind == "decoder" and "head_bits" in recipe.options:
        return head_weight(spec, consts, int(model.hf_model.config.vocab_size))
    return None


def _overrides(
    recipe: Recipe,
    consts: Mapping[str, tuple[int, ...]],
    head: str | None,
    info: dict[str, Any],
    exact: list[str],
) -> dict[str, Any]:
    """Const name -> the config that replaces the recipe's global one for it (None: stays fp16):
    the head and int8_layers at int8, `exact` (tables, routers) as converted, ungroupable tensors on one palette.
    What it chose is noted in `info`."""
    import coremltools.optimize as cto

    overrides: dict[str, Any] = {}
    if head:
        info["head"] = {"weight": head, "bits": int(recipe.options["head_bits"])}
        if info["head"]["bits"] == 8:
            overrides[head] = _int8(cto)
    patterns = list(recipe.options.get("int8_layers", []))
    for name in consts if patterns else []:
        if any(p.replace(".", "_").lower() in name.lower() for p in patterns) and name not in overrides:
            overrides[name] = _int8(cto)
            info.setdefault("int8_layers", []).append(name)
    for name in exact:  # rotary tables and MoE routers: keep them as converted
        overrides[name] = None
    if recipe.name.startswith("palettize") and recipe.options["group_size"]:
        # coremltools silently leaves a tensor fp16 when its rows do not divide into groups (e.g.
        # a 30522-row token table): give those one 8-bit palette per tensor instead (MiniLM
        # palettize-4bit: table fp16 0.9388 cosine at 29.0 MB, 8-bit 0.9378 at 17.3 MB, 4-bit 0.9196)
        for name in _ungroupable(consts, int(recipe.options["group_size"]), overrides):
            overrides[name] = cto.coreml.OpPalettizerConfig(
                mode="kmeans", nbits=8, weight_threshold=_THRESHOLD
            )
            info.setdefault("per_tensor_palettes", []).append(name)
    return overrides


def _compress_weights(
    mlmodel: Any,
    recipe: Recipe,
    optimization: Any,
    head: str | None,
    overrides: Mapping[str, Any],
    info: dict[str, Any],
) -> Any:
    """Palettize or linearly quantize the weights (the compressed, unsaved model); a zero point
    other than coremltools' int4 one goes through zero_point.py and is noted in `info`."""
    import coremltools.optimize as cto

    if recipe.name.startswith("palettize"):
        return cto.coreml.palettize_weights(mlmodel, optimization)
    if recipe.options.get("zero_point", "int4") == "int4":
        return cto.coreml.linear_quantize_weights(mlmodel, optimization)
    from edge_export.targets.coreml.zero_point import linear_quantize_weights

    choice = str(recipe.options["zero_point"])
    # an int4 LM head's zero point costs the most perplexity (SmolLM2: +8.7% int4, +4.4% fp16)
    fp16_head = [head] if head and head not in overrides else []
    compressed, counts = linear_quantize_weights(mlmodel, optimization, choice, fp16_head)
    info["zero_point"] = {"mode": choice, "tensors_by_zero_point": counts}
    return compressed


def _describe(config: Any) -> Mapping[str, Any]:
    """The config's public fields, JSON-ready (recorded in the manifest)."""
    fields = config.as_dict() if hasattr(config, "as_dict") else vars(config)
    return {
        k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in fields.items()
    }
