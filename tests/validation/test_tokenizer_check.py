"""The bundle's own tokenizer in the loop (issue 17): a bundle whose tokenizer was replaced or whose
vocabulary ids were shuffled fails `validate` (exit 1, naming the tokenizer), even with every
manifest hash fixed so that the hash check cannot be what catches it; an untouched bundle passes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from edge_export.run.bundle import write_manifest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture
def bundle(bert_onnx_bundle: Path) -> Path:
    return bert_onnx_bundle


def _rehash(bundle: Path) -> None:
    """Rewrite the manifest's file hashes, as someone tampering with a bundle would."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("schema", "files")})


def _validate(bundle: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    argv = ["validate", bundle, "--json", "--iterations", "1", "--warmup", "0"]
    code, stdout, stderr = run_cli(argv, capsys)
    return code, json.loads(stdout)["results"][0], stderr


def test_untouched_bundle_passes(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _validate(bundle, capsys)
    check = result["accuracy"]["tokenizer"]
    assert code == 0 and check["failure"] is None and check["mismatched_texts"] == 0 and check["texts"] > 10


def test_another_models_tokenizer_fails(
    bundle: Path, tmp_path: Path, smollm2_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    swapped = shutil.copytree(bundle, tmp_path / "swapped")
    for name in TOKENIZER_FILES:
        (swapped / name).unlink(missing_ok=True)
    AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).save_pretrained(
        swapped
    )
    _rehash(swapped)
    code, result, stderr = _validate(swapped, capsys)
    assert code == 1 and result["status"] == "failed"
    assert "the bundle's tokenizer is not the model's" in stderr and "ids differ" in stderr


def test_shuffled_vocabulary_ids_fail(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shuffled = shutil.copytree(bundle, tmp_path / "shuffled")
    spec = json.loads((shuffled / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    ids = list(vocab.values())
    random.Random(0).shuffle(ids)
    spec["model"]["vocab"] = dict(zip(vocab, ids, strict=True))
    (shuffled / "tokenizer.json").write_text(json.dumps(spec))
    (shuffled / "vocab.txt").unlink(missing_ok=True)  # the fast tokenizer is what clients load
    _rehash(shuffled)
    code, result, _ = _validate(shuffled, capsys)
    check = result["accuracy"]["tokenizer"]
    assert (
        code == 1
        and check["mismatched_texts"] > 0
        and check["first_mismatch"]["expected"] != check["first_mismatch"]["got"]
    )
