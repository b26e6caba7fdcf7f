"""Decoder-only LMs for ExecuTorch: a static KV cache inside the program and one `forward`.

The exported method is `forward(input_ids int64 [1, n], cache_position int64 [n]) -> logits
float32 [1, n, vocab]`: the same call does prefill (n tokens at positions 0..n-1) and decode (one
token at position p), which is what ExecuTorch's LLM runner drives. The cache lives in mutable
buffers of the program, so a loaded method keeps it between calls.

With `custom_ops` the cache is updated by `llama::update_cache` and attention runs in
`llama::custom_sdpa` (ExecuTorch's optimized CPU kernels, which only attend to the filled part of
the cache); without it, plain aten ops attend over the whole static cache with a mask.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

ATTENTION_NAME = "edge_export_static_cache"


class StaticKVCache:
    """Per-layer key/value buffers plus the start position of the current call.

    Duck-types the transformers Cache API the attention layers use (`update(k, v, layer_idx)`).
    Custom-op layout is [1, max_seq_len, kv_heads, head_dim]; plain layout [1, kv_heads, max, dim].
    """

    is_compileable = True

    def __init__(self, owner: torch.nn.Module, layers: int, kv_heads: int, head_dim: int, max_len: int,
                 custom_ops: bool) -> None:  # fmt: skip
        shape = (1, max_len, kv_heads, head_dim) if custom_ops else (1, kv_heads, max_len, head_dim)
        for i in range(layers):
            owner.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            owner.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)
        self.owner = owner
        self.layers = layers
        self.custom_ops = custom_ops
        self.max_len = max_len
        self.start_pos: Any = 0
        self.positions: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: Any, **__: Any):
        """Write this call's keys/values at their positions; return the whole cache of the layer."""
        k_cache = getattr(self.owner, f"k_cache_{layer_idx}")
        v_cache = getattr(self.owner, f"v_cache_{layer_idx}")
        if self.custom_ops:
            torch.ops.llama.update_cache(key.transpose(1, 2), k_cache, self.start_pos)
            torch.ops.llama.update_cache(value.transpose(1, 2), v_cache, self.start_pos)
        else:
            k_cache.index_copy_(2, self.positions, key)
            v_cache.index_copy_(2, self.positions, value)
        return k_cache, v_cache

    def get_seq_length(self, layer_idx: int = 0) -> Any:
        """Tokens before this call (transformers asks when position_ids are missing)."""
        return self.start_pos


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Any, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Causal attention of this call's queries over the static cache; returns [B, n, heads, dim]."""
    cache: StaticKVCache = kwargs["edge_export_cache"]
    if cache.custom_ops:
        out = torch.ops.llama.custom_sdpa(
            query.transpose(1, 2), key, value, cache.start_pos, None, 0.0, True, scaling
        )
        return out, None
    slots = torch.arange(cache.max_len, device=query.device)
    allowed = slots[None, :] <= cache.positions[:, None]  # [n, max_len]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, scale=scaling
    )
    return out.transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)


class StaticCacheLM(torch.nn.Module):
    """A copy of an HF causal LM with a static KV cache, exportable as one `forward`."""

    def __init__(self, hf_model: torch.nn.Module, max_seq_len: int, custom_ops: bool) -> None:
        super().__init__()
        if custom_ops:
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  registers llama::*
        _register_attention()
        self.model = copy.deepcopy(hf_model).eval()
        self.model.config._attn_implementation = ATTENTION_NAME
        conf = self.model.config
        heads = int(conf.num_attention_heads)
        head_dim = int(getattr(conf, "head_dim", None) or conf.hidden_size // heads)
        kv_heads = int(getattr(conf, "num_key_value_heads", None) or heads)
        self.max_seq_len = max_seq_len
        self.cache = StaticKVCache(
            self, int(conf.num_hidden_layers), kv_heads, head_dim, max_seq_len, custom_ops
        )

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        """Logits for `input_ids` placed at `cache_position` (consecutive, starting anywhere)."""
        start = cache_position[0].item()
        torch._check(start >= 0)
        torch._check(start + input_ids.shape[1] <= self.max_seq_len)
        self.cache.start_pos = start
        self.cache.positions = cache_position
        out = self.model(
            input_ids=input_ids,
            position_ids=cache_position.unsqueeze(0),
            past_key_values=self.cache,
            use_cache=True,
            edge_export_cache=self.cache,
        )
        return out.logits

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A 5-token prefill at position 0 (sizes avoid 0/1 specialisation)."""
        return torch.zeros((1, 5), dtype=torch.long), torch.arange(5, dtype=torch.long)

    def dynamic_shapes(self) -> tuple[dict[int, Any], dict[int, Any]]:
        """Tokens per call from 1 to max_seq_len - 1."""
        seq = torch.export.Dim("sequence", min=1, max=self.max_seq_len - 1)
        return {1: seq}, {0: seq}


def runner_metadata(model: Any, max_seq_len: int, custom_ops: bool) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads from a .pte."""
    conf = model.hf_model.config
    extras = model.io.extras
    eos = extras.get("eos_token_id")
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    meta: dict[str, Any] = {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": int(conf.vocab_size),
        "get_n_layers": int(conf.num_hidden_layers),
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": custom_ops,
        "enable_dynamic_shape": True,
    }
    if extras.get("bos_token_id") is not None:
        meta["get_bos_id"] = int(extras["bos_token_id"])
    if eos_ids:
        meta["get_eos_ids"] = eos_ids
    return meta
