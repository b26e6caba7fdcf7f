"""genai_config.json for ONNX decoder bundles, so onnxruntime-genai runs a bundle unchanged.

onnxruntime-genai (the runtime apps ship on Android/iOS/Windows) drives a decoder graph from the
description in genai_config.json: the names of its inputs and outputs (KV-cache names as printf
templates over the layer index), the cache geometry, the special token ids and search defaults.
Our decoder graphs already follow its naming (decoder.py), so no graph change is needed: the file
written here mirrors what its own model builder writes (models/builders/base.py
`make_genai_config`), with `past_present_share_buffer: false` because our graph returns the
concatenated cache (present length = past + new tokens) instead of writing into a max-length
buffer in place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_export.exporter.prepared import PreparedModel

FILENAME = "genai_config.json"

# The graph's input/output names as onnxruntime-genai's config keys: the per-layer KV cache is
# named by a template with the layer index as %d (decoder.py's past_key_values.{i}.key ...).
INPUTS = {
    "input_ids": "input_ids",
    "attention_mask": "attention_mask",
    "position_ids": "position_ids",
    "past_key_names": "past_key_values.%d.key",
    "past_value_names": "past_key_values.%d.value",
}
OUTPUTS = {
    "logits": "logits",
    "present_key_names": "present.%d.key",
    "present_value_names": "present.%d.value",
}

# Our model_type -> the "type" onnxruntime-genai 0.18 accepts. The type only selects its runtime
# pipeline (every listed type runs as a plain decoder-only model over our graph; attention, MoE
# routing and sliding windows are inside the graph). Types it has no name for (sparse MoE) run as
# the family they extend. gpt2 is deliberately "llama": genai's "gpt2" type expects the legacy
# combined past_%d tensors, while our GPT-2 graph has the same per-layer key/value IO as the rest.
GENAI_TYPES = {
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
    "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3_text", "smollm3": "smollm3",
    "gpt2": "llama", "mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3",
}  # fmt: skip

# HF generation_config fields that become search defaults, as the builder copies them, with the
# value HF assumes when a field is unset.
_SEARCH_FROM_GENERATION = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                           "repetition_penalty": 1.0, "num_beams": 1, "length_penalty": 1.0,
                           "no_repeat_ngram_size": 0, "diversity_penalty": 0.0}  # fmt: skip


def genai_config(model: PreparedModel, filename: str) -> dict[str, Any]:
    """The genai_config.json content for `model` exported as the decoder graph `filename`."""
    config = model.hf_model.config
    cache = model.io.cache
    bos, eos, pad = special_token_ids(model)
    context = context_length(model)
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": filename,
        "head_size": int(cache["head_dim"]),
        "hidden_size": int(config.hidden_size),
        "inputs": dict(INPUTS),
        "outputs": dict(OUTPUTS),
        "num_attention_heads": int(config.num_attention_heads),
        "num_hidden_layers": int(cache["num_layers"]),
        "num_key_value_heads": int(cache["kv_heads"]),
    }
    search: dict[str, Any] = {"early_stopping": True, "max_length": context, "min_length": 0,
                              "num_return_sequences": 1, "past_present_share_buffer": False}  # fmt: skip
    search |= search_defaults(model)
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context,
            "decoder": decoder,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": GENAI_TYPES.get(model.model_type, "llama"),
            "vocab_size": int(config.vocab_size),
        },
        "search": dict(sorted(search.items())),
    }


def write_genai_config(model: PreparedModel, folder: Path, filename: str) -> dict[str, Any]:
    """Write genai_config.json beside the decoder graph `filename`; returns what the manifest
    records about it (the file itself is covered by the manifest's sha256 of every bundle file)."""
    config = genai_config(model, filename)
    (folder / FILENAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return describe(config)


def context_length(model: PreparedModel) -> int:
    """The model's own context window (max_position_embeddings; n_positions on GPT-2): our graph
    has no fixed cache size, so the runtime's limit is the model's."""
    config = model.hf_model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(model.max_positions)


def special_token_ids(model: PreparedModel) -> tuple[int, int | list[int], int]:
    """(bos, eos, pad), each inside the vocabulary: onnxruntime-genai refuses to load a config with
    an id outside [0, vocab_size), and an id the model cannot produce can never stop generation
    anyway. eos stays a list when the model ends turns with several tokens (genai stops on any);
    pad and bos fall back to the first eos, as HF's generate does for pad."""
    vocab = int(model.hf_model.config.vocab_size)
    tokenizer = model.tokenizer
    conf = getattr(model.hf_model, "generation_config", None)

    def ids(*candidates: Any) -> list[int]:
        value = next((c for c in candidates if c is not None), None)
        values = value if isinstance(value, list | tuple) else [value]
        return [int(v) for v in values if v is not None and 0 <= int(v) < vocab]

    extras = model.io.extras
    eos = ids(extras.get("eos_token_id"), getattr(tokenizer, "eos_token_id", None))
    bos = ids(extras.get("bos_token_id"), getattr(tokenizer, "bos_token_id", None))
    pad = ids(getattr(conf, "pad_token_id", None), getattr(tokenizer, "pad_token_id", None))
    fallback = eos[0] if eos else 0
    return (bos or [fallback])[0], eos[0] if len(eos) == 1 else eos, (pad or [fallback])[0]


def search_defaults(model: PreparedModel) -> dict[str, Any]:
    """Sampling defaults from the model's generation_config, where it sets them (else HF's)."""
    conf = getattr(model.hf_model, "generation_config", None)
    values: dict[str, Any] = {}
    for name, default in _SEARCH_FROM_GENERATION.items():
        value = getattr(conf, name, None) if conf is not None else None
        values[name] = type(default)(value) if value is not None else default
    return values


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of a genai_config.json that the manifest records."""
    model = config["model"]
    return {"file": FILENAME, "type": model["type"], "context_length": model["context_length"],
            "past_present_share_buffer": config["search"]["past_present_share_buffer"]}  # fmt: skip
