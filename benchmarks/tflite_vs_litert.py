"""edge-export's TFLite target vs litert-torch + ai-edge-quantizer called directly, side by side.

Both sides export the same HF folders (all-MiniLM-L6-v2; SmolLM2-135M-Instruct dequantised from
its GGUF file) with the same recipe: fp32, int8 (dynamic range) and int4 (block-wise weights).
Each export runs as a measured subprocess (wall time, peak RSS), one per (tool, model, recipe):
edge-export's CLI on one side, benchmarks/_litert_bare.py (the libraries called the way a user
would) on the other. The .tflite files are then sized and timed by one shared code path in this
process (benchmarks/_tfl_bench.py): MiniLM p50 latency of signature seq_128, SmolLM2 time to
first token and greedy decode tokens/s, alternating between the tools.

Run from the repo root with the project venv (see benchmarks/README.md):
    .venv/bin/python benchmarks/tflite_vs_litert.py [--models minilm,smollm2] [--recipes fp32,int8,int4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from _bench_common import (
    MINILM_SEQ_LEN,
    Measured,
    PreparedModel,
    Row,
    add_model_recipe_args,
    add_tool_args,
    clean_env,
    prepare_models,
    run_alternating,
    run_measured,
)
from _bench_table import BARE, EE, TFL_SIZE_LIMIT, TFL_WALL_LIMIT, common_prefix, render_tflite, tflite_goals
from _litert_bare import BUCKETS, CACHE_LENGTH, HF_RECIPE, PREFILL_LENGTHS
from _tfl_bench import DecoderTfliteBench, EncoderTfliteBench, versions
from executorch_vs_optimum import (
    GREEDY_LEN,
    PROMPT_TOKENS,
    cpu_model,
    greedy_section,
    prompt_ids,
    torch_reference,
)

HERE = Path(__file__).resolve().parent
MODELS = ("minilm", "smollm2")
RECIPES = ("fp32", "int8", "int4")
EE_RECIPE = {"fp32": "tflite:fp32", "int8": "tflite:int8-dynamic", "int4": "tflite:int4-block"}
EE_SKIP_FLAGS = ["--no-validate", "--no-latency"]
DECODE_STEPS = 64
MIN_COSINE = 0.99  # below it an encoder row gets a note: the file computes something else


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_recipe_args(parser, MODELS, RECIPES, RECIPES)
    add_tool_args(parser, None, None, anchor="bare", anchor_label="the bare litert-torch call")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT CPU threads (both tools)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed loops per file, alternating tools (MiniLM: 20 calls each; SmolLM2: one "
        "prompt + decode loop each; default 10)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.03,
        help="runtime goals: 'identical or better' means within this share of the bare file's "
        "number (timing noise on a shared machine; default 0.03)",
    )
    return parser.parse_args(argv)


def ee_recipe_options() -> dict[str, dict[str, Any]]:
    """edge-export's recipe_options pinned to the bare side's signatures (equal to its defaults)."""
    shapes = {
        "seq_buckets": list(BUCKETS),
        "prefill_lengths": list(PREFILL_LENGTHS),
        "max_seq_len": CACHE_LENGTH,
    }
    return {recipe_id: dict(shapes) for recipe_id in EE_RECIPE.values()}


def write_edge_export_config(base: Path) -> Path:
    """The --config file: recipe options only (JSON text, which the YAML loader reads)."""
    config = base / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"recipe_options": ee_recipe_options()}, indent=2) + "\n")
    return config


def edge_export_command(
    exe: Path, model: PreparedModel, recipe: str, config: Path, out: Path, skip: list[str]
) -> list[str]:
    """The `edge-export export` call for one recipe."""
    cmd = [str(exe), "export", str(model.hf_dir), "--recipe", EE_RECIPE[recipe], "--config", str(config)]
    return [*cmd, "--out", str(out), "--force", *skip, "--json"]


def bare_command(model: PreparedModel, recipe: str, out: Path) -> list[str]:
    """The bare litert-torch script for one recipe (this venv's Python)."""
    return [sys.executable, str(HERE / "_litert_bare.py"), model.key, str(model.hf_dir), recipe, str(out)]


def runs_dir(workdir: Path, tool: str, model: str) -> Path:
    """Where one tool's exports and logs of one model go."""
    return workdir / "runs" / "tflite" / tool / model


def export_edge_export(model: PreparedModel, recipe: str, args: argparse.Namespace, skip: list[str]) -> Row:
    """One `edge-export export --recipe R` process; the row reads OUT/report.json."""
    base = runs_dir(args.workdir, EE, model.key)
    out = base / recipe
    shutil.rmtree(out, ignore_errors=True)
    cmd = edge_export_command(args.edge_export, model, recipe, write_edge_export_config(base), out, skip)
    print(f"edge-export: exporting {model.key} {recipe} ...", file=sys.stderr, flush=True)
    run = run_measured(cmd, base / f"{recipe}.log", clean_env())
    row = Row(model.key, EE, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    recipe_id = row.metrics["recipe"] = EE_RECIPE[recipe]
    report = out / "report.json"
    results = json.loads(report.read_text()).get("results", []) if report.exists() else []
    result = next((r for r in results if r.get("recipe") == recipe_id), {})
    status = result.get("status")
    if run.returncode != 0 or status != "passed":
        row.notes.append(f"status {status}, exit {run.returncode}: {run.log}")
    if status in (None, "error") or not result.get("artifact"):
        row.status = "error"
        if result.get("error"):
            row.notes.append(f"error: {json.dumps(result['error'])[:300]}")
        return row
    row.status = "ok" if status == "passed" else "gate-failed"
    return _with_artifact(row, out / result["artifact"])  # report paths are relative to OUT


def export_bare(model: PreparedModel, recipe: str, args: argparse.Namespace) -> Row:
    """One benchmarks/_litert_bare.py process; it leaves OUT/model.tflite."""
    base = runs_dir(args.workdir, BARE, model.key)
    out = base / recipe
    shutil.rmtree(out, ignore_errors=True)
    print(f"litert-torch: exporting {model.key} {recipe} ...", file=sys.stderr, flush=True)
    run = run_measured(bare_command(model, recipe, out), base / f"{recipe}.log", clean_env())
    row = Row(model.key, BARE, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    if model.kind == "decoder":
        row.metrics["recipe"] = HF_RECIPE[recipe]
    if run.returncode != 0:
        row.status = "error"
        row.notes.append(f"exit {run.returncode}, see {run.log}")
        return row
    return _with_artifact(row, out / "model.tflite", run)


def _with_artifact(row: Row, artifact: Path, run: Measured | None = None) -> Row:
    if not artifact.exists():
        row.status = "error"
        row.notes.append(f"no {artifact}" + (f", see {run.log}" if run else ""))
        return row
    row.artifact, row.size_bytes = str(artifact), artifact.stat().st_size
    return row


def run_exports(args: argparse.Namespace, models: dict[str, PreparedModel], skip: list[str]) -> list[Row]:
    """Every export subprocess, one at a time; the tool that goes first alternates per recipe."""
    sides = []
    if not args.skip_edge_export:
        sides.append((EE, lambda model, recipe: export_edge_export(model, recipe, args, skip)))
    if not args.skip_bare:
        sides.append((BARE, lambda model, recipe: export_bare(model, recipe, args)))
    return run_alternating(models, args.recipes, sides, RECIPES)


def measure_runtime(
    rows: list[Row], models: dict[str, PreparedModel], args: argparse.Namespace, prompts: dict[str, Any]
) -> None:
    """Time every .tflite with the same code, in this process.

    The files of one (model, recipe) are loaded together, warmed up and timed in alternating
    loops, so that load from other work on the machine hits both tools alike. The order is ABBA
    (reversed every other loop) and the loading order alternates per group: with a fixed order,
    one of two equivalent MiniLM files measured 4% slower than the other, run after run.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.artifact is not None:
            groups.setdefault((row.model, row.precision), []).append(row)
    for index, ((key, recipe), group) in enumerate(groups.items()):
        print(f"timing {key} {recipe} ...", file=sys.stderr, flush=True)
        model = models[key]
        order = group[::-1] if index % 2 else group
        benches: dict[int, Any] = {}
        for row in order:
            make = partial(_make_bench, Path(row.artifact or ""), model, prompts.get(key), args.threads)
            benches[id(row)] = _guarded(row, make)
        for loop in range(args.repeats):
            for row in order[::-1] if loop % 2 else order:
                bench = benches[id(row)]
                if bench is None:
                    continue
                run = bench.run_chunk if model.kind == "encoder" else bench.run_once
                if _guarded(row, run) is None:
                    benches[id(row)] = None
        for row in group:
            bench = benches[id(row)]
            if bench is not None:
                row.metrics.update(bench.result())
                if model.kind == "decoder":
                    _greedy_checks(row, prompts[key]["ref"])
                elif row.metrics["cosine_vs_torch"] < MIN_COSINE:
                    row.notes.append(f"output far from PyTorch's: cos {row.metrics['cosine_vs_torch']:.4f}")
        benches.clear()
        gc.collect()


def _make_bench(
    path: Path, model: PreparedModel, prompt: dict[str, Any] | None, threads: int
) -> EncoderTfliteBench | DecoderTfliteBench:
    """Load one file and warm it up (encoder: signature seq_128; decoder: one greedy loop)."""
    if model.kind == "encoder":
        return EncoderTfliteBench(path, model.reference, MINILM_SEQ_LEN, threads)
    assert prompt is not None
    return DecoderTfliteBench(path, prompt["ids"], DECODE_STEPS, PREFILL_LENGTHS, CACHE_LENGTH, threads)


def _greedy_checks(row: Row, ref: dict[str, Any]) -> None:
    """How many of the first GREEDY_LEN greedy tokens equal PyTorch's; unstable loops as a note."""
    first = row.metrics["greedy_tokens"][:GREEDY_LEN]
    row.metrics |= {
        "greedy_len": GREEDY_LEN,
        "greedy_match_torch": common_prefix(first, ref["greedy_tokens"]),
    }
    unstable = row.metrics["nondeterministic_loops"]
    if unstable:
        row.notes.append(f"greedy tokens changed in {unstable} of the timed loops")


def _guarded(row: Row, action: Callable[[], Any]) -> Any:
    """Run `action` and return its result (True for None); a failure becomes a note and gives None."""
    try:
        result = action()
    except Exception as exc:  # a file that does not run is a finding, not a crash
        row.notes.append(f"LiteRT run failed: {type(exc).__name__}: {exc}"[:400])
        row.metrics["run_error"] = f"{type(exc).__name__}: {exc}"[:400]
        return None
    return True if result is None else result


def file_facts(rows: list[Row]) -> list[str]:
    """Signatures and IO of every timed encoder file, load time of every file."""
    lines = ["Files"]
    for row in rows:
        if "load_s" not in row.metrics:
            continue
        lines.append(
            f"  {row.tool} {row.model} {row.precision}: {row.artifact} (load {row.metrics['load_s']:.2f} s)"
        )
        if "signatures" in row.metrics:
            lines.append(f"    signatures: {', '.join(row.metrics['signatures'])}")
            ins = ", ".join(f"{k} {v}" for k, v in row.metrics["inputs"].items())
            outs = ", ".join(f"{k} {v}" for k, v in row.metrics["outputs"].items())
            lines.append(f"    seq_{MINILM_SEQ_LEN}({ins}) -> {outs}")
    return lines if len(lines) > 1 else []


def footnotes(args: argparse.Namespace, skip: list[str], load: tuple[float, float]) -> list[str]:
    """How each column was measured."""
    skipped = " ".join(skip) if skip else "(none: --edge-export-validate)"
    libs = ", ".join(f"{k} {v}" for k, v in versions().items())
    return [
        "export s: wall time of the export subprocess, one per (tool, model, recipe), the tool "
        "going first alternating per recipe. edge-export: `edge-export export FOLDER --recipe R "
        f"--config CFG --out OUT --force {skipped} --json` with R = {', '.join(EE_RECIPE.values())}; "
        "CFG pins recipe_options to the bare side's signatures (seq_buckets "
        f"{list(BUCKETS)}, prefill_lengths {list(PREFILL_LENGTHS)}, max_seq_len {CACHE_LENGTH}: "
        "edge-export's defaults for these models). The process loads the model, converts fp32 "
        "once, quantizes for R, writes the bundle and inspects XNNPACK residency. litert-torch: "
        "`python benchmarks/_litert_bare.py MODEL FOLDER RECIPE OUT` (no edge-export code).",
        "MiniLM, both sides: litert_torch.Converter, one signature seq_<n> per bucket over a "
        "wrapper returning last_hidden_state and the normalized mean-pooled embedding, then "
        "ai-edge-quantizer: int8 = dynamic int8 per-channel for every supported op (bare: the "
        "built-in recipe dynamic_wi8_afp32, the same config); int4 = token table int8 per channel, "
        "linear layers int4 in blocks of 32, activations dynamic (the same configs on both sides).",
        "SmolLM2, both sides: litert-torch's HF export (prefill_8, prefill_64, decode; KV cache "
        f"{CACHE_LENGTH}). Bare: `export_hf.export.export(..., quantization_recipe=Q, "
        f"bundle_litert_lm=False)`, Q = {HF_RECIPE['fp32']!r} (fp32; left out, it would quantize "
        f"with dynamic_wi8_afp32) / {HF_RECIPE['int8']} (int8; the same config as edge-export's "
        f"int8-dynamic) / {HF_RECIPE['int4']} (int4; the closest built-in: every supported op "
        "int4 in blocks of 32, token table and LM head included). edge-export's int4-block keeps "
        "the token table, the MLP down_proj and the LM head (`logits`) int8 per channel (for "
        "accuracy), so its file is larger and its decode may be slower: the int4 rows of SmolLM2 do "
        "not compare the same recipe. The bare export also writes its tokenizer.",
        "peak RSS: polled every 50 ms with psutil: max of the export process tree's summed RSS "
        "and its largest process's VmHWM, and the child's wait4 ru_maxrss when above this "
        "process's own VmHWM.",
        ".tflite MiB: the model.tflite file (the only model file on both sides).",
        f"p50 ms: {libs}; ai_edge_litert Interpreter(num_threads={args.threads}) signature runner "
        f"seq_{MINILM_SEQ_LEN} (XNNPACK delegate by default), batch 1, the {MINILM_SEQ_LEN} real "
        f"tokens of the reference text; {args.repeats} x 20 calls after 10 warm-up, alternating "
        "between the tools (ABBA). cos = cosine of the mean-pooled last_hidden_state vs PyTorch fp32.",
        f"TTFT ms / decode tok/s: edge-export's ExplicitCacheSession (LiteRT CompiledModel, "
        f"{args.threads} CPU threads) and greedy_generate on both files: prompt = the first "
        f"{PROMPT_TOKENS} tokens of the benchmarks' English text; TTFT = {PROMPT_TOKENS - 1} tokens "
        f"through prefill_64 (padded) + one decode step + argmax; tok/s = {DECODE_STEPS} / time of "
        f"{DECODE_STEPS} greedy single-token steps after it. Median of {args.repeats} loops after "
        "1 warm-up loop, alternating between the tools (ABBA). greedy prefix = torch: leading tokens "
        f"among the first {GREEDY_LEN} (warm-up loop) equal to PyTorch fp32's greedy tokens.",
        f"goals: export wall ee/bare <= {TFL_WALL_LIMIT:g}x; runtime 'identical or better' = "
        f"within {args.tolerance:.0%} of the bare file's number or better (--tolerance); "
        f"int4 .tflite <= {TFL_SIZE_LIMIT:g}x fp32 (edge-export's files); fp32 greedy tokens equal.",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores shared with other "
        "work: expect noise of several percent.",
        f"1-minute load average when exports started: {load[0]:.2f}, when timing started: "
        f"{load[1]:.2f} (each export itself adds ~1)",
    ]


def main(argv: list[str] | None = None) -> int:
    """Prepare the models, export with both tools, time the files, print and save a table."""
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if not args.skip_edge_export and not args.edge_export.exists():
        sys.exit(f"{args.edge_export} not found: run `make setup` (or pass --edge-export)")
    print("preparing models ...", file=sys.stderr, flush=True)
    models = prepare_models(args.models, args.workdir)
    prompts = {}
    for key, model in models.items():
        if model.kind == "decoder":
            ids = prompt_ids(model.hf_dir)
            prompts[key] = {"ids": ids, "ref": torch_reference(model.hf_dir, ids, args.workdir)}
    skip = [] if args.edge_export_validate else EE_SKIP_FLAGS
    export_load = os.getloadavg()[0]
    rows = run_exports(args, models, skip)
    timing_load = os.getloadavg()[0]
    measure_runtime(rows, models, args, prompts)
    kinds = {key: model.kind for key, model in models.items()}
    goals = tflite_goals(rows, kinds, args.recipes, args.tolerance, GREEDY_LEN)
    notes = footnotes(args, skip, (export_load, timing_load))
    extra = file_facts(rows)
    for key in prompts:
        decoder_rows = [r for r in rows if r.model == key]
        extra += ["", *greedy_section(decoder_rows, prompts[key]["ref"], models[key].hf_dir)]
    print(render_tflite(rows, kinds, args.recipes, goals, extra, notes))
    result = {
        "schema": "edge-export/bench-tflite-vs-litert@1",
        "models": {k: {"kind": m.kind, "hf_dir": str(m.hf_dir)} for k, m in models.items()},
        "recipes": args.recipes,
        "versions": versions(),
        "threads": args.threads,
        "edge_export_flags": skip,
        "edge_export_recipes": EE_RECIPE,
        "edge_export_recipe_options": ee_recipe_options(),
        "bare_hf_recipes": HF_RECIPE,
        "prompts": {
            k: {"ids": p["ids"], "torch_greedy_tokens": p["ref"]["greedy_tokens"]} for k, p in prompts.items()
        },
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) | {"verdict": g.verdict} for g in goals.values()],
        "footnotes": notes,
    }
    out = args.workdir / "tflite_vs_litert.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    failed = [
        f"{r.tool} {r.model} {r.precision}" for r in rows if r.status == "error" or "run_error" in r.metrics
    ]
    if failed:
        print(f"failed: {'; '.join(failed)} (the notes in the report say why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
