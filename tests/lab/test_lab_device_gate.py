"""The device lab gates what a remote device returns, as a plain export does: the export run makes
the PyTorch reference for the exact inputs the devices get (run_export's `on_result`), and each
device's outputs are scored against it after the run (and its model) are gone. Fake remote devices
run the bundle on this machine and return its real outputs, or perturbed ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli

from edge_export.devices.base import RunResult
from edge_export.lab import runner
from edge_export.lab.store import open_store
from edge_export.run.device_job import Measurement

INVENTORY = {"pi": {"type": "ssh", "host": "pi.invalid"}, "phone": {"type": "adb", "serial": "emulator-5554"}}


class RelayDevice:
    """A remote device (by its kind) that runs the bundle on this machine; `perturb` changes
    the outputs it returns (identity: the real ones)."""

    def __init__(self, name: str, kind: str, local: Any, perturb: Any) -> None:
        self.name, self.kind, self.local, self.perturb = name, kind, local, perturb

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "arch": "relay"}

    def run(self, bundle: Path, inputs: dict[str, np.ndarray], warmup: int, iterations: int,
            mode: str = "graph", decode_tokens: int = 32) -> RunResult:  # fmt: skip
        result = self.local.run(bundle, inputs, warmup, iterations, mode=mode, decode_tokens=decode_tokens)
        result.outputs = {name: self.perturb(name, value) for name, value in result.outputs.items()}
        return result

    def cleanup(self) -> None:
        """Nothing is left anywhere."""


def _perturbed(name: str, value: np.ndarray) -> np.ndarray:
    """Graph outputs scaled by 1.5; a greedy continuation shifted to other tokens."""
    if name == "generated_ids":
        return (value + 1) % 256
    return value * 1.5


def test_lab_gates_each_remote_devices_outputs_against_the_reference(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    real_get = runner.get_device
    local = real_get("local", None)
    fakes = {
        "pi": RelayDevice("pi", "ssh", local, lambda _name, value: value),
        "phone": RelayDevice("phone", "adb", local, _perturbed),
    }
    monkeypatch.setattr(runner, "get_device", lambda name, inventory=None: fakes[name])
    made: list[Measurement] = []
    real_jobs = runner.LabRun.jobs

    def jobs(self: runner.LabRun, cells: Any, report: Any, measurement: Measurement | None) -> Any:
        made.append(measurement)
        return real_jobs(self, cells, report, measurement)

    monkeypatch.setattr(runner.LabRun, "jobs", jobs)
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump({
        "models": {"bert": {"path": str(tiny_bert)}, "llama": {"path": str(tiny_llama)}},
        "recipes": ["onnx:fp32"], "devices": ["pi", "phone"], "inventory": INVENTORY,
        "latency": {"warmup": 0, "iterations": 2, "sequence_length": 16, "prompt_tokens": 8,
                    "decode_tokens": 6},
    }))  # fmt: skip

    code, _, err = run_cli(["lab", "run", lab, "--out", tmp_path / "out"], capsys)

    assert code == 1, err  # a device-output gate failed: exit 1, as in a plain export
    with open_store(tmp_path / "lab.sqlite") as store:
        rows = {row["cell"]: row for row in store.rows()}
    assert sorted(rows) == sorted(f"{m}|onnx:fp32|{d}" for m in ("bert", "llama") for d in ("pi", "phone"))
    for model, metric in (("bert", "sqnr_db"), ("llama", "generation_match")):
        exact, perturbed = rows[f"{model}|onnx:fp32|pi"], rows[f"{model}|onnx:fp32|phone"]
        checked = exact["latency"]["accuracy"]
        assert exact["status"] == "passed", exact["failures"]
        assert checked["measured_on"] == "pi" and checked["failure"] is None and metric in checked["metrics"]
        assert all(gate["passed"] for gate in checked["gates"]) and checked["gates"]
        assert perturbed["status"] == "failed"
        (failure,) = perturbed["failures"]
        assert failure.startswith("onnx:fp32 on phone") and metric in failure, failure
        assert perturbed["latency"]["accuracy"]["failure"] == failure
        assert perturbed["result"]["device_failures"] == [failure]
    assert rows["llama|onnx:fp32|pi"]["latency"]["accuracy"]["metrics"] == {"generation_match": 1.0}
    assert rows["llama|onnx:fp32|phone"]["latency"]["accuracy"]["metrics"] == {"generation_match": 0.0}

    # what the jobs keep past the export run: the reference for the bench inputs, nothing more
    by_model = {m.bundle.parts[-3]: m for m in made if m is not None}
    bert, llama = by_model["bert"].gate.reference, by_model["llama"].gate.reference
    assert set(bert.outputs) == {"last_hidden_state"} and bert.generated is None
    assert bert.outputs["last_hidden_state"].shape[:2] == by_model["bert"].inputs["input_ids"].shape
    assert llama.outputs == {} and len(llama.generated) >= 6
