"""Ctrl-C, SIGTERM and SIGHUP that always leave nothing behind.

A KeyboardInterrupt raised while Python runs a __del__ (regex, torch and onnx objects are
collected all the time during an export) is printed and swallowed, so the run would go on.
The CLI therefore installs one handler for SIGINT, SIGTERM (a CI job cancelled, `kill`) and
SIGHUP (the terminal closed) that removes every tracked staging or scratch path itself, asks
every registered cleanup (a device's work dir, where its connection is still up) to run within a
few seconds, and exits with 128 + the signal number at once. Library callers keep ordinary
KeyboardInterrupt semantics.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

_TRACKED: list[Path] = []
_CLEANUPS: list[Callable[[], None]] = []
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLEANUP_BUDGET_S = 10.0  # a device that does not answer must not keep a cancelled job alive


def track(path: Path) -> None:
    """Remove `path` if the run is interrupted."""
    _TRACKED.append(path)


def untrack(path: Path) -> None:
    """`path` is committed or already removed."""
    with contextlib.suppress(ValueError):
        _TRACKED.remove(path)


def on_interrupt(cleanup: Callable[[], None]) -> None:
    """Call `cleanup` (best effort, bounded in time) if the run is interrupted."""
    _CLEANUPS.append(cleanup)


def _run_cleanups() -> None:
    def run_all() -> None:
        for cleanup in reversed(list(_CLEANUPS)):
            try:
                cleanup()
            except Exception as exc:  # one failed cleanup must not stop the others; the user is told
                sys.stderr.write(
                    f"warning: clean-up after the interrupt failed: {type(exc).__name__}: {exc}\n"
                )

    worker = threading.Thread(target=run_all, daemon=True)  # never blocks the exit beyond the budget
    worker.start()
    worker.join(CLEANUP_BUDGET_S)
    if worker.is_alive():
        sys.stderr.write(f"warning: clean-up on a device did not finish within {CLEANUP_BUDGET_S:.0f} s\n")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for sig in SIGNALS:  # a second Ctrl-C or TERM must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    for path in reversed(list(_TRACKED)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            with contextlib.suppress(OSError):
                path.unlink()
    _run_cleanups()
    name = signal.Signals(signum).name
    sys.stderr.write(f"error: interrupted ({name}); nothing was written at the output folder\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def install() -> None:
    """Install the handler for SIGINT, SIGTERM and SIGHUP (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _on_signal)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the signals back while a commit renames folders, so OUT is never half-swapped."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(SIGNALS))


@contextlib.contextmanager
def private_tmpdir() -> Iterator[Path]:
    """Point every temporary file of this process (ours, the converters', child processes') into
    one fresh folder under TMPDIR, removed at the end and on an interrupt: libraries that leak
    temp files, or die mid-write, leave nothing behind. For a one-shot process (the CLI) only:
    libraries may remember the folder after it is gone."""
    root = Path(tempfile.mkdtemp(prefix=f"edge-export-{os.getpid()}-"))
    track(root)
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(root)
    os.environ["TMPDIR"] = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(root, ignore_errors=True)
        untrack(root)
