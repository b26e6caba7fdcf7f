"""Core ML recipes as data. Conversion is torch.export + coremltools (ML Program); compression is
coremltools.optimize.coreml applied to the converted fp16 program (the after-export path).

Options shared by every recipe:
- compute_units: ALL, CPU_AND_NE, CPU_AND_GPU or CPU_ONLY; recorded in the manifest and used by
  the Mac runner and by the Neural Engine pre-flight.
- minimum_deployment_target: "auto" (iOS17, raised to iOS18 with a recorded message when the
  recipe or model needs it: int4 per-block weights, a stateful LM, several enumerated inputs),
  or an explicit iOS17 / iOS18 (a recipe that cannot meet it is refused).
- shape_mode: encoders; "range" (any sequence length 1..max_seq_len) or "enumerated" (exactly the
  lengths in seq_buckets, which the Neural Engine compiles ahead; Core ML picks the shape).
- seq_buckets: the enumerated lengths ([] = automatic: 16, 32, 64, 128, 256, 512 capped).
- max_seq_len: encoders, the range's upper bound; decoders, the KV-cache context. 0 = automatic
  (encoders: the model limit capped at 512; decoders: min(512, model limit)).
Gate defaults come from host estimates on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (docs/validation.md);
int8-w8a8 shares every target's static int8 gates (validation.gates.STATIC_INT8_GATES). Measured (host estimate):
MiniLM embedding cosine 0.968, sqnr 14.8 dB; SmolLM2 perplexity +11.6%, next-token agreement
0.857 (18 of 211 linear inputs left fp16 as outliers).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_export.targets.base import LayerPattern, Length, Recipe, RecipeOptions, WeightBits
from edge_export.validation.gates import FP16_GATES, FP32_GATES, STATIC_INT8_GATES


class CoremlOptions(RecipeOptions):
    """coreml:fp16, fp32, int8-weight, and the options every Core ML recipe has."""

    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = "ALL"
    minimum_deployment_target: Literal["auto", "iOS17", "iOS18"] = "auto"
    shape_mode: Literal["range", "enumerated"] = "range"
    seq_buckets: list[Length] = Field(default_factory=list)
    max_seq_len: int = Field(0, ge=0)


class W8A8Options(CoremlOptions):
    """coreml:int8-w8a8: linear-input ranges from calibration_samples texts; inputs whose range is
    over outlier_ratio x the median stay fp16 (0 quantizes every one)."""

    calibration_samples: int = Field(16, ge=1)
    outlier_ratio: float = Field(4.0, ge=0)


class Int4BlockOptions(CoremlOptions):
    """coreml:int4-block: block sizes coremltools' per-block int4 takes; zero_point per block
    (zero_point.py); the LM head in head_bits and layers matching int8_layers int8 per channel."""

    block_size: Literal[16, 32, 64, 128] = 32
    zero_point: Literal["auto", "int4", "fp16"] = "auto"
    head_bits: WeightBits = 4
    int8_layers: list[LayerPattern] = Field(default_factory=list)


class PaletteOptions(CoremlOptions):
    """coreml:palettize-*: one table per group of group_size output channels (0: per tensor)."""

    group_size: int = Field(32, ge=0)


_INT8_GATES = {"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0}  # fmt: skip
_INT4_GATES = {"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 15.0}  # fmt: skip

RECIPES = (
    Recipe(
        "coreml:fp16", "fp16", "ML Program with fp16 weights and compute (the Neural Engine's precision)",
        options_model=CoremlOptions, gates=FP16_GATES, default_for=("fp16",),
    ),
    Recipe(
        "coreml:fp32", "fp32", "ML Program with fp32 weights and compute (CPU and GPU; not the Neural Engine)",
        options_model=CoremlOptions, gates=FP32_GATES, default_for=("fp32",),
    ),
    Recipe(
        "coreml:int8-weight", "int8",
        "int8 per-channel symmetric weights of linear layers (weight-only), fp16 compute",
        options_model=CoremlOptions, gates=_INT8_GATES, default_for=("int8",),
    ),
    Recipe(
        "coreml:int8-w8a8", "int8",
        "int8 per-channel linear weights and int8 per-tensor linear inputs (ranges calibrated on "
        "real text; inputs whose range is over outlier_ratio x the median stay fp16), for the "
        "Neural Engine's int8 compute (A17 Pro / M4 and later)",
        options_model=W8A8Options,
        needs_calibration=True, gates=STATIC_INT8_GATES,
    ),
    Recipe(
        "coreml:int4-block", "int4",
        "int4 per-block weights (block_size along the input), fp16 compute; needs iOS18. zero_point "
        "auto: an fp16 zero point per block on tensors it makes exact (weights already on a 4-bit "
        "grid, e.g. a Q4_1 GGUF) and on an LM head, coremltools' int4 one elsewhere (int4 / fp16 "
        "force one); head_bits 8 and int8_layers keep the LM head / matching layers int8 per channel",
        options_model=Int4BlockOptions,
        gates=_INT4_GATES, default_for=("int4",),
    ),
    Recipe(
        "coreml:palettize-4bit", "int4",
        "4-bit palettized weights (k-means, one 16-entry table per group of group_size "
        "output channels; 0 = one table per tensor; tensors whose rows do not divide into groups, "
        "like token tables, get one 8-bit table), fp16 compute",
        options_model=PaletteOptions,
        gates=_INT4_GATES,
    ),
    Recipe(
        "coreml:palettize-6bit", "int8",
        "6-bit palettized weights (k-means, one 64-entry table per group of group_size "
        "output channels; tensors whose rows do not divide into groups get one 8-bit table), fp16 "
        "compute; precision class int8 (6 bits per weight)",
        options_model=PaletteOptions,
        gates=_INT8_GATES,
    ),
)  # fmt: skip
