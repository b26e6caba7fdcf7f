"""Core ML target: recipes that cannot apply are refused before any conversion (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli

from edge_export.errors import ConfigError
from edge_export.targets.coreml import CoremlTarget, deployment_target, resolve_options
from edge_export.targets.registry import get_recipe


@pytest.mark.parametrize(
    ("recipe", "options", "message"),
    [("coreml:int4-block", {"minimum_deployment_target": "iOS17"},
      "minimum_deployment_target iOS17 is too old: int4 per-block weights need iOS18"),
     ("coreml:fp16", {"compute_units": "NEURAL_ENGINE"}, "compute_units must be 'ALL', 'CPU_AND_NE', 'CPU_AND_GPU' or 'CPU_ONLY', got 'NEURAL_ENGINE'"),
     ("coreml:fp16", {"minimum_deployment_target": "iOS15"}, "minimum_deployment_target must be 'auto', 'iOS17' or 'iOS18', got 'iOS15'"),
     ("coreml:fp16", {"shape_mode": "dynamic"}, "shape_mode must be 'range' or 'enumerated', got 'dynamic'"),
     ("coreml:int4-block", {"block_size": 48}, "block_size must be 16, 32, 64 or 128, got 48"),
     ("coreml:int4-block", {"head_bits": 2}, "head_bits must be 4 or 8"),
     ("coreml:int4-block", {"zero_point": "int8"}, "zero_point must be 'auto', 'int4' or 'fp16', got 'int8'"),
     ("coreml:fp16", {"max_seq_len": 4096}, "max_seq_len 4096 is outside 2..128"),
     ("coreml:fp16", {"shape_mode": "enumerated", "seq_buckets": [16, 4096]},
      "seq_buckets [16, 4096] must lie in 1..128"),
     ("coreml:fp16", {"shape_mode": "enumerated", "minimum_deployment_target": "iOS17"},
      "enumerated shapes on more than one input need iOS18"),
     ("coreml:palettize-4bit", {"group_size": 7}, "no linear weight has an output size divisible by group_size 7"),
     ("coreml:palettize-4bit", {"group_size": 4, "minimum_deployment_target": "iOS17"},
      "per-grouped-channel palettes need iOS18"),
     ("coreml:int8-w8a8", {"calibration_samples": 0}, "calibration_samples must be >= 1, got 0"),
     ("coreml:int8-w8a8", {"outlier_ratio": -1.0}, "outlier_ratio must be >= 0, got -1.0"),
     ("coreml:fp16", {"blocksize": 32}, "has no option 'blocksize'")],
)  # fmt: skip
def test_bad_recipe_options_fail_before_conversion(
    tmp_path: Path,
    tiny_bert: Path,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    options: dict,
    message: str,
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"recipe_options": {recipe: options}}))
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["export", tiny_bert, "--out", out, "--recipe", recipe, "--config", config], capsys
    )
    assert code == 2 and not out.exists()
    assert message in err and len(err.strip().splitlines()) <= 2 and "Traceback" not in err


def test_unknown_recipe_lists_the_coreml_ones(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", tiny_bert, "--out", tmp_path / "o", "--recipe", "coreml:int4"], capsys)
    assert code == 2 and "coreml:int4-block" in err


def _fake(kind: str, modules: torch.nn.Module, model_type: str = "bert", inputs: int = 3) -> SimpleNamespace:
    hf_model = modules
    hf_model.config = SimpleNamespace(model_type=model_type)
    io = SimpleNamespace(kind=kind, input_names=[f"in{i}" for i in range(inputs)])
    return SimpleNamespace(hf_model=hf_model, max_positions=128, io=io)


def test_compressing_a_model_without_linear_layers_is_refused() -> None:
    model = _fake("encoder", torch.nn.Sequential(torch.nn.Embedding(10, 4)))
    for recipe in (
        "coreml:int8-weight",
        "coreml:int8-w8a8",
        "coreml:int4-block",
        "coreml:palettize-4bit",
        "coreml:palettize-6bit",
    ):
        with pytest.raises(ConfigError, match="no linear layers to quantize"):
            CoremlTarget().check(model, get_recipe(recipe))
    CoremlTarget().check(model, get_recipe("coreml:fp16"))  # nothing to compress is fine uncompressed


def test_deployment_target_is_raised_only_with_a_reason() -> None:
    encoder = _fake("encoder", torch.nn.Sequential(torch.nn.Linear(32, 32)))
    fp16 = resolve_options(get_recipe("coreml:fp16"), encoder)
    assert deployment_target(fp16, encoder) == ("iOS17", None)
    target, reason = deployment_target(resolve_options(get_recipe("coreml:int4-block"), encoder), encoder)
    assert target == "iOS18" and "int4 per-block weights need iOS18" in reason
    decoder = _fake("decoder", torch.nn.Sequential(torch.nn.Linear(32, 32)), model_type="llama")
    target, reason = deployment_target(resolve_options(get_recipe("coreml:fp16"), decoder), decoder)
    assert target == "iOS18" and "Core ML state" in reason
    explicit = get_recipe("coreml:fp16").with_options({"minimum_deployment_target": "iOS18"})
    assert deployment_target(resolve_options(explicit, encoder), encoder) == ("iOS18", None)
