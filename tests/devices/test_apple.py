"""The apple runner (a Mac over SSH): transport and packaging against the real sshd on 127.0.0.1.

There is no Mac here, so the machine behind the sshd is Linux: Core ML bundles must come back
"not run: needs macOS" (never a number), other formats run and are gated as on any SSH device,
and the compute-plan summary the agent sends from a Mac is checked on objects shaped like
coremltools' MLComputePlan.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from sshd import LocalSshd

from edge_export.devices.agent.coreml_model import summarize_compute_plan


@pytest.fixture(scope="module")
def mac(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    daemon = LocalSshd(tmp_path_factory.mktemp("mac-sshd")).start()
    yield daemon
    daemon.stop()


def test_export_on_apple_device_runs_onnx_and_reports_coreml_as_not_run(
    mac: LocalSshd, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "devices.yaml"
    entry = mac.spec(type="apple", work_dir=str(tmp_path / "mac work"), python=sys.executable)
    inventory.write_text(yaml.safe_dump({"mac": entry}))
    code, out, _ = run_cli(["devices", "--check", "--inventory", inventory, "--json"], capsys)
    assert code == 0
    facts = {d["name"]: d for d in json.loads(out)}["mac"]
    assert facts["type"] == "apple" and facts["coreml_capable"] is False and "not macOS" in facts["note"]
    code, out, _ = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--recipe", "onnx:fp32", "--recipe", "coreml:fp16",
         "--device", "mac", "--inventory", inventory, "--iterations", "2", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    results = {r["target"]: r for r in json.loads(out)["results"]}
    onnx_on_mac = results["onnx"]["latency_by_device"][0]
    assert onnx_on_mac["device"] == "mac" and onnx_on_mac["iterations"] == 2
    assert onnx_on_mac["accuracy"]["gates"] and all(g["passed"] for g in onnx_on_mac["accuracy"]["gates"])
    coreml_on_mac = results["coreml"]["latency_by_device"][0]
    assert coreml_on_mac == {"device": "mac", "not_run": coreml_on_mac["not_run"]}
    assert "needs macOS" in coreml_on_mac["not_run"] and "p50_ms" not in coreml_on_mac
    assert results["coreml"]["accuracy"]["measured_on"] == "host-estimate"
    assert not (tmp_path / "mac work").exists()


@dataclass
class _Op:
    operator_name: str
    blocks: list[Any] = field(default_factory=list)


@dataclass
class _Block:
    operations: list[_Op]


class MLNeuralEngineComputeDevice:
    pass


class MLCPUComputeDevice:
    pass


@dataclass
class _Usage:
    preferred_compute_device: Any


@dataclass
class _Cost:
    weight: float


class _Plan:
    """Shaped like coremltools.models.compute_plan.MLComputePlan."""

    def __init__(self) -> None:
        inner = _Block([_Op("gather")])
        ops = [_Op("const"), _Op("linear"), _Op("linear"), _Op("softmax"), _Op("cond", [inner])]
        program = type("P", (), {"functions": {"main": type("F", (), {"block": _Block(ops)})()}})()
        self.model_structure = type("S", (), {"program": program})()

    def get_compute_device_usage_for_mlprogram_operation(self, op: _Op) -> _Usage | None:
        if op.operator_name == "cond":
            return None
        device = MLCPUComputeDevice() if op.operator_name == "gather" else MLNeuralEngineComputeDevice()
        return _Usage(device)

    def get_estimated_cost_for_mlprogram_operation(self, op: _Op) -> _Cost | None:
        return _Cost({"linear": 0.4, "softmax": 0.1, "gather": 0.1}.get(op.operator_name, 0.0))


def test_compute_plan_summary_counts_devices_and_cost() -> None:
    summary = summarize_compute_plan(_Plan())
    assert summary["operations"] == 5  # const is not an operation that runs
    assert summary["by_device"] == {"neural_engine": 3, "unknown": 1, "cpu": 1}
    assert summary["neural_engine_ops_pct"] == 60.0
    assert summary["cost_share_by_device"] == {"neural_engine": 0.9, "unknown": 0.0, "cpu": 0.1}
    assert summary["cpu_ops_by_type"] == {"gather": 1}
