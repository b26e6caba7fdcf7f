"""The results store's schema and its versioned migrations (one schema for SQLite and PostgreSQL).

`schema_version` holds one row: how many steps of MIGRATIONS the store has had. Opening a store
applies the missing steps in order, inside one transaction that also takes the store's write lock
(SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), so two lab hosts opening a fresh store at
once cannot both create it, and a failed step leaves the store as it was. A store whose version is
higher than this code knows was written by a newer edge-export: refused, never downgraded.

Steps are frozen once released: a step describes the schema as it was at that version (step 1
builds its own v1 tables instead of using today's), so every older store upgrades through the same
path. Every type is chosen to behave the same on both backends: TEXT for strings (PostgreSQL would
enforce a VARCHAR length that SQLite ignores), JSON with SQL NULL for None, ISO-8601 UTC strings
for times (they sort as text, identically everywhere).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from edge_export.errors import ConfigError

# Any constant works; it only has to be the same for every edge-export that opens the store.
_PG_LOCK_KEY = 0x6564676565787030  # "edgeexp0"

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("started_at", sa.Text, nullable=False),
    sa.Column("finished_at", sa.Text),
    sa.Column("status", sa.Text, nullable=False),  # running | finished | interrupted | failed
    sa.Column("labels", sa.JSON(none_as_null=True), nullable=False),
    sa.Column("lab_file", sa.Text),
    sa.Column("shard", sa.Text),
    sa.Column("matrix", sa.JSON(none_as_null=True)),
    sa.Column("host", sa.Text),  # v2
    sa.Column("edge_export_version", sa.Text),  # v2
)

measurements = sa.Table(
    "measurements",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Text, sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    sa.Column("cell", sa.Text, nullable=False),
    sa.Column("time", sa.Text, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("model_source", sa.Text),
    sa.Column("model_sha256", sa.Text),
    sa.Column("target", sa.Text),
    sa.Column("recipe", sa.Text),
    sa.Column("precision", sa.Text),
    sa.Column("device", sa.Text),
    sa.Column("device_facts", sa.JSON(none_as_null=True)),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("failures", sa.JSON(none_as_null=True)),
    sa.Column("accuracy", sa.JSON(none_as_null=True)),
    sa.Column("latency", sa.JSON(none_as_null=True)),
    sa.Column("samples_ms", sa.JSON(none_as_null=True)),
    sa.Column("p50_ms", sa.Float),
    sa.Column("decode_tokens_per_s", sa.Float),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("cached", sa.Boolean),
    sa.Column("result", sa.JSON(none_as_null=True)),
    sa.Column("labels", sa.JSON(none_as_null=True)),
    sa.UniqueConstraint("run_id", "cell", name="uq_measurements_run_cell"),
)

# The JSON columns of a measurement row (the read side returns Python objects for them).
JSON_FIELDS = ("device_facts", "failures", "accuracy", "latency", "samples_ms", "result", "labels")


def _v1_tables(conn: sa.Connection) -> None:
    """v1: the runs and their measurements, one row per (run, cell)."""
    v1 = sa.MetaData()
    text, json = sa.Text, sa.JSON(none_as_null=True)
    sa.Table(
        "runs", v1,
        sa.Column("run_id", text, primary_key=True), sa.Column("started_at", text, nullable=False),
        sa.Column("finished_at", text), sa.Column("status", text, nullable=False),
        sa.Column("labels", json, nullable=False), sa.Column("lab_file", text),
        sa.Column("shard", text), sa.Column("matrix", json),
    )  # fmt: skip
    sa.Table(
        "measurements", v1,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", text, sa.ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        sa.Column("cell", text, nullable=False), sa.Column("time", text, nullable=False),
        *(sa.Column(name, text) for name in ("model", "model_source", "model_sha256", "target", "recipe",
                                              "precision", "device")),
        sa.Column("device_facts", json), sa.Column("status", text, nullable=False),
        *(sa.Column(name, json) for name in ("failures", "accuracy", "latency", "samples_ms")),
        sa.Column("p50_ms", sa.Float), sa.Column("decode_tokens_per_s", sa.Float),
        sa.Column("size_bytes", sa.BigInteger), sa.Column("cached", sa.Boolean),
        sa.Column("result", json), sa.Column("labels", json),
        sa.UniqueConstraint("run_id", "cell", name="uq_measurements_run_cell"),
    )  # fmt: skip
    v1.create_all(conn)


def _v2_host_and_history_index(conn: sa.Connection) -> None:
    """v2: which host and edge-export version wrote a run (a merged multi-host store keeps it),
    and an index for `lab history` filters (model, target, recipe, device, newest first)."""
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN host TEXT")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN edge_export_version TEXT")
    conn.exec_driver_sql(
        "CREATE INDEX ix_measurements_history ON measurements (model, target, recipe, device, time)"
    )
    conn.exec_driver_sql("CREATE INDEX ix_measurements_time ON measurements (time)")


# (description, step): step i+1 brings a store from version i to version i+1.
MIGRATIONS: list[tuple[str, Callable[[sa.Connection], None]]] = [
    ("runs and measurements tables", _v1_tables),
    ("runs.host, runs.edge_export_version, history indexes", _v2_host_and_history_index),
]
SCHEMA_VERSION = len(MIGRATIONS)


def _lock(conn: sa.Connection) -> None:
    """Serialize migrations between processes (SQLite: the engine begins writes IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def stored_version(conn: sa.Connection, where: str) -> int | None:
    """The store's schema version; None for an empty database. A database that holds tables named
    like ours but no version is someone else's: refused rather than written into."""
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_version" not in tables:
        if tables & {"runs", "measurements"}:
            raise ConfigError(
                f"{where} has tables 'runs'/'measurements' but no schema_version: not an edge-export results store",
                hint="give --store a new file or an empty database",
            )
        return None
    versions = [row[0] for row in conn.execute(sa.select(schema_version.c.version))]
    if len(versions) != 1:
        raise ConfigError(
            f"{where}: schema_version holds {len(versions)} rows instead of 1 (the store was edited by hand)",
            hint="restore the store from a copy or start a new one",
        )
    return int(versions[0])


def check_not_newer(version: int, where: str) -> None:
    """Refuse a store a newer edge-export has migrated past what this one knows."""
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"store {where} was written by a newer edge-export (schema v{version}; this one knows up to "
            f"v{SCHEMA_VERSION})",
            hint="upgrade edge-export (pip install -U edge-export) or use another store",
        )


def upgrade(write_engine: sa.Engine, where: str) -> int:
    """Bring the store to SCHEMA_VERSION; returns the version it had before (0 for a new one).
    Every missing step runs in one transaction: all of them apply, or none."""
    with write_engine.begin() as conn:
        _lock(conn)
        found = stored_version(conn, where)
        if found is None:
            schema_version.create(conn)
            conn.execute(schema_version.insert().values(version=0))
            found = 0
        check_not_newer(found, where)
        for _description, step in MIGRATIONS[found:]:
            step(conn)
        if found < SCHEMA_VERSION:
            conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
    return found
