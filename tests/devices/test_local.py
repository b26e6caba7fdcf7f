"""The local device runs the agent in a subprocess; its outputs must equal an in-process run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_report, run_cli

from edge_export.devices.agent.onnx_model import OnnxModel
from edge_export.devices.local import LocalDevice
from edge_export.errors import DeviceError


@pytest.fixture
def tiny_bert_bundle(bert_onnx_bundle: Path) -> Path:
    return bert_onnx_bundle


def test_agent_outputs_match_in_process_run(tiny_bert_bundle: Path) -> None:
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    result = LocalDevice().run(tiny_bert_bundle, feeds, warmup=1, iterations=4)
    expected = OnnxModel(tiny_bert_bundle / "model.onnx").run(feeds)
    assert len(result.latencies_ms) == 4 and result.load_ms > 0 and result.peak_rss_mb > 0
    assert result.runtime.startswith("onnxruntime")
    np.testing.assert_array_equal(result.outputs["last_hidden_state"], expected["last_hidden_state"])


def test_missing_runtime_is_a_clear_device_error(tmp_path: Path, tiny_bert_bundle: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bert_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["target"] = "some-future-format"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DeviceError, match="MissingRuntime: no runtime adapter for target 'some-future-format'"
    ):
        LocalDevice().run(bundle, {"input_ids": np.zeros((1, 2), np.int64)}, warmup=0, iterations=1)


def test_bench_and_validate_existing_bundle(
    tiny_bert_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        ["bench", tiny_bert_bundle, "--json", "--iterations", "3", "--warmup", "0"], capsys
    )
    assert code == 0
    report = json.loads(out)
    assert report["results"][0]["latency"]["iterations"] == 3
    code, out, _ = run_cli(["validate", tiny_bert_bundle, "--json", "--iterations", "2"], capsys)
    assert code == 0, out
    result = json.loads(out)["results"][0]
    assert result["accuracy"]["gates"] and all(g["passed"] for g in result["accuracy"]["gates"])


def test_tampered_bundle_is_refused(
    tmp_path: Path, tiny_bert_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bert_bundle, bundle)
    with (bundle / "model.onnx").open("ab") as handle:
        handle.write(b"x")
    code, _, err = run_cli(["bench", bundle], capsys)
    assert code == 2 and "changed since export: model.onnx" in err


def test_json_mode_prints_only_the_report(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["export", tiny_bert, "--out", out, "--no-latency", "--json"], capsys)
    assert code == 0
    assert json.loads(stdout) == load_report(out)
