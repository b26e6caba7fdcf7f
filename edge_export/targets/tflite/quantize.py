"""Post-conversion quantization of a .tflite with ai-edge-quantizer, one recipe per edge-export recipe.

Weight recipes (fp16, dynamic, weight-only, int4) touch only ops with constant weights. The
static recipe also quantizes activations, and only those of FULLY_CONNECTED layers: attention
masks hold min-float entries (HF encoders build an additive mask from attention_mask, decoders
get one as input), and one calibrated int8 range cannot hold both 0 and -3.4e38 next to real
scores. Quantizing every op measured MiniLM embedding cosine 0.52; the gates fail such a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.targets.base import Recipe

Feeds = Mapping[str, np.ndarray]


def _granularity(qtyping: Any, block_size: int) -> Any:
    return getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block_size}")


def configure(qt: Any, recipe: Recipe) -> None:
    """Load the recipe's quantization configs into an ai_edge_quantizer.Quantizer."""
    from ai_edge_quantizer import algorithm_manager, qtyping

    ops = qtyping.TFLOperationName
    name = recipe.name
    if name == "fp16":
        qt.add_weight_only_config(".*", ops.ALL_SUPPORTED, 16, qtyping.QuantGranularity.TENSORWISE,
                                  algorithm_manager.AlgorithmName.FLOAT_CASTING)  # fmt: skip
    elif name == "int8-dynamic":
        qt.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8)
    elif name == "int8-weight":
        qt.add_weight_only_config(".*", ops.ALL_SUPPORTED, 8)
    elif name == "int8-static":
        qt.add_static_config(".*", ops.FULLY_CONNECTED, activation_num_bits=8, weight_num_bits=8)
        qt.add_weight_only_config(".*", ops.EMBEDDING_LOOKUP, 8)  # token tables: int8 rows
    elif name == "int4-block":
        # Token tables int8 per row; linear layers int4 in blocks, except the layers named in
        # int8_layers (the MLP output projection carries the activation outliers) and the LM head
        # (the layer producing `logits`) at head_bits. Measured on SmolLM2 (256-token passage):
        # all int4 +38% perplexity, int8 head +24%, int8 head and down_proj +13.5%.
        blocks = _granularity(qtyping, recipe.options["block_size"])
        qt.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)
        qt.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4, blocks)
        for pattern in recipe.options["int8_layers"]:
            qt.add_dynamic_config(pattern, ops.FULLY_CONNECTED, 8)
        if recipe.options["head_bits"] == 8:
            qt.add_dynamic_config("logits", ops.FULLY_CONNECTED, 8)
    else:
        raise ValueError(f"no quantization for recipe {recipe.id}")


def quantize(
    fp32: Path,
    out: Path,
    recipe: Recipe,
    calibration: Mapping[str, Iterable[Feeds]] | None = None,
) -> dict[str, Any]:
    """Write the quantized model to `out`; returns what was quantized (op -> count) for the manifest."""
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(str(fp32))
    configure(qt, recipe)
    result = None
    if qt.need_calibration:
        if not calibration:
            raise ValueError(f"{recipe.id} needs calibration data")
        result = qt.calibrate({sig: list(feeds) for sig, feeds in calibration.items()}, num_threads=2)
    quantized = qt.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    quantized.export_model(str(out), overwrite=True)
    return {"calibrated_signatures": sorted(calibration) if result is not None else []}
