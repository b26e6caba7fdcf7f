"""edge-export vs `optimum-cli export executorch`, side by side, on SmolLM2-135M with XNNPACK.

Both tools export the same HF folder (SmolLM2-135M-Instruct dequantised from its GGUF file) to
an XNNPACK .pte, fp32 and 8da4w (8-bit dynamic activations, 4-bit weights, group size 32). Each
export runs as a measured subprocess (wall time, peak RSS); the .pte files are then sized and
timed by one shared ExecuTorch runtime code path in this process.

Run from the repo root with the project venv (see benchmarks/README.md):
    .venv/bin/python benchmarks/executorch_vs_optimum.py [--skip-optimum] [--skip-edge-export]
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
from pathlib import Path
from typing import Any

from _bench_common import (
    MINILM_TEXT,
    Measured,
    PreparedModel,
    Row,
    add_tool_args,
    clean_env,
    prepare_models,
    run_measured,
)
from _bench_table import EE, ET_MODEL, ET_RECIPES, OPT, common_prefix, executorch_goals, render_executorch
from _et_bench import DecoderPteBench, executorch_version, register_runtime_ops, set_threads

DEFAULT_OPTIMUM_VENV = Path("/work/bench-venvs/optimum-executorch")
GROUP_SIZE = 32
PROMPT_TOKENS = 64
DECODE_STEPS = 64
GREEDY_LEN = 16
EE_RECIPE = {"fp32": "executorch:xnnpack-fp32", "8da4w": "executorch:xnnpack-8da4w"}
EE_SKIP_FLAGS = ["--no-validate", "--no-latency"]
# Optimum's default static KV cache length (its max_length when --max_seq_len is not given),
# matched on edge-export's side through recipe_options.
MAX_SEQ_LEN = 2048


def optimum_flags(recipe: str, embedding_bits: int) -> list[str]:
    """Optimum's quantization flags for a recipe.

    --qlinear_group_size is passed for clarity: optimum-executorch 1.1.0's text-generation task
    does not forward it and always quantizes with its default group size, which is also 32.
    Embeddings are quantized only with --qembedding (8w = int8 per row, its default granularity).
    """
    if recipe == "fp32":
        return []
    flags = ["--qlinear", "8da4w", "--qlinear_group_size", str(GROUP_SIZE)]
    return [*flags, "--qembedding", "8w"] if embedding_bits == 8 else flags


def ee_recipe_options(embedding_bits: int) -> dict[str, dict[str, Any]]:
    """edge-export's recipe_options matching Optimum's settings (its 8da4w defaults to int8 embeddings)."""
    q4 = {"max_seq_len": MAX_SEQ_LEN, "group_size": GROUP_SIZE, "embedding_bits": embedding_bits}
    return {EE_RECIPE["fp32"]: {"max_seq_len": MAX_SEQ_LEN}, EE_RECIPE["8da4w"]: q4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_tool_args(parser, "--optimum-executorch-venv", DEFAULT_OPTIMUM_VENV)
    parser.add_argument(
        "--reuse-exports",
        action="store_true",
        help="reuse a previous run's exports (and their wall/RSS) from WORKDIR/runs/executorch "
        "when present, instead of exporting again",
    )
    parser.add_argument(
        "--embedding-bits",
        type=int,
        choices=(32, 8),
        default=32,
        help="8da4w embeddings on both sides: 32 = float (Optimum's default), 8 = int8 per row "
        "(Optimum --qembedding 8w, edge-export embedding_bits 8)",
    )
    parser.add_argument("--threads", type=int, default=2, help="ExecuTorch threadpool size")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed loops per .pte, alternating tools (default 5)"
    )
    return parser.parse_args(argv)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (empty if unknown)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")


def runs_dir(workdir: Path, tool: str) -> Path:
    """Where one tool's exports and logs go."""
    return workdir / "runs" / "executorch" / tool


def pte_size_bytes(pte: Path) -> int:
    """Bytes of the .pte plus any external-data .ptd files beside it."""
    return sum(p.stat().st_size for p in pte.parent.iterdir() if p.is_file() and p.suffix in {".pte", ".ptd"})


def optimum_command(venv: Path, hf_dir: Path, recipe: str, out: Path, embedding_bits: int) -> list[str]:
    """The `optimum-cli export executorch` call for one recipe (custom SDPA + KV cache: its fast path)."""
    cmd = [str(venv / "bin" / "optimum-cli"), "export", "executorch", "--model", str(hf_dir)]
    cmd += ["--task", "text-generation", "--recipe", "xnnpack", "--use_custom_sdpa", "--use_custom_kv_cache"]
    return [*cmd, *optimum_flags(recipe, embedding_bits), "--output_dir", str(out)]


def edge_export_command(
    exe: Path, model: PreparedModel, recipe: str, config: Path, out: Path, skip: list[str]
) -> list[str]:
    """The `edge-export export` call for one recipe."""
    cmd = [str(exe), "export", str(model.hf_dir), "--target", "executorch", "--recipe", EE_RECIPE[recipe]]
    return [*cmd, "--config", str(config), "--out", str(out), "--force", *skip, "--json"]


def _reused(path: Path, settings: dict[str, Any]) -> Row | None:
    """A row saved by an earlier run with the same settings whose artifact still exists, if any."""
    if not path.exists():
        return None
    row = Row(**json.loads(path.read_text()))
    if row.metrics.get("settings") != settings or row.artifact is None or not Path(row.artifact).exists():
        return None
    row.metrics = {k: v for k, v in row.metrics.items() if k in {"recipe", "settings"}}
    row.notes = [*[n for n in row.notes if not n.startswith("reused")], f"reused export from {path.parent}"]
    return row


def _save(row: Row, path: Path) -> Row:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(row), indent=2) + "\n")
    return row


def run_optimum(model: PreparedModel, args: argparse.Namespace) -> list[Row]:
    """One `optimum-cli export executorch` call per recipe."""
    venv = args.optimum_executorch_venv
    base = runs_dir(args.workdir, OPT)
    env = clean_env(venv / "bin")
    rows = []
    for recipe in ET_RECIPES:
        saved, out = base / recipe / "row.json", base / recipe
        cmd = optimum_command(venv, model.hf_dir, recipe, out, args.embedding_bits)
        row = _reused(saved, {"command": cmd}) if args.reuse_exports else None
        if row is None:
            shutil.rmtree(out, ignore_errors=True)
            print(f"optimum: exporting {recipe} ...", file=sys.stderr, flush=True)
            measured = run_measured(cmd, base / f"{recipe}.log", env)
            row = _optimum_row(recipe, measured, out)
            row.metrics["settings"] = {"command": cmd}
            _save(row, saved)
        rows.append(row)
    return rows


def _optimum_row(recipe: str, run: Measured, out: Path) -> Row:
    row = Row(ET_MODEL, OPT, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    pte = out / "model.pte"
    if run.returncode != 0 or not pte.exists():
        row.status = "error"
        row.notes.append(f"exit {run.returncode}, see {run.log}")
        return row
    row.artifact = str(pte)
    row.size_bytes = pte_size_bytes(pte)
    return row


def write_edge_export_config(base: Path, options: dict[str, Any]) -> Path:
    """The --config file: recipe options only (JSON text, which the YAML loader reads)."""
    config = base / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"recipe_options": options}, indent=2) + "\n")
    return config


def run_edge_export(model: PreparedModel, args: argparse.Namespace, skip: list[str]) -> list[Row]:
    """One `edge-export export --recipe R` call per recipe, so wall time and RSS are per recipe."""
    base = runs_dir(args.workdir, EE)
    options = ee_recipe_options(args.embedding_bits)
    config = write_edge_export_config(base, options)
    rows = []
    for recipe in ET_RECIPES:
        saved, out = base / recipe / "row.json", base / recipe / "bundle"
        cmd = edge_export_command(args.edge_export, model, recipe, config, out, skip)
        settings = {"command": cmd, "recipe_options": options}
        row = _reused(saved, settings) if args.reuse_exports else None
        if row is None:
            shutil.rmtree(out.parent, ignore_errors=True)
            print(f"edge-export: exporting {recipe} ...", file=sys.stderr, flush=True)
            measured = run_measured(cmd, base / f"{recipe}.log", clean_env())
            row = _edge_export_row(recipe, measured, out)
            row.metrics["settings"] = settings
            _save(row, saved)
        rows.append(row)
    return rows


def _edge_export_row(recipe: str, run: Measured, out: Path) -> Row:
    """Read OUT/report.json into a row; fall back to OUT/<bundle>/model.pte with a note."""
    recipe_id = EE_RECIPE[recipe]
    row = Row(ET_MODEL, EE, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    row.metrics["recipe"] = recipe_id
    report_path = out / "report.json"
    result: dict[str, Any] | None = None
    if report_path.exists():
        results = json.loads(report_path.read_text()).get("results", [])
        result = next((r for r in results if r.get("recipe") == recipe_id), None)
    default_pte = out / recipe_id.replace(":", "-") / "model.pte"
    if result is None:
        if run.returncode == 0 and default_pte.exists():
            row.notes.append(f"no {recipe_id} result in report.json; used {default_pte}")
            row.artifact, row.size_bytes = str(default_pte), pte_size_bytes(default_pte)
        else:
            row.status = "error"
            row.notes.append(f"exit {run.returncode}, no {recipe_id} result in report.json, see {run.log}")
        return row
    status = result.get("status")
    if status != "passed" or run.returncode != 0:
        row.notes.append(f"status {status}, exit {run.returncode}: {run.log}")
    if status == "error" or not result.get("artifact"):
        row.status = "error"
        if result.get("error"):
            row.notes.append(f"error: {json.dumps(result['error'])[:300]}")
        return row
    row.status = "ok" if status == "passed" else "gate-failed"
    artifact = Path(result["artifact"])
    if not artifact.is_absolute():  # report paths are relative to OUT
        artifact = out / artifact
    row.artifact = str(artifact)
    row.size_bytes = pte_size_bytes(artifact)
    if result.get("size_bytes") != row.size_bytes:
        row.notes.append(f"report size_bytes {result.get('size_bytes')} != .pte(+.ptd) {row.size_bytes}")
    if artifact != default_pte:
        row.notes.append(f"artifact at {artifact}, not at {default_pte}")
    return row


def prompt_ids(hf_dir: Path) -> list[int]:
    """The first PROMPT_TOKENS tokens of the benchmarks' real English text (no special tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer(MINILM_TEXT * 8, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]
    if len(ids) != PROMPT_TOKENS:
        raise RuntimeError(f"prompt text gives only {len(ids)} tokens")
    return list(ids)


def torch_reference(hf_dir: Path, ids: list[int], workdir: Path) -> dict[str, Any]:
    """PyTorch fp32 greedy tokens for the prompt (cached under WORKDIR/models)."""
    cache = workdir / "models" / "smollm2.executorch-reference.json"
    if cache.exists():
        ref = json.loads(cache.read_text())
        if ref.get("prompt_ids") == ids and len(ref.get("greedy_tokens", [])) >= GREEDY_LEN:
            return ref
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens: list[int] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
        for _ in range(GREEDY_LEN - 1):
            out = model(
                input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True
            )
            tokens.append(int(out.logits[0, -1].argmax()))
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ref = {
        "prompt_ids": ids,
        "prompt_text": tokenizer.decode(ids),
        "greedy_tokens": tokens,
        "greedy_text": tokenizer.decode(tokens),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(ref, indent=2) + "\n")
    del model
    gc.collect()
    return ref


def measure_runtime(rows: list[Row], ids: list[int], ref: dict[str, Any], repeats: int) -> None:
    """Time every .pte with the same ExecuTorch code, in this process.

    The programs of one recipe are loaded together, warmed up once (that loop gives the greedy
    tokens) and timed in alternating loops, so that load from other work hits both tools alike.
    """
    for recipe in ET_RECIPES:
        group = [r for r in rows if r.precision == recipe and r.artifact is not None]
        if not group:
            continue
        print(f"timing {recipe} ...", file=sys.stderr, flush=True)
        benches: dict[int, DecoderPteBench | None] = {}
        for row in group:
            benches[id(row)] = _guarded(
                row, lambda row=row: DecoderPteBench(Path(row.artifact), ids, DECODE_STEPS)
            )
        for _ in range(repeats):
            for row in group:
                bench = benches[id(row)]
                if bench is not None and _guarded(row, bench.run_once) is None:
                    benches[id(row)] = None
        for row in group:
            bench = benches[id(row)]
            if bench is None or not bench.ttft_ms:
                continue
            row.metrics.update(bench.result())
            greedy = row.metrics["greedy_tokens"][:GREEDY_LEN]
            row.metrics["greedy_len"] = GREEDY_LEN
            row.metrics["greedy_match_torch"] = common_prefix(greedy, ref["greedy_tokens"][:GREEDY_LEN])
            if row.metrics["nondeterministic_loops"]:
                row.notes.append(f"{row.metrics['nondeterministic_loops']} timed loop(s) gave other tokens")
        benches.clear()
        gc.collect()


def _guarded(row: Row, action: Callable[[], Any]) -> Any:
    """Run `action` and return its result (True for None); a failure becomes a note and gives None."""
    try:
        result = action()
    except Exception as exc:  # a program that does not run is a finding, not a crash
        row.notes.append(f"executorch run failed: {type(exc).__name__}: {exc}"[:400])
        row.metrics["run_error"] = f"{type(exc).__name__}: {exc}"[:400]
        return None
    return True if result is None else result


def program_facts(rows: list[Row]) -> list[str]:
    """Methods, metadata values and forward signature of every timed .pte."""
    lines = ["Programs"]
    for row in rows:
        metrics = row.metrics
        if "methods" not in metrics:
            continue
        ins = ", ".join(f"{i['dtype']}{i['sizes']}" for i in metrics.get("forward_inputs", []))
        outs = ", ".join(f"{o['dtype']}{o['sizes']}" for o in metrics.get("forward_outputs", []))
        lines.append(f"  {row.tool} {row.precision}: {row.artifact}")
        lines.append(f"    methods: {', '.join(metrics['methods'])}")
        lines.append(f"    forward({ins}) -> {outs}  (upper bounds of dynamic dims)")
        lines.append(
            f"    logits: {metrics['logits']}; prefill {metrics['prefill_logits_shape']}, "
            f"decode {metrics['decode_logits_shape']}; load {metrics['load_s']:.2f} s"
        )
        values = ", ".join(f"{k}={v}" for k, v in metrics["metadata"].items())
        lines.append(f"    metadata: {values or '(none)'}")
    return lines if len(lines) > 1 else []


def greedy_section(rows: list[Row], ref: dict[str, Any], tokenizer_dir: Path) -> list[str]:
    """The first GREEDY_LEN greedy tokens of PyTorch and of every timed .pte, as ids and text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lines = [f"Greedy first {GREEDY_LEN} tokens after the {PROMPT_TOKENS}-token prompt"]
    lines.append(f"  prompt: {ref['prompt_text'][:100]!r}...")
    entries = [("torch fp32", ref["greedy_tokens"][:GREEDY_LEN])]
    entries += [
        (f"{r.tool} {r.precision}", r.metrics["greedy_tokens"][:GREEDY_LEN])
        for r in rows
        if "greedy_tokens" in r.metrics
    ]
    width = max(len(name) for name, _ in entries)
    for name, tokens in entries:
        lines.append(f"  {name:<{width}}  {tokenizer.decode(tokens)!r}")
        lines.append(f"  {'':<{width}}  {tokens}")
    return lines


def footnotes(args: argparse.Namespace, skip: list[str], threads: int) -> list[str]:
    """How each column was measured."""
    skipped = " ".join(skip) if skip else "none (--edge-export-validate)"
    venv, bits = args.optimum_executorch_venv, args.embedding_bits
    opt_fp32 = " ".join(optimum_command(venv, Path("FOLDER"), "fp32", Path("OUT"), bits)[1:])
    opt_q4 = " ".join(optimum_flags("8da4w", bits))
    embeddings = (
        "no --qembedding: embeddings stay fp32 on both sides"
        if bits == 32
        else "--embedding-bits 8: int8 per-row embeddings on both sides"
    )
    return [
        "export s: wall time of the export subprocess, one per (tool, recipe). edge-export: "
        f"`edge-export export FOLDER --target executorch --recipe R --config CFG --out OUT --force "
        f"{skipped} --json` with R = {EE_RECIPE['fp32']} / {EE_RECIPE['8da4w']} and CFG = "
        f"recipe_options {json.dumps(ee_recipe_options(bits))}. "
        f"Optimum: `optimum-cli {opt_fp32}`, plus `{opt_q4}` for 8da4w ({embeddings}; "
        f"no --max_seq_len: Optimum's default {MAX_SEQ_LEN}, "
        "matched by edge-export's max_seq_len; Optimum has no validation step to skip).",
        "peak RSS: polled every 50 ms with psutil: max of the export process tree's summed RSS "
        "and its largest process's VmHWM, and the child's wait4 ru_maxrss when above this "
        "process's own VmHWM. ExecuTorch's serializer runs `flatc` as a short-lived child at the "
        "end, so a poll may or may not catch that moment: expect run-to-run spread.",
        ".pte MiB: the .pte file plus any .ptd (external data) files beside it.",
        f"TTFT ms / decode tok/s: ExecuTorch {executorch_version()} Python runtime "
        f"(executorch.runtime, llama custom ops + quantized kernels registered), threadpool "
        f"{threads} threads (--threads {args.threads}). Prompt: the first {PROMPT_TOKENS} tokens "
        "of the benchmarks' English text (MINILM_TEXT), no special tokens. TTFT = forward(input_ids "
        f"[1, {PROMPT_TOKENS}], cache_position 0..{PROMPT_TOKENS - 1}) + argmax; tok/s = "
        f"{DECODE_STEPS} / time of {DECODE_STEPS} greedy single-token steps after it. Median of "
        f"{args.repeats} loops after 1 warm-up loop, alternating between the tools; each loop "
        "restarts at cache_position 0 (the static KV cache is overwritten).",
        f"greedy = torch: leading tokens among the first {GREEDY_LEN} greedy tokens (warm-up loop) "
        "equal to PyTorch fp32's greedy tokens on the same prompt (transformers, project venv).",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores shared with other "
        "work: expect noise of several percent.",
    ]


def check_tools(args: argparse.Namespace) -> None:
    """Fail early, with the fix, when a tool to compare is missing."""
    venv = args.optimum_executorch_venv
    cli = venv / "bin" / "optimum-cli"
    if not args.skip_optimum and not cli.exists():
        sys.exit(f"{cli} not found: run benchmarks/_optimum_executorch_venv.sh {venv}")
    if not args.skip_edge_export and not args.edge_export.exists():
        sys.exit(f"{args.edge_export} not found: run `make setup` (or pass --edge-export)")


def main(argv: list[str] | None = None) -> int:
    """Prepare the model, export with both tools, time the .pte files, print and save a table."""
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    check_tools(args)
    print("preparing models ...", file=sys.stderr, flush=True)
    model = prepare_models(["smollm2"], args.workdir)["smollm2"]
    ids = prompt_ids(model.hf_dir)
    ref = torch_reference(model.hf_dir, ids, args.workdir)
    skip = [] if args.edge_export_validate else EE_SKIP_FLAGS
    export_load = os.getloadavg()[0]
    rows: list[Row] = []
    if not args.skip_edge_export:
        rows += run_edge_export(model, args, skip)
    if not args.skip_optimum:
        rows += run_optimum(model, args)
    timing_load = os.getloadavg()[0]
    register_runtime_ops()
    threads = set_threads(args.threads)
    measure_runtime(rows, ids, ref, args.repeats)
    notes = footnotes(args, skip, threads)
    notes.append(
        f"1-minute load average when exports started: {export_load:.2f}, "
        f"when timing started: {timing_load:.2f} (each export itself adds ~1)"
    )
    extra = [*program_facts(rows), "", *greedy_section(rows, ref, model.hf_dir)]
    print(render_executorch(rows, GREEDY_LEN, extra, notes))
    goals = executorch_goals(rows, GREEDY_LEN)
    result = {
        "schema": "edge-export/bench-executorch-vs-optimum@1",
        "model": {"key": model.key, "hf_dir": str(model.hf_dir)},
        "prompt_ids": ids,
        "torch_greedy_tokens": ref["greedy_tokens"],
        "threads": threads,
        "edge_export_flags": skip,
        "edge_export_recipes": EE_RECIPE,
        "edge_export_recipe_options": ee_recipe_options(args.embedding_bits),
        "embedding_bits": args.embedding_bits,
        "optimum_commands": {
            r: optimum_command(
                args.optimum_executorch_venv, model.hf_dir, r, Path("OUT"), args.embedding_bits
            )
            for r in ET_RECIPES
        },
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) | {"verdict": g.verdict} for g in goals],
        "footnotes": notes,
    }
    out = args.workdir / "executorch_vs_optimum.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    failed = [f"{r.tool} {r.precision}" for r in rows if r.metrics.get("run_error")]
    if failed:
        print(f"runs failed: {', '.join(failed)} (see the notes above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
