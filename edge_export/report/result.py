"""The typed result of one (target, recipe): what export, validation and measurement found.

Every part of a run fills in fields; nothing sets a status. `status` is derived once, here, from
what the fields say (error > failed > not_run > passed), and so is the exit code of a list of
results. `to_dict()` emits exactly the report@1 keys (see DESIGN.md), so report.json and the
store of a device lab read the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["passed", "failed", "error", "not_run"]


@dataclass
class Result:
    """One (target, recipe) of a run, of `validate` or of `bench`."""

    target: str
    recipe: str
    precision: str
    bundle: str | None = None
    artifact: str | None = None
    size_bytes: int | None = None
    accuracy: dict[str, Any] | None = None
    latency_by_device: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    inspect: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    residency_failure: str | None = None  # --require-full-delegation found operators outside the delegate
    # False until an artifact exists: a result that never got one is an error even without a message.
    produced: bool = False
    # with an export cache: {"hit": bool, "key": str} (a hit reused a verified cached bundle)
    cache: dict[str, Any] | None = None

    @property
    def device_failures(self) -> list[str]:
        """Accuracy gate failures of the outputs a device returned (one line per device)."""
        return [
            entry["accuracy"]["failure"]
            for entry in self.latency_by_device
            if (entry.get("accuracy") or {}).get("failure")
        ]

    @property
    def device_errors(self) -> list[str]:
        """Devices that failed or could not be reached (exit 4)."""
        return [entry["error"]["message"] for entry in self.latency_by_device if "error" in entry]

    @property
    def status(self) -> Status:
        """error (no artifact, or it does not run) > failed (a gate, on the host or a device, or
        full delegation) > not_run (nothing could be measured here) > passed."""
        if self.error is not None or not self.produced:
            return "error"
        if (self.accuracy or {}).get("failure") or self.residency_failure or self.device_failures:
            return "failed"
        if self.accuracy is not None and self.accuracy.get("measured_on") is None:
            return "not_run"
        entries = self.latency_by_device
        if self.accuracy is None and entries and all(e.get("not_run") for e in entries):
            return "not_run"
        return "passed"

    def failure_messages(self) -> list[str]:
        """One line per thing that went wrong, as the CLI prints them on stderr."""
        first = (self.error or {}).get("message") or (self.accuracy or {}).get("failure")
        lines = [first, self.residency_failure, *self.device_failures, *self.device_errors]
        return [line for line in lines if line]

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Result:
        """A result read back from its report@1 entry (report.json, a results store); its status is
        derived again from the same fields, so it equals the recorded one."""
        names = ("bundle", "artifact", "size_bytes", "accuracy", "error", "inspect", "residency_failure")
        return cls(
            entry["target"], entry["recipe"], entry["precision"],
            **{name: entry.get(name) for name in names},
            latency_by_device=list(entry.get("latency_by_device") or []),
            timings_s=dict(entry.get("timings_s") or {}), notes=list(entry.get("notes") or []),
            produced=entry.get("error") is None and entry.get("status") != "error",
            cache=dict(entry["cache"]) if entry.get("cache") else None,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The report@1 entry (contract keys first, optional ones only when they carry something)."""
        entry: dict[str, Any] = {
            "target": self.target, "recipe": self.recipe, "precision": self.precision,
            "status": self.status, "bundle": self.bundle, "artifact": self.artifact,
            "size_bytes": self.size_bytes, "accuracy": self.accuracy,
            "latency": self.latency_by_device[0] if self.latency_by_device else None,
            "latency_by_device": self.latency_by_device, "error": self.error, "timings_s": self.timings_s,
        }  # fmt: skip
        if self.inspect is not None:
            entry["inspect"] = self.inspect
        if self.notes:
            entry["notes"] = self.notes
        if self.residency_failure:
            entry["residency_failure"] = self.residency_failure
        if self.device_failures:
            entry["device_failures"] = self.device_failures
        if self.cache is not None:
            entry["cache"] = self.cache
        return entry


def failure_lines(report: Mapping[str, Any]) -> list[str]:
    """Every failure line of a report (its results read back as Result), for stderr."""
    return [
        line for entry in report.get("results", []) for line in Result.from_dict(entry).failure_messages()
    ]


def exit_code(results: Iterable[Result]) -> int:
    """0 all passed (or not run here); 1 a gate failed; 3 an export failed; 4 a device failed.
    The largest applicable code wins."""
    code = 0
    for result in results:
        status = result.status
        if status == "failed":
            code = max(code, 1)
        if status == "error":
            code = max(code, 3)
        if result.device_errors:
            code = max(code, 4)
    return code
