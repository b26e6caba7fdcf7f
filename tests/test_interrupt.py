"""Ctrl-C during an export leaves nothing at OUT and no staging folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("delay_s", [0.2, 1.0, 2.5])
def test_sigint_leaves_nothing(tmp_path: Path, tiny_llama: Path, delay_s: float) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, CI="1")
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
    time.sleep(delay_s)  # loading, exporting, or validating/measuring by now
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))
