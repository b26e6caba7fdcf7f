"""The Device protocol and the result a run on a device returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from edge_export.errors import DeviceError, NotRunnableHere

Mode = Literal["graph", "generate"]


@dataclass
class RunResult:
    """Outputs and timings of running one bundle on one device."""

    device: str
    outputs: dict[str, np.ndarray]
    latencies_ms: list[float]
    load_ms: float
    peak_rss_mb: float
    runtime: str
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Device(Protocol):
    """Somewhere a bundle runs: this machine, a board over SSH, a phone over adb, a Mac."""

    name: str
    kind: str  # "local" for this machine (its outputs are the host's: not gated again), else the transport

    def info(self) -> dict[str, Any]:
        """Architecture, OS, CPU and memory facts."""
        ...

    def runtimes(self) -> dict[str, str | None]:
        """Runtime name -> version, or None when missing."""
        ...

    def push(self, bundle: Path) -> str:
        """Make the bundle available on the device; returns its location there."""
        ...

    def run(
        self,
        bundle: Path,
        inputs: dict[str, np.ndarray],
        warmup: int,
        iterations: int,
        mode: Literal["graph", "generate"] = "graph",
        decode_tokens: int = 32,
    ) -> RunResult:
        """Run the bundle on the inputs with warmup + timed iterations."""
        ...

    def cleanup(self) -> None:
        """Remove whatever the runs left on the device."""
        ...


def agent_run_args(
    bundle: str, inputs: str, out: str, mode: Mode, warmup: int, iterations: int, decode_tokens: int,
    threads: int | None, time_limit_s: float = 0.0,
) -> list[str]:  # fmt: skip
    """The agent's `run` arguments (after `python -m <agent package>`), the same on every device."""
    args = [
        "run", "--bundle", bundle, "--inputs", inputs, "--out", out, "--mode", mode,
        "--warmup", str(warmup), "--iterations", str(iterations), "--decode-tokens", str(decode_tokens),
    ]  # fmt: skip
    if threads:
        args += ["--threads", str(threads)]
    if time_limit_s:
        args += ["--time-limit", f"{time_limit_s:g}"]
    return args


def read_agent_result(
    device: str, timings: dict[str, Any] | None, outputs_npz: Path, command: list[str], returncode: int,
    stderr: str,
) -> RunResult:  # fmt: skip
    """Turn the agent's timings.json (None when it wrote none) and outputs.npz into a RunResult.

    The agent's own error (missing runtime, bad bundle) becomes a DeviceError with its message;
    a runtime that cannot exist on that device (Core ML off macOS) becomes NotRunnableHere.
    """
    if timings is None:
        raise DeviceError(
            device, f"agent crashed (exit {returncode}): {stderr.strip()[-300:]}",
            command=command, returncode=returncode, stderr=stderr,
        )  # fmt: skip
    if "error" in timings:
        err = timings["error"]
        if err["type"] == "NotRunnableHere":
            raise NotRunnableHere(err["message"])
        hint = "install it in the device's Python" if err["type"] == "MissingRuntime" else None
        raise DeviceError(
            device, f"{err['type']}: {err['message']}",
            command=command, returncode=returncode, stderr=stderr, hint=hint,
        )  # fmt: skip
    with np.load(outputs_npz) as data:
        outputs = {k: data[k] for k in data.files}
    extra = {
        k: timings[k] for k in ("ttft_ms", "decode_ms", "providers", "machine", "compute") if k in timings
    }
    return RunResult(
        device=device,
        outputs=outputs,
        latencies_ms=list(timings["latencies_ms"]),
        load_ms=float(timings["load_ms"]),
        peak_rss_mb=float(timings["peak_rss_mb"]),
        runtime=str(timings.get("runtime", "")),
        extra=extra,
    )
