"""report.json: schema id, tool versions, result entries, and the exit code they imply."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from pathlib import Path
from typing import Any

from edge_export.report.result import Result, exit_code

REPORT_SCHEMA = "edge-export/report@1"
_VERSIONED = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy")


def tool_versions() -> dict[str, str]:
    """Versions of edge-export, Python and the libraries that shape the artifacts."""
    from edge_export import __version__

    versions = {"edge_export": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def single_result_report(manifest: dict[str, Any], result: Result) -> tuple[dict[str, Any], int]:
    """The report of `validate`/`bench` on one bundle, and its exit code."""
    report = {
        "schema": REPORT_SCHEMA,
        "model": manifest["model"],
        "versions": tool_versions(),
        "results": [result.to_dict()],
    }
    return report, exit_code([result])


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON (inf/NaN written as strings)."""
    return json.dumps(_finite(report), indent=2, default=str)


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    """Write report.json into the (staging) output folder."""
    path = folder / "report.json"
    path.write_text(to_json(report) + "\n")
    return path
