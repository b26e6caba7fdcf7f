"""TFLite / LiteRT target: real models for accuracy, tiny random models for plumbing and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, gate, load_report, make_encoder, metric, result_for, run_cli

from edge_export.devices.agent.lm import greedy_generate, session_for
from edge_export.devices.agent.tflite_model import TfliteModel, from_output, to_input
from edge_export.run.bundle import verify_bundle

BUCKETS = [16, 32, 64, 128, 256, 512]


# ---- real model: all-MiniLM-L6-v2 -------------------------------------------------------------


def test_minilm_tflite_recipes_pass_their_gates(tfl_minilm_run: tuple[int, Path]) -> None:
    code, out = tfl_minilm_run
    report = load_report(out)
    assert code == 0, [
        (r["recipe"], r["error"], r["accuracy"]) for r in report["results"] if r["status"] != "passed"
    ]
    fp32, int8 = result_for(report, "tflite:fp32"), result_for(report, "tflite:int8-dynamic")
    static, int4 = result_for(report, "tflite:int8-static"), result_for(report, "tflite:int4-block")
    assert metric(fp32, "embedding_cosine_min") > 0.9999
    assert metric(int8, "embedding_cosine_min") >= 0.99 and gate(int8, "embedding_cosine_min")["passed"]
    assert metric(static, "embedding_cosine_min") >= 0.9
    assert metric(int4, "embedding_cosine_min") >= 0.92
    assert int4["size_bytes"] <= 0.3 * fp32["size_bytes"]
    assert fp32["latency"]["p50_ms"] > 0 and int8["latency"]["p50_ms"] > 0


def test_minilm_every_bucket_is_validated(tfl_minilm_run: tuple[int, Path]) -> None:
    _, out = tfl_minilm_run
    for recipe in ("tflite:fp32", "tflite:int8-static"):
        cases = result_for(load_report(out), recipe)["accuracy"]["details"]["cases"]
        for bucket in BUCKETS:
            assert f"real-sentences@seq_{bucket}" in cases
        # fp32 through any bucket equals PyTorch; the worst bucket sets the gated value
        if recipe == "tflite:fp32":
            assert max(c["max_abs_error"] for c in cases.values()) < 1e-4


def test_minilm_tflite_bundle_manifest_and_residency(tfl_minilm_run: tuple[int, Path]) -> None:
    _, out = tfl_minilm_run
    result = result_for(load_report(out), "tflite:int8-dynamic")
    bundle = out / result["bundle"]
    assert verify_bundle(bundle) == []
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "tflite" and manifest["artifact"] == "model.tflite"
    assert manifest["recipe"]["options"]["seq_buckets"] == BUCKETS  # resolved from [] = automatic
    assert manifest["io"]["buckets"] == {f"seq_{n}": n for n in BUCKETS}
    assert manifest["export"]["output_map"] == {
        "output_0": "last_hidden_state",
        "output_1": "sentence_embedding",
    }
    assert (bundle / "tokenizer.json").is_file()
    inspect = result["inspect"]
    assert sorted(inspect["signatures"]) == sorted(f"seq_{n}" for n in BUCKETS)
    assert inspect["signatures"]["seq_16"]["FULLY_CONNECTED"] == 36
    residency = inspect["residency"]
    assert (
        residency["backends"]["xnnpack"]["pct"] > 80 and residency["backends"]["xnnpack"]["partitions"] >= 1
    )
    # the token lookup and the mask's boolean ops are not XNNPACK operators: they fall back
    assert "EMBEDDING_LOOKUP" in residency["fallback_by_op"] and not residency["fully_delegated"]
    assert "FULLY_CONNECTED" in residency["delegated_by_op"]["xnnpack"]


def test_minilm_tflite_runs_batches_through_buckets(tfl_minilm_run: tuple[int, Path]) -> None:
    _, out = tfl_minilm_run
    bundle = out / "tflite-fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = TfliteModel(bundle / "model.tflite", manifest)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, (3, 20))
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outputs = model.run(feeds)  # bucket 32, rows one by one
    assert outputs["last_hidden_state"].shape == (3, 20, 384) and outputs["sentence_embedding"].shape == (
        3,
        384,
    )
    pinned = model.run(feeds, bucket=512)
    np.testing.assert_allclose(pinned["sentence_embedding"], outputs["sentence_embedding"], atol=1e-5)
    too_long = {k: np.ones((1, 600), dtype=np.int64) for k in feeds}
    with pytest.raises(ValueError, match="exceed the largest sequence bucket"):
        model.run(too_long)


def test_naive_full_static_quantization_is_caught_by_the_gates(tfl_minilm_run: tuple[int, Path]) -> None:
    """Quantizing every op statically (the stock ai-edge-quantizer recipe) puts the attention mask
    into int8 and destroys the embeddings; the shared gates fail that model."""
    from ai_edge_quantizer import qtyping, quantizer

    from edge_export.exporter.loading import prepare
    from edge_export.exporter.source import resolve
    from edge_export.exporter.textdata import builtin_text
    from edge_export.targets.registry import get_recipe
    from edge_export.targets.tflite import calibration_feeds
    from edge_export.validation.accuracy import Validator
    from edge_export.validation.cases import calibration_set
    from edge_export.validation.gates import evaluate

    _, out = tfl_minilm_run
    bundle = out / "tflite-fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = prepare(resolve(manifest["model"]["source"]), None)
    qt = quantizer.Quantizer(str(bundle / "model.tflite"))
    qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    calibration = calibration_set(model, builtin_text(), 4)
    recipe = get_recipe("tflite:int8-static")
    data = calibration_feeds(recipe, calibration, manifest["export"]["signatures"], model.io.input_names)
    naive = out.parent / "naive.tflite"
    qt.quantize(qt.calibrate(data, num_threads=2), enable_progress_bar=False).export_model(str(naive), True)
    measured = Validator(model, builtin_text()).measure(TfliteModel(naive, manifest))
    gates = evaluate(measured.metrics, {"embedding_cosine_min": 0.9})
    assert measured.metrics["embedding_cosine_min"] < 0.9 and not gates[0].passed


# ---- real model: SmolLM2-135M-Instruct ---------------------------------------------------------


def test_smollm2_tflite_fp32_int8_int4(tfl_smollm2_run: tuple[int, Path]) -> None:
    code, out = tfl_smollm2_run
    report = load_report(out)
    assert code == 0, [(r["recipe"], r["error"], r["accuracy"]) for r in report["results"]]
    fp32, int8 = result_for(report, "tflite:fp32"), result_for(report, "tflite:int8-dynamic")
    int4 = result_for(report, "tflite:int4-block")
    assert metric(fp32, "generation_match") == 1.0  # 32 greedy tokens identical to PyTorch
    assert fp32["accuracy"]["details"]["generated_tokens"] == 32
    assert abs(metric(fp32, "perplexity_delta_pct")) < 0.1
    for result in (int8, int4):
        ppl = gate(result, "perplexity_delta_pct")
        assert ppl["passed"] and 0 < ppl["value"] <= ppl["threshold"]
    assert int4["size_bytes"] <= 0.3 * fp32["size_bytes"]
    cases = fp32["accuracy"]["details"]["cases"]
    assert cases["batch1-prefill-path-then-decode"]["max_abs_error"] < 1e-3  # prefill signature path
    latency = fp32["latency"]
    assert (
        latency["ttft_ms"] > 0
        and latency["decode_tokens_per_s"] > 0
        and latency["runtime"].startswith("ai-edge-litert")
    )


def test_smollm2_tflite_signatures_and_bundle(tfl_smollm2_run: tuple[int, Path]) -> None:
    _, out = tfl_smollm2_run
    result = result_for(load_report(out), "tflite:int4-block")
    bundle = out / result["bundle"]
    assert verify_bundle(bundle) == []
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["recipe"]["options"]["max_seq_len"] == 1024
    assert sorted(manifest["export"]["signatures"]) == ["decode", "prefill_64", "prefill_8"]
    assert manifest["io"]["cache"]["num_layers"] == 30 and (bundle / "tokenizer.json").is_file()
    assert sorted(result["inspect"]["signatures"]) == ["decode", "prefill_64", "prefill_8"]


def test_smollm2_tflite_generates_like_the_reference(tfl_smollm2_run: tuple[int, Path]) -> None:
    from transformers import AutoTokenizer

    _, out = tfl_smollm2_run
    bundle = out / "tflite-int8-dynamic"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    session = session_for(TfliteModel(bundle / "model.tflite", manifest), manifest["io"])
    prompt = tokenizer("The capital of France is")["input_ids"]
    tokens = greedy_generate(session, prompt, 6)
    assert "Paris" in tokenizer.decode(tokens)


# ---- tiny models: every recipe and family, plumbing -------------------------------------------


def test_tiny_llama_every_tflite_recipe(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "out"
    recipes = ["fp32", "fp16", "int8-dynamic", "int8-weight", "int4-block"]
    argv = ["export", tiny_llama, "--out", out, *[a for r in recipes for a in ("--recipe", f"tflite:{r}")]]
    code, _, _ = run_cli([*argv, *FAST])
    report = load_report(out)
    assert [r["error"] for r in report["results"]] == [None] * len(recipes)
    assert code in (0, 1)  # random weights say nothing about quantized accuracy; the gates decide
    fp32 = result_for(report, "tflite:fp32")
    assert fp32["status"] == "passed" and metric(fp32, "generation_match") == 1.0
    assert metric(fp32, "max_abs_error") < 1e-4  # prefill, decode steps and the prefill path
    fp16 = result_for(report, "tflite:fp16")
    assert fp16["size_bytes"] < fp32["size_bytes"]
    manifest = json.loads((out / "tflite-fp32" / "manifest.json").read_text())
    session = TfliteModel(out / "tflite-fp32" / "model.tflite", manifest).lm_session()
    assert session is not None and session.capacity == 512
    with pytest.raises(ValueError, match="exceed the program's cache of 512"):
        session.step(np.arange(513) % 200)


@pytest.mark.parametrize(
    ("model_type", "task"), [("bert", "fill-mask"), ("distilbert", "text-classification")]
)
def test_tiny_encoder_tasks_tflite(tmp_path: Path, minilm_dir: Path, model_type: str, task: str) -> None:
    folder = make_encoder(tmp_path / "model", model_type, task, minilm_dir)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {"tflite:int8-dynamic": {"seq_buckets": [16, 128]}}}))
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", folder, "--out", out, "--recipe", "tflite:int8-dynamic",
                          "--config", config, "--no-latency"])  # fmt: skip
    result = load_report(out)["results"][0]
    assert result["error"] is None and code in (0, 1)
    assert metric(result, "top1_agreement") >= 0.5  # random weights: plumbing, not accuracy
    assert sorted(result["inspect"]["signatures"]) == ["seq_128", "seq_16"]


# ---- runtime side: quantized I/O and the cache session -----------------------------------------


def _detail(dtype: type, scale: float | None = None, zero: int = 0) -> dict:
    scales = np.array([scale] if scale else [], dtype=np.float32)
    return {"dtype": dtype, "quantization_parameters": {"scales": scales, "zero_points": np.array([zero])}}


def test_quantized_io_uses_scale_and_zero_point() -> None:
    detail = _detail(np.int8, 0.5, -3)
    q = to_input(np.array([1.0, -2.0, 100.0]), detail)
    assert q.dtype == np.int8 and q.tolist() == [-1, -7, 127]  # clipped to int8
    np.testing.assert_allclose(from_output(np.array([-1, -7], dtype=np.int8), detail), [1.0, -2.0])
    ids = to_input(np.array([[5, 6]]), _detail(np.int32))  # float tensors only are quantized
    assert ids.dtype == np.int32 and ids.tolist() == [[5, 6]]


# ---- bad input and failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "options", "message"),
    [("tflite:int4-block", {"block_size": 48}, "block_size must be 32, 64, 128 or 256, got 48"),
     ("tflite:int4-block", {"head_bits": 2}, "head_bits must be 4 or 8"),
     ("tflite:fp32", {"max_seq_len": 100000}, "max_seq_len 100000 is outside"),
     ("tflite:fp32", {"prefill_lengths": [4096]}, "prefill_lengths [4096] must lie in"),
     ("tflite:int8-static", {}, "static activation quantization breaks decoders"),
     ("tflite:fp32", {"blocksize": 32}, "has no option 'blocksize'")],
)  # fmt: skip
def test_bad_recipe_options_fail_before_export(
    tmp_path: Path,
    tiny_llama: Path,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    options: dict,
    message: str,
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {recipe: options}}))
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["export", tiny_llama, "--out", out, "--recipe", recipe, "--config", config], capsys
    )
    assert code == 2 and not out.exists()
    assert message in err and len(err.strip().splitlines()) <= 2


def test_bad_buckets_and_unsupported_decoders_fail_before_export(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {"tflite:fp32": {"seq_buckets": [16, 4096]}}}))
    code, _, err = run_cli(["export", tiny_bert, "--out", tmp_path / "a", "--recipe", "tflite:fp32",
                            "--config", config], capsys)  # fmt: skip
    assert code == 2 and "seq_buckets [16, 4096] must lie in 1..128" in err
    config.write_text(json.dumps({"recipe_options": {"tflite:int8-static": {"calibration_samples": 0}}}))
    code, _, err = run_cli(["export", tiny_bert, "--out", tmp_path / "c", "--recipe", "tflite:int8-static",
                            "--config", config], capsys)  # fmt: skip
    assert code == 2 and "calibration_samples must be >= 1, got 0" in err
    opt = tmp_path / "opt"
    import transformers

    config_opt = transformers.OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                                        vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32)  # fmt: skip
    transformers.OPTForCausalLM(config_opt).save_pretrained(opt)
    code, _, err = run_cli(["export", opt, "--out", tmp_path / "b", "--target", "tflite"], capsys)
    assert code == 2 and "unsupported architecture 'opt'" in err and "Traceback" not in err


def test_quantizing_a_model_without_linear_layers_is_refused() -> None:
    from types import SimpleNamespace

    from edge_export.errors import ConfigError
    from edge_export.targets.registry import get_recipe
    from edge_export.targets.tflite import TfliteTarget

    model = SimpleNamespace(
        hf_model=torch.nn.Sequential(torch.nn.Embedding(10, 4)),
        max_positions=128,
        io=SimpleNamespace(kind="encoder"),
    )
    with pytest.raises(ConfigError, match="no linear layers"):
        TfliteTarget().check(model, get_recipe("tflite:int8-dynamic"))


_IMPORT_THEN_LOAD = """
import sys
import transformers
original = transformers.integrations.use_kernel_forward_from_hub
from edge_export.targets.tflite.convert import hf_export_modules
hf_export_modules()
assert transformers.integrations.use_kernel_forward_from_hub is original
from transformers.models.mistral import modeling_mistral  # first imported after litert-torch
# model modules litert-torch imported itself (Qwen3, Gemma3, ...) and the one imported afterwards
for name, module in sorted(sys.modules.items()):
    if name.startswith("transformers.models.") and ".modeling_" in name:
        for attr in dir(module):
            if attr.endswith("RMSNorm"):
                print(name, attr, getattr(module, attr).__module__)
"""


def test_litert_import_leaves_transformers_models_alone() -> None:
    """litert-torch's HF exporter swaps transformers' kernel decorator process-wide on import; models
    imported afterwards (and Qwen3, which litert-torch imports itself) got its RMSNorm and their
    ONNX/ExecuTorch exports failed (found in CI: only the families a worker had not loaded before
    the TFLite tests)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _IMPORT_THEN_LOAD], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    norms = [line.split() for line in run.stdout.splitlines() if line.startswith("transformers.models.")]
    modules = {module for module, _, _ in norms}
    assert {
        "transformers.models.mistral.modeling_mistral",
        "transformers.models.qwen3.modeling_qwen3",
    } <= modules
    assert [n for n in norms if n[2] != n[0]] == []  # every RMSNorm is its own module's, none litert's
