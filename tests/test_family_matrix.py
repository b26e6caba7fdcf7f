"""The family matrix: every decoder family x every target, fp32 + int8 (+ int4 on one family per
target), exported from a tiny random model of that family and gated like any user's export.

One model per family is built once per session and shared by the four targets. A family a target
cannot express must be refused up front (exit 2) with the reason from that target's
`unsupported_families` table, the same table `edge-export targets --families` prints, so the
matrix also proves that table true in both directions. Random weights prove plumbing: fp32 must
match PyTorch exactly (every gate, the whole greedy generation, every weight found unchanged);
int8 must export, run and pass its gates (the logits of a random model at these sizes: ONNX int8
SQNR ~37 dB). int4 on random weights is plumbing only: next-token agreement of near-tied random
logits is noise (0.60-1.0 seen), so it must export and run with logits SQNR over 5 dB (9.7-24.6 seen)
and its gates are whatever they are. Caches of 128 positions (one 32-token prefill signature on
TFLite) keep the conversions small; sliding windows of 32 still matter at that length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DECODER_CONFIGS, load_report, make_decoder, metric, run_cli

from edge_export.targets.registry import get_target, recipe_for_precision

TARGETS = ("onnx", "tflite", "executorch", "coreml")
# int4 on one family per target (a different one each, so four families see int4)
INT4_FAMILY = {"onnx": "gemma3_text", "tflite": "qwen3", "executorch": "llama", "coreml": "mistral"}
SMALL = {"max_seq_len": 128, "prefill_lengths": [32]}


def _config(tmp_path: Path, target: str, precisions: list[str]) -> Path:
    """recipe_options giving each recipe of the run a 128-position cache (where it has one)."""
    options = {}
    for precision in precisions:
        recipe = recipe_for_precision(get_target(target), precision)
        options[recipe.id] = {k: v for k, v in SMALL.items() if k in recipe.options}
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps({"recipe_options": options}))
    return path


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_type -> its tiny model folder, built on first use and shared by every target."""
    return {}


def _model(models: dict[str, Path], factory: pytest.TempPathFactory, model_type: str) -> Path:
    if model_type not in models:
        models[model_type] = make_decoder(factory.mktemp(f"family-{model_type}"), model_type)
    return models[model_type]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model_type", list(DECODER_CONFIGS))
def test_decoder_family(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    family_models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    model_type: str,
    target: str,
) -> None:
    folder = _model(family_models, tmp_path_factory, model_type)
    precisions = ["fp32", "int8"] + (["int4"] if INT4_FAMILY[target] == model_type else [])
    argv = ["export", folder, "--out", tmp_path / "out", "--target", target, "--no-latency",
            "--config", _config(tmp_path, target, precisions)]  # fmt: skip
    code, _, err = run_cli([*argv, *[a for p in precisions for a in ("--quantize", p)]], capsys)
    reason = get_target(target).unsupported_families.get(model_type)
    if reason:  # refused before any work, naming the reason
        assert code == 2 and reason in err and not (tmp_path / "out").exists(), err
        return
    report = load_report(tmp_path / "out")
    results = {r["precision"]: r for r in report["results"]}
    assert sorted(results) == sorted(precisions)
    for precision, result in results.items():
        assert result["error"] is None, (precision, result["error"])
        failed = [g for g in result["accuracy"]["gates"] if not g["passed"]]
        assert result["status"] == "passed" or precision == "int4", (precision, failed)
    exact = results["fp32"]
    assert metric(exact, "generation_match") == 1.0
    assert metric(exact, "max_abs_error") < 1e-3
    provenance = exact["accuracy"]["provenance"]
    assert provenance["failure"] is None and (not provenance["checked"] or provenance["mismatched"] == {})
    if model_type == "gpt2":  # its Conv1D layers were silently left fp32 by ONNX and ExecuTorch int8
        assert results["int8"]["size_bytes"] < 0.6 * exact["size_bytes"]
    if "int4" in results:
        assert metric(results["int4"], "sqnr_db") > 5.0  # 9.7-24.6 dB seen; a broken int4 is ~0
    assert code == (1 if "int4" in results and results["int4"]["status"] == "failed" else 0)
