"""edge-export vs `optimum-cli export onnx`, side by side, on two real models.

Both tools export from the same HF folder (all-MiniLM-L6-v2; SmolLM2-135M-Instruct dequantised
from its GGUF file). Each export runs as a measured subprocess (wall time, peak RSS); the ONNX
files are then sized and timed by one shared onnxruntime code path in this process.

Run from the repo root with the project venv (see benchmarks/README.md):
    .venv/bin/python benchmarks/onnx_vs_optimum.py [--models minilm,smollm2] [--skip-optimum]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import onnxruntime as ort
from _bench_common import (
    DECODE_STEPS,
    MINILM_SEQ_LEN,
    Measured,
    PreparedModel,
    Row,
    add_tool_args,
    clean_env,
    find_model_onnx,
    onnx_size_bytes,
    prepare_models,
    run_measured,
)
from _bench_table import EE, OPT, goals, render
from _ort_bench import DecoderBench, EncoderBench, io_names, make_session

DEFAULT_OPTIMUM_VENV = Path("/work/bench-venvs/optimum")
SKIP_VALIDATION_FLAGS = ("--no-validate", "--skip-validation", "--no-validation")
SKIP_LATENCY_FLAGS = ("--no-bench", "--no-latency", "--skip-latency", "--skip-bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,smollm2", help="comma list: minilm,smollm2")
    add_tool_args(parser, "--optimum-venv", DEFAULT_OPTIMUM_VENV)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating timing chunks per model (default 5)"
    )
    return parser.parse_args(argv)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty if unknown)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")


def optimum_int8_isa() -> str:
    """The `optimum-cli onnxruntime quantize` preset for this CPU (dynamic int8 either way)."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "--avx512" if "avx512f" in flags else "--avx2"


def run_optimum(model: PreparedModel, workdir: Path, venv: Path) -> list[Row]:
    """fp32 export, then dynamic int8 quantization of that export; int4 is n/a."""
    base = workdir / "runs" / OPT / model.key
    shutil.rmtree(base, ignore_errors=True)
    env, cli = clean_env(venv / "bin"), str(venv / "bin" / "optimum-cli")
    fp32_dir, int8_dir = base / "fp32", base / "int8"
    export = run_measured(
        [
            cli,
            "export",
            "onnx",
            "--model",
            str(model.hf_dir),
            "--task",
            model.optimum_task,
            str(fp32_dir),
        ],
        base / "fp32.log",
        env,
    )
    rows = [_optimum_row(model, "fp32", [export], fp32_dir)]
    if export.returncode == 0:
        quantize_cmd = [cli, "onnxruntime", "quantize", optimum_int8_isa()]
        quantize_cmd += ["--onnx_model", str(fp32_dir), "-o", str(int8_dir)]
        quantize = run_measured(quantize_cmd, base / "int8-quantize.log", env)
        rows.append(_optimum_row(model, "int8", [export, quantize], int8_dir))
    else:
        rows.append(Row(model.key, OPT, "int8", status="error", notes=["fp32 export failed"]))
    rows.append(Row(model.key, OPT, "int4", status="n/a"))
    return rows


def _optimum_row(model: PreparedModel, precision: str, steps: list[Measured], out: Path) -> Row:
    """A row whose wall time sums `steps` and whose peak RSS is their maximum."""
    row = Row(model.key, OPT, precision)
    row.wall_s = sum(s.wall_s for s in steps)
    row.peak_rss_mib = max(s.peak_rss_mib for s in steps)
    failed = [s for s in steps if s.returncode != 0]
    if failed:
        row.status = "error"
        row.notes.append(f"exit {failed[0].returncode}, see {failed[0].log}")
        return row
    row.artifact = str(find_model_onnx(out))
    row.size_bytes = onnx_size_bytes(out)
    return row


def edge_export_skip_flags(exe: Path) -> list[str]:
    """Flags of `edge-export export` that skip validation / latency, if it has any."""
    result = subprocess.run(
        [str(exe), "export", "--help"], capture_output=True, text=True, timeout=300, check=False
    )
    flags = []
    for group in (SKIP_VALIDATION_FLAGS, SKIP_LATENCY_FLAGS):
        flags += [f for f in group if f in result.stdout.split()][:1]
    return flags


def run_edge_export(model: PreparedModel, workdir: Path, exe: Path, flags: list[str]) -> list[Row]:
    """One `edge-export export --quantize P` call per precision, so wall time is per precision."""
    base = workdir / "runs" / EE / model.key
    shutil.rmtree(base, ignore_errors=True)
    rows = []
    for precision in ("fp32", "int8", "int4"):
        out = base / precision
        cmd = [str(exe), "export", str(model.hf_dir), "--target", "onnx"]
        cmd += ["--quantize", precision, "--out", str(out), "--json", "--force", *flags]
        measured = run_measured(cmd, base / f"{precision}.log", clean_env())
        rows.append(_edge_export_row(model, precision, measured, out))
    return rows


def _edge_export_row(model: PreparedModel, precision: str, run: Measured, out: Path) -> Row:
    """Read OUT/report.json (contract in DESIGN.md) into a row, noting contract problems."""
    row = Row(model.key, EE, precision, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    report_path = out / "report.json"
    if not report_path.exists():
        row.status = "error"
        row.notes.append(f"exit {run.returncode}, no report.json, see {run.log}")
        return row
    report = json.loads(report_path.read_text())
    results = [r for r in report.get("results", []) if r.get("target") == "onnx"]
    result = next((r for r in results if r.get("precision") == precision), None)
    if result is None:
        row.status = "error"
        row.notes.append(f"report.json has no onnx {precision} result (exit {run.returncode})")
        return row
    row.metrics["recipe"] = result.get("recipe")
    if result.get("status") != "passed" or run.returncode != 0:
        row.notes.append(f"status {result.get('status')}, exit {run.returncode}: {run.log}")
    if result.get("status") == "error" or not result.get("artifact"):
        row.status = "error"
        return row
    row.status = "ok" if result.get("status") == "passed" else "gate-failed"
    artifact = Path(result["artifact"])
    if not artifact.is_absolute():  # report paths are relative to OUT
        artifact = out / artifact
    row.artifact = str(artifact)
    row.size_bytes = onnx_size_bytes(artifact.parent)
    if result.get("size_bytes") != row.size_bytes:
        row.notes.append(f"report size_bytes {result.get('size_bytes')} != .onnx(+data) {row.size_bytes}")
    return row


def manifest_io_problems(row: Row) -> list[str]:
    """Compare the bundle's manifest.json io names with the ONNX session's names."""
    manifest_path = Path(row.artifact or "").parent / "manifest.json"
    if not manifest_path.exists():
        return ["bundle has no manifest.json"]
    io = json.loads(manifest_path.read_text()).get("io")
    if not isinstance(io, dict):
        return [f"manifest io is not an object: {type(io).__name__}"]
    declared = [sorted(_spec_names(io.get(side) or io.get(f"{side}s"))) for side in ("input", "output")]
    session = make_session(Path(row.artifact or ""), threads=1)
    actual = [sorted(names) for names in io_names(session)]
    problems = []
    for side, want, have in zip(("inputs", "outputs"), declared, actual, strict=True):
        if want != have:
            problems.append(f"manifest io {side} {want[:6]}... != graph {have[:6]}...")
    return problems


def _spec_names(spec: object) -> list[str]:
    if isinstance(spec, dict):
        return list(spec)
    if isinstance(spec, list):
        return [s["name"] if isinstance(s, dict) else str(s) for s in spec]
    return []


def measure_runtime(rows: list[Row], models: dict[str, PreparedModel], threads: int, rounds: int) -> None:
    """Time every exported model with the same onnxruntime code, in this process.

    The models of one (model, precision) pair are loaded together and timed in alternating
    chunks, so that load from other work on the machine hits every tool alike.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.artifact is not None:
            groups.setdefault((row.model, row.precision), []).append(row)
    for (key, precision), group in groups.items():
        print(f"timing {key} {precision} ...", file=sys.stderr, flush=True)
        benches = {id(row): _make_bench(row, models[key], threads) for row in group}
        for _ in range(rounds):
            for row in group:
                bench = benches.get(id(row))
                if bench is not None and not _run_safely(row, bench.run_chunk):
                    benches[id(row)] = None
        for row in group:
            bench = benches.get(id(row))
            if bench is not None:
                row.metrics.update(bench.result())
            if row.tool == EE:
                row.notes += manifest_io_problems(row)


def _make_bench(row: Row, model: PreparedModel, threads: int) -> EncoderBench | DecoderBench | None:
    """The bench for one row's artifact, or None (with a note) when the graph cannot run."""
    artifact = Path(row.artifact or "")
    try:
        if model.kind == "encoder":
            return EncoderBench(artifact, model.reference, threads)
        return DecoderBench(artifact, model.reference, threads, DECODE_STEPS)
    except Exception as exc:  # a graph that does not run is a finding, not a crash
        _note_failure(row, exc)
        return None


def _run_safely(row: Row, action: Callable[[], object]) -> bool:
    """Run `action`; a failure becomes a note on the row."""
    try:
        action()
    except Exception as exc:
        _note_failure(row, exc)
        return False
    return True


def _note_failure(row: Row, exc: Exception) -> None:
    row.notes.append(f"onnxruntime run failed: {type(exc).__name__}: {exc}"[:400])


def footnotes(args: argparse.Namespace, ee_flags: list[str]) -> list[str]:
    """How each column was measured."""
    skipped = " ".join(ee_flags) if ee_flags else "none found in `edge-export export --help`"
    return [
        "export s: wall time of the export subprocess(es). edge-export: one "
        "`edge-export export --target onnx --quantize P` call per precision "
        f"(flags that skip validation/latency: {skipped}; without them its time includes "
        "the PyTorch reference comparison and latency run). Optimum: `optimum-cli export onnx` "
        "(always validates against PyTorch, no flag to skip); its int8 = that export + "
        f"`optimum-cli onnxruntime quantize {optimum_int8_isa()}` (dynamic int8).",
        "peak RSS: polled every 50 ms with psutil: max of the export process tree's summed RSS "
        "and its largest process's VmHWM; Optimum int8 = max over its two steps.",
        "size: sum of .onnx + .onnx.data/.onnx_data files of the artifact's folder.",
        f"p50 ms: onnxruntime {ort.__version__} CPU, intra_op_threads={args.threads}, "
        f"batch 1, seq {MINILM_SEQ_LEN}, {args.rounds} x 20 runs after 10 warm-up, in chunks "
        "alternating between the tools; cos = cosine of the mean-pooled last_hidden_state vs "
        "PyTorch.",
        f"tok/s: greedy KV-cache loop, chat prompt prefill, then {DECODE_STEPS} single-token "
        f"decode steps timed (median of {args.rounds} loops after 1 warm-up, alternating "
        "between the tools); same session options. "
        f"top-1 vs torch: share of the {DECODE_STEPS + 1} generated positions whose argmax equals "
        "PyTorch fp32 "
        "greedy token when fed PyTorch's tokens (teacher forcing); in brackets the number of "
        "leading free-running greedy tokens equal to PyTorch's.",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores shared with other "
        "work: expect noise of several percent.",
    ]


def check_tools(args: argparse.Namespace) -> None:
    """Fail early, with the fix, when a tool to compare is missing."""
    cli = args.optimum_venv / "bin" / "optimum-cli"
    if not args.skip_optimum and not cli.exists():
        sys.exit(f"{cli} not found: run benchmarks/_optimum_venv.sh {args.optimum_venv}")
    if not args.skip_edge_export and not args.edge_export.exists():
        sys.exit(f"{args.edge_export} not found: run `make setup` (or pass --edge-export)")


def run_exports(args: argparse.Namespace, models: dict[str, PreparedModel]) -> tuple[list, list]:
    """All export subprocesses, one at a time; returns the rows and edge-export's skip flags."""
    ee_flags = []
    if not args.skip_edge_export and not args.edge_export_validate:
        ee_flags = edge_export_skip_flags(args.edge_export)
    rows: list[Row] = []
    for model in models.values():
        if not args.skip_edge_export:
            print(f"edge-export: exporting {model.key} ...", file=sys.stderr, flush=True)
            rows += run_edge_export(model, args.workdir, args.edge_export, ee_flags)
        if not args.skip_optimum:
            print(f"optimum: exporting {model.key} ...", file=sys.stderr, flush=True)
            rows += run_optimum(model, args.workdir, args.optimum_venv)
    return rows, ee_flags


def main(argv: list[str] | None = None) -> int:
    """Prepare the models, export with both tools, time the results, print and save a table."""
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    check_tools(args)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    print("preparing models ...", file=sys.stderr, flush=True)
    models = prepare_models(keys, args.workdir)
    export_load = os.getloadavg()[0]
    rows, ee_flags = run_exports(args, models)
    timing_load = os.getloadavg()[0]
    measure_runtime(rows, models, args.threads, args.rounds)
    kinds = {key: model.kind for key, model in models.items()}
    notes = footnotes(args, ee_flags)
    notes.append(
        f"1-minute load average when exports started: {export_load:.2f}, "
        f"when timing started: {timing_load:.2f} (each export itself adds ~1)"
    )
    print(render(rows, kinds, notes))
    result = {
        "schema": "edge-export/bench-onnx-vs-optimum@1",
        "models": {k: {"kind": m.kind, "hf_dir": str(m.hf_dir)} for k, m in models.items()},
        "edge_export_flags": ee_flags,
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) | {"verdict": g.verdict} for g in goals(rows, kinds)],
        "footnotes": notes,
    }
    out = args.workdir / "onnx_vs_optimum.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
