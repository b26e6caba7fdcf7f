"""Progress display: a rich spinner on a terminal, nothing in --json mode, CI logs or pipes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator


class Progress:
    """`with progress.task("exporting"):` shows a spinner and then a ✓ line with the time taken."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty() and not os.environ.get("CI")
        self.enabled = enabled
        self._console = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    @contextlib.contextmanager
    def task(self, text: str) -> Iterator[None]:
        """Show `text` while the block runs."""
        if self._console is None:
            yield
            return
        start = time.perf_counter()
        with self._console.status(text):
            yield
        self._console.print(f"[green]✓[/green] {text} [dim]({time.perf_counter() - start:.1f}s)[/dim]")
