"""Device facts and file checks the host asks the agent for before it runs anything.

`info` says what the device is and which runtimes it has (versions from package metadata, so a
check stays fast and never imports a heavy runtime); `verify` proves a pushed bundle arrived
byte-identical (sha256 per file); both print one JSON object on stdout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

# runtime name -> (import name, distribution names to read the version from)
RUNTIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    "ai-edge-litert": ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
    "executorch": ("executorch", ("executorch",)),
    "coremltools": ("coremltools", ("coremltools",)),
}


def runtime_versions() -> dict[str, str | None]:
    """Runtime name -> installed version, or None when it cannot be imported here."""
    found: dict[str, str | None] = {}
    for name, (module, dists) in RUNTIMES.items():
        version = None
        if importlib.util.find_spec(module) is not None:
            version = "installed"
            for dist in dists:
                try:
                    version = importlib.metadata.version(dist)
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
        found[name] = version
    return found


def _memory_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:  # macOS and other POSIX systems
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def device_info(work_dir: Path | None = None) -> dict[str, Any]:
    """Architecture, OS, CPU count, memory, Python, runtimes and free space in the work dir."""
    info: dict[str, Any] = {
        "arch": platform.machine(),
        "system": platform.system(),
        "os": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "runtimes": runtime_versions(),
    }
    if work_dir is not None:
        probe = work_dir if work_dir.exists() else work_dir.parent
        info["free_mb"] = round(shutil.disk_usage(probe).free / 2**20, 1) if probe.exists() else None
    return info


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(root: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Which expected files are missing or differ under root."""
    missing, mismatched = [], []
    for rel, digest in sorted(expected.items()):
        path = root / rel
        if not path.is_file():
            missing.append(rel)
        elif sha256(path) != digest:
            mismatched.append(rel)
    return {"ok": not missing and not mismatched, "missing": missing, "mismatched": mismatched}


def print_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout, the only thing the host parses."""
    print(json.dumps(data))
