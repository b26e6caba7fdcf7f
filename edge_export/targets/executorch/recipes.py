"""ExecuTorch recipes as data: XNNPACK (CPU) and the Core ML delegate.

Options shared by every recipe:
- max_seq_len: 0 = automatic (encoders min(512, model limit); decoders min(1024, model limit)).
  Encoders export a dynamic sequence length bounded by it; decoders get a static KV cache of it.
- max_batch_size: encoders only; the dynamic batch dimension's bound. Decoders run batch 1.
- custom_ops: decoders only; ExecuTorch's custom SDPA + KV-cache-update kernels (faster decode)
  instead of plain aten attention over the static cache.
Gate defaults come from measurements on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (README).
"""

from __future__ import annotations

from edge_export.targets.base import Recipe
from edge_export.targets.onnx.recipes import FP32_GATES

_COMMON = {"max_seq_len": 0, "max_batch_size": 32, "custom_ops": True}

RECIPES = (
    Recipe(
        "executorch:xnnpack-fp32", "fp32", "fp32 graph lowered to XNNPACK (CPU)",
        options=dict(_COMMON), gates=FP32_GATES, default_for=("fp32",),
    ),
    Recipe(
        "executorch:xnnpack-int8", "int8",
        "PT2E int8 for XNNPACK: per-channel int8 weights, activations quantized at run time; "
        "embeddings int8 per row (embedding_bits 32 keeps them float)",
        options=dict(_COMMON) | {"per_channel": True, "embedding_bits": 8},
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
        default_for=("int8",),
    ),
    Recipe(
        "executorch:xnnpack-int8-static", "int8",
        "PT2E int8 for XNNPACK with activation ranges calibrated on real text",
        options=dict(_COMMON) | {"per_channel": True, "embedding_bits": 8, "calibration_samples": 16},
        needs_calibration=True,
        gates={"sqnr_db": 6.0, "embedding_cosine_min": 0.9, "top1_agreement": 0.8,
               "next_token_agreement": 0.7, "perplexity_delta_pct": 25.0},
    ),
    Recipe(
        "executorch:xnnpack-8da4w", "int4",
        "torchao 8da4w: int8 dynamic activations, int4 weights in groups of group_size; LM head "
        "int8 per channel (head_bits 4 for int4); embeddings int8 per row (embedding_bits 4/32)",
        options=dict(_COMMON) | {"group_size": 32, "embedding_bits": 8, "head_bits": 8},
        gates={"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 15.0},
        default_for=("int4",),
    ),
    Recipe(
        "executorch:coreml-fp16", "fp16",
        "Core ML delegate (Apple Neural Engine / GPU / CPU), fp16 compute; runs on Apple hardware only",
        options=dict(_COMMON) | {"minimum_deployment_target": "iOS17"},
        gates={"sqnr_db": 30.0, "cosine_min": 0.999, "embedding_cosine_min": 0.999,
               "top1_agreement": 0.95, "next_token_agreement": 0.95, "perplexity_delta_pct": 1.0},
        default_for=("fp16",),
    ),
    Recipe(
        "executorch:coreml-int8", "int8",
        "Core ML delegate with int8 per-channel weights (linear-symmetric), fp16 compute; "
        "runs on Apple hardware only",
        options=dict(_COMMON) | {"minimum_deployment_target": "iOS17"},
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 3.0},
    ),
)  # fmt: skip
