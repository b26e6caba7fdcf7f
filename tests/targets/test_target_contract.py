"""The contract every target keeps, one parametrized test per promise (all four targets):
a missing extra is exit 2 naming it; a broken converter is exit 3 naming its stage while the other
targets still produce; an unknown recipe option is refused with a suggestion; recipe ids are stable
(pipelines and stored results refer to them)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import load_report, result_for, run_cli

from edge_export.errors import ConfigError
from edge_export.targets.registry import create

# target -> (class name, the module and function its fp32 conversion of an encoder goes through,
# the stage a failure there is reported at)
TARGETS = {
    "onnx": ("OnnxTarget", "edge_export.targets.onnx.graph", "torch_to_onnx", "export"),
    "executorch": ("ExecutorchTarget", "edge_export.targets.executorch.lower", "lower", "lower"),
    "tflite": ("TfliteTarget", "edge_export.targets.tflite.convert", "encoder", "convert"),
    "coreml": ("CoremlTarget", "edge_export.targets.coreml.convert", "convert_encoder", "convert"),
}

RECIPE_IDS = {
    "onnx": ["onnx:fp16", "onnx:fp32", "onnx:int4-weight", "onnx:int8-dynamic", "onnx:int8-static"],
    "executorch": ["executorch:coreml-fp16", "executorch:coreml-int8", "executorch:xnnpack-8da4w",
                   "executorch:xnnpack-fp32", "executorch:xnnpack-int8", "executorch:xnnpack-int8-static"],
    "tflite": ["tflite:fp16", "tflite:fp32", "tflite:int4-block", "tflite:int8-dynamic", "tflite:int8-static",
               "tflite:int8-weight"],
    "coreml": ["coreml:fp16", "coreml:fp32", "coreml:int4-block", "coreml:int8-w8a8", "coreml:int8-weight",
               "coreml:palettize-4bit", "coreml:palettize-6bit"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(TARGETS))
def test_recipe_ids_are_stable(name: str) -> None:
    assert sorted(r.id for r in create(name).recipes()) == RECIPE_IDS[name]


@pytest.mark.parametrize("name", list(TARGETS))
def test_missing_extra_is_exit_2_naming_it(
    name: str,
    tmp_path: Path,
    tiny_bert: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cls = getattr(importlib.import_module(f"edge_export.targets.{name}"), TARGETS[name][0])
    monkeypatch.setattr(cls, "missing_dependency", lambda self: "some_module")
    code, _, err = run_cli(["export", tiny_bert, "--out", tmp_path / "out", "--target", name], capsys)
    assert code == 2 and f"pip install 'edge-export[{name}]'" in err and "some_module" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [n for n in TARGETS if n != "onnx"])
def test_broken_converter_is_exit_3_naming_the_stage_while_others_produce(
    name: str, tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, module, function, stage = TARGETS[name]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("converter rejected node aten.frobnicate")

    monkeypatch.setattr(importlib.import_module(module), function, broken)
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--target", f"onnx,{name}", "--no-latency"])
    report = load_report(out)
    assert code == 3
    failed = result_for(report, _fp32(name))
    assert result_for(report, "onnx:fp32")["status"] == "passed"
    assert failed["status"] == "error" and failed["error"]["stage"] == stage
    assert "converter rejected node aten.frobnicate" in failed["error"]["message"]
    assert failed["error"]["trace"][-1].endswith("in broken")  # where in the library it failed
    assert not (out / failed["recipe"].replace(":", "-")).exists()


def test_broken_onnx_converter_is_exit_3_while_others_produce(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX is the other targets' witness above; here TFLite is its witness."""
    _, module, function, stage = TARGETS["onnx"]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("converter rejected node aten.frobnicate")

    monkeypatch.setattr(importlib.import_module(module), function, broken)
    out = tmp_path / "out"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--target", "onnx,tflite", "--no-latency"])
    report = load_report(out)
    assert code == 3 and result_for(report, "tflite:fp32")["status"] == "passed"
    failed = result_for(report, "onnx:fp32")
    assert failed["status"] == "error" and failed["error"]["stage"] == stage
    assert "converter rejected node aten.frobnicate" in failed["error"]["message"]


def _fp32(name: str) -> str:
    return "executorch:xnnpack-fp32" if name == "executorch" else f"{name}:fp32"


@pytest.mark.parametrize("name", list(TARGETS))
def test_unknown_option_is_refused_with_a_suggestion(name: str) -> None:
    recipe = next(r for r in create(name).recipes() if r.options)
    option = sorted(recipe.options)[0]
    typo = option[:-1] + ("x" if option[-1] != "x" else "y")
    with pytest.raises(ConfigError) as info:
        recipe.with_options({typo: recipe.options[option]})
    assert f"no option '{typo}'" in info.value.message
    assert f"did you mean '{option}' for '{typo}'" in (info.value.hint or "")
