"""Recipe options as typed data: every recipe's options model validates its defaults, and bad
overrides are refused in one ConfigError line that names every bad key at once."""

from __future__ import annotations

import pytest

from edge_export.errors import ConfigError
from edge_export.targets.base import Recipe, RecipeOptions
from edge_export.targets.registry import create, get_recipe

TARGETS = ("onnx", "executorch", "tflite", "coreml")
ALL_RECIPES = [recipe for name in TARGETS for recipe in create(name).recipes()]


def _refusal(recipe: str | Recipe, overrides: dict) -> ConfigError:
    """The one-line ConfigError `overrides` raise on the recipe (or the recipe with that id)."""
    with pytest.raises(ConfigError) as info:
        (get_recipe(recipe) if isinstance(recipe, str) else recipe).with_options(overrides)
    assert "\n" not in info.value.message
    return info.value


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda r: r.id)
def test_defaults_validate_through_the_options_model(recipe: Recipe) -> None:
    model = recipe.options_model
    assert isinstance(model, type) and issubclass(model, RecipeOptions)
    assert model.model_config["extra"] == "forbid"
    assert model.model_validate(dict(recipe.options)).model_dump() == dict(recipe.options)
    assert recipe.with_options({}).options == recipe.options


def test_every_bad_key_is_named_at_once() -> None:
    error = _refusal("onnx:int4-weight", {"blocksize": 64, "head_bitz": 4, "bits": 3, "symmetric": "yes"})
    assert "has no option 'blocksize', 'head_bitz'" in error.message
    assert "bits must be 4 or 8, got 3" in error.message
    assert "symmetric must be bool, got 'yes'" in error.message
    hint = error.hint or ""
    assert "did you mean 'block_size' for 'blocksize'?" in hint
    assert "did you mean 'head_bits' for 'head_bitz'?" in hint
    assert "valid options: accuracy_level, bits, block_size" in hint


def test_several_bad_values_are_named_at_once() -> None:
    error = _refusal("executorch:xnnpack-8da4w", {"group_size": 48, "max_batch_size": 0, "custom_ops": 1})
    assert error.message == (
        "recipe executorch:xnnpack-8da4w: max_batch_size must be >= 1, got 0; "
        "custom_ops must be bool, got 1; group_size must be 16, 32, 64, 128 or 256, got 48"
    )


@pytest.mark.parametrize(
    ("recipe", "overrides", "message"),
    [("onnx:int8-dynamic", {"method": "fast"},
      "method must be 'auto', 'matmul-integer' or 'blockwise', got 'fast'"),
     ("onnx:int8-static", {"calibration_method": "max"},
      "calibration_method must be 'minmax', 'percentile' or 'entropy', got 'max'"),
     ("executorch:coreml-int8", {"minimum_deployment_target": "iOS15"},
      "minimum_deployment_target must be 'iOS16', 'iOS17' or 'iOS18', got 'iOS15'"),
     ("tflite:int4-block", {"block_size": 16}, "block_size must be 32, 64, 128 or 256, got 16"),
     ("coreml:fp16", {"compute_units": "NPU"},
      "compute_units must be 'ALL', 'CPU_AND_NE', 'CPU_AND_GPU' or 'CPU_ONLY', got 'NPU'"),
     ("coreml:int4-block", {"head_bits": 2}, "head_bits must be 4 or 8, got 2")],
)  # fmt: skip
def test_a_bad_literal_names_the_allowed_values(recipe: str, overrides: dict, message: str) -> None:
    assert message in _refusal(recipe, overrides).message


def test_an_int_is_accepted_for_a_float_option() -> None:
    for recipe_id in ("coreml:int8-w8a8", "onnx:int8-static"):
        ratio = get_recipe(recipe_id).with_options({"outlier_ratio": 2}).options["outlier_ratio"]
        assert ratio == 2.0 and isinstance(ratio, float)


@pytest.mark.parametrize(
    ("recipe", "key", "message"),
    [("executorch:xnnpack-int8", "max_seq_len", "max_seq_len must be int, got True"),
     ("onnx:int4-weight", "block_size", "block_size must be int (16, 32, 64, 128 or 256), got True"),
     ("coreml:int8-w8a8", "outlier_ratio", "outlier_ratio must be float, got True"),
     ("tflite:fp32", "seq_buckets", "seq_buckets must be list, got True")],
)  # fmt: skip
def test_a_bool_is_refused_for_a_number(recipe: str, key: str, message: str) -> None:
    assert message in _refusal(recipe, {key: True}).message


def test_list_items_are_checked_one_by_one() -> None:
    error = _refusal("tflite:int4-block", {"seq_buckets": [16, "a", 0], "int8_layers": [""]})
    assert "seq_buckets[1] must be int, got 'a'" in error.message
    assert "seq_buckets[2] must be >= 1, got 0" in error.message
    assert "int8_layers[0] must be a non-empty str, got ''" in error.message


def test_a_recipe_without_options_refuses_any() -> None:
    error = _refusal("onnx:fp32", {"block_size": 32})
    assert "recipe onnx:fp32 has no option 'block_size'" in error.message
    assert error.hint == "valid options: none"


def test_a_recipe_without_a_model_is_typed_by_its_defaults() -> None:
    """Third-party targets may still declare plain option dicts."""
    recipe = Recipe("plugin:int8", "int8", "x", options={"ratio": 1.5, "steps": 3, "mode": "a"})
    assert dict(recipe.with_options({"ratio": 2}).options) == {"ratio": 2.0, "steps": 3, "mode": "a"}
    error = _refusal(recipe, {"steps": True, "mode": 1})
    assert "steps must be int, got True; mode must be str, got 1" in error.message


def test_the_executorch_backend_is_declared_not_read_from_the_name() -> None:
    from edge_export.targets.executorch.recipes import backend_of

    backends = {r.id: backend_of(r) for r in create("executorch").recipes()}
    assert {k for k, v in backends.items() if v == "coreml"} == {
        "executorch:coreml-fp16",
        "executorch:coreml-int8",
    }
    assert "backend" not in get_recipe("executorch:coreml-fp16").options  # manifests unchanged
    with pytest.raises(ValueError, match="not an ExecuTorch recipe"):
        backend_of(get_recipe("onnx:fp32"))
