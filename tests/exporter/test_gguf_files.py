"""The tiny GGUF writer (tests/gguf_files.py): transformers' GGUF loader reads its files back as the
model and tokenizer that were written, and reports a tensor left out of the file as missing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import gguf_files
import numpy as np
import pytest
import torch
import transformers
from gguf_files import (
    ARCHITECTURES,
    FILE_TYPES,
    VOCAB_SIZE,
    llama_tensor_names,
    quantize,
    tiny_llama,
    tiny_model,
    write_tiny_gguf,
    write_tiny_llama_gguf,
)

IDS = torch.tensor([[1, 5, 104, 200, 262, 267, 276, 2]])  # bos, bytes, "hello", "Ġworld", the last id, eos


def _load(path: Path, **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` in float32."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs
    )


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@contextmanager
def _transformers_warnings() -> Iterator[list[str]]:
    """Collect what transformers logs at WARNING and above (its loggers do not propagate to
    pytest's caplog, and other tests turn its verbosity down to ERROR)."""
    from transformers.utils import logging as hf_logging

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    root = hf_logging.get_logger("transformers")
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    root.addHandler(handler)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(previous)


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default file: tiny_llama() (seed 0, untied) in F32."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


# ---- the model ---------------------------------------------------------------------------------


def test_f32_file_loads_as_the_written_model(f32_file: Path) -> None:
    """Same logits as the torch model it was written from: metadata, names and q/k permutation agree."""
    model = _load(f32_file)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (VOCAB_SIZE, 64, 128)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 4, 2)
    assert (config.head_dim, config.max_position_embeddings) == (16, 128)
    assert config.rms_norm_eps == pytest.approx(1e-5)  # stored as a float32
    assert config.tie_word_embeddings is False
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    diff = (_logits(model) - _logits(tiny_llama())).abs().max().item()
    assert diff < 1e-4


def test_logits_check_catches_a_wrong_qk_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llama.cpp's q/k permutation the loader's un-permute scrambles the heads, so the logits
    comparison above really checks the permutation."""
    monkeypatch.setattr(gguf_files, "permute_qk", lambda weights, *_: weights)
    model = _load(write_tiny_llama_gguf(tmp_path / "unpermuted.gguf"))
    assert (_logits(model) - _logits(tiny_llama())).abs().max().item() > 1e-3


def test_tied_model_is_written_without_output(tmp_path: Path) -> None:
    original = tiny_llama(tie_word_embeddings=True)
    path = write_tiny_llama_gguf(tmp_path / "tied.gguf", model=original)
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(path).tensors}
    model = _load(path)
    assert model.config.tie_word_embeddings is True
    assert (_logits(model) - _logits(original)).abs().max().item() < 1e-4


@pytest.mark.parametrize("tensor_type", sorted(FILE_TYPES))
def test_every_tensor_type_dequantizes_to_the_written_values(tmp_path: Path, tensor_type: str) -> None:
    """2-D weights come back exactly as gguf's own quantize -> dequantize round trip gives them; the
    1-D norms stay F32, as llama.cpp keeps them."""
    path = write_tiny_llama_gguf(tmp_path / f"tiny-{tensor_type}.gguf", tensor_type=tensor_type)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    stored = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert stored == {
        name: gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else qtype
        for name in llama_tensor_names(2)
    }

    original, loaded = tiny_llama().state_dict(), _load(path).state_dict()
    for gguf_name, hf_name in llama_tensor_names(2).items():
        weights = original[hf_name].numpy()
        if weights.ndim == 2:  # quantization blocks run along rows, so the q/k row permutation commutes
            weights = gguf.quants.dequantize(gguf.quants.quantize(weights, qtype), qtype)
        assert torch.equal(loaded[hf_name], torch.from_numpy(np.asarray(weights, np.float32))), gguf_name


# ---- the other architectures and the K-quants ---------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_reads_back_as_the_written_model(tmp_path: Path, arch: str) -> None:
    """F32: names, metadata and llama.cpp's value transforms (q/k permutation, Gemma's 1 + w norms,
    GPT-2's transposes) all agree with transformers' loader, so the logits are the written model's."""
    path = write_tiny_gguf(tmp_path / f"{arch}.gguf", arch)
    model, info = _load(path, output_loading_info=True)
    assert not any(info.values()), info
    original = tiny_model(arch)
    assert type(model) is type(original)
    ids = IDS.clamp(max=original.config.vocab_size - 1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_encoders_round_trip_through_gguf(kind: str) -> None:
    """gguf's own dequantize reads the numpy encoders' blocks back within one quantization step of
    each sub-block (its range over the levels, plus the rounding of its 6/8-bit scale code)."""
    qtype = gguf.GGMLQuantizationType[kind]
    rng = np.random.default_rng(0)
    data = rng.standard_normal((6, 512)) * rng.uniform(0.01, 3, (6, 1)) + rng.uniform(-1, 1, (6, 1))
    data = data.astype(np.float32)
    data[0, :32] = 0  # an all-zero sub-block
    packed = quantize(data, qtype)
    assert packed.dtype == np.uint8 and packed.shape == (6, 2 * gguf.GGML_QUANT_SIZES[qtype][1])
    back = gguf.quants.dequantize(packed, qtype)
    sub, levels, codes = {"Q4_K": (32, 15, 63), "Q5_K": (32, 31, 63), "Q6_K": (16, 63, 127)}[kind]
    blocks = data.reshape(-1, 256 // sub, sub)
    spread = blocks.max(-1) - np.minimum(blocks.min(-1), 0) if kind != "Q6_K" else 2 * np.abs(blocks).max(-1)
    step = spread / levels + spread.max(-1, keepdims=True) / levels / codes
    error = np.abs(back - data).reshape(blocks.shape).max(-1)
    assert (error <= step * 1.01 + 1e-7).all()
    assert np.abs(back - data).max() > 0  # really quantized
    assert (back.reshape(blocks.shape)[0, 0] == 0).all()


def test_k_quant_mix_and_fallback(tmp_path: Path) -> None:
    """Q4_K_M as llama-quantize lays it out: Q4_K, with output and the last layer's attn_v / ffn_down
    in Q6_K; at 64 wide no row holds a 256-value block, so Q4_K falls back to Q5_0."""
    path = write_tiny_gguf(tmp_path / "mix.gguf", "llama", tensor_type="Q4_K_M")
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    six = {"output.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}
    assert {n for n, t in stored.items() if t == "Q6_K"} == six
    assert {t for n, t in stored.items() if n not in six} == {"Q4_K", "F32"}
    narrow = write_tiny_llama_gguf(tmp_path / "narrow.gguf", tensor_type="Q4_K_M")
    narrow_types = {t.tensor_type.name for t in gguf.GGUFReader(narrow).tensors}
    assert narrow_types == {"Q5_0", "Q8_0", "F32"}


# ---- the tokenizer -----------------------------------------------------------------------------


def test_tokenizer_round_trip(f32_file: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(f32_file.parent, gguf_file=f32_file.name)
    assert len(tokenizer) == VOCAB_SIZE
    ids = tokenizer("hello world")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["hello", "Ġworld"]  # the merges apply; no BOS added
    assert tokenizer.decode(ids) == "hello world"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    text = "héllo <|im_end|> 42"  # bytes outside the merges, and a control token kept whole
    ids = tokenizer(text)["input_ids"]
    assert 2 in ids
    assert tokenizer.decode(ids) == text


# ---- missing tensors ---------------------------------------------------------------------------


def test_dropped_tensor_is_missing_and_random_initialized(tmp_path: Path) -> None:
    """transformers does not raise and issues no Python warning: it logs a LOAD REPORT at WARNING,
    lists the key in `missing_keys` and leaves the parameter freshly (randomly) initialized."""
    path = write_tiny_llama_gguf(tmp_path / "dropped.gguf", drop_tensors=("blk.1.ffn_down.weight",))
    key = "model.layers.1.mlp.down_proj.weight"
    with _transformers_warnings() as messages:
        model, info = _load(path, output_loading_info=True)
    assert info["missing_keys"] == {key}
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"]
    assert any("LOAD REPORT" in m and key in m and "MISSING" in m for m in messages)
    weight = model.state_dict()[key]
    assert not torch.equal(weight, tiny_llama().state_dict()[key])
    assert abs(weight.std().item() - model.config.initializer_range) < 0.005


def test_dropping_output_reads_as_tied_embeddings(tmp_path: Path) -> None:
    """Not a missing tensor to transformers: no output.weight means tied, so nothing is reported and
    lm_head silently becomes the embedding matrix."""
    path = write_tiny_llama_gguf(tmp_path / "no-output.gguf", drop_tensors=("output.weight",))
    model, info = _load(path, output_loading_info=True)
    assert not info["missing_keys"]
    assert model.config.tie_word_embeddings is True
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot drop"):
        write_tiny_llama_gguf(tmp_path / "x.gguf", drop_tensors=("blk.9.attn_q.weight",))
    with pytest.raises(ValueError, match="tensor_type"):
        write_tiny_llama_gguf(tmp_path / "x.gguf", tensor_type="IQ2_XS")
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_llama_gguf(tmp_path / "x.gguf", model=transformers.LlamaForCausalLM(
            transformers.LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=1, num_attention_heads=4)))  # fmt: skip
