"""`edge-export lab ...`: the device lab's subcommands (parsers here, the work in runner/store/compare)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_export.errors import ConfigError

STORE_ENV = "EDGE_EXPORT_LAB_STORE"
STORE_HELP = f"results store: a SQLite file or postgresql://... (default ${STORE_ENV}, else ./lab.sqlite)"
RUN_STORE_HELP = (
    f"results store: a SQLite file or postgresql://... (default: the lab file's store:, else ${STORE_ENV}, "
    "else lab.sqlite beside the lab file)"
)


def add_lab_parser(
    sub: Any,
    parser_class: type[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
    inventory_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `lab run|history|compare|merge|report` to the top-level subparsers."""
    lab = sub.add_parser("lab", help="device lab: matrix runs, results store, regression gate, reports")
    cmds = lab.add_subparsers(dest="lab_command", required=True, parser_class=parser_class)
    run = cmds.add_parser("run", help="run a lab file's matrix (models x recipes x devices)")
    _run_flags(run)
    inventory_flag(run)
    common(run)
    hist = cmds.add_parser("history", help="stored measurements, newest first")
    for key in ("model", "target", "recipe", "device", "status"):
        hist.add_argument(f"--{key}", action="append", help=f"only this {key} (repeatable)")
    hist.add_argument("--run", help="only this run (an id, 'latest', or label:KEY=VALUE)")
    hist.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50; 0: all)")
    hist.add_argument("--store", required=False, help=STORE_HELP)
    common(hist)
    cmp_ = cmds.add_parser("compare", help="compare a run with a baseline; exit 1 on a regression")
    cmp_.add_argument("run", nargs="?", default="latest", help="run id or 'latest' (default)")
    cmp_.add_argument("--run", dest="run_flag", metavar="RUN", help="the same as the positional RUN")
    cmp_.add_argument("--baseline", required=True, metavar="RUN_ID|previous|label:KEY=VALUE")
    cmp_.add_argument("--min-effect", type=float, default=0.05, help="smallest latency change that counts (0.05 = 5%%)")  # fmt: skip
    cmp_.add_argument("--store", help=STORE_HELP)
    common(cmp_)
    merge = cmds.add_parser("merge", help="combine shard stores into one")
    merge.add_argument("dest", help="the store to merge into (with --into: the first source)")
    merge.add_argument("sources", nargs="*")
    merge.add_argument("--into", metavar="STORE", help="merge every positional store into STORE")
    common(merge)
    rep = cmds.add_parser("report", help="write report.html and junit.xml for a stored run")
    rep.add_argument("run", help="run id or 'latest'")
    rep.add_argument("--store", help=STORE_HELP)
    rep.add_argument("--html", type=Path, help="write the HTML report here (default ./report.html)")
    rep.add_argument("--junit", type=Path, help="write the JUnit XML here (default ./junit.xml)")
    common(rep)


def _run_flags(run: argparse.ArgumentParser) -> None:
    """`lab run`'s own arguments."""
    run.add_argument("lab_file", type=Path)
    run.add_argument("--store", help=RUN_STORE_HELP)
    run.add_argument("--shard", metavar="I/N", help="run only shard I of N (1-based), e.g. 2/4")
    run.add_argument("--run-id", metavar="ID", help="id of this run (default: UTC time + random); CI shards of one run share one")  # fmt: skip
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run: only the cells it lacks")
    run.add_argument("--dry-run", action="store_true", help="print the resolved matrix and what is cached")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label this run (repeatable)")  # fmt: skip
    run.add_argument(
        "--out", "--report-dir", dest="out", type=Path, metavar="DIR",
        help="bundles, report.html, junit.xml and lab.json go here (default ./lab-out)",
    )  # fmt: skip
    run.add_argument("--cache", type=Path, metavar="DIR", help="export cache folder (default $EDGE_EXPORT_CACHE or ~/.cache/edge-export)")  # fmt: skip
    run.add_argument("--no-cache", action="store_true", help="export everything again; use no export cache")


def lab_command(args: argparse.Namespace) -> int:
    """Run one `lab` subcommand; returns the exit code (0 ok, 1 a regression or failed gate,
    2 bad input, 3 an export failed, 4 a device failed, 130 interrupted)."""
    commands = {"run": _run, "history": _history, "compare": _compare, "merge": _merge, "report": _report}
    return commands[args.lab_command](args)


def _emit_json(data: Any) -> None:
    from edge_export.report.schema import to_json

    sys.stdout.write(to_json(data) + "\n")


def _store_location(flag: str | None) -> str:
    """--store, else $EDGE_EXPORT_LAB_STORE, else ./lab.sqlite (read commands: it must exist)."""
    location = flag or os.environ.get(STORE_ENV) or "lab.sqlite"
    if "://" not in location and not Path(location).exists():
        raise ConfigError(
            f"no results store at {location}",
            hint=f"give --store (a SQLite file or postgresql://...), or set {STORE_ENV}; `lab run` creates one",
        )
    return location


def _open(location: str | Path) -> Any:
    from edge_export.lab.store import open_store

    return open_store(location)


def _run(args: argparse.Namespace) -> int:
    """`lab run`: the matrix (or --dry-run's plan), then OUT/report.html, junit.xml, lab.json."""
    from edge_export.lab.matrix import parse_shard
    from edge_export.lab.runner import plan_lab, run_lab, run_labels, select_cells
    from edge_export.lab.spec import read_lab_file

    spec = read_lab_file(args.lab_file, args.inventory)
    shard_of = parse_shard(args.shard) if args.shard else None
    cache_dir = None if args.no_cache else (args.cache or spec.cache or _default_cache())
    if args.dry_run:
        plan = plan_lab(spec, select_cells(spec, shard_of), cache_dir)
        if args.json:
            _emit_json(plan)
        else:
            _print_plan(plan)
        return 0
    if args.resume and args.run_id:
        raise ConfigError("--resume and --run-id both name the run", hint="give only --resume RUN_ID")
    labels = run_labels(args.label)
    out = (args.out or Path("lab-out")).resolve()
    location = args.store or spec.store or os.environ.get(STORE_ENV) or spec.store_location()
    with _open(location) as store:
        summary, code = run_lab(
            spec, store, run_id=args.run_id, shard_of=shard_of, resume=args.resume, progress=False if args.json else None,
            cache_dir=cache_dir, labels=labels, out=out,
        )  # fmt: skip
        summary.update(store=store.url, out=str(out), reports=_write_reports(store, summary["run_id"], out))
    (out / "lab.json").write_text(_json_text(summary))
    if args.json:
        _emit_json(summary)
    else:
        _print_summary(summary)
    return code


def _json_text(data: Any) -> str:
    from edge_export.report.schema import to_json

    return to_json(data) + "\n"


def _default_cache() -> Path:
    from edge_export.cache import default_cache_dir

    return default_cache_dir()


def _write_reports(
    store: Any, run_id: str, out: Path | None, html: Path | None = None, junit: Path | None = None
) -> dict[str, str]:
    """report.html (with each cell's trend over the store's earlier runs) and junit.xml: into
    `out`, or only to the paths given."""
    from edge_export.lab.html import write_html
    from edge_export.lab.junit import write_junit

    run = store.run(run_id)
    rows = store.rows(run_id=run_id)
    written = {}
    if out is not None or html is not None:
        cells = sorted({row["cell"] for row in rows})
        earlier = store.rows(cell=cells, with_result=False) if cells else []
        history = sorted((r for r in earlier if r["run_id"] != run_id), key=lambda row: str(row["time"]))
        written["html"] = str(write_html(html or out / "report.html", rows, history, run))
    if out is not None or junit is not None:
        written["junit"] = str(write_junit(junit or out / "junit.xml", rows, run))
    return written


def _print_plan(plan: dict[str, Any]) -> None:
    """--dry-run: each export group with its devices and whether the export cache holds it."""
    shard = f" (shard {plan['shard']})" if plan.get("shard") else ""
    print(
        f"{len(plan['cells'])} cells in {len(plan['groups'])} exports{shard}; cache: {plan['cache'] or 'off'}"
    )
    for group in plan["groups"]:
        cached = {True: "cached", False: "to export", None: "no cache"}[group["cached"]]
        print(f"  {group['model']:<16} {group['recipe']:<28} {cached:<10} on {', '.join(group['devices'])}")
    for line in plan.get("skipped", []):
        print(f"  skipped: {line}")


def _print_summary(summary: dict[str, Any]) -> None:
    """The run's cells as a table (stdout), then where the store and reports are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lab run {summary['run_id']}")
    for column in ("model", "recipe", "device", "status", "p50 ms", "cached"):
        table.add_column(column)
    for cell in summary["cells"]:
        p50 = f"{cell['p50_ms']:.2f}" if cell.get("p50_ms") is not None else "-"
        status = cell["status"] + (f"\n{cell['failures'][0][:100]}" if cell["failures"] else "")
        table.add_row(
            cell["model"], cell["recipe"], cell["device"], status, p50, "yes" if cell["cached"] else ""
        )
    Console(width=160).print(table)
    print(
        f"store: {summary['store']}\nreport: {summary['reports']['html']}\njunit: {summary['reports']['junit']}"
    )


def _history(args: argparse.Namespace) -> int:
    """`lab history`: stored measurements, newest first, filtered."""
    filters = {
        k: getattr(args, k) for k in ("model", "target", "recipe", "device", "status") if getattr(args, k)
    }
    with _open(_store_location(args.store)) as store:
        run_id = store.resolve_run(args.run) if args.run else None
        rows = store.rows(run_id=run_id, limit=args.limit or None, with_result=False, **filters)
    if run_id is not None:
        rows.sort(key=lambda row: str(row["time"]), reverse=True)
    if args.json:
        _emit_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} measurements, newest first")
    for column in ("time", "run", "model", "recipe", "device", "status", "p50 ms", "size MB", "cached"):
        table.add_column(column)
    for row in rows:
        p50 = f"{row['p50_ms']:.2f}" if row.get("p50_ms") is not None else "-"
        size = f"{row['size_bytes'] / 1e6:.1f}" if row.get("size_bytes") else "-"
        table.add_row(str(row["time"])[:19], row["run_id"], row["model"], row["recipe"], row["device"],
                      row["status"], p50, size, "yes" if row.get("cached") else "")  # fmt: skip
    Console(width=180).print(table)
    return 0


def _compare(args: argparse.Namespace) -> int:
    """`lab compare`: exit 1 when the run regressed against the baseline (latency, judged on the
    stored samples; a gate metric past its tolerance; a status that got worse)."""
    from edge_export.lab.compare import compare_runs, has_regression

    with _open(_store_location(args.store)) as store:
        current = store.resolve_run(args.run_flag or args.run)
        baseline = store.resolve_run(args.baseline, before=current)
        if baseline == current:
            raise ConfigError(
                f"the baseline is the run itself ({current})", hint="give --baseline another run"
            )
        now, then = (
            store.rows(run_id=current, with_result=False),
            store.rows(run_id=baseline, with_result=False),
        )
    shared = {row["cell"] for row in now} & {row["cell"] for row in then}
    if not shared:
        raise ConfigError(
            f"runs {current} and {baseline} have no cell in common", hint="compare runs of the same lab"
        )
    changes = compare_runs(now, then, min_effect=args.min_effect)
    regressed = has_regression(changes)
    if args.json:
        _emit_json({"run": current, "baseline": baseline, "cells": len(shared), "regression": regressed,
                    "changes": changes})  # fmt: skip
    else:
        _print_changes(current, baseline, changes)
    return 1 if regressed else 0


def _print_changes(current: str, baseline: str, changes: list[dict[str, Any]]) -> None:
    """What moved (anything but "same"), with the interval of the latency ratio, and a summary."""
    from edge_export.lab.compare import format_changes

    print(f"run {current} vs baseline {baseline}")
    print("\n".join(format_changes(changes)))


def _merge(args: argparse.Namespace) -> int:
    """`lab merge DEST SRC...` or `lab merge SRC... --into DEST`: shard stores into one."""
    from edge_export.lab.store import merge_stores

    dest, sources = (args.into, [args.dest, *args.sources]) if args.into else (args.dest, args.sources)
    if not sources:
        raise ConfigError("lab merge needs at least one store to merge", hint="lab merge SRC... --into DEST")
    opened = [_open(_store_location(source)) for source in sources]
    try:
        with _open(dest) as target:
            copied = merge_stores(target, opened)
            url = target.url
    finally:
        for store in opened:
            store.close()
    if args.json:
        _emit_json({"into": url, "sources": [s.url for s in opened], "rows": copied})
    else:
        print(f"merged {copied} rows from {len(opened)} stores into {url}")
    return 0


def _report(args: argparse.Namespace) -> int:
    """`lab report RUN`: the HTML report and JUnit XML of a stored run (both into the current
    folder, or only the ones given with --html / --junit)."""
    with _open(_store_location(args.store)) as store:
        run_id = store.resolve_run(args.run)
        out = Path.cwd() if args.html is None and args.junit is None else None
        paths = _write_reports(store, run_id, out, args.html, args.junit)
    if args.json:
        _emit_json({"run": run_id, **paths})
    else:
        print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    return 0
