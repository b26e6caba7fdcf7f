"""Progress of a lab run, per device: a live rich display on a terminal (one row per device with
its finished cells and what it is doing now), plain lines on stderr otherwise (CI logs, pipes).

It is also the `Progress` the export runs report their steps to ("exporting", "measuring on X"),
so the device rows show which step of which group each device is waiting on or running.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

from edge_export.report.progress import Progress

_COLOURS = {"passed": "green", "failed": "red", "error": "red", "not_run": "yellow"}


def _outcome(row: dict[str, Any]) -> str:
    """A finished cell in a few words: status, median latency, cache hit, first failure."""
    text = row["status"]
    if row.get("p50_ms") is not None:
        text += f", p50 {row['p50_ms']:.2f} ms"
    if row.get("cached"):
        text += ", cached export"
    if row.get("failures"):
        text += f": {row['failures'][0][:160]}"
    return text


class LabDisplay(Progress):
    """Per-device progress (see the module doc). `enabled` None or True: the live display when
    stderr is a terminal outside CI, plain lines otherwise; False: nothing at all."""

    def __init__(self, devices: list[str], enabled: bool | None = None) -> None:
        super().__init__(enabled=False)  # the export runs' own spinner is replaced by the rows
        self.totals = Counter(devices)
        self.done: Counter[str] = Counter()
        self.group: list[str] = []
        self.label = ""
        self.quiet = enabled is False
        self.live: Any = None
        self.rows: dict[str, Any] = {}
        if not self.quiet and sys.stderr.isatty() and not os.environ.get("CI") and self.totals:
            self._start_live()

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as Bars

        self.live = Bars(
            SpinnerColumn(), TextColumn("[bold]{task.fields[device]:<12}"), BarColumn(bar_width=20),
            MofNCompleteColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
        )  # fmt: skip
        self.rows = {d: self.live.add_task("waiting", total=n, device=d) for d, n in self.totals.items()}
        self.live.start()

    def _say(self, device: str | None, text: str) -> None:
        """Show what a device (None: every device of the current group) is doing now."""
        if self.quiet:
            return
        names = [device] if device else self.group
        if self.live is not None:
            from rich.markup import escape

            for name in names:
                if name in self.rows:
                    self.live.update(self.rows[name], description=escape(text))
        elif device is None:
            print(f"[{', '.join(names)}] {text}", file=sys.stderr, flush=True)

    def start_group(self, model: str, recipe: str, devices: list[str]) -> None:
        """A (model, recipe) export starts; `devices` wait for its bundle."""
        self.group, self.label = devices, f"{model} {recipe}"
        self._say(None, f"{self.label}: starting")

    @contextlib.contextmanager
    def task(self, text: str) -> Iterator[None]:
        """A step of the current export (what run_export reports), shown on the device rows."""
        device = next((d for d in self.group if text.endswith(f"measuring on {d}")), None)
        if self.live is not None:  # plain lines only say when a group starts and a cell ends
            self._say(device, f"{self.label}: {text.split(': ', 1)[-1]}")
        yield

    def cell_done(self, cell: Any, row: dict[str, Any]) -> None:
        """A device finished (or failed) its cell of the current group."""
        self.done[cell.device] += 1
        if self.quiet:
            return
        text = f"{cell.model} {cell.recipe}: {_outcome(row)}"
        count = f"{self.done[cell.device]}/{self.totals[cell.device]}"
        if self.live is not None:
            from rich.markup import escape

            colour, text = _COLOURS.get(row["status"], "white"), escape(text)  # tool output may hold [..]
            self.live.update(self.rows[cell.device], advance=1, description=f"[{colour}]{text}[/]")
            self.live.console.print(f"[{colour}]{escape(cell.device)}[/] ({count}) {text}", highlight=False)
        else:
            print(f"[{cell.device}] ({count}) {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
