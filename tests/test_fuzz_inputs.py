"""Generated junk through the CLI's parsing entry points (issue 15): config files, inventory files
and bundle manifests with wrong types, unknown keys, huge numbers, unicode and binary bytes. Never
a traceback; a refused input is exit 2 with one `error:` line; nothing is ever written at OUT."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_export.cli import main as cli_main

KEYS = ["model", "task", "targets", "quantize", "recipes", "recipe_options", "out", "force", "devices",
        "inventory", "validation", "latency", "enabled", "data", "gates", "warmup", "iterations", "type",
        "host", "port", "schema", "source", "sha256", "recipe", "id", "precision", "artifact", "io",
        "kind", "inputs", "name", "files", "options", "onnx:int4-weight", "block_size", "*"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["onnx", "onnx:fp32", "fp32", "local", "ssh", "\u202e\x00\ud7ff", "../../etc/passwd"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), VALUES, max_size=6)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _yaml_bytes(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")


def _run(argv: list[Any]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main([str(a) for a in argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _check_refused(code: int, stderr: str, allowed: tuple[int, ...] = (2,)) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if not line.startswith("warning: ")]
    assert code in allowed, stderr
    if code != 0:
        assert len(errors) == 1 and errors[0].startswith("error: "), stderr
        assert "unexpected" not in errors[0], stderr


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="edge-export-fuzz-"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _file(workdir: Path, name: str, payload: bytes) -> Path:
    path = workdir / name
    path.write_bytes(payload)
    return path


@FUZZ
@given(doc=DOCUMENTS, suffix=st.sampled_from([".yaml", ".toml"]))
def test_fuzzed_config_files(workdir: Path, doc: dict, suffix: str) -> None:
    config = _file(workdir, f"c{suffix}", _yaml_bytes(doc))  # YAML text is junk TOML: also refused
    out = workdir / "out"
    code, stdout, stderr = _run(["export", workdir / "no-model", "--config", config, "--out", out])
    _check_refused(code, stderr)
    assert stdout == "" and not out.exists() and not list(workdir.glob(".out.*"))


@FUZZ
@given(payload=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".toml", ".txt", ".jsonl"]))
def test_binary_junk_as_config_and_data(workdir: Path, payload: bytes, suffix: str) -> None:
    path = _file(workdir, f"junk{suffix}", payload)
    flag = "--data" if suffix in (".txt", ".jsonl") else "--config"
    out = workdir / "out"
    code, stdout, stderr = _run(["export", workdir / "no-model", flag, path, "--out", out])
    _check_refused(code, stderr)
    assert stdout == "" and not out.exists()


@FUZZ
@given(doc=DOCUMENTS)
def test_fuzzed_inventory_files(workdir: Path, doc: dict) -> None:
    inventory = _file(workdir, "devices.yaml", _yaml_bytes(doc))
    code, _, stderr = _run(["devices", "--inventory", inventory])
    _check_refused(code, stderr, allowed=(0, 2))  # a valid inventory is listed (nothing connects)


GOOD = {
    "schema": "edge-export/manifest@1", "model": {"source": "no-model", "sha256": "0"},
    "task": "feature-extraction", "target": "onnx", "recipe": {"id": "onnx:fp32", "precision": "fp32"},
    "artifact": "model.onnx", "io": {"kind": "encoder", "inputs": [{"name": "input_ids"}]}, "files": {},
}  # fmt: skip


@st.composite
def manifests(draw: st.DrawFn) -> Any:
    """Mostly near-valid manifests with one part replaced, some pure junk."""
    if draw(st.booleans()):
        return draw(VALUES)
    manifest = json.loads(json.dumps(GOOD))
    path = draw(st.sampled_from([("model",), ("model", "source"), ("recipe",), ("recipe", "id"),
                                 ("recipe", "options"), ("io",), ("io", "inputs"), ("artifact",),
                                 ("files",), ("target",), ("task",)]))  # fmt: skip
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = draw(VALUES)
    return manifest


@FUZZ
@given(manifest=manifests(), command=st.sampled_from(["validate", "bench"]))
def test_fuzzed_manifests(workdir: Path, manifest: Any, command: str) -> None:
    bundle = workdir / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(manifest, allow_nan=True))
    (bundle / "model.onnx").write_bytes(b"not onnx")
    before = sorted(p.name for p in workdir.iterdir())
    code, _, stderr = _run([command, bundle])
    _check_refused(code, stderr)
    assert sorted(p.name for p in workdir.iterdir()) == before
