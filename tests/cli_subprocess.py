"""Run the real `edge-export` console entry in a subprocess and check the bad-input contract:
the documented exit code, exactly one `error:` line on stderr, no traceback, nothing at OUT or
beside it, and nothing left in the private TMPDIR the run was given."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@dataclass
class CliRun:
    """What one CLI process did."""

    code: int
    stdout: str
    stderr: str
    tmpdir: Path

    @property
    def error_lines(self) -> list[str]:
        """The stderr lines that are errors (warnings are allowed beside them)."""
        return [line for line in self.stderr.splitlines() if not line.startswith("warning: ")]


def run_cli_process(
    argv: list[object], tmp_path: Path, *, prefix: list[str] | None = None, timeout: float = 300
) -> CliRun:
    """`python -m edge_export ARGV` with TMPDIR set to a fresh folder under `tmp_path`; `prefix`
    wraps the command (e.g. NOBODY to drop root, or `unshare -m sh -c ...`)."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    tmpdir.chmod(0o1777)  # also writable when the run drops privileges
    env = dict(os.environ, TMPDIR=str(tmpdir), CI="1", PYTHONDONTWRITEBYTECODE="1")
    command = [*(prefix or []), sys.executable, "-m", "edge_export", *(str(a) for a in argv)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, tmpdir)


def expect_error(run: CliRun, code: int, *fragments: str, out: Path | None = None) -> str:
    """Assert the contract for a refused run; returns the one error line."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.error_lines
    assert len(lines) == 1, run.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "unexpected" not in line, line  # the catch-all is for bugs only
    assert "weights_only=False" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert run.code == code, run.stderr
    assert run.stdout == ""
    if out is not None:
        assert not out.exists(), f"{out} was written"
        leftovers = [p.name for p in out.parent.glob(f".{out.name}.*")] if out.parent.is_dir() else []
        assert leftovers == [], leftovers
    assert list(run.tmpdir.iterdir()) == [], f"left in TMPDIR: {list(run.tmpdir.iterdir())}"
    return line


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to prove a folder was left untouched)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
