"""The device lab's workers: one thread per device, each with its own queue, so that the devices
measure in parallel, each device runs one job at a time, and the host exports the next group
meanwhile.

The host's cores are one shared resource (HostGate). The export and validation of a group hold
it, and so does every measurement on a device of type local (this machine, under any name): a
local measurement therefore never runs beside an export, a validation or another local
measurement, any of which would corrupt its timings. Remote devices (ssh, adb, apple) never wait
for it. Jobs handed to local devices go first: the host starts its next export only when every
bundle it gave a local device has been measured and stored, so an interrupt costs at most the
group in progress.

Stopping (Ctrl-C, a fatal error): queued jobs are dropped, a job in progress finishes and is
stored if it measured something; a device failure that shows up while stopping is not stored
(the interrupt probably caused it: the agent or ssh child got the same Ctrl-C), so `--resume`
runs that cell again. After `stop_recording` nothing is written any more.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from edge_export.config import LatencyConfig
from edge_export.devices.base import Device
from edge_export.files import USER_ERRNOS
from edge_export.lab.display import LabDisplay
from edge_export.lab.matrix import Cell
from edge_export.report.result import Result
from edge_export.run.device_job import Measurement, measure

ERROR_GRACE_S = 0.5  # how long a device failure waits for a concurrent interrupt before it is stored
STOP_WAIT_S = 10.0  # how long stopping waits for the jobs in progress (a hung device must not hang us)


@dataclass(frozen=True)
class Job:
    """One cell for one device: the group's result entry and, unless there is nothing to time
    (the export failed, latency is off), the bundle's measurement."""

    cell: Cell
    entry: dict[str, Any]
    sha256: str | None
    measurement: Measurement | None
    validated: bool = False  # validation is on: a device other than this machine has its outputs gated

    def result(self, latency: dict[str, Any] | None, seconds: float | None) -> dict[str, Any]:
        """The group's result entry as this device's cell sees it: its own latency entry, the
        time it took, the measurement's notes, and the status derived again from those."""
        timings = dict(self.entry.get("timings_s") or {})
        if seconds is not None:
            timings["latency"] = round(seconds, 3)
        notes = list(self.entry.get("notes") or [])
        notes += [n for n in (self.measurement.notes if self.measurement else []) if n not in notes]
        merged = {**self.entry, "latency_by_device": [latency] if latency else [], "timings_s": timings}
        if notes:
            merged["notes"] = notes
        return {**merged, **Result.from_dict(merged).to_dict()}


# Stores a device's finished job: (job, its latency entry or None, the device's facts, seconds timed).
Record = Callable[[Job, dict[str, Any] | None, dict[str, Any], float | None], None]


class HostGate:
    """The host's cores: held by one export or one local measurement at a time; an export also
    waits until no job handed to a local device is left (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._local_pending = 0
        self._aborted = False

    def queued_local(self) -> None:
        """A job was handed to a local device."""
        with self._cond:
            self._local_pending += 1

    def done_local(self) -> None:
        """A local device's job is stored (or dropped)."""
        with self._cond:
            self._local_pending -= 1
            self._cond.notify_all()

    def abort(self) -> None:
        """Let every waiter go (the run is stopping; they check that themselves)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, *, export: bool) -> Iterator[None]:
        """Hold the host: for an export (waits for the local devices' jobs too) or a local
        measurement (waits only for the holder)."""
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or not (self._busy or (export and self._local_pending)))
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def device_facts(device: Device) -> dict[str, Any]:
    """The device's facts, or its name and the one-line reason it did not answer."""
    try:
        return device.info()
    except Exception as exc:  # an unreachable device is recorded, never the end of the lab
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
            raise
        return {"name": device.name, "error": _one_line(exc)}


def _one_line(exc: BaseException) -> str:
    one_line = getattr(exc, "one_line", None)
    text = one_line() if callable(one_line) else f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0]


class DevicePool:
    """The workers of one lab run. Use as a context manager: a clean exit waits for every queued
    job; an exception (Ctrl-C included) stops the workers first (see the module doc)."""

    def __init__(
        self, devices: Mapping[str, Device], lat: LatencyConfig, display: LabDisplay, record: Record
    ) -> None:
        self.gate = HostGate()
        self.lat, self.display, self._record = lat, display, record
        self.stopping = threading.Event()
        self._record_lock = threading.Lock()
        self._accepting = True
        self._failure: BaseException | None = None
        self._workers = {name: _Worker(self, device) for name, device in devices.items()}

    def __enter__(self) -> DevicePool:
        for worker in self._workers.values():
            worker.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if exc_type is not None:
            self.stop()
            return
        try:
            self.finish()
        except BaseException:
            self.stop()
            raise

    @contextlib.contextmanager
    def host(self) -> Iterator[None]:
        """Hold the host for an export; raises a worker's fatal error instead of exporting."""
        self.check()
        with self.gate.hold(export=True):
            self.check()
            yield

    def submit(self, job: Job) -> None:
        """Hand a job to its device's worker."""
        self.check()
        worker = self._workers[job.cell.device]
        if worker.local:
            self.gate.queued_local()
        worker.queue.put(job)

    def check(self) -> None:
        """Raise the error that stopped a worker (a full disk, a store that failed)."""
        if self._failure is not None:
            raise self._failure

    def finish(self) -> None:
        """Wait until every device has done every job it was given."""
        for worker in self._workers.values():
            worker.queue.put(None)
        for worker in self._workers.values():
            worker.thread.join()
        self.check()

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """Drop the queued jobs, let the jobs in progress end (at most `wait_s`), then accept no
        more rows."""
        self._halt()
        deadline = time.monotonic() + wait_s
        for worker in self._workers.values():
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        self.stop_recording()

    def stop_recording(self) -> None:
        """Write nothing from now on (the run is being closed; also from a signal's clean-up,
        which must not wait for ever on a write that the signal itself suspended)."""
        self.stopping.set()
        locked = self._record_lock.acquire(timeout=STOP_WAIT_S / 2)
        self._accepting = False
        if locked:
            self._record_lock.release()

    def fail(self, exc: BaseException) -> None:
        """A worker hit an error that stops the whole lab: keep it for the host to raise."""
        if self._failure is None:
            self._failure = exc
        self._halt()

    def _halt(self) -> None:
        self.stopping.set()
        for worker in self._workers.values():
            worker.drop_queued()
        self.gate.abort()

    def write(self, write: Callable[[], None]) -> None:
        """Run a store write unless the run is closed (one at a time, also with the host's rows)."""
        with self._record_lock:
            if self._accepting:
                write()

    def record(
        self, job: Job, latency: dict[str, Any] | None, facts: dict[str, Any], seconds: float | None
    ) -> None:
        """Store a device's finished job (a failure seen while stopping is dropped: see the doc)."""
        if latency and "error" in latency and self.stopping.wait(ERROR_GRACE_S):
            return
        self.write(lambda: self._record(job, latency, facts, seconds))


class _Worker:
    """One device's thread and queue."""

    def __init__(self, pool: DevicePool, device: Device) -> None:
        self.pool, self.device = pool, device
        self.local = device.kind == "local"
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"edge-export-lab-{device.name}", daemon=True)

    def drop_queued(self) -> None:
        """Empty the queue (each dropped local job released) and tell the thread to end."""
        with contextlib.suppress(queue.Empty):
            while True:
                if self.queue.get_nowait() is not None and self.local:
                    self.pool.gate.done_local()
        self.queue.put(None)

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            try:
                if not self.pool.stopping.is_set():
                    self._run(job)
            except BaseException as exc:
                self.pool.fail(exc)
            finally:
                if self.local:
                    self.pool.gate.done_local()
                self.pool.display.device_status(self.device.name, "idle")

    def _run(self, job: Job) -> None:
        """Facts, the measurement (if any), then the row."""
        label = f"{job.cell.model} {job.cell.recipe}"
        self.pool.display.device_status(self.device.name, f"{label}: reading the device's facts")
        facts = device_facts(self.device)
        latency, seconds = None, None
        if job.measurement is not None:
            if self.local:
                self.pool.display.device_status(self.device.name, f"{label}: waiting for the host")
            with self.pool.gate.hold(export=False) if self.local else contextlib.nullcontext():
                if self.pool.stopping.is_set():
                    return
                self.pool.display.device_status(self.device.name, f"{label}: measuring")
                started = time.perf_counter()
                latency = self._measure(job.measurement, job.validated and not self.local)
                seconds = time.perf_counter() - started
        self.pool.record(job, latency, facts, seconds)

    def _measure(self, job: Measurement, gated: bool) -> dict[str, Any]:
        """The device's latency entry; anything the device raises becomes its `error`, as a device
        failure does in an export run (a full disk or a denied permission stops the lab)."""
        try:
            return measure(self.device, job, self.pool.lat, gated)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
                raise
            return {
                "device": self.device.name,
                "error": {"type": type(exc).__name__, "message": _one_line(exc)},
            }
        finally:
            with contextlib.suppress(Exception):  # best effort, as at the end of an export run
                self.device.cleanup()
