"""ONNX target: the real models for accuracy, tiny random models for plumbing across families."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FAST, load_report, make_encoder, metric, result_for, run_cli

from edge_export.devices.agent.lm import KVCacheSession, greedy_generate
from edge_export.devices.agent.onnx_model import OnnxModel
from edge_export.run.bundle import verify_bundle

# ---- real model: all-MiniLM-L6-v2 -------------------------------------------------------------


def test_minilm_all_recipes_pass_their_gates(minilm_run: tuple[int, Path]) -> None:
    code, out = minilm_run
    report = load_report(out)
    assert code == 0, [r["accuracy"]["failure"] for r in report["results"] if r["status"] != "passed"]
    assert report["schema"] == "edge-export/report@1"
    assert {r["recipe"] for r in report["results"]} == {
        "onnx:fp32", "onnx:fp16", "onnx:int8-dynamic", "onnx:int8-static", "onnx:int4-weight"
    }  # fmt: skip
    fp32 = result_for(report, "onnx:fp32")
    assert metric(fp32, "embedding_cosine_min") > 0.9999
    assert metric(result_for(report, "onnx:int8-dynamic"), "embedding_cosine_min") >= 0.99
    for result in report["results"]:
        gates = result["accuracy"]["gates"]
        assert gates and all(g["passed"] for g in gates)
        assert {"embedding_cosine_min", "sqnr_db"} <= {g["metric"] for g in gates}


def test_minilm_sizes_shrink_with_precision(minilm_run: tuple[int, Path]) -> None:
    report = load_report(minilm_run[1])
    size = {r["recipe"]: r["size_bytes"] for r in report["results"]}
    assert size["onnx:int4-weight"] < size["onnx:int8-dynamic"] < size["onnx:fp16"] < size["onnx:fp32"]
    assert size["onnx:int8-dynamic"] < 0.3 * size["onnx:fp32"]


def test_minilm_bundle_contents_and_manifest(minilm_run: tuple[int, Path]) -> None:
    out = minilm_run[1]
    bundle = out / "onnx-int8-dynamic"
    assert (bundle / "model.onnx").is_file() and (bundle / "tokenizer.json").is_file()
    assert not list(bundle.glob("*.data")), "weights below 2 GB must be inline"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["recipe"]["id"] == "onnx:int8-dynamic"
    assert manifest["recipe"]["options"]["method"] == "matmul-integer"
    names = [t["name"] for t in manifest["io"]["outputs"]]
    assert names == ["last_hidden_state", "sentence_embedding"]
    assert manifest["io"]["inputs"][0]["shape"] == ["batch", "sequence"]
    assert verify_bundle(bundle) == []
    assert manifest["validation"]["gates"] and manifest["latency"][0]["device"] == "local"


def _matmul_weight_types(path: Path) -> set[tuple[int, int]]:
    """(dtype, zero point) of every quantized MatMul weight: MatMulInteger B or a weight's DequantizeLinear."""
    proto = onnx.load(str(path))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    found = set()
    for node in proto.graph.node:
        if node.op_type == "MatMulInteger" and node.input[1] in init:
            weight, zero = init[node.input[1]], init[node.input[3]]
        elif node.op_type == "DequantizeLinear" and node.input[0] in init and init[node.input[0]].ndim == 2:
            weight, zero = init[node.input[0]], init[node.input[2]]
        else:
            continue
        found |= {(int(weight.dtype.num), int(z)) for z in np.unique(zero)}
    return found


def test_minilm_int8_matmul_weights_are_uint8_with_zero_point_128(minilm_run: tuple[int, Path]) -> None:
    """ORT adds u8 x s8 products pairwise in int16 on x86 CPUs without VNNI and saturates (the
    int8 recipes failed their gates on an AVX2-only CPU); u8 x u8 is exact everywhere."""
    for recipe in ("onnx-int8-dynamic", "onnx-int8-static"):
        assert _matmul_weight_types(minilm_run[1] / recipe / "model.onnx") == {(np.dtype(np.uint8).num, 128)}


def test_onnxruntime_u8_by_u8_matmul_integer_is_exact_on_this_cpu() -> None:
    """What the int8 recipes rely on: the extreme products come back exact from ORT's kernels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 256
    a = np.full((4, k), 255, np.uint8)
    a[1] = np.arange(k) % 256
    b = np.full((k, 8), 255, np.uint8)
    b[:, 1] = 0
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [4, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [4, 8])], [numpy_helper.from_array(b, "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"A": a})[0]
    np.testing.assert_array_equal(out, a.astype(np.int64) @ b.astype(np.int64))


def test_minilm_graph_is_clean_and_dynamic(minilm_run: tuple[int, Path]) -> None:
    path = minilm_run[1] / "onnx-fp32" / "model.onnx"
    proto = onnx.load(str(path))
    assert sum(len(n.metadata_props) for n in proto.graph.node) == 0
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    model = OnnxModel(path)
    for batch, seq in ((1, 5), (3, 40)):
        ids = np.full((batch, seq), 1000, dtype=np.int64)
        out = model.run(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
        assert out["sentence_embedding"].shape == (batch, 384)
        np.testing.assert_allclose(np.linalg.norm(out["sentence_embedding"], axis=1), 1.0, atol=1e-4)


def test_minilm_timings_and_export_memory(minilm_run: tuple[int, Path]) -> None:
    report = load_report(minilm_run[1])
    run = report["run"]
    assert run["wall_s"] >= run["load_s"] + run["reference_s"] > 0
    assert run["peak_rss_mb"] > 300  # torch + the model live in the exporting process
    timings = result_for(report, "onnx:int8-static")["timings_s"]
    assert set(timings) == {"export", "validate", "latency"} and all(v > 0 for v in timings.values())


def test_minilm_latency_fields(minilm_run: tuple[int, Path]) -> None:
    latency = result_for(load_report(minilm_run[1]), "onnx:fp32")["latency"]
    assert latency["device"] == "local" and latency["iterations"] == 3
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]
    assert latency["load_ms"] > 0 and latency["peak_rss_mb"] > 10
    assert latency["sequence_length"] == 128 and "cv" in latency


# ---- real model: SmolLM2-135M-Instruct (GGUF) ---------------------------------------------------


def test_smollm2_fp32_int8_int4(smollm2_run: tuple[int, Path]) -> None:
    code, out = smollm2_run
    report = load_report(out)
    assert code == 0, [r["accuracy"]["failure"] for r in report["results"] if r["status"] != "passed"]
    fp32 = result_for(report, "onnx:fp32")
    assert metric(fp32, "generation_match") == 1.0
    assert fp32["accuracy"]["details"]["generated_tokens"] == 32
    assert abs(metric(fp32, "perplexity_delta_pct")) < 0.1
    for recipe in ("onnx:int8-dynamic", "onnx:int4-weight"):
        assert "perplexity_delta_pct" in result_for(report, recipe)["accuracy"]["metrics"]
    size = {r["recipe"]: r["size_bytes"] for r in report["results"]}
    assert size["onnx:int4-weight"] <= 0.3 * size["onnx:fp32"]
    assert size["onnx:int4-weight"] < size["onnx:int8-dynamic"]


def test_smollm2_static_int8_keeps_outlier_matmuls_in_float(smollm2_run: tuple[int, Path]) -> None:
    result = result_for(load_report(smollm2_run[1]), "onnx:int8-static")
    assert result["status"] == "passed"
    manifest = json.loads((smollm2_run[1] / "onnx-int8-static" / "manifest.json").read_text())
    assert 0 < len(manifest["export"]["float_matmuls"]) < 60
    assert metric(result, "perplexity_delta_pct") < 15


def test_smollm2_static_int8_without_outlier_handling_fails_its_gates(
    tmp_path: Path, smollm2_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per-tensor scales over the massive down-projection inputs produce garbage: the gates
    must say so (exit 1), not pass it."""
    config = tmp_path / "c.yaml"
    config.write_text('recipe_options: {"onnx:int8-static": {outlier_ratio: 0.0}}\n')
    out = tmp_path / "out"
    argv = [
        "export",
        smollm2_gguf,
        "--out",
        out,
        "--recipe",
        "onnx:int8-static",
        "--config",
        config,
        "--no-latency",
    ]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "perplexity_delta_pct" in err and "next_token_agreement" in err
    assert metric(load_report(out)["results"][0], "perplexity_delta_pct") > 50


def test_smollm2_generation_latency(smollm2_run: tuple[int, Path]) -> None:
    latency = result_for(load_report(smollm2_run[1]), "onnx:int4-weight")["latency"]
    assert latency["ttft_ms"] > 0 and latency["decode_tokens_per_s"] > 1
    assert latency["prompt_tokens"] == 64


def test_smollm2_bundle_runs_a_generation_loop(smollm2_run: tuple[int, Path]) -> None:
    from transformers import AutoTokenizer

    bundle = smollm2_run[1] / "onnx-fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(bundle))
    model = OnnxModel(bundle / manifest["artifact"])
    session = KVCacheSession(model.run, manifest["io"])
    prompt = tokenizer("The capital of France is")["input_ids"]
    text = tokenizer.decode(greedy_generate(session, prompt, 8))
    assert "Paris" in text
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in onnx.load(str(bundle / "model.onnx"), load_external_data=False).graph.input}  # fmt: skip
    assert dims["past_key_values.0.key"][2] == "past_sequence"
    assert dims["input_ids"] == ["batch", "sequence"]


# ---- tiny random models: every family and task --------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "task"),
    [("bert", "text-classification"), ("roberta", "fill-mask"), ("distilbert", "feature-extraction")],
)
def test_tiny_encoder_families(tmp_path: Path, minilm_dir: Path, model_type: str, task: str) -> None:
    folder = make_encoder(tmp_path / "model", model_type, task, minilm_dir)
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", folder, "--out", out, "--quantize", "fp32", "--no-latency"])
    report = load_report(out)
    assert code == 0, report["results"][0]
    assert report["model"]["task"] == task
    name = "embedding_cosine_min" if task == "feature-extraction" else "top1_agreement"
    assert metric(report["results"][0], name) >= 0.99


def test_tiny_llama_int4_and_latency(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", tiny_llama, "--out", out, "--quantize", "int4", *FAST])
    result = load_report(out)["results"][0]
    assert result["recipe"] == "onnx:int4-weight" and result["error"] is None
    assert result["latency"]["decode_tokens_per_s"] > 0
    ops = result["inspect"]["operators"]
    assert ops.get("MatMulNBits", 0) > 0 and ops.get("MatMul", 0) <= 4  # only attention matmuls stay
    assert code in (0, 1)  # random weights say nothing about int4 accuracy; the gates decide
