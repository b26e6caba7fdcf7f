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
import inspect
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
        self.mask: torch.Tensor | None = None  # bool [1, 1, n, max]: slot <= position
        self.distance: torch.Tensor | None = None  # int [1, 1, n, max]: position - slot

    def window_mask(self, window: int | None) -> torch.Tensor:
        """The causal mask, narrowed to the last `window` positions (HF: kv > q - window) if set."""
        assert self.mask is not None and self.distance is not None
        return self.mask if not window else self.mask & (self.distance < int(window))

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
    """This call's queries over the whole static cache; returns [B, n, heads, dim].

    The mask is the wrapper's causal mask over the cache, narrowed to the layer's sliding window
    when it has one; logit soft-capping (`softcap`) takes the explicit path, as Core ML's fused
    attention has no cap."""
    cache: _StaticCache = kwargs["coreml_cache"]
    key, value = key.to(query.dtype), value.to(query.dtype)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: Core ML's sdpa wants equal head counts
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    mask = cache.window_mask(kwargs.get("sliding_window") or getattr(module, "sliding_window", None))
    default = query.shape[-1] ** -0.5
    scaling = default if scaling is None else float(scaling)
    softcap = kwargs.get("softcap")
    if softcap:
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~mask, torch.finfo(torch.float16).min)  # finite in fp16 too
        out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(value.dtype), value)
        return out.transpose(1, 2), None
    # coremltools emits the fused iOS18 sdpa op only without an explicit scale: fold any other
    # scale (Gemma's query_pre_attn_scalar, GPT-2's layer-index scaling) into the queries
    if not math.isclose(scaling, default, rel_tol=1e-6):
        query = query * (scaling / default)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out.transpose(1, 2), None


class _RopeTable(torch.nn.Module):
    """cos/sin for positions 0..max-1 from the model's own rotary module, in fp32, looked up.

    A rotary module with per-layer-type parameters (Gemma3's local and global RoPE: `layer_type`
    in its forward) gets one table per layer type."""

    def __init__(self, rotary: torch.nn.Module, max_len: int) -> None:
        super().__init__()
        types = getattr(rotary, "layer_types", None)
        takes_type = "layer_type" in inspect.signature(rotary.forward).parameters
        self.layer_types: list[str | None] = list(types) if types and takes_type else [None]
        positions = torch.arange(max_len)[None]
        with torch.no_grad():
            for i, layer_type in enumerate(self.layer_types):
                extra = () if layer_type is None else (layer_type,)
                cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions, *extra)
                self.register_buffer(f"cos_table_{i}", cos[0].float().contiguous(), persistent=False)
                self.register_buffer(f"sin_table_{i}", sin[0].float().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None,
                *_: Any, **__: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(cos, sin) for these positions (and this layer type), in x's dtype."""
        i = self.layer_types.index(layer_type) if layer_type in self.layer_types else 0
        cos = torch.nn.functional.embedding(position_ids, getattr(self, f"cos_table_{i}"))
        sin = torch.nn.functional.embedding(position_ids, getattr(self, f"sin_table_{i}"))
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
        self.cache.distance = (cache_position[:, None] - slots[None, :])[None, None]
        self.cache.mask = self.cache.distance >= 0
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
    """torch.export with a symbolic token count; core ATen except SDPA and linear, kept whole.

    SDPA becomes Core ML's fused attention. A decomposed linear with a bias (Qwen2's q/k/v) becomes
    permute + addmm, whose weight reaches the package named after the permute ("permute_2"), so the
    host estimate could not match it to its parameter; aten.linear keeps the parameter's name."""
    example = (torch.zeros((1, 5), dtype=torch.int32), torch.arange(5, dtype=torch.int32))
    seq = torch.export.Dim("sequence", min=1, max=wrapper.max_seq_len)
    with torch.no_grad():
        program = torch.export.export(wrapper, example, dynamic_shapes=({1: seq}, {0: seq}), strict=False)
    table = torch.export.default_decompositions()
    for op in [op for op in table if "scaled_dot_product" in str(op) or str(op) == "aten.linear.default"]:
        del table[op]
    program = program.run_decompositions(table)
    _strip_runtime_asserts(program)
    return program


def router_keys(hf_model: torch.nn.Module) -> list[str]:
    """Sparse-MoE router weights ([num_experts, hidden]), as MIL spells their names (estimate.torch_key)."""
    from edge_export.targets.coreml.estimate import torch_key

    conf = hf_model.config
    experts = getattr(conf, "num_local_experts", None) or getattr(conf, "num_experts", None)
    if not experts:
        return []
    shape = (int(experts), int(conf.hidden_size))
    return [torch_key(n) for n, p in hf_model.named_parameters() if tuple(p.shape) == shape]


def is_router(name: str, keys: list[str]) -> bool:
    """Whether a MIL const name is one of these router weights."""
    from edge_export.targets.coreml.estimate import match, mil_key

    return bool(keys) and match(mil_key(name), keys) is not None


def _precision(hf_model: torch.nn.Module, precision: str) -> Any:
    """fp32, or fp16 except the MoE routers' linears: top-k routing is discrete, and fp16 router
    weights flip near-tied experts (tiny Mixtral: cosine 0.9973 at one position; llama.cpp keeps
    routers fp32 too)."""
    import coremltools as ct

    if precision == "fp32":
        return ct.precision.FLOAT32
    keys = router_keys(hf_model)
    if not keys:
        return ct.precision.FLOAT16
    return ct.transform.FP16ComputePrecision(
        op_selector=lambda op: not (op.op_type == "linear" and is_router(op.weight.name, keys))
    )


def convert_stateful(hf_model: torch.nn.Module, max_len: int, target: Any, precision: str) -> Any:
    """An HF causal LM as a stateful ML Program (unsaved; nothing on Linux can load it)."""
    import coremltools as ct

    program = export_decoder(StatefulLM(hf_model, max_len))
    return ct.convert(
        program,
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        minimum_deployment_target=target,
        convert_to="mlprogram",
        compute_precision=_precision(hf_model, precision),
        skip_model_load=True,
    )


def convert_decoder(model: PreparedModel, recipe: Recipe, target: Any, precision: str) -> Any:
    """The stateful ML Program, with what an app's generation loop needs in its metadata."""
    max_len = int(recipe.options["max_seq_len"])
    mlmodel = convert_stateful(model.hf_model, max_len, target, precision)
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
