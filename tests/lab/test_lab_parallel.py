"""Devices of a lab run work in parallel, each one job at a time, and a local device never measures
beside the host's export: a real lab run (a tiny model, real exports, the real local device) with
fake remote devices whose measurements wait for each other or for the host, so that every claim is
proved by a meeting in time (a barrier, an event) rather than by timings that could drift."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli

from edge_export.devices.base import RunResult
from edge_export.errors import DeviceError
from edge_export.lab import runner
from edge_export.lab.display import LabDisplay
from edge_export.lab.matrix import Cell
from edge_export.lab.store import open_store
from edge_export.lab.workers import DevicePool, Job

RECIPES = ["onnx:fp32", "onnx:int8-dynamic"]
INVENTORY = {
    "local2": {"type": "local"},  # this machine under a second name: it shares the host too
    "pi": {"type": "ssh", "host": "pi.invalid"},
    "phone": {"type": "adb", "serial": "emulator-5554"},
}
WAIT_S = 20.0  # a meeting that never happens fails the test after this long


class Timeline:
    """Start and end of every measurement (per device) and every host export, and the largest
    number of jobs any device ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        self.exports: list[tuple[str, float, float]] = []
        self.active: dict[str, int] = defaultdict(int)
        self.most: dict[str, int] = defaultdict(int)
        self.export_started: dict[str, threading.Event] = {r: threading.Event() for r in RECIPES}

    def begin(self, device: str) -> float:
        with self.lock:
            self.active[device] += 1
            self.most[device] = max(self.most[device], self.active[device])
        return time.monotonic()

    def end(self, device: str, bundle: Path, started: float) -> None:
        with self.lock:
            self.active[device] -= 1
            self.jobs[device].append((bundle.name, started, time.monotonic()))


class FakeDevice:
    """A device that times nothing: `behave(name, bundle)` decides how long a job takes (or
    raises), and the run returns `iterations` made-up samples."""

    def __init__(self, name: str, kind: str, timeline: Timeline, behave: Any) -> None:
        self.name, self.kind, self.timeline, self.behave = name, kind, timeline, behave
        self.cleanups = 0

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "arch": "fake"}

    def runtimes(self) -> dict[str, str | None]:
        return {"onnx": "fake"}

    def push(self, bundle: Path) -> str:
        return str(bundle)

    def run(self, bundle: Path, inputs: dict[str, np.ndarray], warmup: int, iterations: int,
            mode: str = "graph", decode_tokens: int = 32) -> RunResult:  # fmt: skip
        started = self.timeline.begin(self.name)
        try:
            self.behave(self.name, bundle.name)
        finally:
            self.timeline.end(self.name, bundle, started)
        return RunResult(self.name, {}, [2.0 + 0.1 * i for i in range(iterations)], 1.0, 10.0, "fake")

    def cleanup(self) -> None:
        self.cleanups += 1


class TimedDevice:
    """A real device whose runs are put on the timeline."""

    def __init__(self, device: Any, timeline: Timeline) -> None:
        self.device, self.timeline = device, timeline
        self.name, self.kind = device.name, device.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self.device, name)

    def run(self, bundle: Path, *args: Any, **kwargs: Any) -> RunResult:
        started = self.timeline.begin(self.name)
        try:
            return self.device.run(bundle, *args, **kwargs)
        finally:
            self.timeline.end(self.name, bundle, started)


def _overlap(a: tuple[str, float, float], b: tuple[str, float, float]) -> float:
    """Seconds two intervals share (0 when they do not meet)."""
    return max(0.0, min(a[2], b[2]) - max(a[1], b[1]))


def _lab(folder: Path, model: Path, devices: list[str]) -> Path:
    lab = folder / "lab.yaml"
    lab.write_text(yaml.safe_dump({
        "models": {"bert": {"path": str(model)}}, "recipes": RECIPES, "devices": devices,
        "inventory": INVENTORY, "latency": {"warmup": 0, "iterations": 3},
    }))  # fmt: skip
    return lab


def _patch(monkeypatch: pytest.MonkeyPatch, timeline: Timeline, fakes: dict[str, FakeDevice],
           on_export: Any = None) -> None:  # fmt: skip
    """The runner gets the fakes by name (the real device, timed, otherwise), and its exports are
    put on the timeline (`on_export(recipe)` runs first, on the host thread)."""
    real_get, real_export = runner.get_device, runner.run_export

    def get_device(name: str, inventory: Any = None) -> Any:
        return fakes[name] if name in fakes else TimedDevice(real_get(name, inventory), timeline)

    def run_export(cfg: Any, progress: Any, **kwargs: Any) -> Any:
        recipe = cfg.recipes[0]
        timeline.export_started[recipe].set()
        if on_export is not None:
            on_export(recipe)
        started = time.monotonic()
        try:
            return real_export(cfg, progress, **kwargs)
        finally:
            timeline.exports.append((recipe, started, time.monotonic()))

    monkeypatch.setattr(runner, "get_device", get_device)
    monkeypatch.setattr(runner, "run_export", run_export)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: the first test exports, the others reuse its bundles."""
    return tmp_path_factory.mktemp("lab-parallel-cache")


def test_devices_run_in_parallel_one_job_each_and_local_never_beside_an_export(
    tmp_path: Path, tiny_bert: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    timeline = Timeline()
    meet = threading.Barrier(2, timeout=WAIT_S)  # pi and phone must be measuring at the same time
    stored_at_second_export: list[set[str]] = []

    def remote(name: str, bundle: str) -> None:
        if bundle == "onnx-fp32":
            meet.wait()
            if name == "pi":  # still measuring the first bundle while the host exports the second
                assert timeline.export_started["onnx:int8-dynamic"].wait(WAIT_S)
                time.sleep(0.3)
        elif name == "phone":
            raise DeviceError("phone", "device offline (adb: no devices/emulators found)")

    fakes = {
        "local2": FakeDevice("local2", "local", timeline, lambda *_: time.sleep(0.4)),
        "pi": FakeDevice("pi", "ssh", timeline, remote),
        "phone": FakeDevice("phone", "adb", timeline, remote),
    }
    store_path = tmp_path / "lab.sqlite"

    def on_export(recipe: str) -> None:
        if recipe == "onnx:int8-dynamic":  # what the store holds when the host moves on
            with open_store(store_path) as store:
                stored_at_second_export.append({row["cell"] for row in store.rows()})

    _patch(monkeypatch, timeline, fakes, on_export)
    lab = _lab(tmp_path, tiny_bert, ["local", "local2", "pi", "phone"])
    code, _, err = run_cli(["lab", "run", lab, "--cache", cache, "--out", tmp_path / "out"], capsys)
    assert code == 4, err  # the phone dropped on the second bundle: a device failure

    with open_store(store_path) as store:
        (run,) = store.runs()
        rows = {row["cell"]: row for row in store.rows(run_id=run["run_id"])}
    devices = ["local", "local2", "pi", "phone"]
    assert run["status"] == "finished"
    assert sorted(rows) == sorted(f"bert|{r}|{d}" for r in RECIPES for d in devices)  # every cell
    dropped = rows.pop("bert|onnx:int8-dynamic|phone")
    assert dropped["status"] == "error" and "device offline" in dropped["failures"][0]
    assert dropped["latency"]["error"]["type"] == "DeviceError"
    for cell, row in rows.items():
        assert row["status"] == "passed", (cell, row["failures"])
        assert len(row["samples_ms"]) == 3 and row["latency"]["device"] == row["device"]
        assert row["device_facts"]["name"] == row["device"] and row["accuracy"]["gates"]
        assert row["result"]["latency_by_device"][0]["device"] == row["device"]
    remote_check = rows["bert|onnx:fp32|pi"]["latency"]["accuracy"]["not_run"]
    assert remote_check.startswith("not checked")  # said, not silently skipped
    assert "accuracy" not in rows["bert|onnx:fp32|local"]["latency"]  # the host's own runtime

    # devices overlap: pi and phone met (the barrier), pi measured during the second export
    pi_first = next(job for job in timeline.jobs["pi"] if job[0] == "onnx-fp32")
    second_export = next(e for e in timeline.exports if e[0] == "onnx:int8-dynamic")
    assert _overlap(pi_first, second_export) > 0
    # one job at a time per device, and every job ran
    assert dict(timeline.most) == {"local": 1, "local2": 1, "pi": 1, "phone": 1}
    assert {d: len(timeline.jobs[d]) for d in devices} == dict.fromkeys(devices, 2)
    # the host's cores: local measurements never beside an export, nor beside each other
    local = timeline.jobs["local"] + timeline.jobs["local2"]
    assert [(j, e) for j in local for e in timeline.exports if _overlap(j, e)] == []
    assert [(a, b) for a in timeline.jobs["local"] for b in timeline.jobs["local2"] if _overlap(a, b)] == []
    # rows are committed per device as it finishes: when the host moved on, the local devices'
    # and the phone's first cells were stored, pi's (still measuring) was not
    (seen,) = stored_at_second_export
    assert {c for c in seen if "fp32" in c} == {f"bert|onnx:fp32|{d}" for d in ("local", "local2", "phone")}
    assert fakes["pi"].cleanups == 2  # the device's work is cleaned after each job, as before
    # plain progress lines: the host's exports, and per device its own count
    assert re.search(r"^\[host\] bert onnx:fp32: export for local, local2, pi, phone$", err, re.M)
    for device in devices:
        assert re.search(rf"^\[{device}\] \(1/2\) bert onnx:", err, re.M), err
        assert re.search(rf"^\[{device}\] \(2/2\) bert onnx:", err, re.M), err
    assert re.search(r"^\[phone\] \(2/2\) bert onnx:int8-dynamic: error: .*device offline", err, re.M)


def test_ctrl_c_stops_the_workers_and_keeps_the_finished_cells(
    tmp_path: Path, tiny_bert: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Ctrl-C while the host exports the second group: pi's job in progress ends and is kept; the
    phone's job, cut by the same Ctrl-C (a device failure that shows up then), is not stored, so
    --resume measures it again; no worker is left running."""
    timeline = Timeline()
    interrupted = threading.Event()

    def remote(name: str, bundle: str) -> None:
        assert interrupted.wait(WAIT_S)
        if name == "phone":
            raise DeviceError("phone", "agent crashed (exit -2)")  # its child got the Ctrl-C too
        time.sleep(0.2)

    def on_export(recipe: str) -> None:
        if recipe == "onnx:int8-dynamic" and not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    fakes = {
        name: FakeDevice(name, kind, timeline, remote) for name, kind in (("pi", "ssh"), ("phone", "adb"))
    }
    _patch(monkeypatch, timeline, fakes, on_export)
    lab = _lab(tmp_path, tiny_bert, ["local", "pi", "phone"])
    argv = ["lab", "run", lab, "--cache", cache, "--out", tmp_path / "out"]
    code, _, err = run_cli(argv, capsys)
    assert code == 130, err
    run_id = re.search(r"--resume (\S+)\)$", err.strip().splitlines()[-1]).group(1)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("edge-export-lab-")]
    with open_store(tmp_path / "lab.sqlite") as store:
        assert store.run(run_id)["status"] == "interrupted"
        kept = {row["cell"] for row in store.rows(run_id=run_id)}
    assert kept == {"bert|onnx:fp32|local", "bert|onnx:fp32|pi"}

    code, _, err = run_cli([*argv, "--resume", run_id], capsys)
    assert code == 4, err  # the fake phone fails every job once interrupted is set
    with open_store(tmp_path / "lab.sqlite") as store:
        assert store.run(run_id)["status"] == "finished"
        rows = {row["cell"]: row for row in store.rows(run_id=run_id)}
    assert len(rows) == 6 and rows["bert|onnx:fp32|phone"]["status"] == "error"
    assert [row["status"] for cell, row in rows.items() if "phone" not in cell] == ["passed"] * 4


def test_a_worker_whose_store_fails_stops_the_lab(tmp_path: Path) -> None:
    """A row that cannot be written (the store's database is gone) is not a device's failure: the
    host raises it, and the other devices' queued jobs are dropped."""
    timeline = Timeline()
    devices = {n: FakeDevice(n, "ssh", timeline, lambda *_: None) for n in ("a", "b")}
    recorded: list[str] = []

    def record(job: Job, latency: Any, facts: Any, seconds: Any) -> None:
        if job.cell.device == "a":
            raise OSError(28, "No space left on device")
        recorded.append(job.cell.id)

    display = LabDisplay(["a", "b"], enabled=False)
    cells = [Cell("m", "onnx", "onnx:fp32", d) for d in ("a", "b")]
    with pytest.raises(OSError, match="No space"), DevicePool(devices, None, display, record) as pool:
        for cell in cells:
            pool.submit(Job(cell, {}, None, None))
    assert recorded in ([], ["m|onnx:fp32|b"])  # b's job may have run before a's failure
    assert not any(t.is_alive() for t in (w.thread for w in pool._workers.values()))


def test_the_display_counts_each_device_alone_from_many_threads(capsys: pytest.CaptureFixture[str]) -> None:
    display = LabDisplay(["a"] * 40 + ["b"] * 40, enabled=None)  # stderr is not a terminal: lines
    rows = {"status": "passed", "p50_ms": 1.0}

    def finish(device: str) -> None:
        for i in range(40):
            display.cell_done(Cell("m", "onnx", f"onnx:r{i}", device), rows)

    threads = [threading.Thread(target=finish, args=(d,)) for d in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 80 and all(
        re.fullmatch(r"\[[ab]\] \(\d+/40\) m onnx:r\d+: passed, p50 1.00 ms", ln) for ln in lines
    )
    for device in "ab":
        counts = [int(re.search(r"\((\d+)/", ln).group(1)) for ln in lines if ln.startswith(f"[{device}]")]
        assert counts == list(range(1, 41))


def test_the_live_display_has_a_host_row_and_a_row_per_device(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal: the host's exports on their own row, each device's step on its own row, and
    a finished cell advances only its device's bar."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    display = LabDisplay(["a", "b", "b"], groups=2)
    assert display.live is not None and set(display.rows) == {"a", "b"}
    display.start_group("m", "onnx:fp32", ["a", "b"])
    with display.task("onnx:fp32: exporting"):
        host = display.live._tasks[display.host_row]
        assert host.description == "m onnx:fp32: exporting"
    display.device_status("a", "m onnx:fp32: measuring [x]")
    display.cell_done(Cell("m", "onnx", "onnx:fp32", "b"), {"status": "passed", "p50_ms": 1.0})
    display.group_done()
    tasks = display.live._tasks
    assert tasks[display.rows["a"]].description == r"m onnx:fp32: measuring \[x]"  # markup escaped
    assert (tasks[display.rows["a"]].completed, tasks[display.rows["b"]].completed) == (0, 1)
    assert tasks[display.host_row].completed == 1 and tasks[display.host_row].total == 2
    display.close()
    display.close()  # idempotent
    assert "(1/2)" in capsys.readouterr().err


def test_a_decoder_prompt_is_fitted_to_the_model_positions(tmp_path: Path) -> None:
    """As the export run does: prompt + decode steps fit the positions (GPT-2's n_positions too)."""
    from edge_export.config import LatencyConfig
    from edge_export.run.device_job import fitted, source_max_positions

    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_positions": 64}')
    assert source_max_positions(tmp_path) == 64
    assert source_max_positions(tmp_path / "missing") is None
    lat = LatencyConfig(prompt_tokens=64, decode_tokens=32)
    assert fitted(lat, True, 64).prompt_tokens == 32
    assert fitted(lat, True, 512) is lat and fitted(lat, False, 64) is lat and fitted(lat, True, None) is lat
    assert fitted(LatencyConfig(prompt_tokens=8, decode_tokens=100), True, 64).prompt_tokens == 1
