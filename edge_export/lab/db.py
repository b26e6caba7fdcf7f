"""Connecting to a results store: the engine for a path or URL, SQLite's settings, and values
made the same on both backends (UTC times that sort as text, strict JSON, finite floats)."""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edge_export.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30


def now_iso() -> str:
    """The current UTC time as the store writes it (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def iso_utc(value: str | None) -> str:
    """Any ISO-8601 time as UTC with microseconds, so times from every host sort as text."""
    if not value:
        return now_iso()
    parsed = datetime.fromisoformat(str(value))
    parsed = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    return parsed.isoformat(timespec="microseconds")


def finite_or_none(value: Any) -> float | None:
    """A float column's value: SQLite stores NaN as NULL and PostgreSQL keeps it, so store neither."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _sqlite_path(text: str) -> Path:
    """The database file of a path or sqlite:/// URL, checked before SQLite sees it: a folder or a
    file that is not a SQLite database is refused (SQLite itself only fails at the first query)."""
    path = Path(text[len("sqlite:///") :] if text.startswith("sqlite:///") else text).expanduser()
    if path.is_dir():
        raise ConfigError(
            f"results store {path} is a folder", hint="give --store a file name, e.g. lab.sqlite"
        )
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
        if head != SQLITE_HEADER:
            raise ConfigError(
                f"results store {path} is not a SQLite database",
                hint="give --store a new file name or a store written by `edge-export lab run`",
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of results store {path}: {exc.strerror}") from exc
    return path


def _sqlite_engine(path: Path) -> sa.Engine:
    """An engine whose transactions are real SQLite transactions (DDL included, so a migration is
    all or nothing), in WAL mode (readers never block the writer) with a busy timeout."""
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), DDL included
        cursor = dbapi_connection.cursor()
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_S * 1000}", "foreign_keys = ON", "journal_mode = WAL",
                       "synchronous = NORMAL"):  # fmt: skip
            with contextlib.suppress(Exception):  # a read-only file cannot switch to WAL: still readable
                cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # writes take the write lock up front: a deferred transaction that upgrades to a writer
        # fails at once with "database is locked" when another writer got there first
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def connect_engine(url_or_path: str | Path) -> tuple[sa.Engine, str]:
    """The engine for a store reference and how messages name it (never with its password)."""
    text = str(url_or_path)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        try:
            url = sa.make_url("postgresql" + text[len(scheme) :]).set(drivername="postgresql+psycopg")
        except sa.exc.ArgumentError as exc:
            raise ConfigError(
                "results store: malformed PostgreSQL URL",
                hint="postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            ) from exc
        shown = sa.URL.create("postgresql", username=url.username, host=url.host, port=url.port,
                              database=url.database, query=url.query).render_as_string()  # fmt: skip
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        return engine, shown
    if scheme and scheme != "sqlite":
        raise ConfigError(
            f"results store '{text}': unknown scheme '{scheme}://'",
            hint="give a SQLite file path (or sqlite:///PATH) or postgresql://USER:PASSWORD@HOST/DB",
        )
    path = _sqlite_path(text)
    return _sqlite_engine(path), str(path)


def driver_reason(exc: sa.exc.DBAPIError) -> str:
    """The driver's own first line (e.g. 'password authentication failed for user "lab"')."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    return lines[0] if lines else type(exc.orig).__name__
