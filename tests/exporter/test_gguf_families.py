"""GGUF in for every decoder family transformers' GGUF loader reads (issue 18): tiny files of each
architecture in the common quantization types load into edge-export and export with validation
passing (against the dequantized weights); an architecture or tensor type transformers cannot read
is exit 2 with one line naming it and the fix."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from cli_subprocess import expect_error, run_cli_process
from conftest import load_report, result_for, run_cli
from gguf_files import ARCHITECTURES, tiny_model, write_tiny_gguf

from edge_export.exporter.loading import prepare
from edge_export.exporter.source import resolve

TYPES = ("Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
QUICK = ["--recipe", "onnx:fp32", "--no-latency"]


def _export(path: Path, out: Path, recipe: str = "onnx:fp32") -> dict:
    code, _, _ = run_cli(["export", path, "--out", out, "--recipe", recipe, "--no-latency"])
    report = load_report(out)
    result = result_for(report, recipe)
    assert code == 0, result
    assert result["status"] == "passed"
    return result


# ---- every architecture x type loads as the written model, within its quantization --------------


@pytest.mark.parametrize("tensor_type", TYPES)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_loads(tmp_path: Path, arch: str, tensor_type: str) -> None:
    """edge-export's loader (strict weight checks, plain float copy, tokenizer) takes the file, and
    the model is the one written, up to quantization noise."""
    path = write_tiny_gguf(tmp_path / f"{arch}-{tensor_type}.gguf", arch, tensor_type=tensor_type)
    prepared = prepare(resolve(str(path)), None)
    assert prepared.task == "text-generation" and prepared.tokenizer is not None
    ids = torch.tensor([[2, 5, 104, 200, 262, 267, 276, 1]])
    with torch.no_grad():
        loaded, written = prepared.hf_model(ids).logits, tiny_model(arch)(ids).logits
    assert not torch.equal(loaded, written)  # really quantized
    assert (loaded - written).abs().max().item() < 0.5
    assert torch.nn.functional.cosine_similarity(loaded.flatten(), written.flatten(), dim=0) > 0.95


# ---- export passes: every architecture once, every type once --------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_exports(tmp_path: Path, arch: str) -> None:
    path = write_tiny_gguf(tmp_path / "m" / f"{arch}.gguf", arch, tensor_type="Q4_K_M")
    result = _export(path, tmp_path / "out")
    assert result["accuracy"]["metrics"]["next_token_agreement"] == 1


@pytest.mark.parametrize("tensor_type", [t for t in TYPES if t != "Q4_K_M"])
def test_every_type_exports(tmp_path: Path, tensor_type: str) -> None:
    path = write_tiny_gguf(tmp_path / "m" / f"qwen3-{tensor_type}.gguf", "qwen3", tensor_type=tensor_type)
    _export(path, tmp_path / "out")


def test_tflite_from_a_k_quant_gguf(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m" / "llama-q5km.gguf", "llama", tensor_type="Q5_K_M")
    _export(path, tmp_path / "out", recipe="tflite:fp32")


# ---- what transformers cannot read: exit 2, one line naming it ----------------------------------


def _gguf(
    path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]], **kv: int
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        writer.add_uint32(f"{arch}.{key}", value)
    for name, (data, qtype) in tensors.items():
        raw = None if qtype == gguf.GGMLQuantizationType.F32 else qtype
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


F32 = gguf.GGMLQuantizationType.F32
EMBEDDING = {"token_embd.weight": (np.zeros((8, 64), np.float32), F32)}


def test_architecture_transformers_cannot_read(tmp_path: Path) -> None:
    """Gemma 1: llama.cpp writes it, transformers' GGUF loader has no mapping for it."""
    path = _gguf(tmp_path / "m" / "gemma1.gguf", "gemma", EMBEDDING)
    run = run_cli_process(["export", path, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "architecture 'gemma'", "cannot read", "gemma2", "fix:", out=tmp_path / "out")


def test_mixtral_style_llama(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m" / "moe.gguf", "llama", EMBEDDING, expert_count=8)
    run = run_cli_process(["export", path, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "mixture-of-experts llama GGUF (8 experts", "fix:", out=tmp_path / "out")


def test_tensor_type_gguf_cannot_dequantize(tmp_path: Path) -> None:
    """Q1_0: a type gguf knows the size of but has no decoder for (like the I8..F64 ones)."""
    q1 = gguf.GGMLQuantizationType.Q1_0
    tensors = {**EMBEDDING, "blk.0.attn_q.weight": (np.zeros((4, 18), np.uint8), q1)}
    path = _gguf(tmp_path / "m" / "q1.gguf", "llama", tensors)
    run = run_cli_process(["export", path, "--out", tmp_path / "out", *QUICK], tmp_path)
    line = expect_error(run, 2, "type Q1_0", "blk.0.attn_q.weight", "cannot dequantize", "llama-quantize")
    assert "Q4_K" in line and "IQ2_XS" in line  # what it does read


def test_tensor_type_id_gguf_does_not_know(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m" / "t99.gguf", "llama", EMBEDDING)
    data = bytearray(path.read_bytes())
    end = data.index(b"token_embd.weight") + len(b"token_embd.weight")
    at = end + 4 + 8 * int.from_bytes(data[end : end + 4], "little")  # after n_dims and the dims
    data[at : at + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    run = run_cli_process(["export", path, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "type id 99", "upgrade the gguf package", out=tmp_path / "out")
