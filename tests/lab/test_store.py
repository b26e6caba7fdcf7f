"""The results store on both backends: SQLite files and a real PostgreSQL server (postgres.py).

Every behaviour test runs twice (`store_url` is parametrized), so the schema and the code are
proven the same on both: rows with JSON fields read back as written, a re-recorded cell replaces
its row, a killed run keeps its finished cells and resumes, run references resolve, shard stores
merge idempotently, an older schema migrates (a failing step rolls back), a newer one and a file
that is not a store are refused with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from postgres import PASSWORD, LocalPostgres, free_port, postgres_fixture  # noqa: F401 - the `postgres` fixture

from edge_export.errors import ConfigError
from edge_export.lab import migrations
from edge_export.lab.store import ROW_FIELDS, Store, merge_stores, open_store
from edge_export.report.schema import json_safe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store location: a SQLite file, or a new database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "lab.sqlite")
    return request.getfixturevalue("postgres").database()


def make_row(run_id: str, recipe: str = "onnx:int8-dynamic", device: str = "local", **overrides: Any) -> dict:
    """A measurement row shaped like the runner's (report@1 entry included)."""
    accuracy = {"measured_on": "host", "metrics": {"embedding_cosine_min": 0.9905, "sqnr_db": 21.5,
                "max_abs_error": float("nan")},
                "gates": [{"metric": "embedding_cosine_min", "value": 0.9905, "threshold": 0.99, "passed": True}],
                "failure": None}  # fmt: skip
    latency = {"device": device, "p50_ms": 8.4, "p90_ms": 9.1, "iterations": 5, "runtime": "onnxruntime"}
    row = {
        "run_id": run_id, "cell": f"minilm|{recipe}|{device}", "time": None, "model": "minilm",
        "model_source": "/models/all-MiniLM-L6-v2", "model_sha256": "ab" * 32, "target": recipe.split(":")[0],
        "recipe": recipe, "precision": "int8", "device": device,
        "device_facts": {"arch": "x86_64", "cpus": 2, "runtimes": {"onnxruntime": "1.31.1"}},
        "status": "passed", "failures": [], "accuracy": accuracy, "latency": latency,
        "samples_ms": [8.1, 8.4, 8.3, 9.0, 8.2], "p50_ms": 8.4, "decode_tokens_per_s": None,
        "size_bytes": 5_000_000_000, "cached": True,
        "result": {"target": "onnx", "recipe": recipe, "status": "passed", "accuracy": accuracy,
                   "latency_by_device": [latency | {"samples_ms": [8.1, 8.4]}]},
    }  # fmt: skip
    return row | overrides


def begin(store: Store, run_id: str, **labels: str) -> None:
    store.begin_run(run_id, labels, "lab.yaml", None, [{"model": "minilm", "recipe": "onnx:int8-dynamic"}])


def test_rows_read_back_as_recorded(store_url: str) -> None:
    with open_store(store_url) as store:
        begin(store, "run-1", commit="abc123", branch="main")
        row = make_row("run-1", time="2025-03-01T10:00:00Z")
        store.record(row)
        [back] = store.rows("run-1")
        run = store.run("run-1")
        [listed] = store.runs()
    assert set(back) == set(ROW_FIELDS)
    expected = json.loads(json.dumps(json_safe(row)))  # NaN becomes "nan": strict JSON on both backends
    assert expected["accuracy"]["metrics"]["max_abs_error"] == "nan"
    for name in ROW_FIELDS:
        if name not in ("time", "labels"):
            assert back[name] == expected[name], name
    assert back["time"] == "2025-03-01T10:00:00.000000+00:00"  # UTC, microseconds: sorts as text
    assert back["labels"] == {"commit": "abc123", "branch": "main"}  # the run's labels by default
    assert (
        back["size_bytes"] == 5_000_000_000 and back["cached"] is True and isinstance(back["p50_ms"], float)
    )
    assert (
        run["matrix"] == [{"model": "minilm", "recipe": "onnx:int8-dynamic"}] and run["status"] == "running"
    )
    assert listed["cells"] == 1 and listed["lab_file"] == "lab.yaml" and listed["edge_export_version"]
    assert "matrix" not in listed and listed["labels"] == {"commit": "abc123", "branch": "main"}


def test_same_cell_replaces_and_bad_records_are_refused(store_url: str) -> None:
    with open_store(store_url) as store:
        begin(store, "run-1")
        store.record(make_row("run-1"))
        store.record(make_row("run-1", status="failed", failures=["gate x failed"], p50_ms=float("inf")))
        [row] = store.rows("run-1")
        assert row["status"] == "failed" and row["failures"] == ["gate x failed"]
        assert row["p50_ms"] is None  # a non-finite float column is stored as NULL on both backends
        with pytest.raises(ValueError, match="begin_run first"):
            store.record(make_row("never-begun"))
        with pytest.raises(ValueError, match="unknown measurement fields"):
            store.record(make_row("run-1") | {"colour": "red"})
        with pytest.raises(ValueError, match="status"):
            store.record(make_row("run-1", status="great"))
        with pytest.raises(ValueError, match="run status"):
            store.finish_run("run-1", "done")
        with pytest.raises(ConfigError, match="no run 'nope'"):
            store.finish_run("nope", "finished")
        assert store.finished_cells("run-1") == {"minilm|onnx:int8-dynamic|local"}


CRASHING_RUN = """
import os, signal, sys
from edge_export.lab.store import open_store
store = open_store(sys.argv[1])
store.begin_run("ci-9", {"commit": "abc"}, "lab.yaml", None, [])
for recipe in ("onnx:fp32", "onnx:int8-dynamic"):
    store.record({"run_id": "ci-9", "cell": f"minilm|{recipe}|local", "status": "passed",
                  "samples_ms": [1.0, 2.0, 3.0]})
os.kill(os.getpid(), signal.SIGKILL)  # the machine goes away mid-matrix: no finish_run, no close
"""


def test_killed_run_keeps_finished_cells_and_resumes(store_url: str) -> None:
    done = subprocess.run([sys.executable, "-c", CRASHING_RUN, store_url], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == -9, done.stderr
    with open_store(store_url) as store:
        assert store.finished_cells("ci-9") == {"minilm|onnx:fp32|local", "minilm|onnx:int8-dynamic|local"}
        started = store.run("ci-9")["started_at"]
        assert store.run("ci-9")["status"] == "running"
        store.begin_run("ci-9", {"resumed": "yes"}, "lab.yaml", None, [])  # lab run --resume ci-9
        store.record(make_row("ci-9", recipe="onnx:int4-weight"))
        store.finish_run("ci-9", "finished")
        run = store.run("ci-9")
        assert run["started_at"] == started and run["status"] == "finished" and run["finished_at"]
        assert run["labels"] == {"commit": "abc", "resumed": "yes"}
        assert len(store.finished_cells("ci-9")) == 3


def test_rows_filter_and_order(store_url: str) -> None:
    with open_store(store_url) as store:
        for run_id, time in (("a", "2025-01-01T00:00:00+00:00"), ("b", "2025-01-02T00:00:00+00:00")):
            begin(store, run_id)
            for recipe in ("onnx:fp32", "onnx:int8-dynamic"):
                for device in ("local", "pi"):
                    store.record(make_row(run_id, recipe, device, time=time,
                                          status="failed" if device == "pi" else "passed"))  # fmt: skip
        assert [r["cell"] for r in store.rows("a")] == sorted(r["cell"] for r in store.rows("a"))
        newest_first = store.rows(recipe="onnx:fp32", device="local")
        assert [r["run_id"] for r in newest_first] == ["b", "a"]
        assert len(store.rows(device=["pi", "local"], status="failed")) == 4
        assert len(store.rows(["a", "b"], limit=3)) == 3
        assert "result" not in store.rows("a", with_result=False)[0]
        with pytest.raises(TypeError, match="unknown row filters"):
            store.rows(colour="red")


def test_resolve_run_references(store_url: str) -> None:
    with open_store(store_url) as store:
        with pytest.raises(ConfigError, match="no runs yet"):
            store.resolve_run("latest")
        for run_id, commit in (("r-old", "aaa"), ("r-mid", "bbb"), ("r-new", "ccc")):
            begin(store, run_id, commit=commit, branch="main")
            if run_id != "r-new":
                store.finish_run(run_id, "finished")
        assert store.resolve_run("r-new") == "r-new"
        assert store.resolve_run("latest") == "r-mid"  # the newest finished run beats a running one
        assert store.resolve_run("previous") == "r-old"  # the one before "latest"
        assert store.resolve_run("previous", before="r-new") == "r-mid"
        assert store.resolve_run("label:commit=aaa") == "r-old"
        assert store.resolve_run("commit=ccc") == "r-new"  # the only match, though not finished
        assert store.resolve_run("label:branch=main") == "r-mid"
        assert store.resolve_run("bbb") == "r-mid"  # a label value, e.g. a git commit
        assert store.resolve_run("r-ol") == "r-old"  # a unique run-id prefix
        with pytest.raises(ConfigError) as caught:
            store.resolve_run("label:commit=zzz")
        assert caught.value.exit_code == 2
        assert "newest runs: r-new, r-mid, r-old" in caught.value.one_line()


def _shard(path: Path, shard: str, cells: list[str], time: str, extra_run: bool = False) -> Store:
    store = open_store(path)
    store.begin_run("ci-7", {"commit": "abc"}, "lab.yaml", shard, [{"cell": c} for c in cells])
    for recipe in cells:
        store.record(make_row("ci-7", recipe, time=time))
    store.finish_run("ci-7", "finished")
    if extra_run:
        begin(store, "nightly")
        store.record(make_row("nightly"))
    return store


@pytest.mark.parametrize("dest_kind", ["sqlite", "postgresql"])
def test_merge_shard_stores(dest_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dest_url = str(tmp_path / "merged.sqlite")
    if dest_kind == "postgresql":
        dest_url = request.getfixturevalue("postgres").database()
    time = "2025-05-05T05:05:05+00:00"
    one = _shard(tmp_path / "shard1.sqlite", "1/2", ["onnx:fp32", "onnx:int8-dynamic"], time, extra_run=True)
    two = _shard(tmp_path / "shard2.sqlite", "2/2", ["onnx:int4-weight", "tflite:fp32"], time)
    with open_store(dest_url) as dest:
        assert merge_stores(dest, [one, two]) == 5
        assert merge_stores(dest, [one, two]) == 0  # idempotent
        run = dest.run("ci-7")
        assert run["shard"] == "1/2,2/2" and run["status"] == "finished"
        assert len(run["matrix"]) == 4 and len(dest.finished_cells("ci-7")) == 4
        assert {r["run_id"] for r in dest.runs()} == {"ci-7", "nightly"}
        assert dest.rows("ci-7") == sorted(one.rows("ci-7") + two.rows("ci-7"), key=lambda r: r["cell"])
        two.record(make_row("ci-7", "tflite:fp32", time="2025-05-06T00:00:00+00:00", status="failed"))
        assert merge_stores(dest, [one, two]) == 1  # the newer measurement replaces the merged one
        assert dest.rows("ci-7", recipe="tflite:fp32")[0]["status"] == "failed"
        with pytest.raises(ConfigError, match="into itself"):
            merge_stores(dest, [dest])
    one.close()
    two.close()


def _raw(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1) if "://" in url
                            else f"sqlite:///{url}")  # fmt: skip


V1_DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
    labels JSON NOT NULL, lab_file TEXT, shard TEXT, matrix JSON);
CREATE TABLE measurements ({id}, run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    cell TEXT NOT NULL, time TEXT NOT NULL, model TEXT, model_source TEXT, model_sha256 TEXT, target TEXT,
    recipe TEXT, precision TEXT, device TEXT, device_facts JSON, status TEXT NOT NULL, failures JSON,
    accuracy JSON, latency JSON, samples_ms JSON, p50_ms FLOAT, decode_tokens_per_s FLOAT,
    size_bytes BIGINT, cached BOOLEAN, result JSON, labels JSON,
    CONSTRAINT uq_measurements_run_cell UNIQUE (run_id, cell));
INSERT INTO runs VALUES ('old-run', '2024-01-01T00:00:00.000000+00:00', NULL, 'finished', '{{"commit": "v1"}}',
    'lab.yaml', NULL, '[]');
INSERT INTO measurements (run_id, cell, time, model, status, samples_ms, accuracy, cached, size_bytes, labels)
    VALUES ('old-run', 'm|onnx:fp32|local', '2024-01-01T00:00:01.000000+00:00', 'm', 'passed', '[1.5, 2.5]',
    '{{"metrics": {{"sqnr_db": 70.0}}}}', TRUE, 123, '{{"commit": "v1"}}');
"""


def test_migrates_a_v1_store(store_url: str) -> None:
    """A store as the first released schema wrote it (made by hand here, not by the code under
    test) opens, upgrades to the current version, keeps its rows and takes new ones."""
    engine = _raw(store_url)
    pk = "id SERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "id INTEGER PRIMARY KEY"
    with engine.begin() as conn:
        for statement in V1_DDL.format(id=pk).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
    engine.dispose()
    with open_store(store_url) as store:
        [row] = store.rows("old-run")
        assert row["samples_ms"] == [1.5, 2.5] and row["accuracy"] == {"metrics": {"sqnr_db": 70.0}}
        assert row["cached"] is True and row["size_bytes"] == 123
        assert store.run("old-run")["host"] is None
        begin(store, "new-run")
        store.record(make_row("new-run"))
        assert store.resolve_run("label:commit=v1") == "old-run"
        with store.engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT version FROM schema_version")).scalar()
                == migrations.SCHEMA_VERSION
            )
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("measurements")}
    assert "ix_measurements_history" in indexes


def test_a_failing_migration_leaves_the_store_as_it_was(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(store_url).close()

    def half_done(conn: sa.Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN half TEXT")
        raise RuntimeError("step 3 broke")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("broken", half_done)])
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", migrations.SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="step 3 broke"):
        open_store(store_url)
    monkeypatch.undo()
    with open_store(store_url) as store, store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert "half_done" not in inspector.get_table_names()
        assert "half" not in {c["name"] for c in inspector.get_columns("runs")}
        assert (
            conn.execute(sa.text("SELECT version FROM schema_version")).scalar() == migrations.SCHEMA_VERSION
        )


def test_a_newer_schema_is_refused(store_url: str) -> None:
    with open_store(store_url) as store, store._writer.begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = 99"))
    with pytest.raises(ConfigError) as caught:
        open_store(store_url)
    assert caught.value.exit_code == 2
    assert "written by a newer edge-export (schema v99" in caught.value.one_line()
    assert PASSWORD not in caught.value.one_line()


def test_files_that_are_not_a_store_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("results: all good\n" * 10)
    with pytest.raises(ConfigError, match="is not a SQLite database") as caught:
        open_store(text)
    assert caught.value.hint and "\n" not in caught.value.one_line()
    assert text.read_text() == "results: all good\n" * 10  # untouched
    with pytest.raises(ConfigError, match="is a folder"):
        open_store(tmp_path)
    foreign = tmp_path / "other.sqlite"
    engine = sa.create_engine(f"sqlite:///{foreign}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE runs (id INTEGER)")
    engine.dispose()
    with pytest.raises(ConfigError, match="not an edge-export results store"):
        open_store(foreign)
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store("mysql://lab@localhost/lab")
    with open_store(f"sqlite:///{tmp_path / 'deep' / 'er' / 'lab.sqlite'}") as store:  # URL form, new folders
        assert store.runs() == []


def test_unreachable_or_refusing_postgres_is_one_line(postgres: LocalPostgres) -> None:
    closed = f"postgresql://lab:{PASSWORD}@127.0.0.1:{free_port()}/lab"
    with pytest.raises(ConfigError) as caught:
        open_store(closed)
    message = caught.value.one_line()
    assert caught.value.exit_code == 2 and "\n" not in message and PASSWORD not in message
    assert "postgresql://lab@127.0.0.1:" in message and "refused" in message.lower()
    with pytest.raises(ConfigError) as caught:
        open_store(postgres.url(password="wrong-password"))
    message = caught.value.one_line()
    assert "password authentication failed" in message and "wrong-password" not in message
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(postgres.url("no_such_db"))


WRITER = """
import sys
from edge_export.lab.store import open_store
store = open_store(sys.argv[1])
run = sys.argv[2]
store.begin_run(run, {}, None, None, [])
for i in range(40):
    store.record({"run_id": run, "cell": f"m|r{i}|d", "status": "passed", "samples_ms": [float(i)] * 20})
store.finish_run(run, "finished")
"""


def test_concurrent_writers_never_corrupt(store_url: str) -> None:
    """Two processes (two lab runs on one store) and four threads of one (devices in parallel)
    write at once: every row arrives, and SQLite's integrity check passes."""
    open_store(store_url).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, f"proc-{i}"], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    with open_store(store_url) as store:
        begin(store, "threads")
        errors: list[BaseException] = []

        def device(name: str) -> None:
            try:
                for i in range(15):
                    store.record(make_row("threads", f"onnx:r{i}", name))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=device, args=(f"dev{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        assert errors == []
        assert len(store.finished_cells("threads")) == 60
        assert [len(store.finished_cells(f"proc-{i}")) for i in range(2)] == [40, 40]
        if store.engine.dialect.name == "sqlite":
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_json_safe_makes_strict_json() -> None:
    value = {"a": (1, np.float32(0.5), float("-inf")), 3: np.arange(3), "n": np.int64(7), "s": "x"}
    safe = json_safe(value)
    assert safe == {"a": [1, 0.5, "-inf"], "3": [0, 1, 2], "n": 7, "s": "x"}
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
