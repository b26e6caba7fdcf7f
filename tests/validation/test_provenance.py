"""Weight provenance (issue 17): every source parameter is found again, unchanged, inside the
artifact itself; a weight changed by 0.5% fails `validate` with its name, every hash fixed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edge_export.run.bundle import write_manifest
from edge_export.validation.provenance import StoredTensor, check_provenance

RNG = np.random.default_rng(0)
PARAMS = {"q.weight": RNG.standard_normal((8, 4)).astype(np.float32),
          "norm.weight": np.ones(4, np.float32), "other_norm.weight": np.ones(4, np.float32)}  # fmt: skip


def test_found_transposed_renamed_and_deduplicated() -> None:
    stored = [
        StoredTensor("onnx::MatMul_7", PARAMS["q.weight"].T.copy()),
        StoredTensor("n", np.ones(4, np.float32)),
    ]
    record = check_provenance(PARAMS, stored, "fp32")
    assert record["failure"] is None and record["matched"] == 3 and record["mismatched"] == {}


def test_fp16_must_equal_the_cast() -> None:
    cast = [
        StoredTensor("w", PARAMS["q.weight"].astype(np.float16)),
        StoredTensor("n", np.ones(4, np.float16)),
    ]
    assert check_provenance(PARAMS, cast, "fp16")["failure"] is None
    assert check_provenance(PARAMS, cast, "fp32")["failure"] is not None  # fp32 wants fp32 bits


def test_a_changed_or_missing_weight_is_named() -> None:
    noisy = PARAMS["q.weight"] * (1 + 0.005 * RNG.standard_normal((8, 4))).astype(np.float32)
    record = check_provenance(
        PARAMS, [StoredTensor("w", noisy), StoredTensor("n", np.ones(4, np.float32))], "fp32"
    )
    assert (
        set(record["mismatched"]) == {"q.weight"} and "differs by up to" in record["mismatched"]["q.weight"]
    )
    assert "q.weight" in record["failure"] and "2 of 3 parameters" in record["failure"]
    missing = check_provenance(PARAMS, [StoredTensor("n", np.ones(4, np.float32))], "fp32")
    assert missing["mismatched"]["q.weight"] == "no stored tensor of its shape"


def test_quantized_recipes_list_what_is_not_verified() -> None:
    stored = [
        StoredTensor("q_quantized", np.zeros((4, 8), np.uint8)),
        StoredTensor("n", np.ones(4, np.float32)),
    ]
    record = check_provenance(PARAMS, stored, "int8")
    assert record["failure"] is None and record["not_verified"] == ["q.weight"]
    assert check_provenance(PARAMS, None, "fp32") == {
        "checked": False, "reason": "the target does not read weights back yet", "failure": None,
    }  # fmt: skip


def test_planted_weight_noise_fails_validate(
    bert_onnx_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    from onnx import numpy_helper

    manifest = json.loads((bert_onnx_bundle / "manifest.json").read_text())
    provenance = manifest["validation"]["provenance"]
    assert provenance["checked"] and provenance["matched"] == provenance["parameters"] > 20
    planted = shutil.copytree(bert_onnx_bundle, tmp_path / "planted")
    model = onnx.load(str(planted / "model.onnx"))
    target = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)) if len(i.dims) == 2 else 0)
    weights = numpy_helper.to_array(target)
    noisy = weights * (1 + 0.005 * np.random.default_rng(1).standard_normal(weights.shape)).astype(np.float32)
    target.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), target.name))
    onnx.save(model, str(planted / "model.onnx"))
    write_manifest(planted, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, stdout, stderr = run_cli(
        ["validate", planted, "--json", "--iterations", "1", "--warmup", "0"], capsys
    )
    result = json.loads(stdout)["results"][0]
    assert code == 1, stderr
    changed = result["accuracy"]["provenance"]["mismatched"]
    assert len(changed) == 1 and "weights in the artifact are not the source's" in stderr
    assert next(iter(changed)) in stderr


def test_fp16_sign_preserving_cast_is_exact() -> None:
    """ONNX Runtime's fp16 converter keeps the sign of magnitudes below the smallest subnormal
    (MiniLM's embedding has 7 such values): that is the recipe's cast, not a change."""
    value = np.array([2.4e-8, -1.6e-8, 0.25, 0.0], np.float32)
    ort_style = np.array([6e-8, -6e-8, 0.25, 0.0], np.float16)
    assert check_provenance({"w": value}, [StoredTensor("w", ort_style)], "fp16")["failure"] is None
    off_by_one = ort_style.copy()
    off_by_one[2] = np.nextafter(np.float16(0.25), np.float16(1))
    assert "w" in check_provenance({"w": value}, [StoredTensor("w", off_by_one)], "fp16")["mismatched"]


def test_planted_layernorm_noise_in_an_int8_bundle_fails_validate(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0.5% noise on one LayerNorm weight of an int8 model stays inside every accuracy gate (issue 17);
    the tensors the recipe leaves float must still be the source's, bit for bit."""
    import onnx
    from conftest import export_bundle
    from onnx import numpy_helper

    bundle = export_bundle(tmp_path_factory, tiny_bert, "onnx:int8-dynamic")
    capsys.readouterr()  # the export's own table
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation"]["provenance"]["not_verified"]  # the quantized MatMul weights
    model = onnx.load(str(bundle / "model.onnx"))
    norm = next(i for i in model.graph.initializer if len(i.dims) == 1 and "LayerNorm.weight" in i.name)
    values = numpy_helper.to_array(norm)
    norm.CopyFrom(numpy_helper.from_array((values * 1.005).astype(np.float32), norm.name))
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("schema", "files")})
    code, stdout, stderr = run_cli(
        ["validate", bundle, "--json", "--iterations", "1", "--warmup", "0"], capsys
    )
    assert code == 1 and "weights in the artifact are not the source's" in stderr
    changed = list(json.loads(stdout)["results"][0]["accuracy"]["provenance"]["mismatched"])
    assert len(changed) == 1 and norm.name.endswith(changed[0]) and changed[0] in stderr
