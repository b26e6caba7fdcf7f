"""`edge-export lab run`: work through a lab's matrix, one export per (model, recipe), one store row
per device, committed as soon as that device finishes its cell so an interrupted run keeps it.

The host exports and validates each group with an ordinary export run (run/orchestrate.run_export,
without latency; or the export cache has it), then hands the bundle to one worker per device
(lab/workers.py): devices measure in parallel, each one job at a time, while the host goes on with
the next group. A local device never measures while the host exports (they share its cores). A
group that fails records an error row for each of its cells and the lab goes on; Ctrl-C stops the
workers and marks the run interrupted (`--resume RUN_ID` does the rest).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_export import interrupts
from edge_export.config import ExportConfig
from edge_export.devices import get_device
from edge_export.errors import ConfigError, DeviceError, EdgeExportError, InputError, Interrupted
from edge_export.files import USER_ERRNOS
from edge_export.lab.display import LabDisplay
from edge_export.lab.matrix import Cell, export_groups, resolve_matrix, shard
from edge_export.lab.spec import LabSpec
from edge_export.lab.workers import DevicePool, Job
from edge_export.report.result import Result, exit_code
from edge_export.run.device_job import Measurement, prepare_measurement, source_max_positions
from edge_export.run.orchestrate import OnResult, run_export

if TYPE_CHECKING:
    from edge_export.exporter.source import ModelSource
    from edge_export.run.plan import PlannedRun
    from edge_export.run.session import ExportRun

# CI environment variables recorded as run labels (the first one set wins for each label).
CI_LABELS = {
    "git_commit": ("GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT", "BUILDKITE_COMMIT"),
    "git_branch": ("GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "GIT_BRANCH", "BUILDKITE_BRANCH"),
    "ci_run": ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILD_ID", "BUILDKITE_BUILD_ID"),
    "ci_job": ("GITHUB_JOB", "CI_JOB_ID", "JOB_NAME", "BUILDKITE_JOB_ID"),
}
_CODES = {"failed": 1, "error": 3}


def new_run_id() -> str:
    """A run id that sorts by time and does not collide across CI jobs: UTC time + 6 hex digits."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """A run id given with --run-id: letters, digits and . _ : + - (it names the run in the store,
    in report titles and on command lines)."""
    if not re.fullmatch(r"[\w.:+-]{1,100}", run_id):
        raise ConfigError(f"invalid --run-id {run_id!r}", hint="use letters, digits and . _ : + - only")
    return run_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(args: list[str], cwd: Path | None) -> str | None:
    """One `git` query (an argument list, no shell); None when git or a repository is missing."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def run_labels(
    given: list[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> dict[str, str]:
    """Labels of a run: git commit/branch and CI job from the CI environment (else `git` in
    `cwd`), then each `--label KEY=VALUE` (these win)."""
    env = os.environ if env is None else env
    labels: dict[str, str] = {}
    for label, names in CI_LABELS.items():
        value = next((env[name] for name in names if env.get(name)), None)
        if value:
            labels[label] = value
    if "git_commit" not in labels and (commit := _git(["rev-parse", "HEAD"], cwd)):
        labels["git_commit"] = commit
        branch = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
        if branch and branch != "HEAD" and "git_branch" not in labels:
            labels["git_branch"] = branch
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"invalid --label {item!r}: expected KEY=VALUE", hint="e.g. --label phone=pixel8"
            )
        labels[key.strip()] = value.strip()
    return labels


def cell_outcome(entry: dict[str, Any], latency: dict[str, Any] | None) -> tuple[str, list[str], int]:
    """(status, failure lines, exit code) of one device's cell from the group's result entry: the
    result's own status, but "error" when that device failed and "not_run" when it could not run
    the format (the host accuracy is still in the row)."""
    per = Result.from_dict({**entry, "latency_by_device": [latency] if latency else []})
    status = per.status
    if latency and "error" in latency:
        status = "error"
    elif latency and latency.get("not_run") and status == "passed":
        status = "not_run"
    return status, per.failure_messages(), exit_code([per])


def row_exit_code(row: Mapping[str, Any]) -> int:
    """A stored row's exit code: 4 a device failed, 3 an export failed, 1 a gate failed, else 0."""
    if "error" in (row.get("latency") or {}):
        return 4
    return _CODES.get(str(row.get("status")), 0)


class LabRun:
    """One run of a lab: its id, labels, store and folders, and the rows it writes."""

    def __init__(
        self, spec: LabSpec, store: Any, run_id: str, labels: dict[str, str], out: Path,
        cache_dir: Path | None, display: LabDisplay,
    ) -> None:  # fmt: skip
        self.spec, self.store, self.run_id, self.labels = spec, store, run_id, labels
        self.out, self.cache_dir, self.display = out, cache_dir, display
        self.model_hashes: dict[str, str] = {}
        self.max_positions: dict[str, int | None] = {}  # per model: a decoder prompt must fit them
        self.remote: set[str] = set()  # devices other than this machine: their outputs are gated

    def config(self, cell: Cell) -> ExportConfig:
        """The export config of a group: its model and recipe, exported and validated on the host
        only (no device, no latency: the device workers measure the bundle afterwards)."""
        model = self.spec.models[cell.model]
        validation = self.spec.validation.model_copy(update={"gates": self.spec.gate_overrides()})
        return ExportConfig(
            model=model.path, task=model.task, revision=model.revision, recipes=[cell.recipe],
            recipe_options=self.spec.recipe_options, devices=[], inventory=self.spec.inventory,
            latency=self.spec.latency.model_copy(update={"enabled": False}), validation=validation,
            cache=self.cache_dir, out=self.bundle_dir(cell), force=True,
        )  # fmt: skip

    def bundle_dir(self, cell: Cell) -> Path:
        """Where a group's export lands: OUT/bundles/<model>/<recipe>."""
        return self.out / "bundles" / cell.model / cell.recipe.replace(":", "-")

    def row(self, cell: Cell, entry: dict[str, Any], latency: dict[str, Any] | None,
            facts: dict[str, Any], sha256: str | None) -> dict[str, Any]:  # fmt: skip
        """The store row of one cell (see INTERFACES.md: one per run and cell)."""
        status, failures, _ = cell_outcome(entry, latency)
        latency = dict(latency) if latency else None
        samples = list((latency or {}).pop("samples_ms", None) or [])
        model = self.spec.models[cell.model]
        return {
            "run_id": self.run_id, "cell": cell.id, "time": _now(), "model": cell.model,
            "model_source": model.path, "model_sha256": sha256, "target": cell.target,
            "recipe": cell.recipe, "precision": cell.precision, "device": cell.device,
            "device_facts": facts, "status": status, "failures": failures,
            "accuracy": entry.get("accuracy"), "latency": latency, "samples_ms": samples,
            "p50_ms": (latency or {}).get("p50_ms"),
            "decode_tokens_per_s": (latency or {}).get("decode_tokens_per_s"),
            "size_bytes": entry.get("size_bytes"), "cached": bool((entry.get("cache") or {}).get("hit")),
            "result": entry, "labels": {**model.labels, **self.labels},
        }  # fmt: skip

    def error_rows(self, cells: list[Cell], exc: BaseException) -> list[dict[str, Any]]:
        """Rows for a group that failed as a whole (the model does not load, the recipe cannot
        take it, a converter crashed): one "error" row per cell with the one-line reason."""
        message = (
            exc.one_line() if isinstance(exc, EdgeExportError) else f"unexpected {type(exc).__name__}: {exc}"
        )
        message = (message.strip().splitlines() or [type(exc).__name__])[0]
        first = cells[0]
        entry = {"target": first.target, "recipe": first.recipe, "precision": first.precision,
                 "status": "error", "error": {"type": type(exc).__name__, "message": message}}  # fmt: skip
        rows = []
        for cell in cells:
            latency = None
            if isinstance(exc, DeviceError):
                latency = {"device": cell.device, "error": {"type": "DeviceError", "message": message}}
            row = self.row(cell, entry, latency, {}, self.model_hashes.get(cell.model))
            rows.append({**row, "status": "error", "failures": [message]})
        return rows

    def run_group(self, cells: list[Cell], pool: DevicePool) -> None:
        """Export one (model, recipe) on the host (holding it: no local device measures
        meanwhile), then hand the bundle to each device's worker; a group that fails as a whole
        gets its error rows here."""
        first, rows = cells[0], []
        with pool.host():
            self.display.start_group(first.model, first.recipe, [cell.device for cell in cells])
            try:
                made: list[Measurement] = []  # the bundle's measurement (by `prepare`)
                report, _ = run_export(self.config(first), self.display, on_result=self.prepare(cells, made))
                jobs = self.jobs(cells, report, made[0] if made else None)
            except (KeyboardInterrupt, Interrupted):
                raise
            except OSError as exc:
                if exc.errno in USER_ERRNOS:
                    raise  # the machine (a full disk, a permission): the whole lab stops
                jobs, rows = [], self.error_rows(cells, exc)
            except Exception as exc:  # one group's failure is recorded; the lab goes on
                jobs, rows = [], self.error_rows(cells, exc)
            self.display.group_done()
        for job in jobs:
            pool.submit(job)
        for cell, row in zip(cells, rows, strict=False):  # rows: only for a failed group
            pool.write(lambda cell=cell, row=row: self._store(cell, row))

    def _store(self, cell: Cell, row: dict[str, Any]) -> None:
        self.store.record(row)
        self.display.cell_done(cell, row)

    def prepare(self, cells: list[Cell], made: list[Measurement]) -> OnResult:
        """run_export's `on_result` for a group: the inputs to time its bundle on into `made`, gated
        (the PyTorch reference on them, made while the run is alive) when a remote device is in it."""
        gated = any(cell.device in self.remote for cell in cells)
        lat, positions, final = self.spec.latency, self.max_positions.get(cells[0].model), self.bundle_dir(cells[0])  # fmt: skip

        def on_result(run: ExportRun, planned: PlannedRun, result: Result, staging: Path) -> None:
            if lat.enabled and result.bundle and result.error is None:
                job = prepare_measurement(staging / result.bundle, lat, positions, final / result.bundle)
                made.append(job.with_gate(run, planned) if gated and run.validator is not None else job)

        return on_result

    def jobs(self, cells: list[Cell], report: dict[str, Any], measurement: Measurement | None) -> list[Job]:
        """Each device's job for a group's export: its result entry, and (when it produced a bundle
        and latency is on) the measurement `prepare` made."""
        validated, sha256 = self.spec.validation.enabled, report["model"].get("sha256")
        return [Job(cell, report["results"][0], sha256, measurement, validated) for cell in cells]

    def record_job(
        self, job: Job, latency: dict[str, Any] | None, facts: dict[str, Any], seconds: float | None
    ) -> None:
        """Store a device's finished cell at once (a worker calls this), then show it."""
        entry = job.result(latency, seconds)
        self._store(job.cell, self.row(job.cell, entry, latency, facts, job.sha256))


def _model_sources(spec: LabSpec, cells: list[Cell]) -> dict[str, ModelSource]:
    """Check every model of the run can be found (exit 2 naming it, before anything runs); their
    files give the content hash (for error rows) and the position limit (for decoder prompts)."""
    from edge_export.exporter.source import resolve

    sources = {}
    for label in dict.fromkeys(cell.model for cell in cells):
        model = spec.models[label]
        try:
            sources[label] = resolve(model.path, revision=model.revision)
        except InputError as exc:
            raise InputError(f"model '{label}': {exc.message}", hint=exc.hint) from exc
    return sources


@contextlib.contextmanager
def _closing(
    store: Any, run_id: str, display: LabDisplay, stop: Callable[[], None]
) -> Iterator[Callable[[str], None]]:
    """Close the run in the store exactly once: "finished" by the caller, "interrupted" on Ctrl-C
    (raised again as Interrupted, naming --resume), "failed" on any other error; `stop` first, so
    no device worker writes a row after it. The console script's signal handler exits without
    unwinding, so it gets a clean-up that marks the run."""
    open_ = [True]

    def close(status: str) -> None:
        if open_[0]:
            open_[0] = False
            stop()
            display.close()
            store.finish_run(run_id, status)

    stopped = Interrupted(
        f"lab run {run_id} interrupted; its finished cells are in the store",
        hint=f"edge-export lab run LAB_FILE --resume {run_id}",
    )

    def on_signal() -> None:
        if open_[0]:
            close("interrupted")
            sys.stderr.write(f"error: {stopped.one_line()}\n")

    interrupts.on_interrupt(on_signal)
    try:
        yield close
    except (KeyboardInterrupt, Interrupted) as exc:
        close("interrupted")
        raise stopped from exc
    except BaseException:
        close("failed")
        raise


def select_cells(spec: LabSpec, shard_of: tuple[int, int] | None) -> list[Cell]:
    """The lab's matrix, or one shard of it."""
    cells = resolve_matrix(spec)
    return shard(cells, *shard_of) if shard_of else cells


def run_lab(
    spec: LabSpec, store: Any, *, run_id: str | None = None, shard_of: tuple[int, int] | None = None,
    resume: str | None = None, progress: bool | None = None, cache_dir: Path | None = None,
    labels: dict[str, str] | None = None, out: Path = Path("lab-out"),
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """Run the lab's matrix (or one shard) into `store`; returns (summary, exit code).

    The exit code is the largest of the run's cells (1 a gate failed, 3 an export failed, 4 a
    device failed). With `resume`, only the cells that run has no row for are run, under its id.
    Ctrl-C marks the run interrupted and raises Interrupted (its finished cells stay stored)."""
    cells = select_cells(spec, shard_of)
    shard_text = f"{shard_of[0]}/{shard_of[1]}" if shard_of else None
    if resume:
        run_id = store.resolve_run(resume)
        done = store.finished_cells(run_id)
    else:
        run_id, done = check_run_id(run_id) if run_id else new_run_id(), set()
    pending = [cell for cell in cells if cell.id not in done]
    sources = _model_sources(spec, pending)
    groups = list(export_groups(pending).values())
    display = LabDisplay([c.device for c in pending], progress, groups=len(groups))
    lab = LabRun(spec, store, run_id, labels or {}, out, cache_dir, display)
    lab.model_hashes = {label: source.sha256() for label, source in sources.items()}
    lab.max_positions = {label: source_max_positions(source.folder) for label, source in sources.items()}
    devices = {name: get_device(name, spec.inventory) for name in dict.fromkeys(c.device for c in pending)}
    lab.remote = {name for name, device in devices.items() if device.kind != "local"}
    pool = DevicePool(devices, spec.latency, display, lab.record_job)
    store.begin_run(run_id, lab.labels, str(spec.source or ""), shard_text, [c.to_dict() for c in cells])
    with _closing(store, run_id, display, pool.stop_recording) as close:
        with pool:  # leaving it waits for every device's last job (or, on an error, stops them)
            for group in groups:
                lab.run_group(group, pool)
        close("finished")
    rows = [row for row in store.rows(run_id=run_id) if row["cell"] in {c.id for c in cells}]
    return summarize(run_id, lab.labels, shard_text, cells, rows), max(map(row_exit_code, rows), default=0)


def summarize(
    run_id: str, labels: dict[str, str], shard_text: str | None, cells: list[Cell], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """lab.json: the run id, every cell's outcome (in matrix order) and the cache hits."""
    by_cell = {row["cell"]: row for row in rows}
    outcomes = []
    for cell in cells:
        row = by_cell.get(cell.id)
        outcomes.append({
            **cell.to_dict(), "status": row["status"] if row else "missing",
            "exit_code": row_exit_code(row) if row else None, "cached": bool(row and row.get("cached")),
            "p50_ms": row.get("p50_ms") if row else None, "failures": row.get("failures", []) if row else [],
        })  # fmt: skip
    return {
        "run_id": run_id, "labels": labels, "shard": shard_text, "cells": outcomes,
        "cache_hits": sum(1 for o in outcomes if o["cached"]),
        "exit_code": max((o["exit_code"] or 0 for o in outcomes), default=0),
    }  # fmt: skip


def _cached(spec: LabSpec, cell: Cell, cache_dir: Path) -> bool:
    """Whether the export cache holds a group's bundle: the key the export run would look up,
    computed the same way (run/orchestrate.cache_key) without loading the model."""
    from edge_export.cache import ExportCache
    from edge_export.report.progress import Progress
    from edge_export.run.orchestrate import cache_key
    from edge_export.run.session import ExportRun

    lab = LabRun(spec, None, "", {}, Path("."), cache_dir, LabDisplay([], False))
    run = ExportRun(lab.config(cell), Progress(enabled=False))
    try:
        return ExportCache(cache_dir).has(cache_key(run, run.plan[0]))
    finally:
        run.close()


def plan_lab(spec: LabSpec, cells: list[Cell], cache_dir: Path | None) -> dict[str, Any]:
    """--dry-run: the cells, and per export group its devices and whether the export cache holds
    its bundle (None without a cache). Nothing is exported, loaded or measured."""
    from edge_export.lab.matrix import skipped_cells

    _model_sources(spec, cells)  # every model must be there, as for a real run
    groups = []
    for (model, recipe), group in export_groups(cells).items():
        devices = [cell.device for cell in group]
        first = group[0]
        groups.append({
            "model": model, "recipe": recipe, "target": first.target, "precision": first.precision,
            "devices": devices, "cached": _cached(spec, first, cache_dir) if cache_dir else None,
        })  # fmt: skip
    return {
        "lab_file": str(spec.source or ""), "cells": [cell.to_dict() for cell in cells], "groups": groups,
        "skipped": skipped_cells(spec), "cache": str(cache_dir) if cache_dir else None,
    }  # fmt: skip
