"""TFLite / LiteRT recipes as data. Conversion is litert-torch; quantization is ai-edge-quantizer
applied to the converted fp32 flatbuffer (the same path litert-torch's own LLM export uses).

Options shared by every recipe:
- seq_buckets: encoders; one fixed-shape signature per sequence length (dynamic sequence length
  does not convert). [] = automatic: 16, 32, 64, 128, 256, 512 capped at the model's limit.
- max_seq_len: decoders; the KV-cache length. 0 = automatic: min(1024, model limit).
- prefill_lengths: decoders; one prefill signature per length ([] = automatic: 8 and 64 capped at
  max_seq_len). Prompts are fed through the largest that fits, padded, then decode steps.
Gate defaults come from measurements on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (docs/validation.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_export.targets.base import LayerPattern, Length, Recipe, RecipeOptions, WeightBits
from edge_export.validation.gates import FP16_GATES, FP32_GATES


class TfliteOptions(RecipeOptions):
    """tflite:fp32, fp16, int8-dynamic, int8-weight, and the options every TFLite recipe has."""

    seq_buckets: list[Length] = Field(default_factory=list)
    max_seq_len: int = Field(0, ge=0)
    prefill_lengths: list[Length] = Field(default_factory=list)


class Int8StaticOptions(TfliteOptions):
    """tflite:int8-static: activation ranges from calibration_samples texts."""

    calibration_samples: int = Field(16, ge=1)


class Int4BlockOptions(TfliteOptions):
    """tflite:int4-block: int4 weights in blocks of block_size (the sizes ai-edge-quantizer
    implements); the LM head in head_bits and layers matching int8_layers int8 per channel."""

    block_size: Literal[32, 64, 128, 256] = 32
    head_bits: WeightBits = 8
    int8_layers: list[LayerPattern] = Field(default_factory=lambda: ["down_proj"])


RECIPES = (
    Recipe(
        "tflite:fp32", "fp32", "fp32 flatbuffer from litert-torch",
        options_model=TfliteOptions, gates=FP32_GATES, default_for=("fp32",),
    ),
    Recipe(
        "tflite:fp16", "fp16", "fp16 weights (float casting), fp32 compute and I/O",
        options_model=TfliteOptions, gates=FP16_GATES, default_for=("fp16",),
    ),
    Recipe(
        "tflite:int8-dynamic", "int8",
        "int8 per-channel weights, activations quantized at run time (dynamic range)",
        options_model=TfliteOptions,
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
        default_for=("int8",),
    ),
    Recipe(
        "tflite:int8-weight", "int8",
        "int8 per-channel weights dequantized to fp32 before each op (weight-only)",
        options_model=TfliteOptions,
        gates={"sqnr_db": 15.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
    ),
    Recipe(
        "tflite:int8-static", "int8",
        "static int8 linear layers: int8 weights and int8 activations with ranges calibrated on "
        "real text (attention masks and the rest stay float); encoders only; quantized I/O is "
        "converted by the runtime side",
        options_model=Int8StaticOptions,
        needs_calibration=True,
        gates={"sqnr_db": 6.0, "embedding_cosine_min": 0.9, "top1_agreement": 0.8,
               "next_token_agreement": 0.7, "perplexity_delta_pct": 25.0},
    ),
    Recipe(
        "tflite:int4-block", "int4",
        "int4 block-wise weights (block_size), activations quantized at run time; token tables, "
        "the LM head (head_bits 4 for int4) and layers matching int8_layers int8 per channel",
        options_model=Int4BlockOptions,
        gates={"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 15.0},
        default_for=("int4",),
    ),
)  # fmt: skip
