"""The device lab's results store: one row per (run, cell), in SQLite (default) or PostgreSQL.

SQLAlchemy Core over one schema (see migrations.py) so a lab can start with a file beside its lab
file and move to `--store postgresql://...` when several hosts run devices, without changing
anything else. What the store promises:
- crash safety: every `record()` is its own committed transaction, so an interrupted run keeps
  every cell it finished and `lab run --resume` asks `finished_cells()` for what to skip;
- recording the same (run, cell) again replaces the row (a resumed or retried cell counts once);
- concurrent runs on one SQLite file are serialized, never interleaved: WAL journal, writes begin
  `IMMEDIATE` (they queue on the write lock instead of failing half-way) with a 30 s busy timeout;
- a path that is not a SQLite database, a store from a newer edge-export, an unreachable or
  refusing PostgreSQL: one ConfigError line (exit 2) with the fix; a password never appears in it.
"""

from __future__ import annotations

import contextlib
import json
import platform
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edge_export import __version__
from edge_export.errors import ConfigError
from edge_export.lab import migrations as m
from edge_export.lab.db import connect_engine, driver_reason, finite_or_none, iso_utc, now_iso
from edge_export.lab.migrations import JSON_FIELDS, measurements, runs
from edge_export.report.schema import json_safe

ROW_FIELDS = (
    "run_id", "cell", "time", "model", "model_source", "model_sha256", "target", "recipe", "precision",
    "device", "device_facts", "status", "failures", "accuracy", "latency", "samples_ms", "p50_ms",
    "decode_tokens_per_s", "size_bytes", "cached", "result", "labels",
)  # fmt: skip
ROW_STATUSES = ("passed", "failed", "error", "not_run")
RUN_STATUSES = ("running", "finished", "interrupted", "failed")
FILTERS = ("cell", "model", "target", "recipe", "precision", "device", "status", "model_sha256")


def open_store(url_or_path: str | Path) -> Store:
    """Open (create, migrate) the store: a SQLite file path, `sqlite:///PATH` or `postgresql://...`."""
    engine, shown = connect_engine(url_or_path)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            found = m.stored_version(conn, shown)
        if found is not None:
            m.check_not_newer(found, shown)
        if found is None or found < m.SCHEMA_VERSION:
            m.upgrade(engine.execution_options(write=True), shown)
    except ConfigError:
        engine.dispose()
        raise
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        hint = (
            "check that PostgreSQL runs there and that the user, password and database are right"
            if postgres
            else "give --store a new file name or a store written by `edge-export lab run`"
        )
        raise ConfigError(f"cannot use the results store {shown}: {driver_reason(exc)}", hint=hint) from exc
    return Store(engine, shown)


class Store:
    """One open results store. Thread-safe: devices of a lab run record from their own threads."""

    def __init__(self, engine: sa.Engine, shown: str) -> None:
        self.engine = engine
        self.url = shown  # how messages name the store (a PostgreSQL URL without its password)
        self._writer = engine.execution_options(write=True)
        self._write_lock = threading.Lock()  # one writer per process; other processes queue in the DB

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every connection (the file or server is left as committed)."""
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self._errors(), self._writer.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A database that fails mid-run (locked past the timeout, disk full, server gone) becomes
        one line naming the store; the transaction in progress was rolled back, nothing half-written."""
        try:
            yield
        except sa.exc.DBAPIError as exc:
            raise ConfigError(f"results store {self.url}: {driver_reason(exc)}") from exc

    # --- runs -------------------------------------------------------------------------------
    def begin_run(
        self, run_id: str, labels: Mapping[str, str], lab_file: str | None, shard: str | None,
        matrix: Sequence[Mapping[str, Any]],
    ) -> None:  # fmt: skip
        """Start (or, for --resume, restart) a run: status "running". A resumed run keeps its start
        time and its labels, with the new ones added."""
        values = {"status": "running", "finished_at": None, "lab_file": lab_file, "shard": shard,
                  "matrix": json_safe(list(matrix)), "host": platform.node() or None,
                  "edge_export_version": __version__}  # fmt: skip
        with self._write() as conn:
            old = conn.execute(sa.select(runs.c.labels).where(runs.c.run_id == run_id)).first()
            if old is None:
                conn.execute(runs.insert().values(run_id=run_id, started_at=now_iso(),
                                                  labels=json_safe(dict(labels)), **values))  # fmt: skip
            else:
                merged = {**(old.labels or {}), **json_safe(dict(labels))}
                conn.execute(runs.update().where(runs.c.run_id == run_id).values(labels=merged, **values))

    def finish_run(self, run_id: str, status: str) -> None:
        """Close a run: "finished" | "interrupted" | "failed"."""
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"run status must be one of {RUN_STATUSES[1:]}, not {status!r}")
        with self._write() as conn:
            done = conn.execute(
                runs.update().where(runs.c.run_id == run_id).values(status=status, finished_at=now_iso())
            )
            updated = done.rowcount
        if updated != 1:
            raise self.unknown_run(run_id)

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs, newest first: run_id, started_at, finished_at, status, labels, shard, lab_file,
        host, edge_export_version and `cells` (rows recorded)."""
        counts = (
            sa.select(measurements.c.run_id, sa.func.count().label("cells"))
            .group_by(measurements.c.run_id)
            .subquery()
        )
        columns = [c for c in runs.c if c.name != "matrix"]
        query = (
            sa.select(*columns, sa.func.coalesce(counts.c.cells, 0).label("cells"))
            .outerjoin(counts, counts.c.run_id == runs.c.run_id)
            .order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def run(self, run_id: str) -> dict[str, Any]:
        """One run with its matrix; ConfigError naming the newest runs when there is none."""
        with self._read() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
        if row is None:
            raise self.unknown_run(run_id)
        return dict(row._mapping)

    def unknown_run(self, ref: str) -> ConfigError:
        """The error for a run reference that matches nothing, listing what the store has."""
        newest = [r["run_id"] for r in self.runs(limit=5)]
        hint = (
            f"newest runs: {', '.join(newest)} (or 'latest', 'previous', 'label:KEY=VALUE')"
            if newest
            else "the store has no runs yet: `edge-export lab run LAB_FILE` records one"
        )
        return ConfigError(f"no run '{ref}' in the results store {self.url}", hint=hint)

    def resolve_run(self, ref: str, *, before: str | None = None) -> str:
        """A run id for `ref`: an exact run id; "latest"; "previous" (the newest run started before
        `before`, or before "latest"); "label:KEY=VALUE" or "KEY=VALUE" (the newest run with that
        label); a unique run-id prefix; or a label value (e.g. a git commit). Among several matches
        the newest finished run wins, else the newest of any status."""
        found = self.runs()
        ids = {r["run_id"] for r in found}
        if ref in ids:
            return ref
        if ref == "latest":
            candidates = found
        elif ref == "previous":
            anchor = before or (self.resolve_run("latest") if found else None)
            start = next((r["started_at"] for r in found if r["run_id"] == anchor), None)
            candidates = [r for r in found if start is not None and r["started_at"] < start]
        elif "=" in ref:
            key, _, value = ref.removeprefix("label:").partition("=")
            candidates = [r for r in found if str((r["labels"] or {}).get(key.strip())) == value.strip()]
        else:
            candidates = [r for r in found if r["run_id"].startswith(ref)] if len(ref) >= 4 else []
            if len(candidates) != 1:
                candidates = [r for r in found if ref in {str(v) for v in (r["labels"] or {}).values()}]
        chosen = next((r for r in candidates if r["status"] == "finished"), None) or next(
            iter(candidates), None
        )
        if chosen is None:
            raise self.unknown_run(ref)
        return str(chosen["run_id"])

    # --- measurements -----------------------------------------------------------------------
    def record(self, row: Mapping[str, Any]) -> None:
        """Store one measurement, committed before returning; the same (run, cell) again replaces
        it. Missing fields are NULL; `time` defaults to now, `labels` to the run's labels."""
        unknown = set(row) - set(ROW_FIELDS)
        if unknown:
            raise ValueError(f"unknown measurement fields {sorted(unknown)}; known: {', '.join(ROW_FIELDS)}")
        if row.get("status") not in ROW_STATUSES:
            raise ValueError(f"measurement status must be one of {ROW_STATUSES}, not {row.get('status')!r}")
        with self._write() as conn:
            found = conn.execute(sa.select(runs.c.labels).where(runs.c.run_id == row.get("run_id"))).first()
            if found is None:
                raise ValueError(f"run {row.get('run_id')!r} was not begun in {self.url} (begin_run first)")
            self._put(conn, {**row, "labels": row.get("labels") or found.labels or {}})

    @staticmethod
    def _put(conn: sa.Connection, row: Mapping[str, Any]) -> None:
        """Replace the (run, cell) row by `row` inside the caller's transaction."""
        key = (measurements.c.run_id == row["run_id"]) & (measurements.c.cell == row["cell"])
        conn.execute(measurements.delete().where(key))
        conn.execute(measurements.insert(), [_stored(row)])

    def finished_cells(self, run_id: str) -> set[str]:
        """Cell ids the run has a row for: what `lab run --resume` skips."""
        query = sa.select(measurements.c.cell).where(measurements.c.run_id == run_id)
        with self._read() as conn:
            return set(conn.execute(query).scalars())

    def rows(
        self, run_id: str | Iterable[str] | None = None, *, limit: int | None = None,
        with_result: bool = True, **filters: str | Iterable[str] | None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Measurement rows (dicts with ROW_FIELDS, JSON fields as Python objects). One run's rows
        come in cell order; rows of several runs newest first. Filters (model, target, recipe,
        device, status, precision, cell, model_sha256) take a value or a collection of values;
        `with_result=False` leaves the large `result` entry out (history and compare need none)."""
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise TypeError(f"unknown row filters {sorted(unknown)}; known: {', '.join(FILTERS)}")
        columns = [measurements.c[name] for name in ROW_FIELDS if with_result or name != "result"]
        query = sa.select(*columns)
        for name, value in {"run_id": run_id, **filters}.items():
            if value is None:
                continue
            column = measurements.c[name]
            query = query.where(column == value if isinstance(value, str) else column.in_(list(value)))
        if isinstance(run_id, str):
            query = query.order_by(measurements.c.cell)
        else:
            query = query.order_by(measurements.c.time.desc(), measurements.c.id.desc())
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(query.limit(limit))]


def _stored(row: Mapping[str, Any]) -> dict[str, Any]:
    """A measurement row as its columns hold it (same on both backends)."""
    values = {name: row.get(name) for name in ROW_FIELDS}
    values["time"] = iso_utc(values["time"])
    for name in JSON_FIELDS:
        values[name] = json_safe(values[name])
    for name in ("p50_ms", "decode_tokens_per_s"):
        values[name] = finite_or_none(values[name])
    values["cached"] = None if values["cached"] is None else bool(values["cached"])
    return values


def _combined_run(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """One run recorded by several shard stores: earliest start, the worst status, every shard,
    host and matrix cell once; on a label both set differently the destination's value stays."""
    order = ["failed", "interrupted", "running", "finished"]
    status = min(old["status"], new["status"], key=lambda s: order.index(s) if s in order else -1)
    finished = (
        max(old["finished_at"], new["finished_at"]) if old["finished_at"] and new["finished_at"] else None
    )

    def joined(name: str) -> str | None:
        parts = {p for value in (old[name], new[name]) if value for p in str(value).split(",")}
        return ",".join(sorted(parts)) or None

    matrix = {json.dumps(c, sort_keys=True): c for c in [*(old["matrix"] or []), *(new["matrix"] or [])]}
    return {
        "started_at": min(old["started_at"], new["started_at"]), "finished_at": finished,
        "status": status, "labels": {**(new["labels"] or {}), **(old["labels"] or {})},
        "shard": joined("shard"), "host": joined("host"),
        "edge_export_version": joined("edge_export_version"), "matrix": list(matrix.values()),
    }  # fmt: skip


def merge_stores(dest: Store, sources: Sequence[Store]) -> int:
    """Copy every run and row of `sources` into `dest`; returns the rows copied. Idempotent: a row
    `dest` already has for the same (run, cell) and time is skipped; a newer one replaces it. One
    transaction per source, so a failed merge leaves `dest` as it was before that source."""
    copied = 0
    for source in sources:
        if source.url == dest.url:
            raise ConfigError(f"cannot merge the store {dest.url} into itself", hint="list it only once")
        with source._read() as conn:
            source_runs = [dict(r._mapping) for r in conn.execute(sa.select(runs))]
        source_rows = source.rows()
        with dest._write() as conn:
            for run in source_runs:
                found = conn.execute(sa.select(runs).where(runs.c.run_id == run["run_id"])).first()
                if found is None:
                    conn.execute(runs.insert().values(**run))
                else:
                    values = _combined_run(dict(found._mapping), run)
                    conn.execute(runs.update().where(runs.c.run_id == run["run_id"]).values(**values))
            ids = list({run["run_id"] for run in source_runs})
            have: dict[tuple[str, str], str] = {}
            for start in range(0, len(ids), 500):  # bounded IN lists
                query = sa.select(measurements.c.run_id, measurements.c.cell, measurements.c.time).where(
                    measurements.c.run_id.in_(ids[start : start + 500])
                )
                have.update({(r.run_id, r.cell): r.time for r in conn.execute(query)})
            fresh = []
            for row in source_rows:
                stored = have.get((row["run_id"], row["cell"]))
                if stored is None:
                    fresh.append(_stored(row))
                elif stored < row["time"]:
                    dest._put(conn, row)
                    copied += 1
            if fresh:
                conn.execute(measurements.insert(), fresh)  # one executemany: 10,000 rows in seconds
            copied += len(fresh)
    return copied
