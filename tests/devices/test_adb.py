"""The adb runner with the real `adb` client and a private adb server, against the stand-in device
in adb_standin.py (a test double speaking the adb wire protocol on 127.0.0.1; not Android)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from adb_standin import AdbStandin
from conftest import run_cli
from native_standins import BENCHMARK_MODEL, EXECUTOR_RUNNER, PERF_TEST, install
from sshd import free_port

from edge_export.devices.adb import AdbDevice
from edge_export.devices.inventory import parse_device_spec
from edge_export.devices.local import LocalDevice
from edge_export.errors import DeviceError

NASTY = "data local 'tmp'; touch PWNED"
GETPROP = """#!/bin/sh
echo '[ro.product.manufacturer]: [Stand-in]'
echo '[ro.product.model]: [Stand-in Phone]'
echo '[ro.soc.model]: [SM8650]'
echo '[ro.product.cpu.abi]: [arm64-v8a]'
echo '[ro.build.version.release]: [15]'
echo '[ro.build.version.sdk]: [35]'
echo '[persist.sys.timezone]: [UTC]'
"""


@pytest.fixture(scope="module")
def adb_port() -> Iterator[int]:
    port = free_port()
    subprocess.run(["adb", "-P", str(port), "start-server"], check=True, capture_output=True, timeout=60)
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=60)


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[AdbStandin]:
    device = AdbStandin(tmp_path / "phone", free_port())
    getprop = device.bin_dir / "getprop"
    getprop.write_text(GETPROP)
    getprop.chmod(0o755)
    device.start()
    yield device
    device.stop()


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    out = tmp_path_factory.mktemp("adb-bundle") / "out"
    code, _, _ = run_cli(["export", tiny_bert, "--out", out, "--quantize", "fp32", "--no-latency"])
    assert code == 0
    return out / "onnx-fp32"


def _entry(phone: AdbStandin, adb_port: int, **overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "adb", "serial": f"127.0.0.1:{phone.port}", "adb_server_port": adb_port,
        "work_dir": str(phone.root / NASTY / "edge-export"), "python": sys.executable, "connect_timeout_s": 5,
    }  # fmt: skip
    return entry | overrides


def _device(phone: AdbStandin, adb_port: int, **overrides: object) -> AdbDevice:
    return AdbDevice("phone", parse_device_spec(_entry(phone, adb_port, **overrides)))


def _feeds() -> dict[str, np.ndarray]:
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_shell_keeps_exit_codes_and_arguments_intact(phone: AdbStandin, adb_port: int) -> None:
    device = _device(phone, adb_port)
    assert device.execute(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (3, "out\n", "err\n")
    code, out, _ = device.execute(["printf", "%s", NASTY])
    assert code == 0 and out == NASTY
    assert not Path("PWNED").exists() and not (phone.root / "PWNED").exists()


def test_run_on_phone_matches_local(phone: AdbStandin, adb_port: int, bert_bundle: Path) -> None:
    device = _device(phone, adb_port)
    result = device.run(bert_bundle, _feeds(), warmup=1, iterations=3)
    local = LocalDevice().run(bert_bundle, _feeds(), warmup=1, iterations=3)
    np.testing.assert_array_equal(result.outputs["last_hidden_state"], local.outputs["last_hidden_state"])
    assert result.device == "phone" and len(result.latencies_ms) == 3
    facts = device.info()
    assert facts["android"] == {
        "manufacturer": "Stand-in", "model": "Stand-in Phone", "soc": "SM8650", "abi": "arm64-v8a",
        "android": "15", "sdk": "35",
    }  # fmt: skip
    assert facts["serial"] == f"127.0.0.1:{phone.port}" and device.runtimes()["onnxruntime"]
    work = Path(device.work_dir)
    assert (work / ".edge-export-workdir").is_file()
    device.cleanup()
    assert not work.exists()


def test_device_offline_and_back(phone: AdbStandin, adb_port: int, bert_bundle: Path) -> None:
    device = _device(phone, adb_port, retries=4)
    device.push(bert_bundle)
    phone.stop()
    threading.Timer(1.5, phone.start).start()
    result = device.run(bert_bundle, _feeds(), warmup=0, iterations=2)  # reconnects, then runs
    assert len(result.latencies_ms) == 2
    device.cleanup()


def test_device_gone_for_good_is_a_clear_error(phone: AdbStandin, adb_port: int, bert_bundle: Path) -> None:
    device = _device(phone, adb_port, retries=1)
    device.push(bert_bundle)
    phone.stop()
    with pytest.raises(
        DeviceError, match=r"device 'phone': (cannot connect to 127.0.0.1:\d+|device .* offline)"
    ):
        device.run(bert_bundle, _feeds(), warmup=0, iterations=2)


def test_cli_export_on_phone_and_devices_check(
    phone: AdbStandin, adb_port: int, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "devices.toml"
    entry = _entry(phone, adb_port)
    lines = [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    inventory.write_text("[phone]\n" + "\n".join(lines) + "\n")
    code, out, _ = run_cli(["devices", "--check", "--inventory", inventory, "--json"], capsys)
    assert code == 0, out
    phone_info = {d["name"]: d for d in json.loads(out)}["phone"]
    assert phone_info["reachable"] and phone_info["android"]["abi"] == "arm64-v8a"
    code, out, _ = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--quantize", "fp32", "--device", "phone",
         "--inventory", inventory, "--iterations", "2", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    entry_out = json.loads(out)["results"][0]["latency_by_device"][0]
    assert entry_out["device"] == "phone" and entry_out["iterations"] == 2
    assert all(g["passed"] for g in entry_out["accuracy"]["gates"]) and entry_out["accuracy"]["gates"]


def test_refused_serial_and_missing_client(adb_port: int, tmp_path: Path) -> None:
    spec = {"type": "adb", "serial": f"127.0.0.1:{free_port()}", "adb_server_port": adb_port, "retries": 0}
    with pytest.raises(
        DeviceError, match=r"cannot connect to 127\.0\.0\.1:\d+ .*fix: check the device's address"
    ):
        AdbDevice("phone", parse_device_spec(spec)).info()
    spec |= {"adb": str(tmp_path / "no-adb")}
    with pytest.raises(DeviceError, match=r"the adb client '.*no-adb' is not installed"):
        AdbDevice("phone", parse_device_spec(spec)).info()


def test_phone_without_python_runs_its_native_benchmark_tools(
    phone: AdbStandin, adb_port: int, tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python: null + benchmark_tools: the bundle is verified with the device's sha256sum, facts come
    from its shell, and onnxruntime_perf_test / benchmark_model (stand-ins, native_standins.py) time
    the real inputs; their printed timings become the latency entries, with accuracy 'not run'."""
    tools = {
        "onnx": [str(install(phone.bin_dir, "onnxruntime_perf_test", PERF_TEST))],
        "tflite": [str(install(phone.bin_dir, "benchmark_model", BENCHMARK_MODEL)), "--use_xnnpack=true"],
    }
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"phone": _entry(phone, adb_port, python=None, benchmark_tools=tools)}))
    code, out, _ = run_cli(["devices", "--check", "--inventory", inventory, "--json"], capsys)
    assert code == 0, out
    facts = json.loads(out)[-1]
    assert facts["python"] is None and facts["arch"] and facts["memory_mb"] > 0 and facts["free_mb"] > 0
    assert facts["runtimes"]["onnx native"] == tools["onnx"][0]
    code, out, _ = run_cli(
        ["export", tiny_bert, "--out", tmp_path / "out", "--target", "onnx,tflite", "--quantize", "fp32",
         "--device", "phone", "--inventory", inventory, "--iterations", "4", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    entries = {r["recipe"]: r["latency_by_device"][0] for r in json.loads(out)["results"]}
    perf, bench = entries["onnx:fp32"], entries["tflite:fp32"]
    assert perf["runtime"] == "onnxruntime_perf_test (native)" and perf["iterations"] == 4
    assert 0 < perf["min_ms"] <= perf["p50_ms"] <= perf["max_ms"] and perf["peak_rss_mb"] > 10
    assert perf["sequence_length"] == 128 and perf["load_ms"] > 0 and perf["per_iteration"] is False
    assert bench["runtime"] == "benchmark_model (native)" and bench["iterations"] == 4
    assert 0 < bench["min_ms"] <= bench["p50_ms"] <= bench["max_ms"] and bench["peak_rss_mb"] == 61.2
    assert bench["note"] == "signature seq_128"
    for entry in (perf, bench):
        assert "Python agent" in entry["accuracy"]["not_run"]


def test_phone_without_python_refuses_what_only_the_agent_can_do(
    phone: AdbStandin, adb_port: int, bert_bundle: Path
) -> None:
    tool = str(install(phone.bin_dir, "benchmark_model", BENCHMARK_MODEL))
    device = _device(phone, adb_port, python=None, benchmark_tools={"tflite": tool})
    with pytest.raises(DeviceError, match=r"a onnx bundle needs the Python agent .*benchmark_tools\.onnx"):
        device.run(bert_bundle, _feeds(), warmup=0, iterations=2)
    broken = _device(phone, adb_port, python=None, benchmark_tools={"onnx": ["/bin/false"]})
    with pytest.raises(DeviceError, match=r"printed no 'Average inference time cost' \(exit 1\)"):
        broken.run(bert_bundle, _feeds(), warmup=0, iterations=2)
    device.cleanup()
    broken.cleanup()


def test_executor_runner_gets_inputs_at_the_methods_full_shape(
    phone: AdbStandin, adb_port: int, tiny_bert: Path, tmp_path: Path
) -> None:
    """executor_runner takes raw files only at the method's declared input shape: the real tokens
    are padded to it (mask 0), the entry says the shape that ran, warm-up iterations are dropped."""
    out = tmp_path / "out"
    code, _, _ = run_cli(
        ["export", tiny_bert, "--out", out, "--recipe", "executorch:xnnpack-fp32", "--no-latency"]
    )  # fmt: skip
    assert code == 0
    tool = str(install(phone.bin_dir, "executor_runner", EXECUTOR_RUNNER))
    device = _device(phone, adb_port, python=None, benchmark_tools={"executorch": tool})
    result = device.run(out / "executorch-xnnpack-fp32", _feeds(), warmup=2, iterations=3)
    device.cleanup()
    assert result.runtime == "executor_runner (native)" and len(result.latencies_ms) == 3
    assert all(t > 0 for t in result.latencies_ms) and result.outputs == {}
    options = json.loads((out / "executorch-xnnpack-fp32" / "manifest.json").read_text())["recipe"]["options"]
    native = result.extra["native"]
    assert (native["batch_size"], native["sequence_length"]) == (
        options["max_batch_size"],
        options["max_seq_len"],
    )
    assert "full input shape" in native["note"]
