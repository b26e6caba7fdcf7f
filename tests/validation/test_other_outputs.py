"""Every output is compared with the reference, not only the primary one (issue 17): the KV presents
of a decoder are gated in fp32/fp16, so swapping two of them in an exported graph (every hash fixed)
fails `validate`, while the logits alone would still pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import export_bundle, run_cli

from edge_export.run.bundle import write_manifest


@pytest.fixture(scope="module")
def llama_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    return export_bundle(tmp_path_factory, tiny_llama, "onnx:fp32")


def test_presents_are_measured_and_gated(llama_bundle: Path) -> None:
    validation = json.loads((llama_bundle / "manifest.json").read_text())["validation"]
    assert validation["metrics"]["other_outputs_sqnr_db"] > 60
    assert {g["metric"] for g in validation["gates"]} >= {"other_outputs_sqnr_db", "other_outputs_cosine_min"}
    assert set(validation["details"]["other_outputs"]) == {
        f"present.{i}.{kv}" for i in (0, 1) for kv in ("key", "value")
    }


def test_swapped_presents_fail(
    llama_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    planted = shutil.copytree(llama_bundle, tmp_path / "planted")
    model = onnx.load(str(planted / "model.onnx"))
    names = ["present.0.value", "present.1.value"]
    for node in model.graph.node:  # the graph keeps its own tensors under private names ...
        node.input[:] = [f"{n}__kept" if n in names else n for n in node.input]
        node.output[:] = [f"{n}__kept" if n in names else n for n in node.output]
    for source, target in zip(names, reversed(names), strict=True):  # ... and ships them swapped
        model.graph.node.append(onnx.helper.make_node("Identity", [f"{source}__kept"], [target]))
    onnx.save(model, str(planted / "model.onnx"))
    manifest = json.loads((planted / "manifest.json").read_text())
    write_manifest(planted, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, stdout, stderr = run_cli(
        ["validate", planted, "--json", "--iterations", "1", "--warmup", "0"], capsys
    )
    assert stdout, stderr
    result = json.loads(stdout)["results"][0]
    failed = {g["metric"] for g in result["accuracy"]["gates"] if not g["passed"]}
    assert code == 1 and "other_outputs_sqnr_db" in failed and "other_outputs_cosine_min" in failed
    assert result["accuracy"]["metrics"]["next_token_agreement"] == 1.0  # the logits alone pass
