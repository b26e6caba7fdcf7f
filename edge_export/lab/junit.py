"""junit.xml of a lab run, for CI systems (GitHub Actions, GitLab, Jenkins test reports).

One <testsuite> per run (name = run id), one <testcase> per cell: classname = model, name =
recipe@device, time = the seconds its result spent exporting, validating and timing. A failed
gate is a <failure> whose message is the failing gates; an export or device error is an <error>;
a cell that could not run here is <skipped>. ElementTree escapes the text; characters XML 1.0
cannot carry at all (control codes from a tool's log) are replaced first.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_export.lab import reportdata as rd
from edge_export.lab.reportdata import printable


def write_junit(path: Path, rows: list[dict], run: dict) -> Path:
    """Write the JUnit XML of one run's measurement rows to `path`, atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ET.ElementTree(junit_tree(rows, run)).write(temporary, encoding="utf-8", xml_declaration=True)
    temporary.replace(path)
    return path


def junit_tree(rows: list[dict], run: dict) -> ET.Element:
    """The <testsuites> element of one run (see the module docstring)."""
    run_id = printable(run.get("run_id") or (rows[0].get("run_id") if rows else "") or "unknown run")
    counts = Counter(rd.status_of(row) for row in rows)
    seconds = sum(rd.cell_seconds(row) or 0.0 for row in rows)
    totals = {
        "tests": str(len(rows)),
        "failures": str(counts["failed"]),
        "errors": str(counts["error"]),
        "skipped": str(counts["not_run"]),
        "time": f"{seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": "edge-export lab", **totals})
    started = run.get("started_at")
    suite = ET.SubElement(
        root,
        "testsuite",
        {"name": run_id, **totals, "hostname": printable(run.get("host") or socket.gethostname())},
    )
    if started:
        suite.set("timestamp", printable(started.isoformat() if isinstance(started, datetime) else started))
    labels = run.get("labels") or (rows[0].get("labels") if rows else None) or {}
    if labels or run.get("shard"):
        properties = ET.SubElement(suite, "properties")
        for key, value in sorted({**labels, **({"shard": run["shard"]} if run.get("shard") else {})}.items()):
            ET.SubElement(properties, "property", name=printable(key), value=printable(value))
    for row in rows:
        suite.append(_testcase(row))
    return root


def _testcase(row: Mapping[str, Any]) -> ET.Element:
    case = ET.Element("testcase", {
        "classname": printable(row.get("model") or "-"),
        "name": printable(f"{row.get('recipe')}@{row.get('device')}"),
    })  # fmt: skip
    seconds = rd.cell_seconds(row)
    if seconds is not None:
        case.set("time", f"{seconds:.3f}")
    status = rd.status_of(row)
    if status in ("failed", "error"):
        lines = [printable(line) for line in rd.failure_lines(row)] or [f"{status} (no message recorded)"]
        kind = "gate" if status == "failed" else _error_type(row)
        element = ET.SubElement(
            case, "failure" if status == "failed" else "error", message="; ".join(lines), type=kind
        )
        element.text = "\n".join(lines)
    elif status == "not_run":
        ET.SubElement(case, "skipped", message=printable(rd.not_run_reason(row)))
    ET.SubElement(case, "system-out").text = printable(_summary(row))
    return case


def _error_type(row: Mapping[str, Any]) -> str:
    """The exception type recorded for an error (an export or a device failure)."""
    result = row.get("result") or {}
    error = result.get("error") or rd.device_entry(row).get("error") or {}
    return printable(error.get("type") or "error")


def _summary(row: Mapping[str, Any]) -> str:
    """A few facts per cell in its output: the latency, size and cache hit, for a CI log."""
    facts = [f"cell {row.get('cell') or '-'}", f"status {rd.status_of(row)}"]
    p50 = rd.p50_ms(row)
    if p50 is not None:
        facts.append(f"p50 {p50:.4g} ms over {len(rd.samples_ms(row))} samples")
    size = rd.size_bytes(row)
    if size is not None:
        facts.append(f"size {size / 1e6:.2f} MB")
    if row.get("cached"):
        facts.append("cached export")
    return "\n".join(facts)
