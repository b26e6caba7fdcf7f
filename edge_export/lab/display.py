"""Progress of a lab run: a live rich display on a terminal (a row for the host's exports and one
row per device, each with its finished cells and what it is doing now), plain lines on stderr
otherwise (CI logs, pipes).

Devices work in parallel (lab/workers.py), so every method may be called from any thread: the
counters and the plain lines are guarded by one lock (a line is never interleaved with another,
and a device's "(n/total)" counts only its own cells), and each thread only ever changes its own
row. It is also the `Progress` the export runs report their steps to ("exporting", "validating"),
shown on the host's row.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from edge_export.report.progress import Progress

_COLOURS = {"passed": "green", "failed": "red", "error": "red", "not_run": "yellow"}
HOST_ROW = "host"  # the export row's label (rows are keyed apart, so a device may be called host too)


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
    stderr is a terminal outside CI, plain lines otherwise; False: nothing at all. `groups` is the
    number of exports the host will run (the length of its row's bar)."""

    def __init__(self, devices: list[str], enabled: bool | None = None, groups: int = 0) -> None:
        super().__init__(enabled=False)  # the export runs' own spinner is replaced by the rows
        self.totals = Counter(devices)
        self.done: Counter[str] = Counter()
        self.label = ""  # the group the host is exporting now
        self.quiet = enabled is False
        self.live: Any = None
        self.rows: dict[str, Any] = {}
        self.host_row: Any = None
        self._lock = threading.Lock()
        if not self.quiet and sys.stderr.isatty() and not os.environ.get("CI") and self.totals:
            self._start_live(groups)

    def _start_live(self, groups: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
        from rich.progress import Progress as Bars

        self.live = Bars(
            SpinnerColumn(), TextColumn("[bold]{task.fields[device]:<12}"), BarColumn(bar_width=20),
            MofNCompleteColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
        )  # fmt: skip
        self.host_row = self.live.add_task("waiting", total=groups or None, device=HOST_ROW)
        self.rows = {d: self.live.add_task("waiting", total=n, device=d) for d, n in self.totals.items()}
        self.live.start()

    def _update(self, row: Any, text: str, **fields: Any) -> None:
        """Set a live row's description (escaped: tool output may hold [..]), if there is one."""
        live = self.live  # close() may run meanwhile on another thread
        if live is not None and row is not None:
            from rich.markup import escape

            live.update(row, description=escape(text), **fields)

    def _line(self, text: str) -> None:
        """One plain progress line on stderr (not with the live display, nor when quiet)."""
        if not self.quiet and self.live is None:
            with self._lock:
                print(text, file=sys.stderr, flush=True)

    def start_group(self, model: str, recipe: str, devices: list[str]) -> None:
        """The host starts a (model, recipe) export for `devices`."""
        self.label = f"{model} {recipe}"
        self._update(self.host_row, f"{self.label}: starting")
        self._line(f"[{HOST_ROW}] {self.label}: export for {', '.join(devices)}")

    def group_done(self) -> None:
        """The host finished the current export (its bundle is handed to the devices)."""
        self._update(self.host_row, f"{self.label}: done", advance=1)

    @contextlib.contextmanager
    def task(self, text: str) -> Iterator[None]:
        """A step of the current export (what run_export reports), shown on the host's row."""
        self._update(self.host_row, f"{self.label}: {text.split(': ', 1)[-1]}")
        yield

    def device_status(self, device: str, text: str) -> None:
        """What a device is doing now (live display only: plain lines say when a cell ends)."""
        self._update(self.rows.get(device), text)

    def cell_done(self, cell: Any, row: dict[str, Any]) -> None:
        """A device finished (or failed) one of its cells."""
        with self._lock:
            self.done[cell.device] += 1
            count = f"{self.done[cell.device]}/{self.totals[cell.device]}"
        if self.quiet:
            return
        text, live = f"{cell.model} {cell.recipe}: {_outcome(row)}", self.live
        if live is not None:
            from rich.markup import escape

            colour, text = _COLOURS.get(row["status"], "white"), escape(text)
            live.update(self.rows[cell.device], advance=1, description=f"[{colour}]{text}[/]")
            live.console.print(f"[{colour}]{escape(cell.device)}[/] ({count}) {text}", highlight=False)
        else:
            self._line(f"[{cell.device}] ({count}) {text}")

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
