"""SIGTERM / SIGHUP / Ctrl-C while a bundle runs on an SSH device: the run exits 128+n and the
device's work dir is removed while the connection is still up (a real sshd on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sshd import LocalSshd, sshd_fixture  # noqa: F401 - the `sshd` fixture


@pytest.fixture
def bundle(bert_onnx_bundle: Path) -> Path:
    return bert_onnx_bundle


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_removes_the_device_work_dir(
    sshd: LocalSshd, bundle: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    work = tmp_path / "device-work"
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump({"pi": sshd.spec(work_dir=str(work), python=sys.executable)}))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    argv = [sys.executable, "-m", "edge_export", "bench", str(bundle), "--device", "pi",
            "--inventory", str(inventory), "--warmup", "0", "--iterations", "10000"]  # fmt: skip
    env = dict(os.environ, CI="1", TMPDIR=str(tmpdir))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (work / "runs").is_dir() or not list((work / "runs").iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started on the device"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"interrupted ({sig.name})" in stderr
    assert not work.exists(), f"left on the device: {sorted(p.name for p in work.rglob('*'))}"
    assert list(tmpdir.iterdir()) == []
