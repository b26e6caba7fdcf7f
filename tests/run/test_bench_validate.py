"""`bench` and `validate` on an existing bundle with the local device: the same Result shape as
export, the bundle's own tokenizer for real-text inputs, and no silent fallback when it is broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli


@pytest.fixture
def bundle(bert_onnx_bundle: Path) -> Path:
    return bert_onnx_bundle


def test_bench_on_the_local_device(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(["bench", bundle, "--iterations", "3", "--warmup", "1", "--json"], capsys)
    (result,) = json.loads(stdout)["results"]
    assert code == 0 and result["status"] == "passed" and result["accuracy"] is None
    assert result["latency"] == result["latency_by_device"][0]
    assert result["latency"]["device"] == "local" and result["latency"]["iterations"] == 3
    assert result["latency"]["sequence_length"] > 16  # real text through the bundle's tokenizer
    assert "notes" not in result


def test_validate_matches_the_export(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(["validate", bundle, "--iterations", "2", "--json"], capsys)
    (result,) = json.loads(stdout)["results"]
    exported = json.loads((bundle / "manifest.json").read_text())["validation"]
    assert code == 0 and result["status"] == "passed"
    assert result["accuracy"]["metrics"] == pytest.approx(exported["metrics"], rel=1e-6)


def _copy_without_tokenizer(bundle: Path, dest: Path) -> Path:
    from edge_export.run.bundle import write_manifest

    shutil.copytree(bundle, dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (dest / name).unlink(missing_ok=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    write_manifest(dest, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    return dest


def test_bench_without_a_tokenizer_says_so(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = _copy_without_tokenizer(bundle, tmp_path / "bare")
    code, stdout, _ = run_cli(["bench", bare, "--iterations", "2", "--json"], capsys)
    (result,) = json.loads(stdout)["results"]
    assert code == 0 and any("synthetic token ids" in note for note in result["notes"])


def test_bench_with_a_broken_tokenizer_is_refused(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_export.run.bundle import write_manifest

    broken = _copy_without_tokenizer(bundle, tmp_path / "broken")
    (broken / "tokenizer.json").write_text(
        '{"model": {"type": "WordLevel", "vocab": {}, "unk_token": "[X]"}}'
    )
    manifest = json.loads((broken / "manifest.json").read_text())
    write_manifest(broken, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, stdout, stderr = run_cli(["bench", broken], capsys)
    assert code == 2 and stdout == "" and "tokenizer in bundle" in stderr and "fails to load" in stderr


def test_validate_an_artifact_its_runtime_cannot_load_is_exit_3(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_export.run.bundle import write_manifest

    broken = shutil.copytree(bundle, tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((broken / "manifest.json").read_text())
    write_manifest(broken, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, stdout, stderr = run_cli(["validate", broken, "--json", "--iterations", "1"], capsys)
    (result,) = json.loads(stdout)["results"]
    assert code == 3 and result["status"] == "error" and result["error"]["stage"] == "validate"
    assert "does not run on the host runtime" in stderr and "unexpected" not in stderr
