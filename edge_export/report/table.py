"""The terminal table: one row per (target, recipe) with status, size, accuracy and latency."""

from __future__ import annotations

from typing import Any

_KEY_METRICS = ("embedding_cosine_min", "top1_agreement", "perplexity_delta_pct", "next_token_agreement",
                "generation_match", "sqnr_db")  # fmt: skip


def _accuracy_cell(result: dict[str, Any]) -> str:
    accuracy = result.get("accuracy")
    if not accuracy:
        return "[red]not fully delegated[/red]" if result.get("residency_failure") else "-"
    if accuracy.get("not_run"):
        return f"[yellow]{accuracy['not_run']}[/yellow]"
    metrics = accuracy["metrics"]
    shown = [f"{k}={metrics[k]:.4g}" for k in _KEY_METRICS if k in metrics][:3]
    failed = [g["metric"] for g in accuracy["gates"] if not g["passed"]]
    text = "\n".join(shown)
    if accuracy.get("measured_on") == "host-estimate":
        text = "[cyan]host estimate[/cyan]\n" + text
    if result.get("residency_failure"):
        text += "\n[red]not fully delegated[/red]"
    return text + (f"\n[red]failed: {', '.join(failed)}[/red]" if failed else "")


def _latency_cell(result: dict[str, Any]) -> str:
    lines = []
    for entry in result.get("latency_by_device") or []:
        if "error" in entry:
            lines.append(f"{entry['device']}: [red]error[/red]")
        elif entry.get("not_run"):
            lines.append(f"{entry['device']}: [yellow]not run here[/yellow]")
        elif "decode_tokens_per_s" in entry:
            lines.append(
                f"{entry['device']}: ttft {entry['ttft_ms']:.1f} ms, {entry['decode_tokens_per_s']:.1f} tok/s"
            )
        elif "p50_ms" in entry:
            noisy = " (noisy)" if entry.get("noisy") else ""
            lines.append(f"{entry['device']}: p50 {entry['p50_ms']:.2f} ms{noisy}")
        elif "mean_ms" in entry:  # a native tool that prints only the mean
            lines.append(
                f"{entry['device']}: mean {entry['mean_ms']:.2f} ms ({entry.get('native_tool', 'native')})"
            )
        if (entry.get("accuracy") or {}).get("failure"):
            lines.append(f"{entry['device']}: [red]accuracy gate failed[/red]")
    return "\n".join(lines) or "-"


def render(report: dict[str, Any]) -> Any:
    """A rich Table for the report."""
    from rich.table import Table

    model = report["model"]
    table = Table(title=f"edge-export: {model['source']} ({model['task']})")
    for column in ("target", "recipe", "status", "size MB", "accuracy", "latency"):
        table.add_column(column)
    colours = {"passed": "green", "failed": "red", "error": "red", "not_run": "yellow"}
    for result in report["results"]:
        size = f"{result['size_bytes'] / 1e6:.1f}" if result.get("size_bytes") else "-"
        status = f"[{colours[result['status']]}]{result['status']}[/]"
        if result.get("error"):
            status += f"\n{result['error']['message'][:120]}"
        for note in result.get("notes", []):
            status += f"\n[dim]{note[:120]}[/dim]"
        table.add_row(result["target"], result["recipe"].split(":", 1)[1], status, size,
                      _accuracy_cell(result), _latency_cell(result))  # fmt: skip
    return table


def print_table(report: dict[str, Any]) -> None:
    """Print the table to stdout."""
    from rich.console import Console

    Console(width=160).print(render(report))


def emit(report: dict[str, Any], as_json: bool) -> None:
    """The report on stdout: strict JSON and nothing else with `--json`, else the table."""
    import sys

    from edge_export.report.schema import to_json

    if as_json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        print_table(report)


def print_targets(info: list[dict[str, Any]], as_json: bool) -> None:
    """`edge-export targets`: every target, whether it is installed, and its recipes."""
    import json

    if as_json:
        print(json.dumps(info, indent=2))
        return
    for target in info:
        state = (
            "installed" if target["installed"] else f"missing: pip install 'edge-export[{target['extra']}]'"
        )
        print(f"{target['name']} ({state})")
        for recipe in target["recipes"]:
            print(f"  {recipe['id']:<24} {recipe['precision']:<5} {recipe['description']}")


def print_families(rows: list[dict[str, Any]], as_json: bool) -> None:
    """`edge-export targets --families`: model type x target ("yes" or a numbered reason)."""
    import json

    if as_json:
        print(json.dumps(rows, indent=2))
        return
    targets = sorted({t for row in rows for t in row["targets"]})
    reasons: list[str] = []
    width = max(len(row["family"]) for row in rows)
    print(f"{'model type':<13} {'family':<{width}} " + " ".join(f"{t:<10}" for t in targets) + " tasks")
    for row in rows:
        cells = []
        for target in targets:
            verdict = row["targets"][target]
            if verdict != "yes":
                if verdict not in reasons:
                    reasons.append(verdict)
                verdict = f"no ({reasons.index(verdict) + 1})"
            cells.append(f"{verdict:<10}")
        print(
            f"{row['model_type']:<13} {row['family']:<{width}} "
            + " ".join(cells)
            + " "
            + ", ".join(row["tasks"])
        )
    for number, reason in enumerate(reasons, 1):
        print(f"({number}) {reason}")


def _device_line(device: dict[str, Any]) -> str:
    if device.get("reachable") is False:
        return f"{device['name']} ({device['type']}): unreachable"
    if "arch" not in device:
        return f"{device['name']} ({device['type']})"
    runtimes = ", ".join(f"{k} {v}" if v else f"{k}: missing" for k, v in device.get("runtimes", {}).items())
    return f"{device['name']} ({device['type']}): {device['arch']} {device.get('os', '')} [{runtimes}]"


def print_devices(info: list[dict[str, Any]], as_json: bool) -> None:
    """`edge-export devices`: each device on a line (or the JSON list)."""
    import json

    if as_json:
        print(json.dumps(info, indent=2))
        return
    for device in info:
        print(_device_line(device))
