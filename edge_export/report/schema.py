"""report.json: schema id, tool versions, result entries, and the exit code they imply."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from collections.abc import Mapping
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


def json_safe(value: Any) -> Any:
    """`value` as strict JSON data: non-finite floats become the strings "nan"/"inf"/"-inf" (JSON
    has no NaN and PostgreSQL refuses it; float() reads them back), numpy scalars and arrays become
    Python numbers and lists, tuples become lists. report.json and the lab's store both use it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return json_safe(value.tolist())
    return value


def to_json(report: dict[str, Any]) -> str:
    """Strict JSON (inf/NaN written as strings)."""
    return json.dumps(json_safe(report), indent=2, default=str)


def write_report(folder: Path, report: dict[str, Any]) -> Path:
    """Write report.json into the (staging) output folder."""
    path = folder / "report.json"
    path.write_text(to_json(report) + "\n")
    return path
