"""ExecuTorch recipes as data: XNNPACK (CPU) and the Core ML delegate; their typed options (one
model per recipe family) and the RECIPES table.

Options shared by every recipe:
- max_seq_len: 0 = automatic (encoders min(512, model limit); decoders min(1024, model limit)).
  Encoders export a dynamic sequence length bounded by it; decoders get a static KV cache of it.
- max_batch_size: encoders only; the dynamic batch dimension's bound. Decoders run batch 1.
- custom_ops: decoders only; ExecuTorch's custom SDPA + KV-cache-update kernels (faster decode)
  instead of plain aten attention over the static cache.
The delegate a recipe lowers to is its options model's `backend`, never read from its name.
Gate defaults come from measurements on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (docs/validation.md).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from edge_export.targets.base import Recipe, RecipeOptions, WeightBits
from edge_export.validation.gates import FP16_GATES, FP32_GATES, STATIC_INT8_GATES

Backend = Literal["xnnpack", "coreml"]
EmbeddingBits = Literal[4, 8, 32]  # 32 keeps token embeddings float


class ExecutorchOptions(RecipeOptions):
    """executorch:xnnpack-fp32, and the options every ExecuTorch recipe has."""

    backend: ClassVar[Backend] = "xnnpack"
    max_seq_len: int = Field(0, ge=0)
    max_batch_size: int = Field(32, ge=1)
    custom_ops: bool = True


class XnnpackInt8Options(ExecutorchOptions):
    """executorch:xnnpack-int8: PT2E int8 weights (per_channel) and int8 embeddings per row."""

    per_channel: bool = True
    embedding_bits: EmbeddingBits = 8


class XnnpackInt8StaticOptions(XnnpackInt8Options):
    """executorch:xnnpack-int8-static: activation ranges from calibration_samples texts."""

    calibration_samples: int = Field(16, ge=1)


class Xnnpack8da4wOptions(ExecutorchOptions):
    """executorch:xnnpack-8da4w: torchao int4 weights in groups of group_size, head_bits LM head."""

    group_size: Literal[16, 32, 64, 128, 256] = 32
    embedding_bits: EmbeddingBits = 8
    head_bits: WeightBits = 8


class CoremlDelegateOptions(ExecutorchOptions):
    """executorch:coreml-*: programs lowered to the Core ML delegate for this iOS / macOS floor."""

    backend: ClassVar[Backend] = "coreml"
    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18"] = "iOS17"


def backend_of(recipe: Recipe) -> Backend:
    """The delegate an ExecuTorch recipe lowers to, as its options model declares it."""
    model = recipe.options_model
    if not (isinstance(model, type) and issubclass(model, ExecutorchOptions)):
        raise ValueError(f"{recipe.id} is not an ExecuTorch recipe")
    return model.backend


RECIPES = (
    Recipe(
        "executorch:xnnpack-fp32", "fp32", "fp32 graph lowered to XNNPACK (CPU)",
        options_model=ExecutorchOptions, gates=FP32_GATES, default_for=("fp32",),
    ),
    Recipe(
        "executorch:xnnpack-int8", "int8",
        "PT2E int8 for XNNPACK: per-channel int8 weights, activations quantized at run time; "
        "embeddings int8 per row (embedding_bits 32 keeps them float)",
        options_model=XnnpackInt8Options,
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
        default_for=("int8",),
    ),
    Recipe(
        "executorch:xnnpack-int8-static", "int8",
        "PT2E int8 for XNNPACK with activation ranges calibrated on real text",
        options_model=XnnpackInt8StaticOptions,
        needs_calibration=True,
        gates={"sqnr_db": 6.0, "embedding_cosine_min": 0.9, "top1_agreement": 0.8,
               "next_token_agreement": 0.7, "perplexity_delta_pct": 25.0,
               "decode_agreement": STATIC_INT8_GATES["decode_agreement"]},
    ),
    Recipe(
        "executorch:xnnpack-8da4w", "int4",
        "torchao 8da4w: int8 dynamic activations, int4 weights in groups of group_size; LM head "
        "int8 per channel (head_bits 4 for int4); embeddings int8 per row (embedding_bits 4/32)",
        options_model=Xnnpack8da4wOptions,
        gates={"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 15.0},
        default_for=("int4",),
    ),
    Recipe(
        "executorch:coreml-fp16", "fp16",
        "Core ML delegate (Apple Neural Engine / GPU / CPU), fp16 compute; runs on Apple hardware only",
        options_model=CoremlDelegateOptions, gates=FP16_GATES, default_for=("fp16",),
    ),
    Recipe(
        "executorch:coreml-int8", "int8",
        "Core ML delegate with int8 per-channel weights (linear-symmetric), fp16 compute; "
        "runs on Apple hardware only",
        options_model=CoremlDelegateOptions,
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
    ),
)  # fmt: skip
