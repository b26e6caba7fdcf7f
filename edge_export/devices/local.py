"""The local device: runs the agent in a fresh subprocess on this machine.

A subprocess (not the exporting process) keeps load time and peak RSS honest: they measure the
runtime and the model alone, without PyTorch and the reference model in the same address space.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_export.devices.base import RunResult
from edge_export.errors import DeviceError, NotRunnableHere

_RUNTIMES = {"onnxruntime": "onnxruntime", "executorch": "executorch", "ai-edge-litert": "ai_edge_litert"}


class LocalDevice:
    """This machine, measured through the same agent a remote device runs."""

    name = "local"

    def __init__(self, timeout_s: float = 1800.0, threads: int | None = None) -> None:
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
        """Which runtimes import here (version strings are read lazily by the agent)."""
        return {
            name: ("installed" if importlib.util.find_spec(module) else None)
            for name, module in _RUNTIMES.items()
        }

    def push(self, bundle: Path) -> str:
        """Nothing to copy: the bundle is already on this machine."""
        return str(bundle)

    def run(
        self,
        bundle: Path,
        inputs: dict[str, np.ndarray],
        warmup: int,
        iterations: int,
        mode: Literal["graph", "generate"] = "graph",
        decode_tokens: int = 32,
    ) -> RunResult:
        """Run the agent on the bundle; raises DeviceError with the agent's message on failure."""
        with tempfile.TemporaryDirectory(prefix="edge-export-run-") as tmp:
            work = Path(tmp)
            np.savez(work / "inputs.npz", **inputs)
            command = [
                sys.executable, "-m", "edge_export.devices.agent", "run",
                "--bundle", str(bundle), "--inputs", str(work / "inputs.npz"),
                "--out", str(work / "out"), "--mode", mode, "--warmup", str(warmup),
                "--iterations", str(iterations), "--decode-tokens", str(decode_tokens),
            ]  # fmt: skip
            if self.threads:
                command += ["--threads", str(self.threads)]
            return self._execute(command, work / "out")

    def _execute(self, command: list[str], out: Path) -> RunResult:
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(
                self.name, f"agent timed out after {self.timeout_s:.0f}s", command=command
            ) from exc
        timings_file = out / "timings.json"
        if not timings_file.is_file():
            raise DeviceError(
                self.name, f"agent crashed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}",
                command=command, returncode=proc.returncode, stderr=proc.stderr,
            )  # fmt: skip
        timings = json.loads(timings_file.read_text())
        if "error" in timings:
            err = timings["error"]
            if err["type"] == "NotRunnableHere":
                raise NotRunnableHere(err["message"])
            raise DeviceError(
                self.name, f"{err['type']}: {err['message']}",
                command=command, returncode=proc.returncode, stderr=proc.stderr,
            )  # fmt: skip
        with np.load(out / "outputs.npz") as data:
            outputs = {k: data[k] for k in data.files}
        extra = {k: timings[k] for k in ("ttft_ms", "decode_ms", "providers", "machine") if k in timings}
        return RunResult(
            device=self.name,
            outputs=outputs,
            latencies_ms=list(timings["latencies_ms"]),
            load_ms=float(timings["load_ms"]),
            peak_rss_mb=float(timings["peak_rss_mb"]),
            runtime=str(timings.get("runtime", "")),
            extra=extra,
        )

    def cleanup(self) -> None:
        """Each run used its own temporary folder, already removed."""
