"""Ctrl-C that always leaves nothing behind.

A KeyboardInterrupt raised while Python runs a __del__ (regex, torch and onnx objects are
collected all the time during an export) is printed and swallowed, so the run would go on.
The CLI therefore installs a SIGINT handler that removes every tracked staging or scratch path
itself and exits with 130 at once. Library callers keep ordinary KeyboardInterrupt semantics.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

_TRACKED: list[Path] = []


def track(path: Path) -> None:
    """Remove `path` if the run is interrupted."""
    _TRACKED.append(path)


def untrack(path: Path) -> None:
    """`path` is committed or already removed."""
    with contextlib.suppress(ValueError):
        _TRACKED.remove(path)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    for path in reversed(list(_TRACKED)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            with contextlib.suppress(OSError):
                path.unlink()
    sys.stderr.write("error: interrupted; nothing was written at the output folder\n")
    sys.stderr.flush()
    os._exit(130)


def install() -> None:
    """Install the handler (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT back while a commit renames folders, so OUT is never half-swapped."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
