"""The issue's end-to-end case on a real aarch64 stand-in (pi_standin.py: arm64 Debian Python with
aarch64 onnxruntime and ai-edge-litert under qemu-user), reached over a real sshd on 127.0.0.1:
`export --target onnx,tflite --device pi --device local` puts both result sets in report.json and
the aarch64 outputs pass the same gates as the x86 ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from pi_standin import build
from sshd import LocalSshd


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    sysroot, python = build(tmp_path_factory.mktemp("pi"))
    daemon = LocalSshd(tmp_path_factory.mktemp("pi-sshd")).start()
    entry = daemon.spec(
        python=str(python), work_dir=str(sysroot / "home/pi/edge-export"), labels={"soc": "qemu aarch64"}
    )
    yield entry
    daemon.stop()


def test_export_onnx_and_tflite_on_the_pi_and_locally(
    pi: dict[str, object], tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({"pi": pi}))
    code, out, _ = run_cli(["devices", "--check", "--inventory", inventory, "--json"], capsys)
    assert code == 0, out
    facts = {d["name"]: d for d in json.loads(out)}["pi"]
    assert facts["arch"] == "aarch64" and facts["system"] == "Linux"
    assert facts["runtimes"]["onnxruntime"] == "1.31.1" and facts["runtimes"]["ai-edge-litert"] == "2.3.0"
    code, out, _ = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--target", "onnx,tflite", "--quantize", "fp32",
         "--device", "pi", "--device", "local", "--inventory", inventory, "--iterations", "2", "--warmup", "1",
         "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    report = json.loads(out)
    assert {d["name"]: d["arch"] for d in report["devices"]}["pi"] == "aarch64"
    for result in report["results"]:
        entries = {e["device"]: e for e in result["latency_by_device"]}
        assert set(entries) == {"pi", "local"}, result["target"]
        assert entries["local"]["p50_ms"] > 0 and entries["pi"]["p50_ms"] > 0
        gates = entries["pi"]["accuracy"]["gates"]
        assert gates and all(g["passed"] for g in gates), (result["target"], gates)
        # aarch64 kernels differ from x86 ones in the last bits, never by more than fp32 noise
        assert entries["pi"]["accuracy"]["metrics"]["max_abs_error"] < 1e-3
        assert entries["pi"]["accuracy"]["metrics"]["cosine_min"] > 0.99999
    assert {r["target"] for r in report["results"]} == {"onnx", "tflite"}
