"""`edge-export lab run|history|compare|merge|report` end to end on tiny models (never a real model:
examples/lab.yaml itself is run with its models swapped for tiny ones), and the GitHub Actions
example's commands run locally as two shards and a merge."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import run_cli

from edge_export.cli import build_parser
from edge_export.lab import runner
from edge_export.lab.store import open_store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECIPES = ["onnx:fp32", "onnx:int8-dynamic"]


@dataclass
class FirstRun:
    lab: Path
    cache: Path
    out: Path
    code: int
    stderr: str


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> FirstRun:
    """One cold lab run (1 tiny model x 2 recipes x local) into lab.sqlite beside its lab file; its
    export cache is shared by the other tests of this module (they re-measure, never re-export)."""
    folder = tmp_path_factory.mktemp("lab")
    lab = folder / "lab.yaml"
    lab.write_text(yaml.safe_dump({
        "models": {"bert": {"path": str(tiny_bert), "labels": {"team": "search"}}},
        "recipes": RECIPES, "latency": {"warmup": 1, "iterations": 3},
    }))  # fmt: skip
    cache, out = folder / "cache", folder / "out"
    stderr = io.StringIO()  # a module fixture cannot use capsys
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.setenv("GITHUB_SHA", "c0ffee")
        code, _, _ = run_cli(["lab", "run", lab, "--cache", cache, "--out", out, "--label", "phone=none"])
    return FirstRun(lab, cache, out, code, stderr.getvalue())


def test_a_run_records_one_row_per_cell(first_run: FirstRun) -> None:
    assert first_run.code == 0, first_run.stderr
    with open_store(first_run.lab.parent / "lab.sqlite") as store:  # the default: beside the lab file
        (run,) = store.runs()
        rows = store.rows(run_id=run["run_id"])
    assert run["status"] == "finished" and run["labels"]["git_commit"] == "c0ffee"
    assert [row["cell"] for row in rows] == [f"bert|{recipe}|local" for recipe in RECIPES]
    for row in rows:
        assert row["status"] == "passed" and row["failures"] == []
        assert len(row["samples_ms"]) == 3 and row["p50_ms"] == pytest.approx(
            np.median(row["samples_ms"]), abs=1e-3
        )
        assert "samples_ms" not in row["latency"] and row["latency"]["device"] == "local"
        assert row["labels"] == {"team": "search", "git_commit": "c0ffee", "phone": "none"}
        assert row["device_facts"]["name"] == "local" and len(row["model_sha256"]) == 64
        assert row["size_bytes"] > 0 and row["result"]["recipe"] == row["recipe"]
        assert row["accuracy"]["gates"] and row["cached"] is False
    summary = json.loads((first_run.out / "lab.json").read_text())
    assert summary["run_id"] == run["run_id"] and summary["exit_code"] == 0
    assert [c["status"] for c in summary["cells"]] == ["passed", "passed"]
    cases = ET.parse(first_run.out / "junit.xml").getroot().iter("testcase")
    assert sorted(case.get("name") for case in cases) == [f"{recipe}@local" for recipe in RECIPES]
    assert (first_run.out / "report.html").stat().st_size > 1000
    assert (first_run.out / "bundles" / "bert" / "onnx-fp32" / "report.json").is_file()
    # plain progress lines (stderr is not a terminal here), one per finished cell per device
    assert re.search(r"^\[local\] \(1/2\) bert onnx:fp32: passed, p50 [\d.]+ ms$", first_run.stderr, re.M)
    assert re.search(r"^\[local\] \(2/2\) bert onnx:int8-dynamic: passed", first_run.stderr, re.M)


def test_resume_after_an_interrupt_runs_only_the_missing_cells(
    first_run: FirstRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []
    real = runner.run_export

    def interrupted_second_group(cfg: Any, progress: Any, **kwargs: Any) -> Any:
        calls.append(cfg.recipes[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, progress, **kwargs)

    monkeypatch.setattr(runner, "run_export", interrupted_second_group)
    store_path = tmp_path / "resume.sqlite"
    argv = [
        "lab",
        "run",
        first_run.lab,
        "--store",
        store_path,
        "--cache",
        first_run.cache,
        "--out",
        tmp_path / "o",
    ]
    code, _, err = run_cli(argv, capsys)
    last = err.strip().splitlines()[-1]
    assert code == 130 and last.startswith("error: lab run ") and "interrupted" in last, err
    run_id = re.search(r"--resume (\S+)\)$", last).group(1)
    with open_store(store_path) as store:
        assert store.run(run_id)["status"] == "interrupted"
        (kept,) = store.rows(run_id=run_id)
    assert kept["cell"] == "bert|onnx:fp32|local" and kept["cached"] is True  # the first run's export
    calls.clear()
    code, _, err = run_cli([*argv, "--resume", run_id], capsys)
    assert code == 0, err
    assert calls == ["onnx:int8-dynamic"]
    with open_store(store_path) as store:
        assert store.run(run_id)["status"] == "finished" and len(store.runs()) == 1
        rows = store.rows(run_id=run_id)
    assert [row["cell"] for row in rows] == [f"bert|{recipe}|local" for recipe in RECIPES]
    assert rows[0]["time"] == kept["time"] and rows[0]["samples_ms"] == kept["samples_ms"]


def test_the_example_lab_runs_with_tiny_models(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path, first_run: FirstRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/lab.yaml as shipped (labels, gates, devices), its two models swapped for tiny
    ones of the same kinds, ONNX only and 2 iterations: every cell ends in the store."""
    data = yaml.safe_load((EXAMPLES / "lab.yaml").read_text())
    data["models"]["minilm"]["path"] = str(tiny_bert)
    data["models"]["smollm2"]["path"] = str(tiny_llama)
    data["targets"] = ["onnx"]
    data["latency"] = {"warmup": 1, "iterations": 2}
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(
        ["lab", "run", lab, "--cache", first_run.cache, "--out", tmp_path / "o", "--json"], capsys
    )
    summary = json.loads(out)
    assert code in (0, 1), err  # random weights may fail a quantized gate, never the pipeline
    expected = [
        f"{m}|onnx:{r}|local" for m in ("minilm", "smollm2") for r in ("fp32", "int8-dynamic", "int4-weight")
    ]
    assert [cell["id"] for cell in summary["cells"]] == expected
    assert {cell["status"] for cell in summary["cells"]} <= {"passed", "failed"}
    assert summary["exit_code"] == code and "[local]" not in err  # --json: no progress lines
    with open_store(tmp_path / "lab.sqlite") as store:
        rows = store.rows(run_id=summary["run_id"])
    decoder = [row for row in rows if row["model"] == "smollm2"]
    assert all(row["decode_tokens_per_s"] and row["labels"]["team"] == "assistant" for row in decoder)
    int8 = next(row for row in rows if row["cell"] == "minilm|onnx:int8-dynamic|local")
    gate = next(g for g in int8["accuracy"]["gates"] if g["metric"] == "embedding_cosine_min")
    assert gate["threshold"] == 0.99  # the lab file's per-cell gate


def _workflow_commands(workflow: dict[str, Any]) -> list[str]:
    """Every `edge-export ...` command the workflow's steps run (folded lines joined)."""
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                if line.strip().startswith("edge-export "):
                    commands.append(line.strip())
    return commands


def test_github_actions_example_runs_two_shards_and_merges(
    first_run: FirstRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    workflow = yaml.safe_load((EXAMPLES / "lab-github-actions.yml").read_text())
    commands = _workflow_commands(workflow)
    assert [shlex.split(c)[1:3] for c in commands] == [
        ["lab", "run"], ["lab", "merge"], ["lab", "report"], ["lab", "compare"],
    ]  # fmt: skip
    shards = workflow["jobs"]["lab"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1))
    for command in commands:  # every flag is one our parser takes
        build_parser().parse_args(shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "1", command))[1:])
    run_id = "4242-1"

    def argv(command: str, **values: str) -> list[str]:
        text = command.replace("${{ github.run_id }}-${{ github.run_attempt }}", run_id)
        for name, value in values.items():
            text = text.replace("${{ " + name + " }}", value)
        return shlex.split(text)[1:]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_EXPORT_CACHE", str(first_run.cache))
    for index in (1, 2):  # two shards, each in its own folder as CI jobs would be
        job = tmp_path / f"job{index}"
        job.mkdir()
        monkeypatch.chdir(job)
        args = argv(commands[0], **{"matrix.shard": str(index), "strategy.job-total": "2"})
        args[args.index("examples/lab.yaml")] = str(first_run.lab)
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        (tmp_path / "shards" / f"lab-shard-{index}").mkdir(parents=True)
        (job / "shard.sqlite").rename(tmp_path / "shards" / f"lab-shard-{index}" / "shard.sqlite")
    monkeypatch.chdir(tmp_path)
    merge = argv(commands[1])
    merge[merge.index("shards/*/shard.sqlite")] = "shards/lab-shard-1/shard.sqlite"
    merge.insert(merge.index("--into"), "shards/lab-shard-2/shard.sqlite")
    code, out, err = run_cli(merge, capsys)
    assert code == 0 and "merged 2 rows from 2 stores" in out, err
    with open_store(tmp_path / "lab-history.sqlite") as store:
        rows = store.rows(run_id=run_id)
        run = store.run(run_id)
    assert [row["cell"] for row in rows] == [f"bert|{recipe}|local" for recipe in RECIPES]  # each once
    assert run["shard"] == "1/2,2/2" and run["status"] == "finished"
    assert run["labels"]["ci"] == "github-actions"
    code, _, err = run_cli(argv(commands[2]), capsys)
    assert code == 0, err
    assert (tmp_path / "lab-report" / "report.html").is_file() and (
        tmp_path / "lab-report" / "junit.xml"
    ).is_file()


def _inject(store: Any, run_id: str, scale: float, seed: int, labels: dict[str, str]) -> None:
    """A run of 2 models x 1 recipe x 2 devices with 30 latency samples per cell around
    10 ms x `scale` (1% noise) and the same accuracy."""
    rng = np.random.default_rng(seed)
    cells = [(m, d) for m in ("m1", "m2") for d in ("local", "pi")]
    store.begin_run(run_id, labels, "lab.yaml", None, [{"id": f"{m}|onnx:fp32|{d}"} for m, d in cells])
    for model, device in cells:
        samples = [float(v) for v in 10.0 * scale * (1 + 0.01 * rng.standard_normal(30))]
        accuracy = {
            "metrics": {"embedding_cosine_min": 0.999},
            "gates": [],
            "failure": None,
            "measured_on": "host",
        }
        store.record({
            "run_id": run_id, "cell": f"{model}|onnx:fp32|{device}", "model": model, "target": "onnx",
            "recipe": "onnx:fp32", "precision": "fp32", "device": device, "status": "passed", "failures": [],
            "samples_ms": samples, "p50_ms": float(np.median(samples)), "accuracy": accuracy,
            "latency": {"device": device, "p50_ms": float(np.median(samples))}, "size_bytes": 1000,
        })  # fmt: skip
    store.finish_run(run_id, "finished")


@pytest.fixture
def injected(tmp_path: Path) -> Path:
    path = tmp_path / "history.sqlite"
    with open_store(path) as store:
        _inject(store, "base", 1.0, 1, {"git_branch": "main"})
        _inject(store, "noise", 1.0, 2, {"git_branch": "pr-1"})
        _inject(store, "slow", 1.3, 3, {"git_branch": "pr-2"})
    return path


def test_compare_flags_a_30_percent_slowdown_and_passes_noise(
    injected: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["lab", "compare", "slow", "--baseline", "base", "--store", injected], capsys)
    assert code == 1, err
    assert out.count("REGRESSION") == 4 and "slower" in out
    code, out, err = run_cli(["lab", "compare", "noise", "--baseline", "label:git_branch=main", "--store",
                              injected, "--json"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["baseline"] == "base" and result["cells"] == 4 and result["regression"] is False
    assert {c["kind"] for c in result["changes"]} == {"same"}
    code, _, err = run_cli(["lab", "compare", "slow", "--baseline", "slow", "--store", injected], capsys)
    assert code == 2 and "the run itself" in err
    code, _, err = run_cli(["lab", "compare", "slow", "--baseline", "nope", "--store", injected], capsys)
    assert code == 2 and "no run 'nope'" in err


def test_history_filters(
    injected: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def history(*flags: str) -> list[dict[str, Any]]:
        code, out, err = run_cli(["lab", "history", "--json", *flags], capsys)
        assert code == 0, err
        return json.loads(out)

    monkeypatch.setenv("EDGE_EXPORT_LAB_STORE", str(injected))
    assert len(history()) == 12
    assert {(r["model"], r["device"]) for r in history("--model", "m1", "--device", "pi")} == {("m1", "pi")}
    assert len(history("--model", "m1", "--model", "m2", "--device", "pi")) == 6
    assert {r["run_id"] for r in history("--run", "slow")} == {"slow"}
    assert len(history("--limit", "5")) == 5 and history("--recipe", "onnx:int8-dynamic") == []
    code, out, err = run_cli(["lab", "history", "--store", injected, "--model", "m2"], capsys)
    assert code == 0 and out.count("m2") == 6 and "m1" not in out
    monkeypatch.delenv("EDGE_EXPORT_LAB_STORE")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(["lab", "history"], capsys)
    assert code == 2 and "no results store at lab.sqlite" in err
