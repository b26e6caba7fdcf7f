"""The Device protocol and the result a run on a device returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


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
