"""The local device: runs the agent in a fresh subprocess on this machine.

A subprocess (not the exporting process) keeps load time and peak RSS honest: they measure the
runtime and the model alone, without PyTorch and the reference model in the same address space.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.devices.agent.facts import runtime_versions
from edge_export.devices.base import Mode, RunResult, agent_run_args, read_agent_result
from edge_export.errors import DeviceError


class LocalDevice:
    """This machine, measured through the same agent a remote device runs."""

    name = "local"
    kind = "local"

    def __init__(
        self, timeout_s: float = 1800.0, threads: int | None = None, name: str | None = None
    ) -> None:
        if name:  # an inventory entry of type local may rename it
            self.name = name
        self.timeout_s = timeout_s
        self.threads = threads

    def info(self) -> dict[str, Any]:
        """Architecture, OS, CPU count and Python version of this machine."""
        return {
            "name": self.name,
            "arch": platform.machine(),
            "os": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }

    def runtimes(self) -> dict[str, str | None]:
        """Runtime name -> version as installed in this Python (None when missing)."""
        return runtime_versions()

    def push(self, bundle: Path) -> str:
        """Nothing to copy: the bundle is already on this machine."""
        return str(bundle)

    def run(
        self,
        bundle: Path,
        inputs: dict[str, np.ndarray],
        warmup: int,
        iterations: int,
        mode: Mode = "graph",
        decode_tokens: int = 32,
    ) -> RunResult:
        """Run the agent on the bundle; raises DeviceError with the agent's message on failure."""
        with tempfile.TemporaryDirectory(prefix="edge-export-run-") as tmp:
            work = Path(tmp)
            np.savez(work / "inputs.npz", **inputs)
            out = work / "out"
            args = agent_run_args(
                str(bundle), str(work / "inputs.npz"), str(out), mode, warmup, iterations, decode_tokens,
                self.threads,
            )  # fmt: skip
            command = [sys.executable, "-m", "edge_export.devices.agent", *args]
            try:
                proc = subprocess.run(
                    command, capture_output=True, text=True, timeout=self.timeout_s, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise DeviceError(
                    self.name, f"agent timed out after {self.timeout_s:.0f}s", command=command
                ) from exc
            timings_file = out / "timings.json"
            timings = json.loads(timings_file.read_text()) if timings_file.is_file() else None
            return read_agent_result(
                self.name, timings, out / "outputs.npz", command, proc.returncode, proc.stderr
            )

    def cleanup(self) -> None:
        """Each run used its own temporary folder, already removed."""
