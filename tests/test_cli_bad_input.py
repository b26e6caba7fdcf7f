"""Bad input on the command line: exit code 2, one `error:` line naming the problem (and the fix),
no traceback, and nothing written at --out (no OUT, no staging leftovers beside it)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import run_cli


def _expect_usage_error(argv: list, out: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Run the CLI and check the bad-input contract; returns the one error line."""
    code, stdout, stderr = run_cli(["export", *argv, "--out", out], capsys)
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert code == 2, stderr
    assert stdout == ""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.glob(f".{out.name}.*")]
    assert leftovers == [], leftovers
    return line


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# ---- the model argument ------------------------------------------------------------------------


def test_nonexistent_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-model"
    _expect_usage_error([missing], tmp_path / "out", capsys, "does not exist", str(missing), "(fix: ")


def test_folder_without_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    _expect_usage_error([folder], tmp_path / "out", capsys, "config.json", "(fix: ")


def _with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


CORRUPT_SAFETENSORS = {
    "garbage": b"\x93garbage, not a safetensors file\xff" * 64,
    "shorter-than-length-prefix": b"\x01\x02\x03",
    "header-not-json": _with_header(b"this is not json"),
    "header-is-a-list": _with_header(b"[1, 2]"),
    "empty-data-offsets": _with_header(
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": []}}', b"\0" * 4
    ),
}


@pytest.mark.parametrize("payload", list(CORRUPT_SAFETENSORS))
def test_corrupt_safetensors(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str], payload: str
) -> None:
    folder = _copy(tiny_bert, tmp_path / "model")
    (folder / "model.safetensors").write_bytes(CORRUPT_SAFETENSORS[payload])
    _expect_usage_error(
        [folder], tmp_path / "out", capsys, "model.safetensors", "not a valid safetensors", "fix:"
    )


def test_truncated_safetensors(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(tiny_bert, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _expect_usage_error([folder], tmp_path / "out", capsys, "model.safetensors", "truncated", "re-download")


def _pickle_only(tiny_bert: Path, folder: Path) -> Path:
    """tiny_bert with its weights re-saved as pytorch_model.bin (transformers 5 no longer writes
    pickle checkpoints, so torch.save the state dict the way older versions did)."""
    from safetensors.torch import load_file

    _copy(tiny_bert, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_checkpoint_refused_without_allow_pickle(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _pickle_only(tiny_bert, tmp_path / "model")
    _expect_usage_error([folder], tmp_path / "out", capsys, "pickle", "pytorch_model.bin", "--allow-pickle")


def test_pickle_checkpoint_loads_with_allow_pickle(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _pickle_only(tiny_bert, tmp_path / "model")
    out = tmp_path / "out"
    argv = ["export", folder, "--out", out, "--allow-pickle", "--recipe", "onnx:fp32"]
    code, _, stderr = run_cli([*argv, "--no-validate", "--no-latency", "--json"], capsys)
    assert code == 0, stderr
    assert "pickle" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert [r["recipe"] for r in report["results"]] == ["onnx:fp32"]
    assert (out / "onnx-fp32" / "model.onnx").is_file()


def test_gguf_name_but_not_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"<html>404 not found</html>")
    _expect_usage_error([fake], tmp_path / "out", capsys, "x.gguf", "not a GGUF file", "fix:")


def test_truncated_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Right magic bytes, but the file stops inside the header (an interrupted download)."""
    fake = tmp_path / "cut.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    _expect_usage_error([fake], tmp_path / "out", capsys, "cut.gguf")


def test_file_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"0" * 32)
    _expect_usage_error([fake], tmp_path / "out", capsys, "not a .gguf model", "fix:")


def test_unsupported_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import transformers

    config = transformers.OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                                    vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32)  # fmt: skip
    folder = tmp_path / "opt"
    transformers.OPTForCausalLM(config).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    line = _expect_usage_error([folder], tmp_path / "out", capsys, "unsupported architecture")
    assert "'opt'" in line
    assert "supported model types" in line
    assert "bert" in line and "llama" in line and "gpt2" in line


def test_a_short_context_decoder_measures_a_prompt_that_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPT-2 with 64 learned positions: the default 64-token prompt + 32 decode steps ran past them
    (ORT: "indices element out of data bounds, idx=64") and the export failed on the device (exit 4)."""
    import json

    import transformers

    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128, n_positions=64)
    folder = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["export", folder, "--out", out, "--recipe", "onnx:fp32", "--warmup", "0", "--iterations", "1"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    latency = json.loads((out / "report.json").read_text())["results"][0]["latency"]
    assert latency["prompt_tokens"] == 32 and latency["decode_tokens_per_s"] > 0


def test_uncached_hub_id_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so "org/not-cached" is not a local folder by accident
    _expect_usage_error(["org/not-cached"], tmp_path / "out", capsys, "org/not-cached", "cache", "fix:")


# ---- options -----------------------------------------------------------------------------------


def test_unknown_task(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _expect_usage_error([tiny_bert, "--task", "foo"], tmp_path / "out", capsys, "unknown task 'foo'")
    assert "feature-extraction" in line and "text-generation" in line


def test_task_not_supported_for_family(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _expect_usage_error(
        [tiny_bert, "--task", "text-generation"], tmp_path / "out", capsys, "text-generation"
    )
    assert "not supported" in line
    assert "feature-extraction" in line  # the fix names the tasks the family does support


def test_unknown_recipe_lists_valid_ids(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _expect_usage_error(
        [tiny_bert, "--recipe", "tflite:banana"], tmp_path / "out", capsys, "'tflite:banana'"
    )
    for valid in ("onnx:fp32", "onnx:fp16", "onnx:int8-dynamic", "onnx:int4-weight"):
        assert valid in line


def test_near_miss_recipe_suggests_the_real_one(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _expect_usage_error(
        [tiny_bert, "--recipe", "onnx:int8dynamic"],
        tmp_path / "out",
        capsys,
        "unknown recipe 'onnx:int8dynamic'",
        "did you mean onnx:int8-dynamic",
    )


def test_unknown_target(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_usage_error(
        [tiny_bert, "--target", "onyx"], tmp_path / "out", capsys, "unknown target 'onyx'", "onnx"
    )


def test_unknown_precision(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_usage_error([tiny_bert, "--quantize", "int3"], tmp_path / "out", capsys, "'int3'", "int8")


# ---- config files ------------------------------------------------------------------------------


def _config(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        (
            "yaml-top",
            "validaton:\n  enabled: false\n",
            ("'validaton'", "did you mean 'validation'"),
        ),
        (
            "yaml-nested",
            "validation:\n  generate_tokns: 3\n",
            ("'validation.generate_tokns'", "did you mean 'generate_tokens'"),
        ),
        (
            "toml-top",
            'targts = ["onnx"]\n',
            ("'targts'", "did you mean 'targets'"),
        ),
        (
            "toml-nested",
            "[latency]\nwarmpu = 2\n",
            ("'latency.warmpu'", "did you mean 'warmup'"),
        ),
    ],
)
def test_unknown_config_key(
    tmp_path: Path,
    tiny_bert: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
    fragments: tuple[str, ...],
) -> None:
    suffix = ".toml" if name.startswith("toml") else ".yaml"
    config = _config(tmp_path, f"{name}{suffix}", text)
    _expect_usage_error(
        [tiny_bert, "--config", config], tmp_path / "out", capsys, "unknown config key", *fragments
    )


def test_config_file_missing(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    _expect_usage_error(
        [tiny_bert, "--config", missing], tmp_path / "out", capsys, "does not exist", "--config"
    )


def test_config_file_does_not_parse(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "bad.toml", "validation = [unclosed\n")
    _expect_usage_error([tiny_bert, "--config", config], tmp_path / "out", capsys, "does not parse")


def test_invalid_config_value(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, "c.yaml", "validation:\n  generate_tokens: 0\n")
    _expect_usage_error(
        [tiny_bert, "--config", config],
        tmp_path / "out",
        capsys,
        "invalid config value for 'validation.generate_tokens'",
    )


def test_unknown_gate_metric(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "validation:\n  gates:\n    '*':\n      cosine_mn: 0.9\n"
    config = _config(tmp_path, "c.yaml", text)
    _expect_usage_error(
        [tiny_bert, "--config", config],
        tmp_path / "out",
        capsys,
        "unknown gate metric 'cosine_mn'",
        "did you mean 'cosine_min'",
    )


def test_bad_recipe_option_value(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = 'recipe_options:\n  "onnx:int4-weight":\n    block_size: 48\n'
    config = _config(tmp_path, "c.yaml", text)
    argv = [tiny_bert, "--config", config, "--recipe", "onnx:int4-weight", "--no-latency"]
    _expect_usage_error(argv, tmp_path / "out", capsys, "block_size must be 16, 32, 64, 128 or 256, got 48")


def test_bad_recipe_option_type(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = 'recipe_options:\n  "onnx:int4-weight":\n    block_size: "big"\n'
    config = _config(tmp_path, "c.yaml", text)
    argv = [tiny_bert, "--config", config, "--recipe", "onnx:int4-weight"]
    _expect_usage_error(argv, tmp_path / "out", capsys, "block_size", "must be int")


def test_unknown_recipe_option_name(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = 'recipe_options:\n  "onnx:int4-weight":\n    blocksize: 64\n'
    config = _config(tmp_path, "c.yaml", text)
    argv = [tiny_bert, "--config", config, "--recipe", "onnx:int4-weight"]
    line = _expect_usage_error(argv, tmp_path / "out", capsys, "no option 'blocksize'")
    assert "block_size" in line  # the fix lists the valid option names


def test_recipe_options_for_unknown_recipe(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[recipe_options."onnx:int4-weights"]\nblock_size = 64\n'
    config = _config(tmp_path, "c.toml", text)
    _expect_usage_error(
        [tiny_bert, "--config", config],
        tmp_path / "out",
        capsys,
        "unknown recipe 'onnx:int4-weights'",
        "onnx:int4-weight",
    )


# ---- output and data ---------------------------------------------------------------------------


def test_existing_out_without_force_is_refused_and_untouched(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "old-bundle").mkdir(parents=True)
    (out / "report.json").write_text('{"keep": true}')
    (out / "old-bundle" / "model.onnx").write_bytes(b"old")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, stdout, stderr = run_cli(["export", tiny_bert, "--out", out], capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "already exists" in lines[0] and "--force" in lines[0]
    assert stdout == ""
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_data_file_missing(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "missing.txt"
    _expect_usage_error(
        [tiny_bert, "--data", data], tmp_path / "out", capsys, "data file", "does not exist", "fix:"
    )


def test_data_file_unsupported_type(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "texts.csv"
    data.write_text("a,b\nc,d\n")
    _expect_usage_error([tiny_bert, "--data", data], tmp_path / "out", capsys, "'.csv'", ".txt or .jsonl")


def test_data_file_too_small(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "one.txt"
    data.write_text("only one line\n")
    _expect_usage_error([tiny_bert, "--data", data], tmp_path / "out", capsys, "fewer than 2", "fix:")


def test_out_inside_missing_parent_leaves_no_parent_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new-parent" / "out"
    code, _, stderr = run_cli(["export", tmp_path / "no-such-model", "--out", out], capsys)
    assert code == 2, stderr
    assert not out.exists()
    assert not out.parent.exists(), "a failed run must not create the parent of --out"
