"""Re-validation drift (issue 17): `validate` re-measures a bundle and compares with the metrics
its manifest recorded at export. An untouched bundle re-measures identically; a planted fault inside
the quantization noise (0.5% on one LayerNorm weight of an int8 model, every hash fixed) passes the
gates but not the drift check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import export_bundle, run_cli

from edge_export.run.bundle import write_manifest
from edge_export.validation.drift import compare


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    return export_bundle(tmp_path_factory, tiny_bert, "onnx:int8-dynamic")


def _validate(bundle: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code, stdout, stderr = run_cli(
        ["validate", bundle, "--json", "--iterations", "1", "--warmup", "0"], capsys
    )
    return code, json.loads(stdout)["results"][0], stderr


def test_untouched_bundle_has_no_drift(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result, _ = _validate(bundle, capsys)
    drift = result["accuracy"]["drift"]
    assert code == 0 and drift["gated"] is True and drift["moved"] == {} and drift["failure"] is None


def test_a_fault_inside_the_quantization_noise_is_drift(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    from onnx import numpy_helper

    planted = shutil.copytree(bundle, tmp_path / "planted")
    model = onnx.load(str(planted / "model.onnx"))
    norm = next(t for t in model.graph.initializer if "LayerNorm" in t.name and t.name.endswith("weight"))
    norm.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(norm) * np.float32(1.005), norm.name))
    onnx.save(model, str(planted / "model.onnx"))
    manifest = json.loads((planted / "manifest.json").read_text())
    write_manifest(planted, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, result, stderr = _validate(planted, capsys)
    accuracy = result["accuracy"]
    assert all(gate["passed"] for gate in accuracy["gates"])  # the gates alone would pass it
    assert code == 1 and result["status"] == "failed"
    assert "bundle behaves differently from when it was exported" in stderr
    assert accuracy["drift"]["moved"]


def test_another_host_is_reported_not_gated() -> None:
    recorded = {"measured_on": "host", "metrics": {"sqnr_db": 40.0}, "fingerprint": {"cpu": "a"}}
    measured = {"measured_on": "host", "metrics": {"sqnr_db": 39.0}, "fingerprint": {"cpu": "b"}}
    drift = compare(recorded, measured)
    assert (
        drift["gated"] is False and drift["failure"] is None and drift["moved"] == {"sqnr_db": [40.0, 39.0]}
    )
    assert compare(recorded, measured | {"fingerprint": {"cpu": "a"}})["failure"]
