"""The lab file and its matrix, without exporting anything: validation errors (one line, exit 2),
the resolved matrix of examples/lab.yaml, shards, devices, run labels."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli

from edge_export.errors import ConfigError
from edge_export.lab.matrix import Cell, export_groups, parse_shard, resolve_matrix, shard
from edge_export.lab.runner import new_run_id, run_labels
from edge_export.lab.spec import parse_lab, read_lab_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGETS = ("onnx", "tflite", "executorch", "coreml")
RECIPES = {  # the recommended recipe of each target for fp32, int8, int4
    "onnx": ["onnx:fp32", "onnx:int8-dynamic", "onnx:int4-weight"],
    "tflite": ["tflite:fp32", "tflite:int8-dynamic", "tflite:int4-block"],
    "executorch": ["executorch:xnnpack-fp32", "executorch:xnnpack-int8", "executorch:xnnpack-8da4w"],
    "coreml": ["coreml:fp32", "coreml:int8-weight", "coreml:int4-block"],
}


def write_lab(folder: Path, data: dict[str, Any], name: str = "lab.yaml") -> Path:
    """A lab file in `folder` (models named in `data` get an empty folder of their own)."""
    for model in data.get("models", {}).values():
        if isinstance(model, dict) and str(model.get("path", "")).startswith("m-"):
            (folder / model["path"]).mkdir(exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def base_lab(**changes: Any) -> dict[str, Any]:
    return {"models": {"a": {"path": "m-a"}}, "recipes": ["onnx:fp32"], **changes}


def lab_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], *flags: str) -> str:
    """Run `lab run --dry-run` on a bad lab file: exit 2 and exactly one error line (returned)."""
    code, out, err = run_cli(["lab", "run", write_lab(tmp_path, data), "--dry-run", *flags], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == ""
    return lines[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (base_lab(modles={}), "unknown lab key 'modles' (fix: did you mean 'models'?)"),
        (
            base_lab(models={"a": {"pth": "m-a"}}),
            "unknown lab key 'models.a.pth' (fix: did you mean 'path'?)",
        ),
        (
            base_lab(latency={"iteration": 3}),
            "unknown lab key 'latency.iteration' (fix: did you mean 'iterations'?)",
        ),
        (base_lab(latency={"iterations": 0}), "invalid value for 'latency.iterations'"),
        (base_lab(models={}), "'models'"),
    ],
)
def test_bad_keys_are_one_line_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], expected: str
) -> None:
    assert expected in lab_error(tmp_path, capsys, data)


def test_a_missing_model_path_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = lab_error(tmp_path, capsys, base_lab(models={"bert": {"path": "./nowhere/model"}}))
    assert "model 'bert'" in line and "./nowhere/model does not exist" in line
    line = lab_error(tmp_path, capsys, base_lab(models={"x": {"path": "demo:nope"}}))
    assert "model 'x'" in line and "unknown demo model 'nope'" in line


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"devices": ["local", "pie"]}, "unknown device 'pie'"),
        ({"recipes": ["onnx:int9"]}, "onnx:int9"),
        ({"recipes": [], "targets": ["onxx"]}, "unknown target 'onxx'"),
        ({"recipes": [], "targets": ["onnx"], "quantize": ["int3"]}, "unknown precision 'int3'"),
        ({"recipes": []}, "names no recipes"),
        ({"gates": {"onnx:fp32": {"cosine_mn": 0.9}}}, "unknown gate metric 'cosine_mn'"),
        ({"models": {"a/b": {"path": "m-a"}}}, "model label 'a/b'"),
    ],
)
def test_unknown_names_in_the_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], expected: str
) -> None:
    assert expected in lab_error(tmp_path, capsys, base_lab(**changes))


@pytest.mark.parametrize("text", ["3/2", "0/0", "a/b", "1/0", "2", "1/2/3"])
def test_bad_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    assert "--shard" in lab_error(tmp_path, capsys, base_lab(), "--shard", text)


def test_inventory_devices_and_what_they_can_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device from --inventory is known; one without Python gets only its benchmark tools'
    formats (the rest is listed as skipped), the others every recipe."""
    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(tmp_path / "cache"))
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({
        "phone": {"type": "adb", "serial": "X1", "python": None,
                  "benchmark_tools": {"tflite": "/data/local/tmp/benchmark_model"}},
        "pi": {"type": "ssh", "host": "127.0.0.1"},
    }))  # fmt: skip
    lab = write_lab(
        tmp_path,
        base_lab(models={"a": {"path": str(tiny_bert)}}, recipes=["onnx:fp32", "tflite:fp32"],
                 devices=["local", "phone", "pi"]),
    )  # fmt: skip
    code, out, err = run_cli(["lab", "run", lab, "--dry-run", "--json", "--inventory", inventory], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert [c["id"] for c in plan["cells"]] == [
        "a|onnx:fp32|local", "a|onnx:fp32|pi", "a|tflite:fp32|local", "a|tflite:fp32|phone", "a|tflite:fp32|pi",
    ]  # fmt: skip
    assert [g["devices"] for g in plan["groups"]] == [["local", "pi"], ["local", "phone", "pi"]]
    assert plan["skipped"] == ["phone: no runtime for onnx (python: null and no benchmark_tools.onnx)"]
    assert "unknown device 'phone'" in lab_error(tmp_path, capsys, base_lab(devices=["phone"]))


def test_example_lab_resolves_the_full_matrix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/lab.yaml: 2 real models x 4 targets x fp32/int8/int4 x local, 24 exports, nothing
    exported (an empty export cache: every group is still to export)."""
    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["lab", "run", EXAMPLES / "lab.yaml", "--dry-run", "--json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    expected = [f"{m}|{r}|local" for m in ("minilm", "smollm2") for t in TARGETS for r in RECIPES[t]]
    assert [cell["id"] for cell in plan["cells"]] == expected
    assert {cell["precision"] for cell in plan["cells"]} == {"fp32", "int8", "int4"}
    assert len(plan["groups"]) == 24 and all(g["cached"] is False for g in plan["groups"])
    assert plan["cache"] == str(tmp_path / "cache")
    assert not (EXAMPLES / "lab.sqlite").exists()  # a dry run opens no store
    spec = read_lab_file(EXAMPLES / "lab.yaml")
    assert all(Path(model.path).exists() for model in spec.models.values())  # demo:NAME resolved
    assert spec.gate_overrides()["onnx:int8-dynamic"] == {"embedding_cosine_min": 0.99}


def _cells(models: int, recipes: int, devices: int) -> list[Cell]:
    return [
        Cell(f"m{m}", "onnx", f"onnx:r{r}", f"d{d}")
        for m in range(models)
        for r in range(recipes)
        for d in range(devices)
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 40])
def test_shards_partition_the_matrix_by_export_group(count: int) -> None:
    cells = _cells(3, 4, 3)
    parts = [shard(cells, index, count) for index in range(1, count + 1)]
    ids = [cell.id for part in parts for cell in part]
    assert sorted(ids) == sorted(cell.id for cell in cells)  # union is everything, nothing twice
    assert len(ids) == len(set(ids))
    for part in parts:  # an export group lies in one shard, whole
        for group, members in export_groups(part).items():
            assert len(members) == 3, group
    assert parts == [shard(list(cells), index, count) for index in range(1, count + 1)]  # stable
    # the split follows the cells, not their order: a reversed matrix gives the same groups
    reverse = [{c.group for c in shard(cells[::-1], index, count)} for index in range(1, count + 1)]
    assert reverse == [{c.group for c in part} for part in parts]
    sizes = [len(export_groups(part)) for part in parts]
    assert max(sizes) - min(sizes) <= 1  # dealt round robin


def test_parse_shard() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/1", "5/4", "-1/2", "x/2", ""):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_matrix_order_and_recipe_union(tmp_path: Path) -> None:
    (tmp_path / "m-a").mkdir()
    (tmp_path / "m-b").mkdir()
    data = {"models": {"b": {"path": "m-b"}, "a": {"path": "m-a"}}, "recipes": ["onnx:int8-static"],
            "targets": ["onnx"], "quantize": ["fp32,int8"], "devices": ["local"]}  # fmt: skip
    spec = parse_lab(data, "lab", tmp_path)
    cells = resolve_matrix(spec)
    assert [c.id for c in cells] == [
        "b|onnx:int8-static|local", "b|onnx:fp32|local", "b|onnx:int8-dynamic|local",
        "a|onnx:int8-static|local", "a|onnx:fp32|local", "a|onnx:int8-dynamic|local",
    ]  # fmt: skip
    assert spec.models["a"].path == str((tmp_path / "m-a").resolve())


def test_run_labels_from_ci_git_and_flags(tmp_path: Path) -> None:
    env = {"GITHUB_SHA": "abc123", "GITHUB_REF_NAME": "main", "GITHUB_RUN_ID": "77", "GITHUB_JOB": "lab"}
    labels = run_labels(["phone=pixel8", "git_branch=feature"], env=env, cwd=tmp_path)
    assert labels == {"git_commit": "abc123", "git_branch": "feature", "ci_run": "77", "ci_job": "lab",
                      "phone": "pixel8"}  # fmt: skip
    assert run_labels([], env={"CI_COMMIT_SHA": "def", "CI_JOB_ID": "9"}, cwd=tmp_path) == {
        "git_commit": "def", "ci_job": "9",
    }  # fmt: skip
    assert run_labels([], env={}, cwd=tmp_path) == {}  # not a repository, no CI
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "trunk"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run_labels([], env={}, cwd=tmp_path) == {"git_commit": head, "git_branch": "trunk"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        run_labels(["novalue"], env={}, cwd=tmp_path)


def test_run_ids_sort_by_time_and_differ() -> None:
    first, second = new_run_id(), new_run_id()
    assert first != second and len(first) == len(second) == 23
    assert first[:16] <= second[:16]
