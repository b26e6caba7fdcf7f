"""edge-export's Core ML target vs the plain coremltools recipe a user writes, side by side.

Both sides convert the same HF folders (all-MiniLM-L6-v2; SmolLM2-135M-Instruct dequantised from
its GGUF file) with the same recipe: fp16, int8-weight, int4-block (and palettize-4bit on request).
Each conversion runs as a measured subprocess (wall time, peak RSS), one per (tool, model, recipe):
edge-export's CLI on one side, benchmarks/_coreml_plain.py (torch.export + ct.convert +
ct.optimize.coreml, the way a user would write it) on the other. Core ML predictions need macOS,
so nothing is run here: the table compares conversion cost and package size.

Run from the repo root with the project venv (see benchmarks/README.md):
    .venv/bin/python benchmarks/coreml_convert.py [--models minilm,smollm2] [--recipes fp16,int8-weight,int4-block]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from _bench_common import (
    MIB,
    PreparedModel,
    Row,
    add_model_recipe_args,
    add_tool_args,
    clean_env,
    prepare_models,
    run_alternating,
    run_measured,
)
from _bench_table import EE, Goal, _goal, _pair, _value, find, markdown_grid
from _coreml_plain import BLOCK_SIZE, GROUP_SIZE, MAX_SEQ_LEN, THRESHOLD
from _coreml_plain import RECIPES as ALL_RECIPES
from tflite_vs_litert import cpu_model

HERE = Path(__file__).resolve().parent
MODELS = ("minilm", "smollm2")
DEFAULT_RECIPES = ("fp16", "int8-weight", "int4-block")  # palettize-4bit: k-means is slow, ask for it
PLAIN = "coremltools"
EE_SKIP_FLAGS = ["--no-validate", "--no-latency"]
WALL_LIMIT = 1.10  # edge-export's conversion wall time vs the plain coremltools recipe
SIZE_LIMIT = 0.3  # int4-block package vs the fp16 package
TIMEOUT_S = 1800
METRICS = [  # (field, label, format, scale)
    ("wall_s", "export s", ".1f", 1.0),
    ("peak_rss_mib", "peak RSS MiB", ".0f", 1.0),
    ("size_bytes", ".mlpackage MiB", ".2f", MIB),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_recipe_args(parser, MODELS, ALL_RECIPES, DEFAULT_RECIPES)
    add_tool_args(parser, None, None, anchor="plain", anchor_label="the plain coremltools recipe")
    return parser.parse_args(argv)


def runs_dir(workdir: Path, tool: str, model: str) -> Path:
    """Where one tool's packages and logs of one model go."""
    return workdir / "runs" / "coreml" / tool / model


def package_size(package: Path) -> int:
    """Bytes of every file inside the .mlpackage folder."""
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def edge_export_command(
    exe: Path, model: PreparedModel, recipe: str, out: Path, skip: list[str]
) -> list[str]:
    """The `edge-export export` call for one recipe."""
    cmd = [str(exe), "export", str(model.hf_dir), "--recipe", f"coreml:{recipe}", "--out", str(out)]
    return [*cmd, "--force", *skip, "--json"]


def plain_command(model: PreparedModel, recipe: str, out: Path) -> list[str]:
    """The plain coremltools script for one recipe (this venv's Python)."""
    return [sys.executable, str(HERE / "_coreml_plain.py"), model.key, str(model.hf_dir), recipe, str(out)]


def export_edge_export(model: PreparedModel, recipe: str, args: argparse.Namespace, skip: list[str]) -> Row:
    """One `edge-export export --recipe coreml:R` process; the row reads OUT/report.json."""
    base = runs_dir(args.workdir, EE, model.key)
    out = base / recipe
    shutil.rmtree(out, ignore_errors=True)
    cmd = edge_export_command(args.edge_export, model, recipe, out, skip)
    print(f"edge-export: converting {model.key} {recipe} ...", file=sys.stderr, flush=True)
    run = run_measured(cmd, base / f"{recipe}.log", clean_env(), timeout_s=TIMEOUT_S)
    row = Row(model.key, EE, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    recipe_id = row.metrics["recipe"] = f"coreml:{recipe}"
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
    return _with_package(row, out / result["artifact"], run.log)  # report paths are relative to OUT


def export_plain(model: PreparedModel, recipe: str, args: argparse.Namespace) -> Row:
    """One benchmarks/_coreml_plain.py process; it leaves OUT/model.mlpackage."""
    base = runs_dir(args.workdir, PLAIN, model.key)
    out = base / recipe
    shutil.rmtree(out, ignore_errors=True)
    print(f"coremltools: converting {model.key} {recipe} ...", file=sys.stderr, flush=True)
    run = run_measured(plain_command(model, recipe, out), base / f"{recipe}.log", clean_env(), TIMEOUT_S)
    row = Row(model.key, PLAIN, recipe, wall_s=run.wall_s, peak_rss_mib=run.peak_rss_mib)
    if run.returncode != 0:
        row.status = "error"
        row.notes.append(f"exit {run.returncode}, see {run.log}")
        return row
    return _with_package(row, out / "model.mlpackage", run.log)


def skipped_ops(log: Path) -> list[str]:
    """coremltools' warnings about weights it left uncompressed ("... Skipped this op."), from a log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sorted({line.strip() for line in text.splitlines() if line.strip().endswith("Skipped this op.")})


def _with_package(row: Row, package: Path, log: Path) -> Row:
    row.notes += [f"coremltools: {warning}" for warning in skipped_ops(log)]
    if not package.is_dir():
        row.status = "error"
        row.notes.append(f"no package {package}")
        return row
    row.artifact, row.size_bytes = str(package), package_size(package)
    return row


def run_exports(args: argparse.Namespace, models: dict[str, PreparedModel], skip: list[str]) -> list[Row]:
    """Every conversion subprocess, one at a time; the tool that goes first alternates per recipe."""
    sides = []
    if not args.skip_edge_export:
        sides.append((EE, lambda model, recipe: export_edge_export(model, recipe, args, skip)))
    if not args.skip_plain:
        sides.append((PLAIN, lambda model, recipe: export_plain(model, recipe, args)))
    return run_alternating(models, args.recipes, sides, ALL_RECIPES)


def coreml_goals(rows: list[Row], models: list[str], recipes: list[str]) -> dict[tuple[str, str, str], Goal]:
    """(model, recipe, field) -> goal: conversion wall ee/plain <= 1.10x per recipe; edge-export's
    int4-block package <= 0.3x its fp16 package."""
    out: dict[tuple[str, str, str], Goal] = {}
    for model in models:
        for recipe in recipes:
            ee, plain = find(rows, model, EE, recipe), find(rows, model, PLAIN, recipe)
            wall = (_value(ee, "wall_s"), _value(plain, "wall_s"))
            out[(model, recipe, "wall_s")] = _goal(
                f"{model} {recipe} export wall: ee/plain", *wall, WALL_LIMIT, True
            )
        if "int4-block" in recipes and "fp16" in recipes:
            q4, fp16 = find(rows, model, EE, "int4-block"), find(rows, model, EE, "fp16")
            size = (_value(q4, "size_bytes"), _value(fp16, "size_bytes"))
            name = f"{model} ee int4-block package / ee fp16 package"
            out[(model, "int4-block", "size_bytes")] = _goal(name, *size, SIZE_LIMIT, True)
    return out


def _goal_cells(goal: Goal | None, field: str) -> list[str]:
    if goal is None:
        return ["", ""]
    text = f"int4/fp16 <= {goal.limit:g}x" if field == "size_bytes" else f"ee/plain <= {goal.limit:g}x"
    shown = (
        goal.verdict if goal.ratio is None or field != "size_bytes" else f"{goal.verdict} ({goal.ratio:.2f}x)"
    )
    return [text, shown]


def coreml_table(
    rows: list[Row], model: str, recipes: list[str], goals: dict[tuple[str, str, str], Goal]
) -> str:
    """One model: a line per (recipe, metric) with both tools, their ratio, the goal and its verdict."""
    lines = [["recipe", "metric", EE, PLAIN, "ee/plain", "goal", "verdict"]]
    for recipe in recipes:
        ee, plain = find(rows, model, EE, recipe), find(rows, model, PLAIN, recipe)
        if ee is None and plain is None:
            continue
        for field, label, fmt, scale in METRICS:
            cells = _pair(ee, plain, field, fmt, scale, ratio=True)
            lines.append([recipe, label, *cells, *_goal_cells(goals.get((model, recipe, field)), field)])
    return markdown_grid(lines)


def size_ratios(rows: list[Row], models: list[str], recipes: list[str]) -> list[str]:
    """Every compressed package's size as a share of the same tool's fp16 package."""
    lines = []
    for model in models:
        for tool in (EE, PLAIN):
            fp16 = _value(find(rows, model, tool, "fp16"), "size_bytes")
            parts = []
            for recipe in recipes:
                size = _value(find(rows, model, tool, recipe), "size_bytes")
                if recipe != "fp16" and size is not None and fp16:
                    parts.append(f"{recipe} {size / fp16:.3f}x")
            if parts:
                lines.append(f"- {model} {tool}: size / fp16 package: {', '.join(parts)}")
    return lines


def versions() -> dict[str, str]:
    """Versions of the libraries both sides convert with."""
    return {name: version(name) for name in ("coremltools", "torch", "transformers")}


def footnotes(skip: list[str], load: tuple[float, float]) -> list[str]:
    """How each column was measured."""
    skipped = " ".join(skip) if skip else "(none: --edge-export-validate)"
    libs = ", ".join(f"{k} {v}" for k, v in versions().items())
    return [
        "export s: wall time of the conversion subprocess, one per (tool, model, recipe), the tool "
        "going first alternating per recipe. edge-export: `edge-export export FOLDER --recipe "
        f"coreml:R --out OUT --force {skipped} --json`, one call per recipe, so each call converts "
        "the fp16 program itself (within one call edge-export converts once and compresses per "
        "recipe); besides converting it saves the fp16 base, reloads it to compress, writes the "
        "bundle with hashes and runs its Neural Engine pre-flight. coremltools: `python "
        "benchmarks/_coreml_plain.py MODEL FOLDER R OUT`, compressing the converted model in memory. "
        f"Libraries: {libs}.",
        "Both sides: torch.export at batch 1 with a dynamic sequence length 1..512, "
        "run_decompositions, ct.convert(convert_to='mlprogram', compute_precision=FLOAT16, "
        "skip_model_load=True: Core ML cannot load a model on Linux), int32 token inputs. Deployment "
        "target iOS17, iOS18 for int4-block / grouped palettes / the stateful LM (edge-export's 'auto'). "
        "The plain side imports `edge_export.targets.coreml.op_fixes` and calls install(): torch-op "
        "registrations (new_ones, diff, bool ops, where.ScalarOther, SymInt arithmetic) that stock "
        "coremltools 9.0 lacks; without them it fails on transformers-5 graphs.",
        "MiniLM: the plain transformers AutoModel in a wrapper returning last_hidden_state and the "
        "normalized mean-pooled sentence_embedding (edge-export's encoder outputs), inputs (1, "
        f"RangeDim(1, {MAX_SEQ_LEN}, default 128)) for input_ids, attention_mask, token_type_ids.",
        "SmolLM2: the plain side uses edge-export's stateful wrapper (`StatefulLM`, `export_decoder` "
        "from edge_export.targets.coreml.decoder): a static KV cache in torch buffers that "
        "coremltools turns into Core ML state, which a user following Apple's stateful-LLM guide "
        f"writes the equivalent of; context {MAX_SEQ_LEN}. Both sides leave the fp32 rotary cos/sin "
        "tables uncompressed. int4-block: edge-export's zero_point 'auto' stores an fp16 zero point "
        "per block on tensors it makes exact (SmolLM2's Q4_1-grid layers) and on the LM head, "
        "coremltools' int4 one elsewhere; the plain side uses the int4 zero point everywhere (the "
        "public API has no other), so its SmolLM2 package is smaller and much less accurate "
        "(host estimate: perplexity +26.7% vs +4.4%).",
        f"Compression (both sides, edge-export's compress.py configs): weight_threshold {THRESHOLD}; "
        "int8-weight = OpLinearQuantizerConfig(linear_symmetric, int8, per_channel); int4-block = "
        f"OpLinearQuantizerConfig(linear, int4, per_block, block_size {BLOCK_SIZE}); "
        f"palettize-4bit = OpPalettizerConfig(kmeans, nbits 4, per_grouped_channel, group_size "
        f"{GROUP_SIZE}, num_kmeans_workers 1); linear_quantize_weights / palettize_weights.",
        "peak RSS: polled every 50 ms with psutil: max of the process tree's summed RSS and its "
        "largest process's VmHWM, and the child's wait4 ru_maxrss when above this process's own VmHWM.",
        ".mlpackage MiB: sum of all files inside the .mlpackage folder (edge-export's bundle also "
        "holds a manifest, report and tokenizer files, not counted).",
        f"goals: export wall ee/plain <= {WALL_LIMIT:g}x (every model and recipe); edge-export's "
        f"int4-block package <= {SIZE_LIMIT:g}x its fp16 package.",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores shared with other "
        "work: expect noise of several percent.",
        f"1-minute load average when the conversions started: {load[0]:.2f}, when they ended: "
        f"{load[1]:.2f} (each conversion itself adds ~1)",
    ]


def render(
    rows: list[Row],
    models: list[str],
    recipes: list[str],
    goals: dict[tuple[str, str, str], Goal],
    notes: list[str],
) -> str:
    """The report as markdown: a table per model, goals, size ratios, notes per row, footnotes."""
    parts = []
    for model in models:
        parts += [f"### {model}", "", coreml_table(rows, model, recipes, goals), ""]
    parts += ["### Goals", ""]
    for goal in goals.values():
        shown = "-" if goal.ratio is None else f"{goal.ratio:.2f}x"
        parts.append(f"- **{goal.verdict}** {goal.name} = {shown} ({goal.detail})")
    ratios = size_ratios(rows, models, recipes)
    if ratios:
        parts += ["", "### Package size vs fp16", "", *ratios]
    row_notes = [f"- {r.tool} {r.model} {r.precision}: {note}" for r in rows for note in r.notes]
    if row_notes:
        parts += ["", "### Notes", "", *row_notes]
    parts += ["", "### Footnotes", "", *(f"{i}. {text}" for i, text in enumerate(notes, 1))]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Prepare the models, convert with both sides, print and save a table."""
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if not args.skip_edge_export and not args.edge_export.exists():
        sys.exit(f"{args.edge_export} not found: run `make setup` (or pass --edge-export)")
    print("preparing models ...", file=sys.stderr, flush=True)
    models = prepare_models(args.models, args.workdir)
    skip = [] if args.edge_export_validate else EE_SKIP_FLAGS
    start_load = os.getloadavg()[0]
    rows = run_exports(args, models, skip)
    end_load = os.getloadavg()[0]
    goals = coreml_goals(rows, args.models, args.recipes)
    notes = footnotes(skip, (start_load, end_load))
    print(render(rows, args.models, args.recipes, goals, notes))
    result = {
        "schema": "edge-export/bench-coreml-convert@1",
        "models": {k: {"kind": m.kind, "hf_dir": str(m.hf_dir)} for k, m in models.items()},
        "recipes": args.recipes,
        "versions": versions(),
        "edge_export_flags": skip,
        "edge_export_recipes": {r: f"coreml:{r}" for r in args.recipes},
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) | {"verdict": g.verdict} for g in goals.values()],
        "footnotes": notes,
    }
    out = args.workdir / "coreml_convert.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}", file=sys.stderr)
    failed = [f"{r.tool} {r.model} {r.precision}" for r in rows if r.status == "error"]
    if failed:
        print(f"failed: {'; '.join(failed)} (the notes in the report say why)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
