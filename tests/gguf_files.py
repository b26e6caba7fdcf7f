"""Tiny GGUF files for tests, written offline with the `gguf` package.

Files are laid out the way llama.cpp's `convert_hf_to_gguf.py` (and `llama-quantize`) write them: its
metadata keys, its tensor names, the value transforms it applies (the q/k row permutation of llama,
Gemma's norms stored as `1 + w`, GPT-2's transposed Conv1D weights), 1-D tensors always in F32, and
a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`, shaped like SmolLM2's) inside the file.
transformers' GGUF loader reads them back with `from_pretrained(folder, gguf_file=name)`, both the
model and the tokenizer, so tests can exercise the GGUF path without downloading anything.

    from gguf_files import write_tiny_gguf, write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", tensor_type="Q8_0")  # 64 wide, 440 KB in F32
    path = write_tiny_gguf(tmp_path / "q3.gguf", "qwen3", tensor_type="Q4_K_M")  # 256 wide
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)

Tensor types (`TENSOR_TYPES`): the plain and legacy block types gguf's own `quantize` writes, the
K-quants Q4_K / Q5_K / Q6_K through the small numpy encoders below (gguf only decodes those), and
llama.cpp's mixes Q4_K_M / Q5_K_M (mostly Q4_K / Q5_K, the output matrix and the last layer's
attn_v / ffn_down in Q6_K). K-quant blocks hold 256 values, so `ARCHITECTURES` models are 256 wide;
a row that does not fit falls back the way llama-quantize does (Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0). Each file takes well under a second to write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gguf
import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PretrainedConfig, PreTrainedModel

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

# Gemma files carry a sentencepiece vocabulary (`tokenizer.ggml.model = "llama"`), which transformers
# rebuilds as a GemmaTokenizer: pad, eos, bos, unk, the 256 byte-fallback tokens, then the pieces of
# the same words ("\u2581" for a space) and every prefix of them, so the merges it derives spell them.
SPM_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>")
SPM_PAD_ID, SPM_EOS_ID, SPM_BOS_ID, SPM_UNK_ID = 0, 1, 2, 3


def spm_vocab() -> tuple[list[str], list[int]]:
    """`(tokens, token_types)` of the tiny sentencepiece vocabulary (types as gguf.TokenType)."""
    tokens = [*SPM_SPECIAL, *(f"<0x{b:02X}>" for b in range(256))]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + [gguf.TokenType.BYTE] * 256
    words = [w.replace(" ", "\u2581") for w in WORDS]
    pieces = [ch for w in words for ch in w] + [w[:i] for w in words for i in range(2, len(w) + 1)]
    for piece in dict.fromkeys(pieces):
        if piece not in tokens:
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


SPM_VOCAB_SIZE = len(spm_vocab()[0])  # 290

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


# ---- the architectures -------------------------------------------------------------------------

# 256 wide, so every 2-D weight's rows hold whole K-quant blocks (256 values).
WIDE_SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
_TOKEN_IDS = {
    "vocab_size": VOCAB_SIZE,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": EOS_ID,
}
_SPM_IDS = {"vocab_size": SPM_VOCAB_SIZE, "bos_token_id": SPM_BOS_ID, "eos_token_id": SPM_EOS_ID,
            "pad_token_id": SPM_PAD_ID}  # fmt: skip


@dataclass(frozen=True)
class Arch:
    """One decoder architecture as llama.cpp writes it: `general.architecture` and `general.name`,
    and the tiny transformers config of the model to write. Config values the GGUF loader does not
    read back (Gemma's softcaps, Qwen3's head_dim ...) are left at the class default, so the model
    read back is the model written."""

    gguf_arch: str
    config: Callable[[], PretrainedConfig]
    name: str = ""
    spm: bool = False  # a sentencepiece vocabulary (`spm_vocab`) instead of the byte-level BPE one


def _config(class_name: str, *, spm: bool = False, **kwargs: object) -> Callable[[], PretrainedConfig]:
    def make() -> PretrainedConfig:
        import transformers

        ids = _SPM_IDS if spm else _TOKEN_IDS
        return getattr(transformers, class_name)(**{**WIDE_SHAPE, **ids, **kwargs})

    return make


def _gpt2_config() -> PretrainedConfig:
    import transformers

    # n_positions stays 1024: the loader reads context_length into `n_ctx`, which GPT2Config ignores
    return transformers.GPT2Config(n_embd=256, n_layer=2, n_head=4, **_TOKEN_IDS)


ARCHITECTURES = {
    "llama": Arch("llama", _config("LlamaConfig", head_dim=64, tie_word_embeddings=False)),
    "qwen2": Arch("qwen2", _config("Qwen2Config", tie_word_embeddings=False)),
    "qwen3": Arch(
        "qwen3", _config("Qwen3Config", head_dim=128, tie_word_embeddings=False)
    ),  # 128: the default
    "phi3": Arch("phi3", _config("Phi3Config", tie_word_embeddings=False)),
    "gemma2": Arch(
        "gemma2", _config("Gemma2Config", spm=True, head_dim=64, tie_word_embeddings=True), spm=True
    ),
    "gemma3": Arch(
        "gemma3", _config("Gemma3TextConfig", spm=True, head_dim=64, tie_word_embeddings=True), spm=True
    ),
    "gpt2": Arch("gpt2", _gpt2_config),
}


def tiny_model(arch: str, *, seed: int = 0) -> PreTrainedModel:
    """A tiny random causal LM of `arch` (a key of `ARCHITECTURES`), float32, eval mode; the same
    seed gives the same weights without touching the global RNG."""
    import transformers

    config = ARCHITECTURES[arch].config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def gguf_tensor_names(model: PreTrainedModel, gguf_arch: str) -> dict[str, str]:
    """`{gguf_name: transformers_name}` for the weights llama.cpp writes (the tied lm_head left out),
    from gguf's own tensor name map, the one transformers' loader inverts."""
    arch_id = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_id, model.config.num_hidden_layers)
    names = {}
    for hf_name in model.state_dict():
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = name_map.get_name(base)
        if gguf_base is not None:
            names[f"{gguf_base}.{suffix}"] = hf_name
    if model.config.tie_word_embeddings and gguf_arch != "gpt2":  # gpt2 always writes output.weight
        names.pop("output.weight", None)
    return names


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


_GPT2_CONV1D = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def to_gguf_values(gguf_arch: str, gguf_name: str, data: np.ndarray, config: PretrainedConfig) -> np.ndarray:
    """The value transforms llama.cpp's converter applies to one tensor before writing it."""
    if gguf_arch == "llama" and ".attn_q." in gguf_name:
        return permute_qk(data, config.num_attention_heads, config.num_attention_heads)
    if gguf_arch == "llama" and ".attn_k." in gguf_name:
        return permute_qk(data, config.num_attention_heads, config.num_key_value_heads)
    if gguf_arch in ("gemma2", "gemma3") and gguf_name.endswith("norm.weight"):
        return data + 1  # Gemma norms scale by (1 + w); llama.cpp stores the factor itself
    if gguf_arch == "gpt2" and gguf_name.endswith(_GPT2_CONV1D):
        return data.T  # Conv1D keeps (in, out); GGML wants (out, in)
    return data


# ---- K-quant encoders --------------------------------------------------------------------------
# gguf.quants decodes Q4_K / Q5_K / Q6_K but cannot encode them. These encoders are plain
# min/max (not llama.cpp's error-minimising search): every scale is rounded up, so nothing clips and
# each value comes back within half a quantization step (the step being its sub-block's scale).

QK_K = 256


def _f16_up(values: np.ndarray) -> np.ndarray:
    """float32 -> float16, rounded up, so a scale never shrinks below what its range needs."""
    half = values.astype(np.float16)
    low = half.astype(np.float32) < values
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def _scale_codes(scales: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """A float16 super-scale and integer codes in [0, top] with `super * code >= scale`."""
    super_scale = _f16_up(scales.max(axis=-1) / top)
    divisor = super_scale.astype(np.float32)[:, None]
    codes = np.ceil(np.divide(scales, divisor, out=np.zeros_like(scales), where=divisor > 0))
    return super_scale, np.clip(codes, 0, top).astype(np.uint8)


def _pack_k_scales(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins in 12 bytes, the layout `Q4_K.get_scale_min` reads."""
    packed = np.empty((scales.shape[0], 12), np.uint8)
    packed[:, 0:4] = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (scales[:, 4:] & 0x0F) | ((mins[:, 4:] & 0x0F) << 4)
    return packed


def _affine_k(blocks: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K maths: 8 sub-blocks of 32, `x = d * sc * q - dmin * m`, q in [0, levels].
    Returns the 16-byte header (d, dmin, packed scales) and q, shaped (blocks, 8, 32)."""
    sub = blocks.reshape(-1, 8, 32)
    offsets = -np.minimum(sub.min(axis=-1), 0)
    dmin, min_codes = _scale_codes(offsets, 63)
    base = -dmin.astype(np.float32)[:, None] * min_codes
    d, scale_codes = _scale_codes((sub.max(axis=-1) - base) / levels, 63)
    step = (d.astype(np.float32)[:, None] * scale_codes)[..., None]
    shifted = sub - base[..., None]
    q = np.round(np.divide(shifted, step, out=np.zeros_like(shifted), where=step > 0))
    header = [d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2)]
    header.append(_pack_k_scales(scale_codes, min_codes))
    return np.concatenate(header, axis=1), np.clip(q, 0, levels).astype(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Sub-blocks 2g and 2g+1 share 32 bytes: low nibble the first, high nibble the second."""
    pairs = (q & 0x0F).reshape(q.shape[0], 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(q.shape[0], 128)


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) bytes of Q4_K blocks."""
    header, q = _affine_k(blocks, 15)
    return np.concatenate([header, _nibbles(q)], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 176) bytes of Q5_K blocks: Q4_K's nibbles plus one high bit per
    value, bit j of byte i belonging to sub-block j."""
    header, q = _affine_k(blocks, 31)
    high = ((q >> 4) & 1).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    return np.concatenate([header, np.bitwise_or.reduce(high, axis=1), _nibbles(q)], axis=1)


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) bytes of Q6_K blocks: 16 sub-blocks of 16 with an int8 scale,
    `x = d * sc * (q - 32)`; low nibbles, then the 2 high bits, then the scales, then d."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    d, scale_codes = _scale_codes(np.abs(sub).max(axis=-1) / 31, 127)
    step = (d.astype(np.float32)[:, None] * scale_codes)[..., None]
    q = np.round(np.divide(sub, step, out=np.zeros_like(sub), where=step > 0))
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, QK_K)
    low = (q & 0x0F).reshape(n, 2, 2, 64)
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    high = (q >> 4).reshape(n, 2, 4, 32) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    qh = np.bitwise_or.reduce(high, axis=2).reshape(n, 64)
    return np.concatenate([ql, qh, scale_codes, d.view(np.uint8).reshape(n, 2)], axis=1)


_K_ENCODERS = {
    gguf.GGMLQuantizationType.Q4_K: encode_q4_k,
    gguf.GGMLQuantizationType.Q5_K: encode_q5_k,
    gguf.GGMLQuantizationType.Q6_K: encode_q6_k,
}


def quantize(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """`gguf.quants.quantize`, plus the K-quants: the bytes of `data` (rows a whole number of
    blocks) in `qtype`, shaped as GGUFWriter's `add_tensor(raw_dtype=qtype)` wants them."""
    encoder = _K_ENCODERS.get(qtype)
    if encoder is None:
        return gguf.quants.quantize(data, qtype)
    blocks = np.ascontiguousarray(data, np.float32).reshape(-1, QK_K)
    type_size = gguf.GGML_QUANT_SIZES[qtype][1]
    return encoder(blocks).reshape(*data.shape[:-1], data.shape[-1] // QK_K * type_size)


# ---- tensor types ------------------------------------------------------------------------------

# tensor_type -> general.file_type (llama.cpp's LlamaFileType).
TENSOR_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q4_K": 14, "Q4_K_M": 15, "Q5_K": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32,
}  # fmt: skip
FILE_TYPES = {k: v for k, v in TENSOR_TYPES.items() if "_K" not in k}  # what a 64-wide llama stores
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama-quantize, rows not whole blocks


def tensor_qtype(tensor_type: str, gguf_name: str, data: np.ndarray, *, num_layers: int) -> str:
    """The type one tensor is stored in: 1-D tensors F32, as llama.cpp keeps them; in the _M mixes
    the output matrix and the last layer's attn_v / ffn_down in Q6_K (llama.cpp's `use_more_bits`
    layers are the first and last eighth of the stack and every third in between; with two
    layers that is the last one); K-quants whose rows are not whole blocks fall back."""
    if data.ndim == 1:
        return "F32"
    qtype = tensor_type.removesuffix("_M")
    if tensor_type.endswith("_M"):
        last = f"blk.{num_layers - 1}."
        if gguf_name == "output.weight" or gguf_name.startswith((f"{last}attn_v.", f"{last}ffn_down.")):
            qtype = "Q6_K"
    if qtype in K_FALLBACK and data.shape[-1] % QK_K:
        qtype = K_FALLBACK[qtype]
    return qtype


# ---- writing -----------------------------------------------------------------------------------


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    *,
    tensor_type: str = "F32",
    model: PreTrainedModel | None = None,
    drop_tensors: tuple[str, ...] = (),
) -> Path:
    """Write a tiny GGUF (model + tokenizer) of `arch` (a key of `ARCHITECTURES`) to `path`.

    model: the model to write, by default `tiny_model(arch)`; its vocabulary must be the tokenizer's.
    tensor_type: one of `TENSOR_TYPES`; how the 2-D weights are stored (see `tensor_qtype`).
    drop_tensors: GGUF tensor names to leave out, to test that a missing tensor is caught.
    """
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"tensor_type {tensor_type!r} is not one of {sorted(TENSOR_TYPES)}")
    spec = ARCHITECTURES[arch]
    model = tiny_model(arch) if model is None else model
    config = model.config
    vocab_size = SPM_VOCAB_SIZE if spec.spm else VOCAB_SIZE
    if config.vocab_size != vocab_size:
        raise ValueError(f"the model's vocab_size is {config.vocab_size}, the tokenizer's {vocab_size}")
    names = gguf_tensor_names(model, spec.gguf_arch)
    unknown = set(drop_tensors) - set(names)
    if unknown:
        raise ValueError(f"cannot drop {sorted(unknown)}: the file holds {sorted(names)}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, spec.gguf_arch)
    _add_metadata(writer, config, spec, tensor_type)
    if spec.spm:
        _add_spm_tokenizer(writer)
    else:
        _add_tokenizer(writer, *tokenizer_vocab())
    state = model.state_dict()
    for gguf_name, hf_name in names.items():
        if gguf_name in drop_tensors:
            continue
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        data = np.ascontiguousarray(to_gguf_values(spec.gguf_arch, gguf_name, data, config))
        qtype = tensor_qtype(tensor_type, gguf_name, data, num_layers=config.num_hidden_layers)
        _add_tensor(writer, gguf_name, data, gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_llama_gguf(
    path: Path,
    *,
    drop_tensors: tuple[str, ...] = (),
    tensor_type: str = "F32",
    model: LlamaForCausalLM | None = None,
) -> Path:
    """Write a tiny 64-wide llama GGUF (model + tokenizer) to `path` and return `path`.

    model: the `LlamaForCausalLM` to write, by default `tiny_llama()` (seed 0, untied). A tied model
        is written without `output.weight`, as llama.cpp does; transformers then ties lm_head back.
    tensor_type: one of `TENSOR_TYPES`; at 64 wide the K-quants all fall back (`K_FALLBACK`).
    drop_tensors: GGUF tensor names to leave out (e.g. `"blk.1.ffn_down.weight"`). Dropping
        `"output.weight"` does not make a checkpoint with a missing tensor: transformers reads its
        absence as tied embeddings.
    """
    model = tiny_llama() if model is None else model
    return write_tiny_gguf(path, "llama", tensor_type=tensor_type, model=model, drop_tensors=drop_tensors)


def _add_metadata(w: gguf.GGUFWriter, c: PretrainedConfig, spec: Arch, tensor_type: str) -> None:
    """The `general.*` and `{arch}.*` keys `convert_hf_to_gguf.py` writes for these models."""
    # not exactly "mistral": transformers would read the file as a Mistral, then fail to map it
    w.add_name(spec.name or f"tiny-{c.model_type}")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(getattr(c, "intermediate_size", None) or 4 * c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    if spec.gguf_arch == "gpt2":
        w.add_layer_norm_eps(float(c.layer_norm_epsilon))
    else:
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(_rope_theta(c))
        w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    if spec.gguf_arch in ("gemma2", "gemma3"):
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_sliding_window(c.sliding_window)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(TENSOR_TYPES[tensor_type])
    w.add_quantization_version(2)  # gguf.GGML_QUANT_VERSION, written by every llama.cpp converter


def _rope_theta(c: PretrainedConfig) -> float:
    rope = getattr(c, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)  # Gemma 3 keeps one per attention type
    return float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


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


def _add_spm_tokenizer(w: gguf.GGUFWriter) -> None:
    """The `tokenizer.ggml.*` keys of a sentencepiece vocabulary, as llama.cpp writes Gemma's."""
    tokens, types = spm_vocab()
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_bos_token_id(SPM_BOS_ID)
    w.add_eos_token_id(SPM_EOS_ID)
    w.add_unk_token_id(SPM_UNK_ID)
    w.add_pad_token_id(SPM_PAD_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def _add_tensor(
    writer: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType
) -> None:
    """One tensor in `qtype`: F32 / F16 as numpy arrays, anything else as packed bytes (the writer
    takes the shape back from the byte shape)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
