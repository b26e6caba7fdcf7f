"""ONNX recipes as data: their typed options (one model per recipe family) and the RECIPES table.
Gate defaults were set from measurements on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (see
docs/validation.md, "Measured accuracy"); tighten or relax them in the config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_export.targets.base import Recipe, RecipeOptions, WeightBits
from edge_export.validation.gates import FP16_GATES, FP32_GATES, STATIC_INT8_GATES

BlockSize = Literal[16, 32, 64, 128, 256]  # block sizes MatMulNBits takes


class Int8DynamicOptions(RecipeOptions):
    """onnx:int8-dynamic. method auto: per-tensor MatMulInteger for encoders, block-wise
    MatMulNBits (block_size) for decoders; quantize_embeddings also quantizes Gather tables."""

    method: Literal["auto", "matmul-integer", "blockwise"] = "auto"
    per_channel: bool = True
    quantize_embeddings: bool = True
    block_size: BlockSize = 32


class Int8StaticOptions(RecipeOptions):
    """onnx:int8-static (QDQ): calibrated on calibration_samples texts; linear inputs whose range
    is over outlier_ratio x the median stay float (0 quantizes every one)."""

    per_channel: bool = True
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: int = Field(16, ge=1)
    outlier_ratio: float = Field(4.0, ge=0)


class Int4WeightOptions(RecipeOptions):
    """onnx:int4-weight (MatMulNBits): body weights in `bits`, the LM head in head_bits;
    accuracy_level is ORT's compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)."""

    bits: WeightBits = 4
    head_bits: WeightBits = 8
    block_size: BlockSize = 32
    symmetric: bool = True
    accuracy_level: int = Field(4, ge=0, le=4)
    quantize_embeddings: bool = True


# Measured on the built-in text (fp16 / int8-dynamic / int4-weight / int8-static):
#   MiniLM embedding_cosine_min 0.99998 / 0.9905 / 0.938 / 0.929; sqnr_db 58.3 / 18.1 / 10.9 / 8.9
#   SmolLM2 perplexity_delta_pct -- / +0.06% / +6.8% / +7.7%; next_token_agreement -- / 0.954 /
#   0.716 / 0.845; sqnr_db -- / 24.9 / 6.4 / 14.6
# (int8 weights are stored as uint8 with zero point 128: see quantize.py; the int8 numbers above
# are the same on CPUs with and without VNNI.)
RECIPES = (
    Recipe(
        "onnx:fp32", "fp32", "fp32 graph from the dynamo exporter, cleaned",
        gates=FP32_GATES, default_for=("fp32",),
    ),
    Recipe(
        "onnx:fp16", "fp16", "fp16 weights and compute, fp32 inputs/outputs",
        gates=FP16_GATES, default_for=("fp16",),
    ),
    Recipe(
        "onnx:int8-dynamic", "int8",
        "int8 weights, activations quantized at run time (CPU default); method auto picks "
        "per-tensor MatMulInteger for encoders and block-wise MatMulNBits for decoders",
        options_model=Int8DynamicOptions,
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 2.0},
        default_for=("int8",),
    ),
    Recipe(
        "onnx:int8-static", "int8", "QDQ int8 with calibrated activations, for NPU execution providers",
        options_model=Int8StaticOptions, needs_calibration=True, gates=STATIC_INT8_GATES,
    ),
    Recipe(
        "onnx:int4-weight", "int4",
        "4-bit block-wise weights (MatMulNBits), embeddings 4-bit, LM head 8-bit by default",
        options_model=Int4WeightOptions,
        gates={"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 12.0},
        default_for=("int4",),
    ),
)  # fmt: skip
