"""A real PostgreSQL 15 server for the results-store tests (Debian's binaries, `make setup` installs
them): a fresh cluster in a temp folder, listening on 127.0.0.1 only at a free port, its unix socket
in that folder, password login for TCP (so a wrong password is a real refusal), stopped and deleted
after the session. PostgreSQL refuses to run as root, so as root every server command runs as the
`postgres` system user. Durability is off (fsync, full-page writes): nothing here must survive a
power cut, and it makes the cluster start and create databases in milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "lab"
PASSWORD = "s3cret-lab-pw"


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """initdb + pg_ctl start on a temp folder; `database()` hands each test its own empty database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edge-export-pg-"))  # not under pytest's root-only tmp
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count(1)

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *command], cwd=self.root, capture_output=True, text=True, check=False, timeout=60
        )

    def _checked(self, *command: str) -> None:
        done = self._run(*command)
        if done.returncode != 0:
            log = (
                (self.root / "server.log").read_text()[-1500:] if (self.root / "server.log").exists() else ""
            )
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-1500:]}{log}")

    def start(self) -> LocalPostgres:
        """Create the cluster, start the server and wait until it accepts a login."""
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            for path in (self.root, password_file):
                shutil.chown(path, "postgres", "postgres")
        self._checked(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        self._checked(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                      "-o", options, "-w", "-t", "30", "start")  # fmt: skip
        self._wait_for_login()
        return self

    def _wait_for_login(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname={database}"

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """A postgresql:// URL of a database on this server."""
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"store_{next(self._names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast: open connections are ended) and delete the cluster."""
        with contextlib.suppress(Exception):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the test session (per module that imports this fixture)."""
    if not (PG_BIN / "initdb").is_file():
        # a missing program is a broken set-up, not a missing device: fail, never skip
        pytest.fail(f"PostgreSQL 15 is not installed at {PG_BIN}: run `make setup` (installs postgresql)")
    server = LocalPostgres()
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()
