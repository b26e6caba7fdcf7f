"""Decoder-only LMs for ExecuTorch: a static KV cache inside the program and one `forward`.

The exported method is `forward(input_ids int64 [1, n], cache_position int64 [n]) -> logits
float32 [1, n, vocab]`: the same call does prefill (n tokens at positions 0..n-1) and decode (one
token at position p), which is what ExecuTorch's LLM runner drives. The cache lives in mutable
buffers of the program, so a loaded method keeps it between calls.

With `custom_ops` the cache is updated by `llama::update_cache` and attention runs in
`llama::custom_sdpa` (ExecuTorch's optimized CPU kernels, which only attend to the filled part of
the cache); without it, plain aten ops attend over the whole static cache with a mask.
Sliding-window layers (Mistral, Gemma 2/3 local layers) give custom_sdpa an additive window mask
over the whole cache; soft-capped attention (Gemma 2) always takes the plain path, since
custom_sdpa has no soft-capping.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from edge_export.targets.stages import conv1d_to_linear

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

    def allowed(self, window: int | None = None) -> torch.Tensor:
        """Bool [n, max_len]: which cache slots each query of this call attends to (causal, and
        within `window` tokens back when given: kv > q - window, as transformers' sliding mask)."""
        slots = torch.arange(self.max_len, device=self.positions.device)[None, :]
        query = self.positions[:, None]
        allowed = slots <= query
        if window is not None:
            allowed = allowed & (query - slots < window)
        return allowed

    def get_seq_length(self, layer_idx: int = 0) -> Any:
        """Tokens before this call (transformers asks when position_ids are missing)."""
        return self.start_pos


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Any, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Causal attention of this call's queries over the static cache; returns [B, n, heads, dim].

    `attention_mask` (built by the model for its own cache) is ignored: the mask comes from the
    cache positions, plus the layer's `sliding_window` (Mistral, Gemma 2/3 local layers) and
    `softcap` (Gemma 2 attention logit soft-capping) that transformers passes to every attention
    function. llama::custom_sdpa takes a window as an additive mask but has no soft-capping, so
    soft-capped layers run in plain aten ops."""
    cache: StaticKVCache = kwargs["edge_export_cache"]
    window = kwargs.get("sliding_window")
    window = int(window) if window and int(window) < cache.max_len else None  # wider: never binds
    softcap = kwargs.get("softcap")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if cache.custom_ops and not softcap:
        mask = None
        if window is not None:
            mask = torch.where(cache.allowed(window), 0.0, torch.finfo(torch.float32).min)
        out = torch.ops.llama.custom_sdpa(
            query.transpose(1, 2), key, value, cache.start_pos, mask, 0.0, mask is None, scaling
        )
        return out, None
    if cache.custom_ops:  # [1, max_len, kv_heads, dim] -> [1, kv_heads, max_len, dim]
        key, value = key.transpose(1, 2), value.transpose(1, 2)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    allowed = cache.allowed(window)
    if softcap:
        return _softcapped_attention(query, key, value, allowed, scaling, float(softcap)), None
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, scale=scaling
    )
    return out.transpose(1, 2), None


def _softcapped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                          scaling: float, softcap: float) -> torch.Tensor:  # fmt: skip
    """Attention with logits soft-capped as softcap * tanh(logits / softcap) before the mask (the
    order of transformers' eager Gemma 2 attention); returns [B, n, heads, dim]."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2)


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
        conv1d_to_linear(self.model)
        conf = text_config(self.model)
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


def text_config(hf_model: torch.nn.Module) -> Any:
    """The decoder's own config (the text part of a multimodal one; GPT-2's n_head and friends
    answer to the standard names through the config's attribute map)."""
    return hf_model.config.get_text_config(decoder=True)


def runner_metadata(model: Any, max_seq_len: int, custom_ops: bool) -> dict[str, Any]:
    """The constant methods ExecuTorch's LLM runner reads from a .pte."""
    conf = text_config(model.hf_model)
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
