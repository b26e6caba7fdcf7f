"""ONNX recipes as data. Gate defaults were set from measurements on all-MiniLM-L6-v2 and
SmolLM2-135M-Instruct (see README, "Measured accuracy"); tighten or relax them in the config."""

from __future__ import annotations

from edge_export.targets.base import Recipe

FP32_GATES = {
    "max_abs_error": 1e-2,
    "sqnr_db": 60.0,
    "cosine_min": 0.9999,
    "embedding_cosine_min": 0.9999,
    "top1_agreement": 0.99,
    "next_token_agreement": 0.99,
    "perplexity_delta_pct": 0.1,
    "generation_match": 1.0,
}

# Static int8 activations (calibrated per-tensor scales) cost more than dynamic ones; every
# target's static-activation recipe shares these thresholds.
STATIC_INT8_GATES = {"sqnr_db": 6.0, "embedding_cosine_min": 0.9, "top1_agreement": 0.8,
                     "next_token_agreement": 0.8, "perplexity_delta_pct": 15.0}  # fmt: skip

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
        gates={"sqnr_db": 30.0, "cosine_min": 0.999, "embedding_cosine_min": 0.999,
               "top1_agreement": 0.95, "next_token_agreement": 0.95, "perplexity_delta_pct": 1.0},
        default_for=("fp16",),
    ),
    Recipe(
        "onnx:int8-dynamic", "int8",
        "int8 weights, activations quantized at run time (CPU default); method auto picks "
        "per-tensor MatMulInteger for encoders and block-wise MatMulNBits for decoders",
        options={"method": "auto", "per_channel": True, "quantize_embeddings": True, "block_size": 32},
        gates={"sqnr_db": 12.0, "embedding_cosine_min": 0.99, "top1_agreement": 0.9,
               "next_token_agreement": 0.9, "perplexity_delta_pct": 2.0},
        default_for=("int8",),
    ),
    Recipe(
        "onnx:int8-static", "int8", "QDQ int8 with calibrated activations, for NPU execution providers",
        options={"per_channel": True, "calibration_method": "minmax", "calibration_samples": 16,
                 "outlier_ratio": 4.0},
        needs_calibration=True,
        gates=STATIC_INT8_GATES,
    ),
    Recipe(
        "onnx:int4-weight", "int4",
        "4-bit block-wise weights (MatMulNBits), embeddings 4-bit, LM head 8-bit by default",
        options={"bits": 4, "head_bits": 8, "block_size": 32, "symmetric": True,
                 "accuracy_level": 4, "quantize_embeddings": True},
        gates={"sqnr_db": 4.0, "embedding_cosine_min": 0.92, "top1_agreement": 0.7,
               "next_token_agreement": 0.65, "perplexity_delta_pct": 12.0},
        default_for=("int4",),
    ),
)  # fmt: skip
