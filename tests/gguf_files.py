"""Tiny GGUF files for tests, written offline with the `gguf` package.

`write_tiny_llama_gguf` turns a tiny random `LlamaForCausalLM` into a llama-architecture GGUF laid
out the way llama.cpp's `convert_hf_to_gguf.py` writes one: its metadata keys, its tensor names,
the row permutation it applies to the q/k projections, 1-D tensors (the norms) always in F32, and
a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, shaped like SmolLM2's) inside the file.
transformers' GGUF loader reads it back with `from_pretrained(folder, gguf_file=name)`, both the
model and the tokenizer, so tests can exercise the GGUF path without downloading anything.

    from gguf_files import tiny_llama, write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tensor_type="Q8_0")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)

A file is ~440 KB in F32 (~70 KB in Q4_0) and takes a few tens of milliseconds to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

# ---- the tokenizer -----------------------------------------------------------------------------

# Control tokens first, as in SmolLM2: unk, bos, eos (eos doubles as padding).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Whole words the merges spell out, so "hello world" encodes to two ids (`"hello"`, `"Ġworld"`);
# any other text still encodes, one id per byte.
WORDS = ("hello", " world", " edge", " export")


def _byte_spelling() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (what a byte-level BPE vocabulary is written in)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def tokenizer_vocab() -> tuple[list[str], list[str]]:
    """`(tokens, merges)` of the tiny byte-level BPE tokenizer: the special tokens, the 256 single
    bytes in id order, then one token per merge; merges as llama.cpp stores them ("left right")."""
    spelling = _byte_spelling()
    tokens = [*SPECIAL_TOKENS, *(spelling[b] for b in range(256))]
    merges: list[str] = []
    for word in WORDS:
        pieces = [spelling[b] for b in word.encode("utf-8")]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in tokens:
                merges.append(f"{left} {right}")
                tokens.append(merged)
            left = merged
    return tokens, merges


VOCAB_SIZE = len(tokenizer_vocab()[0])  # 277: 3 special + 256 bytes + 18 merges

# ---- the model ---------------------------------------------------------------------------------

LLAMA_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
}


def tiny_llama(*, seed: int = 0, tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    """A tiny random `LlamaForCausalLM` (float32, eval mode) whose vocabulary is the tokenizer's.

    Untied by default, so the GGUF holds an `output.weight`; with `tie_word_embeddings=True` it has
    none, like SmolLM2's. The same seed gives the same weights, without touching the global RNG.
    """
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        **LLAMA_SHAPE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.float().eval()


def llama_tensor_names(num_layers: int, *, tied: bool = False) -> dict[str, str]:
    """`{gguf_name: transformers_name}` for a llama GGUF, in llama.cpp's writing order."""
    names = {"token_embd.weight": "model.embed_tokens.weight"}
    per_layer = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for layer in range(num_layers):
        for gguf_part, hf_part in per_layer.items():
            names[f"blk.{layer}.{gguf_part}.weight"] = f"model.layers.{layer}.{hf_part}.weight"
    names["output_norm.weight"] = "model.norm.weight"
    if not tied:
        names["output.weight"] = "lm_head.weight"
    return names


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: reorder each head's rows from HF's rotate-half layout to
    GGML's interleaved rope pairs (transformers' `LlamaTensorProcessor` undoes it on load)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# ---- writing -----------------------------------------------------------------------------------

# tensor_type -> general.file_type (llama.cpp's LlamaFileType). Every type here round-trips
# through gguf.quants and transformers' de-quantization; the quantized ones need rows that are a
# multiple of 32 values, which every 2-D tensor of the tiny model has.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}


def write_tiny_llama_gguf(
    path: Path,
    *,
    drop_tensors: tuple[str, ...] = (),
    tensor_type: str = "F32",
    model: LlamaForCausalLM | None = None,
) -> Path:
    """Write a tiny llama GGUF (model + tokenizer) to `path` and return `path`.

    model: the `LlamaForCausalLM` to write, by default `tiny_llama()` (seed 0, untied). Its
        vocabulary must be the tokenizer's (`VOCAB_SIZE`). A tied model is written without
        `output.weight`, as llama.cpp does; transformers then ties lm_head back on load.
    tensor_type: how the 2-D weights (embedding, projections, output) are stored, one of
        `FILE_TYPES`; the 1-D norms stay F32, as llama.cpp keeps them.
    drop_tensors: GGUF tensor names to leave out (e.g. `"blk.1.ffn_down.weight"`), to test that a
        missing tensor is caught. Every name must be one the file would hold. Note that dropping
        `"output.weight"` does not make a checkpoint with a missing tensor: transformers reads
        its absence as tied embeddings.
    """
    if tensor_type not in FILE_TYPES:
        raise ValueError(f"tensor_type {tensor_type!r} is not one of {sorted(FILE_TYPES)}")
    model = tiny_llama() if model is None else model
    config = model.config
    tokens, merges = tokenizer_vocab()
    if config.vocab_size != len(tokens):
        raise ValueError(f"the model's vocab_size is {config.vocab_size}, the tokenizer's {len(tokens)}")
    tied = bool(config.tie_word_embeddings)
    names = llama_tensor_names(config.num_hidden_layers, tied=tied)
    unknown = set(drop_tensors) - set(names)
    if unknown:
        raise ValueError(f"cannot drop {sorted(unknown)}: the file holds {sorted(names)}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]  # "llama"
    writer = gguf.GGUFWriter(path, arch)
    _add_llama_metadata(writer, config, tensor_type)
    _add_tokenizer(writer, tokens, merges)

    qtype = gguf.GGMLQuantizationType[tensor_type]
    state = model.state_dict()
    for gguf_name, hf_name in names.items():
        if gguf_name in drop_tensors:
            continue
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if ".attn_q." in gguf_name:
            data = permute_qk(data, config.num_attention_heads, config.num_attention_heads)
        elif ".attn_k." in gguf_name:
            data = permute_qk(data, config.num_attention_heads, config.num_key_value_heads)
        _add_tensor(writer, gguf_name, np.ascontiguousarray(data), qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_llama_metadata(w: gguf.GGUFWriter, c: LlamaConfig, tensor_type: str) -> None:
    """The `general.*` and `llama.*` keys `convert_hf_to_gguf.py` writes for a Llama."""
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    w.add_name("tiny-llama")  # no "mistral" in it: transformers would read the file as a Mistral
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(FILE_TYPES[tensor_type])
    w.add_quantization_version(2)  # gguf.GGML_QUANT_VERSION, written by every llama.cpp converter


def _add_tokenizer(w: gguf.GGUFWriter, tokens: Sequence[str], merges: Sequence[str]) -> None:
    """The `tokenizer.ggml.*` keys of a byte-level BPE vocabulary, as llama.cpp writes SmolLM2's."""
    token_types = [
        gguf.TokenType.CONTROL if i < len(SPECIAL_TOKENS) else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # GPT-2's own split regex; transformers keeps GPT2Tokenizer's default
    w.add_token_list(list(tokens))
    w.add_token_types(token_types)
    w.add_token_merges(list(merges))
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(EOS_ID)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)


def _add_tensor(
    writer: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType
) -> None:
    """One tensor in `qtype`, except 1-D ones, which llama.cpp always stores as F32."""
    if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:  # packed blocks (or BF16's raw bytes): the writer takes the shape back from the byte shape
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
