"""ExecuTorch target: real models for accuracy, tiny random models for plumbing and failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DECODER_CONFIGS,
    FAST,
    gate,
    load_report,
    make_encoder,
    metric,
    result_for,
    run_cli,
)

from edge_export.devices.agent.executorch_model import ExecutorchModel
from edge_export.devices.agent.lm import greedy_generate, session_for
from edge_export.run.bundle import verify_bundle

# ---- real model: all-MiniLM-L6-v2 -------------------------------------------------------------


def test_minilm_executorch_recipes_pass_their_gates(et_minilm_run: tuple[int, Path]) -> None:
    code, out = et_minilm_run
    report = load_report(out)
    assert code == 0, [
        (r["recipe"], r["error"], r["accuracy"]) for r in report["results"] if r["status"] != "passed"
    ]
    fp32 = result_for(report, "executorch:xnnpack-fp32")
    int8 = result_for(report, "executorch:xnnpack-int8")
    int4 = result_for(report, "executorch:xnnpack-8da4w")
    assert metric(fp32, "embedding_cosine_min") > 0.9999
    assert metric(int8, "embedding_cosine_min") >= 0.99
    assert metric(int4, "embedding_cosine_min") >= 0.92
    assert gate(int8, "embedding_cosine_min")["passed"]
    assert fp32["size_bytes"] > 2.5 * int8["size_bytes"] and int8["size_bytes"] > int4["size_bytes"]


def test_minilm_executorch_bundle_manifest_and_residency(et_minilm_run: tuple[int, Path]) -> None:
    _, out = et_minilm_run
    result = result_for(load_report(out), "executorch:xnnpack-int8")
    bundle = out / result["bundle"]
    assert verify_bundle(bundle) == []
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "executorch" and manifest["artifact"] == "model.pte"
    assert manifest["recipe"]["options"]["max_seq_len"] == 512  # resolved from 0 = automatic
    assert manifest["io"]["bounds"] == {"batch": 32, "sequence": 512}
    assert (bundle / "tokenizer.json").is_file()
    residency = result["inspect"]["residency"]
    xnn = residency["backends"]["XnnpackBackend"]
    assert xnn["ops"] > 0 and xnn["delegate_calls"] > 0
    assert residency["delegated_by_op"]["XnnpackBackend"].get("linear", 0) >= 36  # 6 layers x 6 linears
    assert xnn["pct"] + residency["fallback_pct"] == pytest.approx(100.0, abs=0.2)
    assert result["latency"]["p50_ms"] > 0 and result["latency"]["runtime"].startswith("executorch")


def test_minilm_pte_runs_dynamic_batch_and_sequence(et_minilm_run: tuple[int, Path]) -> None:
    _, out = et_minilm_run
    bundle = out / "executorch-xnnpack-fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = ExecutorchModel(bundle / "model.pte", manifest)
    for batch, seq in ((1, 7), (3, 40)):
        ids = np.full((batch, seq), 1000, dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        emb = model.run(feeds)["sentence_embedding"]
        assert emb.shape == (batch, 384)
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # Normalize is in the graph


# ---- real model: SmolLM2-135M-Instruct ---------------------------------------------------------


def test_smollm2_executorch_fp32_and_8da4w(et_smollm2_run: tuple[int, Path]) -> None:
    code, out = et_smollm2_run
    report = load_report(out)
    fp32 = result_for(report, "executorch:xnnpack-fp32")
    int4 = result_for(report, "executorch:xnnpack-8da4w")
    assert code == 0, [(r["recipe"], r["error"], r["accuracy"]["failure"]) for r in report["results"]]
    assert metric(fp32, "generation_match") == 1.0
    assert fp32["accuracy"]["details"]["generated_tokens"] == 32
    assert abs(metric(fp32, "perplexity_delta_pct")) < 0.1
    ppl = gate(int4, "perplexity_delta_pct")
    assert ppl["passed"] and 0 < ppl["value"] <= ppl["threshold"]
    assert int4["size_bytes"] <= 0.3 * fp32["size_bytes"]
    for result in (fp32, int4):
        assert result["latency"]["decode_tokens_per_s"] > 0 and result["latency"]["ttft_ms"] > 0
        assert set(result["accuracy"]["details"]["cases_not_applicable"]) == {
            "batch2-padded-prefill", "batch2-with-past"
        }  # fmt: skip


def test_smollm2_pte_has_llm_runner_metadata(et_smollm2_run: tuple[int, Path]) -> None:
    _, out = et_smollm2_run
    bundle = out / "executorch-xnnpack-8da4w"
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = ExecutorchModel(bundle / "model.pte", manifest)
    assert model.constant("get_max_seq_len") == [1024]
    assert model.constant("get_vocab_size") == [49152]
    assert model.constant("use_kv_cache") == [True]
    assert model.constant("use_sdpa_with_kv_cache") == [True]
    assert model.constant("get_bos_id") == [manifest["io"]["extras"]["bos_token_id"]]
    assert manifest["io"]["extras"]["eos_token_id"] in model.constant("get_eos_ids")
    ops = load_report(out)["results"][1]["inspect"]["residency"]["fallback_by_op"]
    assert ops.get("llama::custom_sdpa") == 30 and ops.get("llama::update_cache") == 60
    assert "quantized_decomposed::embedding_byte" in ops  # int8 embedding kernel, not a dequantize


def test_smollm2_pte_generates_like_the_reference(et_smollm2_run: tuple[int, Path]) -> None:
    from transformers import AutoTokenizer

    _, out = et_smollm2_run
    bundle = out / "executorch-xnnpack-fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(bundle))
    session = session_for(ExecutorchModel(bundle / "model.pte", manifest), manifest["io"])
    prompt = tokenizer("The capital of France is")["input_ids"]
    tokens = greedy_generate(session, prompt, 6)
    assert "Paris" in tokenizer.decode(tokens)


# ---- tiny models: every recipe and family, plumbing -------------------------------------------


def test_tiny_llama_every_xnnpack_recipe(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "out"
    recipes = ["xnnpack-fp32", "xnnpack-int8", "xnnpack-int8-static", "xnnpack-8da4w"]
    argv = [
        "export",
        tiny_llama,
        "--out",
        out,
        *[a for r in recipes for a in ("--recipe", f"executorch:{r}")],
    ]
    code, _, _ = run_cli([*argv, *FAST])
    report = load_report(out)
    assert [r["error"] for r in report["results"]] == [None] * 4
    assert code in (0, 1)  # random weights say nothing about quantized accuracy; the gates decide
    fp32 = result_for(report, "executorch:xnnpack-fp32")
    assert fp32["status"] == "passed" and metric(fp32, "generation_match") == 1.0
    assert metric(fp32, "max_abs_error") < 1e-4  # prefill and prefill-then-decode against PyTorch


def test_tiny_llama_plain_attention_matches_custom_ops(tmp_path: Path, tiny_llama: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {"executorch:xnnpack-fp32": {"custom_ops": False}}}))
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", tiny_llama, "--out", out, "--recipe", "executorch:xnnpack-fp32",
                          "--config", config, "--no-latency"])  # fmt: skip
    result = load_report(out)["results"][0]
    assert code == 0, result["error"]
    assert metric(result, "generation_match") == 1.0
    assert "llama::custom_sdpa" not in result["inspect"]["residency"]["fallback_by_op"]


@pytest.mark.parametrize("custom_ops", [True, False], ids=["custom-sdpa", "plain-sdpa"])
@pytest.mark.parametrize("model_type", sorted(DECODER_CONFIGS))
def test_static_cache_lm_matches_the_model_past_the_window(model_type: str, custom_ops: bool) -> None:
    """The static-cache module in eager mode (no export, milliseconds): a 40-token prefill then
    8 decode steps against the model's own full forward. 48 tokens exceed the tiny configs' sliding
    window of 32, so Gemma 2/3 local layers and Gemma 2 logit soft-capping must be honoured."""
    import transformers

    from edge_export.targets.executorch.llm import StaticCacheLM

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(DECODER_CONFIGS[model_type](transformers)).eval()
    ids = torch.randint(0, 256, (1, 48))
    with torch.no_grad():
        reference = hf(ids).logits
        lm = StaticCacheLM(hf, 64, custom_ops)
        logits = [lm(ids[:, :40], torch.arange(40))]
        logits += [lm(ids[:, p : p + 1], torch.tensor([p])) for p in range(40, 48)]
    assert (torch.cat(logits, dim=1) - reference).abs().max().item() < 1e-5


def test_gpt2_conv1d_layers_are_exported_as_linear_layers() -> None:
    """GPT-2's Conv1D layers become nn.Linear in the static-cache module (the quantizers match
    linear layers only: int8 / 8da4w had left GPT-2's body fp32); the reference keeps Conv1D."""
    import transformers
    from transformers.pytorch_utils import Conv1D

    from edge_export.targets.executorch.llm import StaticCacheLM
    from edge_export.targets.stages import conv1d_shapes

    hf = transformers.AutoModelForCausalLM.from_config(DECODER_CONFIGS["gpt2"](transformers)).eval()
    lm = StaticCacheLM(hf, 64, custom_ops=False)
    linears = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
    assert not any(isinstance(m, Conv1D) for m in lm.modules()) and len(linears) == 2 * 4 + 1
    assert ("transformer.h.0.mlp.c_fc", (256, 64)) in conv1d_shapes(hf)  # [out, in], checked sizes


@pytest.mark.parametrize(
    ("model_type", "task"), [("bert", "fill-mask"), ("distilbert", "text-classification")]
)
def test_tiny_encoder_tasks_executorch(tmp_path: Path, minilm_dir: Path, model_type: str, task: str) -> None:
    folder = make_encoder(tmp_path / "model", model_type, task, minilm_dir)
    out = tmp_path / "out"
    code, _, _ = run_cli(
        ["export", folder, "--out", out, "--recipe", "executorch:xnnpack-int8", "--no-latency"]
    )
    result = load_report(out)["results"][0]
    assert result["error"] is None and code in (0, 1)
    assert metric(result, "top1_agreement") >= 0.5  # random weights: plumbing, not accuracy


# ---- Core ML delegate: produced here, never run here --------------------------------------------


def test_coreml_delegate_is_built_but_not_run_on_linux(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--recipe", "executorch:coreml-fp16",
                          "--require-full-delegation", *FAST])  # fmt: skip
    result = load_report(out)["results"][0]
    assert code == 0, result
    assert result["status"] == "not_run"
    assert "not run here" in result["accuracy"]["not_run"] and result["accuracy"]["metrics"] == {}
    assert result["latency"] == {"device": "local", "not_run": result["accuracy"]["not_run"]}
    residency = result["inspect"]["residency"]
    assert residency["fully_delegated"] and residency["backends"]["CoreMLBackend"]["pct"] == 100.0
    assert (out / result["artifact"]).stat().st_size > 10_000


# ---- residency gate, bad input and failures ----------------------------------------------------


def test_require_full_delegation_fails_xnnpack_encoder(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(["export", tiny_bert, "--out", out, "--recipe", "executorch:xnnpack-fp32",
                          "--require-full-delegation", "--no-validate", "--no-latency"], capsys)  # fmt: skip
    result = load_report(out)["results"][0]
    assert code == 1 and "operators run outside the delegate" in err
    assert result["status"] == "failed"
    assert "operators run outside the delegate" in result["residency_failure"]
    assert result["inspect"]["residency"]["fallback_ops"] > 0


def test_require_full_delegation_rejects_llm_before_export(
    tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "export",
        tiny_llama,
        "--out",
        out,
        "--recipe",
        "executorch:xnnpack-fp32",
        "--require-full-delegation",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and not out.exists()
    assert "custom SDPA" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [({"group_size": 48}, "group_size must be 16, 32, 64, 128 or 256, got 48"),
     ({"group_size": 256}, "not divisible by group_size 256"),
     ({"embedding_bits": 2}, "embedding_bits must be 4, 8 or 32"),
     ({"max_seq_len": 100000}, "max_seq_len 100000 is outside"),
     ({"blocksize": 32}, "has no option 'blocksize'")],
)  # fmt: skip
def test_bad_recipe_options_fail_before_export(
    tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str], options: dict, message: str
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {"executorch:xnnpack-8da4w": options}}))
    out = tmp_path / "out"
    argv = ["export", tiny_llama, "--out", out, "--recipe", "executorch:xnnpack-8da4w", "--config", config]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and not out.exists()
    assert message in err and len(err.strip().splitlines()) <= 2


def test_quantizing_a_model_without_linear_layers_is_refused() -> None:
    from types import SimpleNamespace

    from edge_export.errors import ConfigError
    from edge_export.targets.executorch import ExecutorchTarget
    from edge_export.targets.registry import get_recipe

    model = SimpleNamespace(hf_model=torch.nn.Sequential(torch.nn.Embedding(10, 4)), max_positions=128)
    with pytest.raises(ConfigError, match="no linear layers"):
        ExecutorchTarget().check(model, get_recipe("executorch:xnnpack-int8"))
