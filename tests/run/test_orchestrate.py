"""The run room with a fake target (registered like a third-party one): export -> bundle ->
validate, the status each outcome gets, the host estimate and "not run" paths, and per-run target
instances. Plumbing only: the fake's artifacts are the PyTorch reference itself, so a gate can only
fail where the fake adds noise on purpose."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_report, result_for, run_cli

from edge_export.errors import NotRunnableHere
from edge_export.exporter.prepared import CalibrationSet, PreparedModel, TorchRunnable
from edge_export.targets import registry
from edge_export.targets.base import Artifact, Recipe, TargetBase

CREATED: list[FakeTarget] = []


class Noisy(TorchRunnable):
    """The reference with relative noise added to every output (what a broken converter does)."""

    def __init__(self, model: PreparedModel, scale: float) -> None:
        super().__init__(model.module, model.io)
        self.scale, self.coverage = scale, {"weights": "all"}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {k: v + self.scale * np.abs(v).mean() * rng.standard_normal(v.shape).astype(v.dtype)
                for k, v in super().run(feeds).items()}  # fmt: skip


class FakeTarget(TargetBase):
    """Exports a marker file; loads back the PyTorch reference (exact, noisy, or not here)."""

    name, extra, quantizes = "fake", "onnx", "after-export"

    def __init__(self) -> None:
        CREATED.append(self)
        self.model: PreparedModel | None = None

    def recipes(self) -> list[Recipe]:
        gates = {"embedding_cosine_min": 0.99}
        return [Recipe("fake:fp32", "fp32", "exact", default_for=("fp32",), gates=gates),
                Recipe("fake:noisy", "int8", "noise as large as the outputs", default_for=("int8",), gates=gates),
                Recipe("fake:mac-only", "fp16", "needs another OS"),
                Recipe("fake:estimated", "int4", "needs another OS, has a host estimate", default_for=("int4",))]  # fmt: skip

    def missing_dependency(self) -> str | None:
        return None

    def check(self, model: PreparedModel, recipe: Recipe) -> None:
        self.model = model

    def export(
        self, model: PreparedModel, recipe: Recipe, calibration: CalibrationSet | None, workdir: Path
    ) -> Artifact:
        path = workdir / "model.fake"
        path.write_text(json.dumps({"recipe": recipe.id}))
        return Artifact(self.name, recipe, path, [path], {"notes": [f"made by {recipe.id}"]})

    def load(self, artifact_path: Path, manifest: Mapping[str, Any]) -> Any:
        recipe = manifest["recipe"]["id"]
        if recipe in ("fake:mac-only", "fake:estimated"):
            raise NotRunnableHere("needs macOS")
        return Noisy(self.model, 1.0 if recipe == "fake:noisy" else 0.0)

    def host_estimate(self, model: PreparedModel, path: Path, manifest: Mapping[str, Any]) -> Any:
        return Noisy(model, 0.0) if manifest["recipe"]["id"] == "fake:estimated" else None

    def inspect(self, artifact_path: Path, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"bytes": artifact_path.stat().st_size}


@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_FACTORIES", {**registry.factories(), "fake": FakeTarget})
    monkeypatch.setattr(registry, "_CATALOG", None)
    CREATED.clear()


def test_each_outcome_gets_its_status(tmp_path: Path, tiny_bert: Path, fake_target: None) -> None:
    out = tmp_path / "out"
    recipes = "fake:fp32,fake:noisy,fake:mac-only,fake:estimated"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--recipe", recipes, "--no-latency"])
    report = load_report(out)
    assert code == 1  # the noisy one fails its gate; not_run and the estimate do not
    exact, noisy = result_for(report, "fake:fp32"), result_for(report, "fake:noisy")
    mac_only, estimated = result_for(report, "fake:mac-only"), result_for(report, "fake:estimated")
    assert exact["status"] == "passed" and exact["accuracy"]["measured_on"] == "host"
    assert noisy["status"] == "failed" and "fake:noisy" in noisy["accuracy"]["failure"]
    assert mac_only["status"] == "not_run" and mac_only["accuracy"]["not_run"] == "needs macOS"
    assert estimated["status"] == "passed" and estimated["accuracy"]["measured_on"] == "host-estimate"
    assert estimated["accuracy"]["estimate_coverage"] == {"weights": "all"}
    for result in (exact, noisy, mac_only, estimated):
        manifest = json.loads((out / result["bundle"] / "manifest.json").read_text())
        assert manifest["recipe"]["id"] == result["recipe"] and manifest["model"]["weights"]["tensors"] > 0
        assert f"made by {result['recipe']}" in result["notes"]
    assert report["model"]["weights"] == manifest["model"]["weights"]


def test_every_run_creates_its_own_target_instances(
    tmp_path: Path, tiny_bert: Path, fake_target: None
) -> None:
    for name in ("a", "b"):
        code, _, _ = run_cli(
            ["export", tiny_bert, "--out", tmp_path / name, "--recipe", "fake:fp32", "--no-latency"]
        )
        assert code == 0
    exporting = [t for t in CREATED if t.model is not None]
    assert len(exporting) == 2 and exporting[0] is not exporting[1]
    assert registry.get_target("fake").model is None  # the catalog instance never exports


def test_full_delegation_preflight_is_a_protocol_member(
    tmp_path: Path, tiny_bert: Path, fake_target: None
) -> None:
    """A target without a delegate inherits TargetBase's neutral pre-flight: nothing refused."""
    out = tmp_path / "out"
    argv = [
        "export",
        tiny_bert,
        "--out",
        out,
        "--recipe",
        "fake:fp32",
        "--no-latency",
        "--require-full-delegation",
    ]
    code, _, _ = run_cli(argv)
    assert code == 0 and result_for(load_report(out), "fake:fp32")["status"] == "passed"
