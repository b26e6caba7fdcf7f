"""A target that fails at export gives exit 3 and the others still run; a failing device gives
exit 4 with the measurements already made kept in the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_report, run_cli

from edge_export.devices.local import LocalDevice
from edge_export.errors import DeviceError, ExportError
from edge_export.run import session
from edge_export.targets import registry
from edge_export.targets.base import Recipe
from edge_export.targets.onnx import OnnxTarget


class BrokenTarget(OnnxTarget):
    """Offers one recipe whose lowering always fails, like a real backend bug would."""

    name = "broken"
    extra = "onnx"

    def recipes(self) -> list[Recipe]:
        return [Recipe("broken:fp32", "fp32", "always fails", default_for=("fp32",))]

    def export(self, model: Any, recipe: Recipe, calibration: Any, workdir: Path) -> Any:
        raise ExportError(self.name, "lower", "operator aten::frobnicate is not supported")


class FlakyDevice(LocalDevice):
    """A device that cannot be reached."""

    name = "flaky"

    def run(self, bundle: Path, inputs: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        raise DeviceError(self.name, "connection refused (127.0.0.1:1)")


@pytest.fixture
def with_broken_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """`broken` registered like a third-party target (an entry point would do the same)."""
    monkeypatch.setattr(registry, "_FACTORIES", {**registry.factories(), "broken": BrokenTarget})
    monkeypatch.setattr(registry, "_CATALOG", None)


def test_failed_target_exit_3_others_still_run(
    tmp_path: Path, tiny_bert: Path, with_broken_target: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["export", tiny_bert, "--out", out, "--target", "broken,onnx", "--no-latency"]
    code, _, err = run_cli(argv, capsys)
    assert code == 3
    assert "broken export failed at stage 'lower'" in err and "aten::frobnicate" in err
    results = {r["recipe"]: r for r in load_report(out)["results"]}
    assert results["broken:fp32"]["status"] == "error"
    assert results["broken:fp32"]["error"]["stage"] == "lower"
    assert results["onnx:fp32"]["status"] == "passed"
    assert (out / "onnx-fp32" / "model.onnx").is_file() and not (out / "broken-fp32").exists()


def test_failed_device_exit_4_keeps_other_measurements(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = {"local": LocalDevice, "flaky": FlakyDevice}
    monkeypatch.setattr(session, "get_device", lambda name, inventory=None: devices[name]())
    out = tmp_path / "out"
    argv = ["export", tiny_bert, "--out", out, "--device", "local", "--device", "flaky", "--iterations", "2"]
    code, _, _ = run_cli(argv)
    assert code == 4
    entries = load_report(out)["results"][0]["latency_by_device"]
    assert entries[0]["device"] == "local" and entries[0]["p50_ms"] > 0
    assert entries[1]["device"] == "flaky" and "connection refused" in entries[1]["error"]["message"]


def test_failed_gate_exit_1_lists_every_failing_metric(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "strict.json.yaml"
    config.write_text(json.dumps({"validation": {"gates": {"*": {"sqnr_db": 1000.0, "cosine_min": 1.5}}}}))
    out = tmp_path / "out"
    code, _, err = run_cli(["export", tiny_bert, "--out", out, "--config", config, "--no-latency"], capsys)
    assert code == 1
    assert "sqnr_db=" in err and "cosine_min=" in err and "accuracy gates failed" in err
    result = load_report(out)["results"][0]
    assert result["status"] == "failed"
    assert (out / "onnx-fp32" / "manifest.json").is_file()  # bundles are still written


def test_devices_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["devices", "--check", "--json"], capsys)
    assert code == 0
    local = next(d for d in json.loads(out) if d["name"] == "local")
    import onnxruntime

    assert local["reachable"] is True and local["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert local["arch"] and local["cpus"] >= 1


def test_targets_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["targets", "--json"], capsys)
    assert code == 0
    onnx = next(t for t in json.loads(out) if t["name"] == "onnx")
    assert onnx["installed"] is True
    assert {r["id"] for r in onnx["recipes"]} >= {"onnx:fp32", "onnx:int8-static", "onnx:int4-weight"}


def test_a_failed_conversion_does_not_break_later_exports_in_the_process(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that failed half-way must not block the next one in the same process (API
    users, long pipelines; it once did: the next conversion reused the failed one's folder name and
    stopped on FileExistsError). Each run has its own target instances, so nothing is cached."""
    from edge_export.targets.onnx import graph

    real, calls = graph.torch_to_onnx, []

    def fails_once(model: Any, path: Path) -> Any:
        calls.append(path)
        if len(calls) == 1:
            path.write_bytes(b"partial")
            raise RuntimeError("exporter crashed half-way")
        return real(model, path)

    monkeypatch.setattr(graph, "torch_to_onnx", fails_once)
    code, _, _ = run_cli(["export", tiny_bert, "--out", tmp_path / "a", "--no-latency"])
    assert (
        code == 3
        and "exporter crashed half-way" in load_report(tmp_path / "a")["results"][0]["error"]["message"]
    )
    code, _, _ = run_cli(["export", tiny_bert, "--out", tmp_path / "b", "--no-latency"])
    assert code == 0 and load_report(tmp_path / "b")["results"][0]["status"] == "passed"
    assert len(calls) == 2 and calls[0].parent.parent != calls[1].parent.parent
