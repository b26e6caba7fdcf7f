"""Decoder-only LMs with a KV cache, through transformers' own modeling code and cache classes:
Llama, Mistral, Qwen2/3, Phi-3, Gemma 1/2/3, GPT-2, SmolLM3, and sparse MoE (Mixtral, Qwen-MoE).

Graph inputs follow the convention ONNX Runtime GenAI and Optimum use: input_ids, attention_mask
(past + current), position_ids, past_key_values.{i}.key/value [batch, kv_heads, past, head_dim];
outputs: logits and present.{i}.key/value. One graph serves prefill (past length 0) and decode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edge_export.exporter.families import Family
from edge_export.exporter.iospec import IOSpec, TensorSpec

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text",
               "gpt2", "smollm3", "mixtral", "qwen2_moe", "qwen3_moe")  # fmt: skip
TASKS = ("text-generation",)


class CausalLMWithPast(nn.Module):
    """Flat-tensor signature over an HF causal LM: (ids, mask, positions, *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.model = model
        self.num_layers = num_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        # full-length layers for every attention type: a sliding-window layer would crop its
        # present to the window, breaking the past/present contract; the model's own mask code
        # still applies the window (Gemma 2/3, Mistral) from the config
        cache = DynamicCache()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def cache_geometry(hf_model: nn.Module) -> dict[str, int]:
    """Layers, kv heads and head size, read off a real one-token forward (robust to config quirks)."""
    with torch.no_grad():
        out = hf_model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    layers = out.past_key_values.layers
    _, kv_heads, _, head_dim = layers[0].keys.shape
    return {"num_layers": len(layers), "kv_heads": int(kv_heads), "head_dim": int(head_dim)}


def past_names(num_layers: int, prefix: str) -> list[str]:
    """past_key_values.{i}.key/value or present.{i}.key/value, in graph order."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def build(hf_model: nn.Module, task: str, extras: dict[str, Any]) -> tuple[nn.Module, IOSpec]:
    """Wrapper and IO spec for text generation with a KV cache."""
    geo = cache_geometry(hf_model)
    kv_shape_in = ("batch", geo["kv_heads"], "past_sequence", geo["head_dim"])
    kv_shape_out = ("batch", geo["kv_heads"], "total_sequence", geo["head_dim"])
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "sequence")),
        TensorSpec("attention_mask", "int64", ("batch", "total_sequence")),
        TensorSpec("position_ids", "int64", ("batch", "sequence")),
    ]
    inputs += [
        TensorSpec(n, "float32", kv_shape_in) for n in past_names(geo["num_layers"], "past_key_values")
    ]
    vocab = hf_model.config.vocab_size
    outputs = [TensorSpec("logits", "float32", ("batch", "sequence", vocab))]
    outputs += [TensorSpec(n, "float32", kv_shape_out) for n in past_names(geo["num_layers"], "present")]
    spec = IOSpec("decoder", inputs, outputs, "logits", cache=geo, extras=dict(extras))
    return CausalLMWithPast(hf_model, geo["num_layers"]), spec


FAMILY = Family("decoder LM", MODEL_TYPES, TASKS, build)
