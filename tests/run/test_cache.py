"""The export cache: an unchanged re-run converts and validates nothing (latency is measured
again), a change to any key part re-exports only the recipes it touches, a corrupt cached file is
rebuilt and never used, entries appear and vanish whole (interrupts, concurrent runs), and
`cache ls|prune`. Tiny models only; a fake target (registered like a third-party one) where the
conversion itself does not matter, ONNX where it does."""

from __future__ import annotations

import errno
import json
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, load_report, result_for, run_cli

from edge_export.cache import ExportCache, cache_key, parse_size
from edge_export.config import ExportConfig
from edge_export.errors import ConfigError
from edge_export.exporter.prepared import CalibrationSet, PreparedModel, TorchRunnable
from edge_export.report.progress import Progress
from edge_export.report.result import Result
from edge_export.run.bundle import verify_bundle, write_manifest
from edge_export.run.orchestrate import cache_key as planned_key
from edge_export.run.session import ExportRun
from edge_export.targets import registry
from edge_export.targets.base import Artifact, Recipe, TargetBase

EXPORTED: list[str] = []  # recipe ids the fake target converted, in order


class FakeTarget(TargetBase):
    """Writes a small artifact; loads back the exact PyTorch reference (conversion is not the point)."""

    name, extra, quantizes = "fake", "onnx", "after-export"

    def __init__(self) -> None:
        self.model: PreparedModel | None = None

    def recipes(self) -> list[Recipe]:
        gates = {"embedding_cosine_min": 0.99}
        return [Recipe("fake:a", "fp32", "one", default_for=("fp32",), gates=gates),
                Recipe("fake:b", "int8", "another", default_for=("int8",), gates=gates)]  # fmt: skip

    def missing_dependency(self) -> str | None:
        return None

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        self.model = model

    def export(
        self, model: PreparedModel, recipe: Recipe, calibration: CalibrationSet | None, workdir: Path
    ) -> Artifact:
        EXPORTED.append(recipe.id)
        path = workdir / "model.fake"
        path.write_bytes(json.dumps({"recipe": recipe.id}).encode() + bytes(range(256)) * 8)
        return Artifact(self.name, recipe, path, [path], {"notes": [f"made by {recipe.id}"]})

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Any:
        return TorchRunnable(self.model.module, self.model.io)

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"bytes": artifact_path.stat().st_size}


@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", {**registry.factories(), "fake": FakeTarget})
    monkeypatch.setattr(registry, "_CATALOG", None)
    EXPORTED.clear()


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Recipe ids whose artifact was validated (accuracy measured) in this test."""
    seen: list[str] = []
    original = ExportRun.validate_artifact

    def spy(self: ExportRun, run: Any, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        seen.append(run.recipe.id)
        return original(self, run, path, manifest)

    monkeypatch.setattr(ExportRun, "validate_artifact", spy)
    return seen


def _export(model: Path, out: Path, cache: Path, recipes: str, *extra: Any) -> dict[str, Any]:
    code, _, _ = run_cli(["export", model, "--out", out, "--recipe", recipes, "--cache", cache, *extra])
    assert code == 0
    return load_report(out)


def _hits(report: dict[str, Any]) -> dict[str, bool]:
    return {r["recipe"]: r["cache"]["hit"] for r in report["results"]}


def test_an_unchanged_rerun_converts_nothing_and_changed_options_redo_one_recipe(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, validations: list[str]
) -> None:
    from edge_export.targets.onnx import OnnxTarget

    converted: list[str] = []
    original = OnnxTarget.export

    def spy(self: OnnxTarget, model: Any, recipe: Recipe, calibration: Any, workdir: Path) -> Artifact:
        converted.append(recipe.id)
        return original(self, model, recipe, calibration, workdir)

    monkeypatch.setattr(OnnxTarget, "export", spy)
    cache, recipes = tmp_path / "cache", "onnx:fp32,onnx:int8-dynamic"
    cold = _export(tiny_bert, tmp_path / "cold", cache, recipes, "--no-latency")
    assert converted == ["onnx:fp32", "onnx:int8-dynamic"] and _hits(cold) == dict.fromkeys(converted, False)
    converted.clear(), validations.clear()

    warm = _export(tiny_bert, tmp_path / "warm", cache, recipes, *FAST)
    assert converted == [] and validations == []  # no conversion, no validation work
    assert _hits(warm) == {"onnx:fp32": True, "onnx:int8-dynamic": True}
    for recipe in ("onnx:fp32", "onnx:int8-dynamic"):
        before, after = result_for(cold, recipe), result_for(warm, recipe)
        assert after["status"] == "passed" and after["accuracy"] == before["accuracy"]
        assert after["size_bytes"] == before["size_bytes"] and after["inspect"] == before["inspect"]
        assert after["cache"]["key"] == before["cache"]["key"]
        assert f"cached export {after['cache']['key'][:12]}" in after["notes"]
        assert "export" not in after["timings_s"] and after["timings_s"]["cache_hit"] >= 0
        assert after["latency"]["p50_ms"] > 0 and len(after["latency"]["samples_ms"]) == 3  # measured again
        bundle = tmp_path / "warm" / after["bundle"]
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert verify_bundle(bundle) == [] and manifest["latency"] == after["latency_by_device"]
        assert manifest["model"]["source"] == str(tiny_bert)
    converted.clear()

    config = tmp_path / "options.yaml"
    config.write_text('recipe_options:\n  "onnx:int8-dynamic":\n    per_channel: false\n')
    changed = _export(tiny_bert, tmp_path / "changed", cache, recipes, "--no-latency", "--config", config)
    assert converted == ["onnx:int8-dynamic"] and validations == ["onnx:int8-dynamic"]
    assert _hits(changed) == {"onnx:fp32": True, "onnx:int8-dynamic": False}
    assert len(ExportCache(cache).entries()) == 3


def _changed_weights(model: Path, folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in tensors if n.endswith("word_embeddings.weight"))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_each_key_part_re_exports_only_what_it_touches(
    tmp_path: Path, tiny_bert: Path, fake_target: None, validations: list[str]
) -> None:
    cache, both, args = tmp_path / "cache", "fake:a,fake:b", ["--no-latency"]
    first = _export(tiny_bert, tmp_path / "1", cache, both, *args)
    assert EXPORTED == ["fake:a", "fake:b"] and not any(_hits(first).values())
    EXPORTED.clear()
    # the same keys before the model loads (what a lab's dry run shows as cached)
    cfg = ExportConfig(model=str(tiny_bert), recipes=[both], cache=cache)
    unloaded = ExportRun(cfg, Progress(enabled=False))
    keys = {p.recipe.id: planned_key(unloaded, p) for p in unloaded.plan}
    assert keys == {r["recipe"]: r["cache"]["key"] for r in first["results"]}
    assert all(ExportCache(cache).has(k) for k in keys.values()) and unloaded.model is None
    moved = shutil.copytree(tiny_bert, tmp_path / "moved")  # the same content somewhere else: hits
    assert _hits(_export(moved, tmp_path / "2", cache, both, *args)) == {"fake:a": True, "fake:b": True}
    assert EXPORTED == [] and validations == ["fake:a", "fake:b"]  # only the first run validated

    config = tmp_path / "gates.yaml"  # a gate of one recipe: only that recipe's result can change
    config.write_text('validation:\n  gates:\n    "fake:b": {embedding_cosine_min: 0.999}\n')
    gated = _export(tiny_bert, tmp_path / "3", cache, both, *args, "--config", config)
    assert EXPORTED == ["fake:b"] and _hits(gated) == {"fake:a": True, "fake:b": False}
    EXPORTED.clear()

    data = tmp_path / "data.txt"
    data.write_text("The first line of other text.\nA second, different sentence.\nAnd a third one.\n")
    assert not any(_hits(_export(tiny_bert, tmp_path / "4", cache, both, *args, "--data", data)).values())
    assert EXPORTED == ["fake:a", "fake:b"]
    EXPORTED.clear()

    weights = _changed_weights(tiny_bert, tmp_path / "weights")
    assert not any(_hits(_export(weights, tmp_path / "5", cache, both, *args)).values())
    assert EXPORTED == ["fake:a", "fake:b"]
    EXPORTED.clear()
    no_validate = _export(tiny_bert, tmp_path / "6", cache, "fake:a", *args, "--no-validate")
    assert EXPORTED == ["fake:a"] and _hits(no_validate) == {"fake:a": False}


def _hits_key(report: dict[str, Any]) -> str:
    (result,) = report["results"]
    return result["cache"]["key"]


def _cached_artifact(cache: Path) -> Path:
    (entry,) = (cache / "entries").iterdir()
    return entry / "bundle" / "model.fake"


def test_a_corrupt_cached_artifact_is_rebuilt_never_used(
    tmp_path: Path, tiny_bert: Path, fake_target: None
) -> None:
    cache, args = tmp_path / "cache", ["--no-latency"]
    good = _export(tiny_bert, tmp_path / "0", cache, "fake:a", *args)
    expected = (tmp_path / "0" / "fake-a" / "model.fake").read_bytes()

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:100])

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))  # same size, one bit differs

    for number, corrupt in enumerate((truncate, flip), 1):
        EXPORTED.clear()
        corrupt(_cached_artifact(cache))
        out = tmp_path / str(number)
        report = _export(tiny_bert, out, cache, "fake:a", *args)
        assert EXPORTED == ["fake:a"] and _hits(report) == {"fake:a": False}  # rebuilt, not used
        assert (out / "fake-a" / "model.fake").read_bytes() == expected
        assert result_for(report, "fake:a")["accuracy"] == result_for(good, "fake:a")["accuracy"]
        assert _cached_artifact(cache).read_bytes() == expected  # the entry was replaced by a good one
    dest = tmp_path / "dest"
    dest.mkdir()
    assert ExportCache(cache).fetch(_hits_key(report), dest) is not None  # the rebuilt entry verifies


def test_an_unwritable_cache_costs_only_a_note(tmp_path: Path, tiny_bert: Path, fake_target: None) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be\n")
    report = _export(tiny_bert, tmp_path / "out", blocker, "fake:a", "--no-latency")
    result = result_for(report, "fake:a")
    assert result["status"] == "passed" and result["cache"]["hit"] is False
    assert any(note.startswith("export cache not written: ") for note in result["notes"])


# The store itself, without a model: a bundle folder with a manifest is all it needs.


def _bundle(folder: Path, payload: bytes = b"weights" * 100) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(payload)
    (folder / "sub").mkdir()
    (folder / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    manifest = {"model": {"source": "models/tiny", "sha256": "ab" * 32}, "target": "onnx",
                "recipe": {"id": "onnx:fp32"}, "artifact": "model.bin"}  # fmt: skip
    write_manifest(folder, manifest)
    return folder


ENTRY = {"target": "onnx", "recipe": "onnx:fp32", "precision": "fp32", "status": "passed"}


def _key(n: int) -> str:
    return cache_key({"n": n})


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing", "extra", "manifest", "entry"])
def test_fetch_refuses_and_deletes_a_damaged_entry(tmp_path: Path, damage: str) -> None:
    cache = ExportCache(tmp_path / "cache")
    cache.put(_key(1), _bundle(tmp_path / "b"), ENTRY)
    entry = cache.entry_path(_key(1))
    target = entry / "bundle" / "model.bin"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "flip":
        target.write_bytes(b"X" + target.read_bytes()[1:])
    elif damage == "missing":
        (entry / "bundle" / "sub" / "tokenizer.json").unlink()
    elif damage == "extra":
        (entry / "bundle" / "planted.py").write_text("print('hi')\n")
    elif damage == "manifest":
        (entry / "bundle" / "manifest.json").write_text("{not json")
    else:
        (entry / "entry.json").write_text('{"result": 3}')
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.fetch(_key(1), dest) is None
    assert list(dest.iterdir()) == [] and not entry.exists() and cache.entries() == []


def test_put_then_fetch_copies_the_bundle_and_its_result(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "cache")
    assert cache.fetch(_key(1), tmp_path) is None  # a miss on an empty (absent) cache
    cache.put(_key(1), _bundle(tmp_path / "b"), ENTRY)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.fetch(_key(1), dest) == ENTRY
    assert verify_bundle(dest) == [] and (dest / "sub" / "tokenizer.json").is_file()
    (row,) = cache.entries()
    assert row["model"] == "models/tiny" and row["recipe"] == "onnx:fp32" and row["size_bytes"] > 700


def test_an_interrupted_put_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ExportCache(tmp_path / "cache")
    bundle = _bundle(tmp_path / "b")

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("edge_export.cache.store.os.rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put(_key(1), bundle, ENTRY)
    monkeypatch.undo()
    assert cache.entries() == [] and not cache.has(_key(1))
    assert list((cache.root / "tmp").iterdir()) == []  # nothing half-written left behind
    dead = cache.root / "tmp" / f"{_key(2)}.{__import__('socket').gethostname()}.999999999.abcd.new"
    dead.mkdir()  # what a SIGKILLed run leaves: swept by the next put, never read as an entry
    cache.put(_key(1), bundle, ENTRY)
    assert not dead.exists() and [r["key"] for r in cache.entries()] == [_key(1)]


def test_a_full_disk_never_costs_a_good_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ExportCache(tmp_path / "cache")
    cache.put(_key(1), _bundle(tmp_path / "b"), ENTRY)

    def full(source: Path, target: Path, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(shutil, "copy2", full)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(OSError) as fetching:  # OUT is full: the run stops, the entry is fine
        cache.fetch(_key(1), dest)
    assert fetching.value.errno == errno.ENOSPC and cache.has(_key(1)) and list(dest.iterdir()) == []
    with pytest.raises(OSError) as putting:  # the cache is full: the caller notes it and goes on
        cache.put(_key(2), _bundle(tmp_path / "c"), ENTRY)
    assert putting.value.errno == errno.ENOSPC and not cache.has(_key(2))
    assert list((cache.root / "tmp").iterdir()) == []


def test_concurrent_puts_of_one_key_publish_one_whole_entry(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "cache")
    bundles = [_bundle(tmp_path / f"b{i}", b"same" * 50_000) for i in range(4)]
    errors: list[BaseException] = []

    def put(bundle: Path) -> None:
        try:
            ExportCache(cache.root).put(_key(1), bundle, ENTRY)
        except BaseException as exc:  # pragma: no cover - what the assertion reports
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(b,)) for b in bundles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and [r["key"] for r in cache.entries()] == [_key(1)]
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.fetch(_key(1), dest) == ENTRY and list((cache.root / "tmp").iterdir()) == []


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    import os

    cache = ExportCache(tmp_path / "cache")
    for n in range(3):
        cache.put(_key(n), _bundle(tmp_path / f"b{n}"), ENTRY)
        os.utime(cache.entry_path(_key(n)) / "entry.json", (1000 + n, 1000 + n))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.fetch(_key(0), dest) is not None  # the oldest is used now: it stays
    size = cache.entries()[0]["size_bytes"]
    removed = cache.prune(2 * size)
    assert [r["key"] for r in removed] == [_key(1)]
    assert [r["key"] for r in cache.entries()] == [_key(0), _key(2)]


def test_cache_ls_and_prune_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(tmp_path / "cache"))  # the default folder
    cache = ExportCache(tmp_path / "cache")
    for n in range(2):
        cache.put(_key(n), _bundle(tmp_path / f"b{n}"), ENTRY)
    code, out, err = run_cli(["cache", "ls", "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and err == "" and listed["cache"] == str(tmp_path / "cache")
    assert {e["key"] for e in listed["entries"]} == {_key(0), _key(1)}
    assert listed["total_bytes"] == sum(e["size_bytes"] for e in listed["entries"])
    assert {"model", "recipe", "size_bytes", "last_used"} <= set(listed["entries"][0])
    code, out, _ = run_cli(["cache", "ls"], capsys)
    assert code == 0 and _key(0)[:12] in out and "onnx:fp32" in out and "2 cached exports" in out
    code, out, _ = run_cli(["cache", "prune", "--max-size", "0", "--json"], capsys)
    pruned = json.loads(out)
    assert code == 0 and pruned["entries"] == [] and len(pruned["removed"]) == 2 and pruned["freed_bytes"] > 0
    assert cache.entries() == []
    code, out, _ = run_cli(["cache", "ls", "--cache", tmp_path / "absent"], capsys)
    assert code == 0 and "0 cached exports" in out


@pytest.mark.parametrize("size", ["20X", "lots", "-1G", "1.2.3M", ""])
def test_a_bad_max_size_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    code, out, err = run_cli(["cache", "prune", "--cache", tmp_path, f"--max-size={size}"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: invalid --max-size") and "(fix: " in err


def test_sizes_and_keys() -> None:
    assert [parse_size(s) for s in ("0", "512", "1K", "1.5M", "20G", "2TiB", "3gb")] == [
        0, 512, 1024, int(1.5 * 2**20), 20 * 2**30, 2 * 2**40, 3 * 2**30]  # fmt: skip
    with pytest.raises(ConfigError):
        parse_size("20 parsecs")
    parts = {"model_sha256": "a", "options": {"x": 1, "y": [1, 2]}, "versions": {"onnx": "1"}}
    assert cache_key(parts) == cache_key(dict(reversed(list(parts.items()))))  # order does not matter
    for changed in ({"model_sha256": "b"}, {"options": {"x": 2, "y": [1, 2]}}, {"versions": {"onnx": "2"}}):
        assert cache_key({**parts, **changed}) != cache_key(parts)


def test_the_cache_field_round_trips_through_the_report_entry() -> None:
    result = Result("onnx", "onnx:fp32", "fp32", produced=True, cache={"hit": True, "key": "k" * 64})
    assert Result.from_dict(result.to_dict()).cache == {"hit": True, "key": "k" * 64}
    assert "cache" not in Result("onnx", "onnx:fp32", "fp32", produced=True).to_dict()
