"""edge-export's TFLite target vs calling litert-torch + ai-edge-quantizer directly, in one run.

Per model (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) and precision (fp32, int8 = int8-dynamic,
int4 = int4-block): both tools export the same HF folder as a measured subprocess (wall time,
peak RSS); the .tflite files are then sized and timed by one shared code path in this process:
MiniLM p50 of signature seq_128 (batch 1, ai-edge-litert Interpreter), SmolLM2 time to first
token (64-token prompt through the prefill signatures) and decode tokens/s (edge-export's
CompiledModel session for both files). edge-export runs with --no-validate --no-latency, one
recipe per process, so both sides convert once and quantize once.

    .venv/bin/python benchmarks/tflite_vs_litert.py [--models minilm,smollm2] [--precisions fp32,int8,int4]

Goals: edge-export wall time <= 1.10x the bare call, latency and decode speed identical or
better, int4 file <= 0.3x fp32.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _bench_common import prepare_models, run_measured

HERE = Path(__file__).resolve().parent
RECIPE = {"fp32": "tflite:fp32", "int8": "tflite:int8-dynamic", "int4": "tflite:int4-block"}
PROMPT_TOKENS, DECODE_STEPS = 64, 32


def export_edge(hf_dir: Path, precision: str, out: Path, log: Path) -> tuple[Any, Path]:
    """edge-export CLI, one recipe; returns (Measured, model.tflite)."""
    cli = Path(sys.executable).parent / "edge-export"
    cmd = [str(cli), "export", str(hf_dir), "--recipe", RECIPE[precision], "--out", str(out), "--force",
           "--no-validate", "--no-latency"]  # fmt: skip
    return run_measured(cmd, log), out / f"tflite-{RECIPE[precision].split(':')[1]}" / "model.tflite"


def export_bare(key: str, hf_dir: Path, precision: str, out: Path, log: Path) -> tuple[Any, Path]:
    """benchmarks/_litert_bare.py as a measured subprocess."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "_litert_bare.py"), key, str(hf_dir), precision, str(out)]
    return run_measured(cmd, log), out


def encoder_p50(path: Path, repeats: int) -> float:
    """p50 ms of signature seq_128 on fixed token ids."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("seq_128")
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int32),
             "attention_mask": np.ones((1, 128), np.int32), "token_type_ids": np.zeros((1, 128), np.int32)}  # fmt: skip
    for _ in range(5):
        runner(**feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(**feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def decoder_speed(path: Path, repeats: int) -> dict[str, Any]:
    """TTFT (prefill path) and decode tokens/s with edge-export's session, plus the greedy tokens."""
    sys.path.insert(0, str(HERE.parent))
    from edge_export.devices.agent.lm import greedy_generate
    from edge_export.devices.agent.tflite_model import ExplicitCacheSession

    session = ExplicitCacheSession(path, [8, 64], 1024)
    prompt = [int(t) for t in np.random.default_rng(1).integers(100, 40000, PROMPT_TOKENS)]
    ttft, steps, tokens = [], [], []
    for round_index in range(repeats + 1):
        stamps: list[float] = []
        start = time.perf_counter()
        tokens = greedy_generate(
            session, prompt, DECODE_STEPS, None, lambda _, marks=stamps: marks.append(time.perf_counter())
        )
        if round_index:  # the first round is warm-up (XNNPACK packs weights on first use)
            ttft.append((stamps[0] - start) * 1000)
            steps += [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "ttft_ms": statistics.median(ttft),
        "decode_tok_s": 1.0 / statistics.median(steps),
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    """Export with both tools, time every file, print the table, write results.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edge-export-bench"))
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    models = prepare_models(args.models.split(","), args.workdir)
    runs = args.workdir / "runs" / "tflite"
    rows: list[dict[str, Any]] = []
    failed = False
    for key, model in models.items():
        for precision in args.precisions.split(","):
            pair = {}
            for tool in ("edge-export", "litert-torch"):
                log = runs / key / f"{tool}-{precision}.log"
                if tool == "edge-export":
                    measured, path = export_edge(model.hf_dir, precision, runs / key / f"ee-{precision}", log)
                else:
                    measured, path = export_bare(key, model.hf_dir, precision, runs / key / f"bare-{precision}.tflite", log)  # fmt: skip
                row = {"model": key, "precision": precision, "tool": tool, "wall_s": round(measured.wall_s, 1),
                       "peak_rss_mib": round(measured.peak_rss_mib), "ok": measured.returncode == 0}  # fmt: skip
                if row["ok"]:
                    row["size_mb"] = round(path.stat().st_size / 1e6, 1)
                    if model.kind == "encoder":
                        row["p50_ms"] = round(encoder_p50(path, args.repeats), 2)
                    else:
                        row.update(decoder_speed(path, max(2, args.repeats // 10)))
                failed |= not row["ok"]
                pair[tool] = row
                rows.append(row)
            ee, bare = pair["edge-export"], pair["litert-torch"]
            if ee["ok"] and bare["ok"]:
                ee["wall_ratio"] = round(ee["wall_s"] / bare["wall_s"], 2)
                if "tokens" in ee:
                    ee["same_greedy_tokens"] = ee["tokens"] == bare["tokens"]
    (runs / "results.json").write_text(json.dumps(rows, indent=1))
    print(
        "| model | precision | tool | wall s (ratio, goal <= 1.10) | peak RSS MiB | size MB | p50 ms / TTFT ms | decode tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        speed = r.get("p50_ms", round(r.get("ttft_ms", 0), 1)) if r["ok"] else "-"
        ratio = f" ({r['wall_ratio']}x)" if "wall_ratio" in r else ""
        tok_s = round(r["decode_tok_s"], 1) if "decode_tok_s" in r else "-"
        print(f"| {r['model']} | {r['precision']} | {r['tool']} | {r['wall_s']}{ratio} | {r['peak_rss_mib']} | "
              f"{r.get('size_mb', '-')} | {speed} | {tok_s} |")  # fmt: skip
    for key in models:
        sizes = {
            r["precision"]: r.get("size_mb") for r in rows if r["model"] == key and r["tool"] == "edge-export"
        }
        if sizes.get("fp32") and sizes.get("int4"):
            print(f"{key}: int4 / fp32 size = {sizes['int4'] / sizes['fp32']:.2f} (goal <= 0.30)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
