"""Ctrl-C, SIGTERM and SIGHUP during an export leave nothing at OUT, no staging folder and nothing
in TMPDIR, and exit with 128 + the signal number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("sig", "delay_s"),
    [(signal.SIGINT, 0.2), (signal.SIGINT, 1.0), (signal.SIGINT, 2.5), (signal.SIGTERM, 1.0),
     (signal.SIGHUP, 2.5)],
)  # fmt: skip
def test_signal_leaves_nothing(tmp_path: Path, tiny_llama: Path, sig: signal.Signals, delay_s: float) -> None:
    out = tmp_path / "out"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = dict(os.environ, CI="1", TMPDIR=str(tmpdir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_export", "export", str(tiny_llama), "--out", str(out),
         "--quantize", "fp32,int8,int4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.staging-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.staging-*")), "the export never started staging"
    assert list(tmpdir.iterdir()), "the run keeps its scratch under TMPDIR"
    time.sleep(delay_s)  # loading, exporting, or validating/measuring by now
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"interrupted ({sig.name})" in stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))
    assert list(tmpdir.iterdir()) == []
