"""Config building: file values, flag overrides, nested merge, YAML and TOML, strict keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_export.config import ExportConfig, build_config, read_config_file
from edge_export.errors import ConfigError

YAML_TEXT = """\
model: org/tiny
task: fill-mask
targets: [onnx]
quantize: [fp32, int8]
recipe_options:
  "onnx:int4-weight":
    block_size: 64
validation:
  generate_tokens: 8
  gates:
    "*":
      sqnr_db: 20.0
latency:
  warmup: 1
  iterations: 5
"""

TOML_TEXT = """\
model = "org/tiny"
task = "fill-mask"
targets = ["onnx"]
quantize = ["fp32", "int8"]

[recipe_options."onnx:int4-weight"]
block_size = 64

[validation]
generate_tokens = 8

[validation.gates."*"]
sqnr_db = 20.0

[latency]
warmup = 1
iterations = 5
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- read_config_file --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text"), [("c.yaml", YAML_TEXT), ("c.yml", YAML_TEXT),
                                            ("c.toml", TOML_TEXT)])  # fmt: skip
def test_yaml_and_toml_parse_to_the_same_values(tmp_path: Path, name: str, text: str) -> None:
    data = read_config_file(_write(tmp_path, name, text))
    assert data == {
        "model": "org/tiny",
        "task": "fill-mask",
        "targets": ["onnx"],
        "quantize": ["fp32", "int8"],
        "recipe_options": {"onnx:int4-weight": {"block_size": 64}},
        "validation": {"generate_tokens": 8, "gates": {"*": {"sqnr_db": 20.0}}},
        "latency": {"warmup": 1, "iterations": 5},
    }
    cfg = build_config(data, {})
    assert cfg.validation.gates == {"*": {"sqnr_db": 20.0}}
    assert cfg.recipe_options == {"onnx:int4-weight": {"block_size": 64}}
    assert (cfg.latency.warmup, cfg.latency.iterations) == (1, 5)


@pytest.mark.parametrize(
    ("name", "text"),
    [("empty.yaml", ""), ("comments.yaml", "# nothing set\n\n"), ("empty.toml", ""),
     ("comments.toml", "# nothing set\n")],
)  # fmt: skip
def test_empty_file_is_no_options(tmp_path: Path, name: str, text: str) -> None:
    assert read_config_file(_write(tmp_path, name, text)) == {}
    cfg = build_config(read_config_file(tmp_path / name), {"model": "m"})
    assert cfg == ExportConfig(model="m")


@pytest.mark.parametrize("text", ["- onnx\n- coreml\n", "just a string\n", "42\n"])
def test_non_mapping_top_level_rejected(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "c.yaml", text)
    with pytest.raises(ConfigError, match="mapping") as info:
        read_config_file(path)
    assert str(path) in info.value.message
    assert info.value.exit_code == 2


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        read_config_file(tmp_path / "nope.yaml")
    assert info.value.hint and "--config" in info.value.hint


def test_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        read_config_file(tmp_path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("bad.yaml", "model: [unclosed\n"), ("bad.toml", "model = \n"),
     ("tabs.yaml", "validation:\n\t- x\n")],
)  # fmt: skip
def test_unparsable_file_rejected_in_one_line(tmp_path: Path, name: str, text: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match="does not parse") as info:
        read_config_file(path)
    assert "\n" not in info.value.one_line()


# ---- build_config ------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = build_config({}, {"model": "m"})
    assert cfg.model == "m"
    assert cfg.task is None
    assert cfg.targets == ["onnx"] and cfg.quantize == ["fp32"] and cfg.recipes == []
    assert cfg.out == Path("edge-export-out")
    assert cfg.force is False and cfg.allow_pickle is False and cfg.trust_remote_code is False
    assert cfg.devices == ["local"]
    assert cfg.validation.enabled and cfg.latency.enabled


def test_flags_override_file_values() -> None:
    file_values = {
        "model": "from-file",
        "task": "fill-mask",
        "out": "file-out",
        "quantize": ["int8"],
    }
    flags = {"model": "from-flag", "task": "text-classification", "quantize": ["int4"]}
    cfg = build_config(file_values, flags)
    assert cfg.model == "from-flag"
    assert cfg.task == "text-classification"
    assert cfg.quantize == ["int4"]  # a list flag replaces the file's list, it does not extend it
    assert cfg.out == Path("file-out")


def test_flags_that_were_not_given_keep_file_values() -> None:
    file_values = {"model": "m", "force": True, "allow_pickle": True, "task": "fill-mask"}
    flags = {"model": None, "force": None, "allow_pickle": None, "task": None, "out": None}
    cfg = build_config(file_values, flags)
    assert cfg.model == "m"
    assert cfg.force is True and cfg.allow_pickle is True
    assert cfg.task == "fill-mask"
    assert cfg.out == Path("edge-export-out")


def test_false_flag_still_overrides() -> None:
    cfg = build_config({"model": "m", "force": True}, {"force": False})
    assert cfg.force is False


def test_nested_sections_merge_key_by_key() -> None:
    file_values = {
        "model": "m",
        "validation": {"generate_tokens": 5, "gates": {"*": {"sqnr_db": 20.0}}},
        "latency": {"warmup": 7, "iterations": 50, "threads": 2},
    }
    flags = {"validation": {"data": Path("texts.txt")}, "latency": {"iterations": 3}}
    cfg = build_config(file_values, flags)
    assert cfg.validation.generate_tokens == 5
    assert cfg.validation.data == Path("texts.txt")
    assert cfg.validation.gates == {"*": {"sqnr_db": 20.0}}
    assert cfg.latency.warmup == 7
    assert cfg.latency.iterations == 3
    assert cfg.latency.threads == 2
    assert file_values["latency"]["iterations"] == 50  # the input dicts are not modified


def test_merge_goes_deeper_than_one_level() -> None:
    file_values = {
        "model": "m",
        "validation": {"gates": {"*": {"sqnr_db": 20.0}, "int8": {"cosine_min": 0.9}}},
    }
    flags = {"validation": {"gates": {"*": {"top1_agreement": 0.5}}}}
    cfg = build_config(file_values, flags)
    assert cfg.validation.gates == {
        "*": {"sqnr_db": 20.0, "top1_agreement": 0.5},
        "int8": {"cosine_min": 0.9},
    }


def test_read_file_then_flags(tmp_path: Path) -> None:
    """What `--config c.toml --warmup 0 --task feature-extraction` does."""
    data = read_config_file(_write(tmp_path, "c.toml", TOML_TEXT))
    cfg = build_config(data, {"task": "feature-extraction", "latency": {"warmup": 0}})
    assert cfg.task == "feature-extraction"
    assert cfg.latency.warmup == 0 and cfg.latency.iterations == 5
    assert cfg.validation.generate_tokens == 8


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({"validaton": {}}, ("'validaton'", "did you mean 'validation'")),
        (
            {"validation": {"generate_tokns": 3}},
            ("'validation.generate_tokns'", "'generate_tokens'"),
        ),
        ({"latency": {"warmpu": 1}}, ("'latency.warmpu'", "'warmup'")),
        ({"zzzzzz": 1}, ("'zzzzzz'", "remove it")),
    ],
)
def test_unknown_keys_rejected_with_suggestion(values: dict, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as info:
        build_config({"model": "m", **values}, {})
    line = info.value.one_line()
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"validation": {"generate_tokens": 0}}, "validation.generate_tokens"),
        ({"latency": {"iterations": "many"}}, "latency.iterations"),
        ({"targets": "onnx"}, "targets"),
        ({"validation": {"gates": {"*": {"sqnr_db": "high"}}}}, "validation.gates.*.sqnr_db"),
    ],
)
def test_invalid_values_rejected(values: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid config value for '{where}'"):
        build_config({"model": "m", **values}, {})


def test_model_is_required() -> None:
    with pytest.raises(ConfigError, match="'model'"):
        build_config({}, {"model": None})


def test_recipes_take_comma_lists_like_quantize() -> None:
    from edge_export.run.plan import plan_runs

    cfg = build_config(
        {}, {"model": "m", "recipes": ["onnx:fp32, coreml:int8-w8a8", "onnx:fp32", "tflite:fp16"]}
    )
    assert [r.recipe.id for r in plan_runs(cfg)] == ["onnx:fp32", "coreml:int8-w8a8", "tflite:fp16"]
    with pytest.raises(ConfigError, match="unknown recipe 'onnx:int9'"):
        plan_runs(build_config({}, {"model": "m", "recipes": ["onnx:fp32,onnx:int9"]}))
