"""Decoder-only LMs as stateful Core ML programs: the KV cache is Core ML state (iOS18).

One function, `main`, does prefill (n tokens) and decode (1 token):

    inputs   input_ids       int32 [1, n]   n in 1..max_seq_len
             cache_position  int32 [n]      consecutive absolute positions start..start+n-1
    states   k_cache_<i> / v_cache_<i>  fp16 [1, kv_heads, max_seq_len, head_dim], one pair per layer
    output   logits          fp32 [1, n, vocab]

The cache lives in mutable torch buffers; torch.export lifts them as buffer mutations and
coremltools turns each into a ct.StateType (read_state / slice_update / write_state). Attention
runs over the whole static cache with a causal mask built from cache_position, through Core ML's
fused iOS18 scaled_dot_product_attention. The rotary cos/sin come from a table computed once in
fp32: computed in the program, fp16 loses ~0.1-0.3 rad of angle at positions in the hundreds.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from edge_export.exporter.prepared import PreparedModel
from edge_export.targets.base import Recipe

ATTENTION_NAME = "edge_export_coreml_cache"


class _StaticCache:
    """Duck-types the transformers Cache API the attention layers call (`update`)."""

    is_compileable = True

    def __init__(self, owner: torch.nn.Module) -> None:
        self.owner = owner
        self.start: Any = 0
        self.count: Any = 0
        self.mask: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: Any, **__: Any):
        """Write this call's keys/values at start..start+count; return the layer's whole cache."""
        k_cache = getattr(self.owner, f"k_cache_{layer_idx}")
        v_cache = getattr(self.owner, f"v_cache_{layer_idx}")
        # Slice assignment becomes Core ML slice_update on the state; index_copy_ with a position
        # vector does not (coremltools' index_put reads it as one scalar position).
        k_cache[:, :, self.start : self.start + self.count] = key.to(k_cache.dtype)
        v_cache[:, :, self.start : self.start + self.count] = value.to(v_cache.dtype)
        return k_cache, v_cache

    def get_seq_length(self, layer_idx: int = 0) -> Any:
        """Tokens before this call."""
        return self.start


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Any, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """This call's queries over the whole static cache; returns [B, n, heads, dim]."""
    cache: _StaticCache = kwargs["coreml_cache"]
    key, value = key.to(query.dtype), value.to(query.dtype)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: Core ML's sdpa wants equal head counts
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    # coremltools emits the fused iOS18 sdpa op only without an explicit scale
    if scaling is not None and math.isclose(scaling, query.shape[-1] ** -0.5, rel_tol=1e-6):
        scaling = None
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=cache.mask, scale=scaling
    )
    return out.transpose(1, 2), None


class _RopeTable(torch.nn.Module):
    """cos/sin for positions 0..max-1 from the model's own rotary module, in fp32, looked up."""

    def __init__(self, rotary: torch.nn.Module, max_len: int) -> None:
        super().__init__()
        with torch.no_grad():
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(max_len)[None])
        self.register_buffer("cos_table", cos[0].float().contiguous(), persistent=False)
        self.register_buffer("sin_table", sin[0].float().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *_: Any, **__: Any):
        """(cos, sin) for these positions, in x's dtype."""
        cos = torch.nn.functional.embedding(position_ids, self.cos_table)
        sin = torch.nn.functional.embedding(position_ids, self.sin_table)
        return cos.to(x.dtype), sin.to(x.dtype)


class StatefulLM(torch.nn.Module):
    """A copy of an HF causal LM with a static KV cache in buffers; `forward` is what converts.

    cache_dtype float16 mirrors Core ML (iOS18 states are fp16); float32 matches HF to rounding.
    """

    def __init__(
        self, hf_model: torch.nn.Module, max_seq_len: int, cache_dtype: torch.dtype = torch.float16
    ) -> None:
        super().__init__()
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, _attention)
        self.model = copy.deepcopy(hf_model).float().eval()
        conf = self.model.config
        # outside transformers' mask registry: create_causal_mask returns early, so none of its
        # ops (torch.diff, new_ones, vmap) reach the graph
        conf._attn_implementation = ATTENTION_NAME
        heads = int(conf.num_attention_heads)
        head_dim = int(getattr(conf, "head_dim", None) or conf.hidden_size // heads)
        kv_heads = int(getattr(conf, "num_key_value_heads", None) or heads)
        self.max_seq_len = max_seq_len
        for i in range(int(conf.num_hidden_layers)):
            shape = (1, kv_heads, max_seq_len, head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=cache_dtype), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=cache_dtype), persistent=False)
        self.cache = _StaticCache(self)
        base = self.model.get_decoder()
        if hasattr(base, "rotary_emb"):
            base.rotary_emb = _RopeTable(base.rotary_emb, max_seq_len)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        """Logits for `input_ids` placed at `cache_position` (consecutive, starting anywhere)."""
        count = input_ids.shape[1]
        start = cache_position[0].item()  # a runtime scalar in Core ML, feeding slice_update
        torch._check(start >= 0)
        torch._check(start + count <= self.max_seq_len)
        slots = torch.arange(self.max_seq_len, dtype=cache_position.dtype)
        self.cache.start, self.cache.count = start, count
        self.cache.mask = (slots[None, :] <= cache_position[:, None])[None, None]  # bool [1, 1, n, max]
        out = self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0),
                         past_key_values=self.cache, use_cache=True, coreml_cache=self.cache)  # fmt: skip
        return out.logits.float()


def _strip_runtime_asserts(program: torch.export.ExportedProgram) -> None:
    """Drop torch.export's runtime assertions (and the SymInt arithmetic feeding them): coremltools
    rejects their `or_` nodes, and Core ML has nothing to assert with."""
    graph = program.graph_module.graph
    drop = {torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default}
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in drop:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    program.graph_module.recompile()


def export_decoder(wrapper: StatefulLM) -> torch.export.ExportedProgram:
    """torch.export with a symbolic token count; core ATen except SDPA (kept whole for Core ML)."""
    example = (torch.zeros((1, 5), dtype=torch.int32), torch.arange(5, dtype=torch.int32))
    seq = torch.export.Dim("sequence", min=1, max=wrapper.max_seq_len)
    with torch.no_grad():
        program = torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, {0: seq}), strict=False)
    table = torch.export.default_decompositions()
    for op in [op for op in table if "scaled_dot_product" in str(op)]:
        del table[op]
    program = program.run_decompositions(table)
    _strip_runtime_asserts(program)
    return program


def convert_decoder(model: PreparedModel, recipe: Recipe, target: Any, precision: str) -> Any:
    """The stateful ML Program, with what an app's generation loop needs in its metadata."""
    import coremltools as ct

    max_len = int(recipe.options["max_seq_len"])
    program = export_decoder(StatefulLM(model.hf_model, max_len))
    mlmodel = ct.convert(
        program,
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        minimum_deployment_target=target,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        skip_model_load=True,
    )
    meta = {"max_seq_len": max_len, "vocab_size": int(model.hf_model.config.vocab_size),
            "num_layers": int(model.hf_model.config.num_hidden_layers)}  # fmt: skip
    for key in ("bos_token_id", "eos_token_id"):
        if model.io.extras.get(key) is not None:
            meta[key] = model.io.extras[key]
    mlmodel.user_defined_metadata.update({k: str(v) for k, v in meta.items()})
    return mlmodel


def decoder_io(model: PreparedModel, recipe: Recipe) -> dict[str, Any]:
    """The stateful program's IO for the manifest."""
    conf = model.hf_model.config
    size = int(recipe.options["max_seq_len"])
    return {
        "kind": "decoder",
        "inputs": [
            {"name": "input_ids", "dtype": "int32", "shape": [1, "sequence"], "flexible": "range"},
            {"name": "cache_position", "dtype": "int32", "shape": ["sequence"], "flexible": "range"},
        ],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, "sequence", int(conf.vocab_size)]}],
        "primary_output": "logits",
        "cache": dict(model.io.cache) | {"max_seq_len": size, "states": "k_cache_<i>, v_cache_<i> (fp16)"},
        "extras": dict(model.io.extras),
        "bounds": {"batch": 1, "sequence": size},
    }
