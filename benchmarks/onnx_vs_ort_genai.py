"""edge-export's ONNX decoder vs onnxruntime-genai's model builder, side by side, on SmolLM2-135M.

Per precision (int4: `onnx:int4-weight` vs `builder -p int4`; int8: `onnx:int8-dynamic` vs
`builder -p int8`) it builds both graphs once (cached under --work), then measures in this one
process:
- export wall time (measured subprocess) and size (.onnx + external data);
- decode tok/s in the SAME plain-onnxruntime greedy loop driving both graphs (best of N rounds,
  alternating between the graphs in every round);
- decode tok/s in edge-export's own host session (KVCacheSession over the agent's OnnxModel) for
  our bundle, and in onnxruntime-genai's generator (og.Model on the folder) for both;
- perplexity and next-token agreement on edge-export's built-in passage, vs the fp32 PyTorch
  reference (transformers, the dequantised GGUF) on the same tokens.

Run from the repo root with the project venv:
    .venv/bin/python benchmarks/onnx_vs_ort_genai.py [--work DIR] [--precisions int4,int8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _bench_common import clean_env, find_model_onnx, onnx_size_bytes, run_measured
from _ort_bench import DecoderIO, _greedy_loop, _step_feeds, make_session

MIB = 1024 * 1024
EE_RECIPES = {"int4": "onnx:int4-weight", "int8": "onnx:int8-dynamic"}
GENAI_THREADS_OVERLAY = (
    '{"model": {"decoder": {"session_options": {"intra_op_num_threads": %d, "inter_op_num_threads": 1}}}}'
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edge-export-bench/ort-genai"))
    parser.add_argument("--precisions", default="int4", help="comma list: int4,int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="alternating timed loops (best of N)")
    parser.add_argument(
        "--ppl-tokens",
        type=int,
        default=512,
        help="passage tokens scored (at most; the built-in passage has 349)",
    )
    parser.add_argument("--edge-export", type=Path, default=Path(sys.executable).parent / "edge-export")
    return parser.parse_args(argv)


@dataclass
class Row:
    """One graph of one precision."""

    precision: str
    tool: str  # "edge-export" or "ort-genai builder"
    artifact: str = ""
    export_s: float | None = None
    peak_rss_mib: float | None = None
    size_mib: float | None = None
    plain_tok_s: float | None = None
    session_tok_s: float | None = None  # edge-export KVCacheSession (ours only)
    iobind_tok_s: float | None = None  # KVCacheSession with IO binding (ours only)
    genai_tok_s: float | None = None
    ppl: float | None = None
    agreement: float | None = None
    greedy_match: int | None = None  # leading tokens equal to the plain loop's of the other graph
    notes: list[str] = field(default_factory=list)
    rates: dict[str, list[float]] = field(default_factory=dict)


# ---------------------------------------------------------------- preparation and builds


def gguf_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF from the demo-model package."""
    out = subprocess.run(
        [sys.executable, "-m", "edge_export.demo_models", "smollm2"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


PREP_HF = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from _bench_common import convert_gguf_to_hf
convert_gguf_to_hf(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def prepare_hf(work: Path, gguf: Path) -> Path:
    """fp32 HF folder dequantised from the GGUF (the builder reads HF folders only)."""
    hf = work / "hf"
    if not (hf / "config.json").exists():
        print("dequantising the GGUF into an HF folder ...", file=sys.stderr, flush=True)
        measured = run_measured(
            [sys.executable, "-c", PREP_HF, str(gguf), str(hf), str(Path(__file__).parent)],
            work / "hf.log",
            clean_env(),
        )
        if measured.returncode != 0:
            sys.exit(f"HF folder preparation failed, see {measured.log}")
    return hf


def build(row: Row, cmd: list[str], out: Path, work: Path) -> Path:
    """Run `cmd` once (measured) unless OUT/build.json says it already ran; returns the .onnx."""
    record = out / "build.json"
    if not record.exists():
        print(f"building {row.tool} {row.precision} ...", file=sys.stderr, flush=True)
        measured = run_measured(cmd, work / f"{out.name}.log", clean_env(), timeout_s=3600)
        if measured.returncode != 0:
            raise RuntimeError(f"exit {measured.returncode}, see {measured.log}")
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps(
                {"cmd": cmd, "wall_s": measured.wall_s, "peak_rss_mib": measured.peak_rss_mib}, indent=2
            )
        )
    info = json.loads(record.read_text())
    row.export_s, row.peak_rss_mib = info["wall_s"], info.get("peak_rss_mib")
    if info.get("note"):
        row.notes.append(f"export: {info['note']}")
    model = next(out.rglob("model.onnx"), None) or find_model_onnx(out)
    row.artifact = str(model)
    row.size_mib = onnx_size_bytes(model.parent) / MIB
    return model


def build_edge_export(precision: str, gguf: Path, work: Path, exe: Path) -> Row:
    """`edge-export export GGUF --recipe onnx:... --no-latency` (validation gates included)."""
    row = Row(precision, "edge-export")
    out = work / f"ee-{precision}"
    cmd = [
        str(exe),
        "export",
        str(gguf),
        "--recipe",
        EE_RECIPES[precision],
        "--out",
        str(out),
        "--no-latency",
    ]
    build(row, cmd, out, work)
    return row


def build_genai(precision: str, hf: Path, work: Path) -> Row:
    """`python -m onnxruntime_genai.models.builder -i HF -o OUT -p P -e cpu`."""
    row = Row(precision, "ort-genai builder")
    out = work / f"genai-{precision}"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
    cmd += ["-p", precision, "-e", "cpu", "-c", str(work / f"genai-cache-{precision}")]
    build(row, cmd, out, work)
    return row


# ---------------------------------------------------------------- reference and accuracy


def passage_ids(hf: Path, count: int) -> list[int]:
    """The first `count` tokens of edge-export's built-in perplexity passage."""
    from transformers import AutoTokenizer

    from edge_export.exporter.textdata import builtin_text

    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok(builtin_text().passage)["input_ids"]
    return ids[:count]


def torch_reference(hf: Path, ids: list[int]) -> np.ndarray:
    """fp32 PyTorch logits [n, vocab] of the passage."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    del model
    return logits


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean NLL) of ids[1:] given logits[:-1]."""
    x = logits[:-1].astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    log_probs = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return float(np.exp(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean()))


def onnx_logits(session: ort.InferenceSession, io: DecoderIO, ids: list[int], kv_shape: tuple) -> np.ndarray:
    """Logits [n, vocab] of one full forward pass from an empty cache."""
    empty = np.zeros((1, kv_shape[0], 0, kv_shape[1]), dtype=io.kv_dtype)
    past = {name: empty for name in io.past_inputs.values()}
    return session.run(["logits"], _step_feeds(io, ids, 0, past))[0][0].astype(np.float32)


# ---------------------------------------------------------------- decode loops


def plain_loop(
    session: ort.InferenceSession, io: DecoderIO, prompt: list[int], steps: int, kv_shape: tuple
) -> tuple[list[int], float]:
    """The same greedy loop for every graph (_ort_bench's, shared with onnx_vs_optimum.py)."""
    ref = {"prompt_ids": prompt, "num_kv_heads": kv_shape[0], "head_dim": kv_shape[1]}
    return _greedy_loop(session, io, ref, steps)


def session_loop(session: Any, prompt: list[int], steps: int) -> tuple[list[int], float]:
    """edge-export's host LM session (KVCacheSession over the agent's OnnxModel)."""
    session.reset()
    logits = session.step(np.array(prompt))
    tokens = [int(np.argmax(logits[0, -1]))]
    start = time.perf_counter()
    for _ in range(steps):
        logits = session.step(np.array(tokens[-1:]))
        tokens.append(int(np.argmax(logits[0, -1])))
    return tokens, time.perf_counter() - start


def genai_loop(model: Any, prompt: list[int], steps: int) -> tuple[list[int], float]:
    """onnxruntime-genai's generator: append the prompt (prefill), then `steps` timed tokens."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt) + steps + 1
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    generator.generate_next_token()  # the first token comes from the prompt's logits
    start = time.perf_counter()
    for _ in range(steps):
        generator.generate_next_token()
    seconds = time.perf_counter() - start
    tokens = [int(t) for t in generator.get_sequence(0)[len(prompt) :]]
    return tokens, seconds


def genai_model(folder: Path, threads: int) -> Any:
    """og.Model on the folder as it is, with the thread count overlaid on its genai_config."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(GENAI_THREADS_OVERLAY % threads)
    return og.Model(config)


def kv_cache_session(model_path: Path, threads: int, io_binding: bool) -> Any:
    """KVCacheSession over the agent's OnnxModel, with the io spec of the bundle's manifest."""
    from edge_export.devices.agent.lm import session_for
    from edge_export.devices.agent.onnx_model import OnnxModel

    manifest = json.loads((model_path.parent / "manifest.json").read_text())
    try:
        model = OnnxModel(model_path, threads=threads, io_binding=io_binding)
    except TypeError:  # an OnnxModel without the io_binding switch
        if io_binding:
            raise RuntimeError("this OnnxModel has no IO binding") from None
        model = OnnxModel(model_path, threads=threads)
    return session_for(model, manifest["io"])


def leading_match(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def measure(
    rows: list[Row], args: argparse.Namespace, ids: list[int], ref_logits: np.ndarray, kv: tuple
) -> None:
    """Accuracy, then alternating timed loops for every (row, runtime) of one precision."""
    prompt = ids[: args.prompt_len]
    loops: list[tuple[Row, str, Any]] = []
    plain_tokens: dict[str, list[int]] = {}
    for row in rows:
        path = Path(row.artifact)
        session = make_session(path, args.threads)
        io = DecoderIO.from_session(session)
        logits = onnx_logits(session, io, ids, kv)
        row.ppl = perplexity(logits, ids)
        row.agreement = float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1)))
        plain_tokens[row.tool], _ = plain_loop(session, io, prompt, args.new_tokens, kv)  # warm-up
        loops.append((row, "plain", lambda s=session, i=io: plain_loop(s, i, prompt, args.new_tokens, kv)))
        if row.tool == "edge-export":
            kvs = kv_cache_session(path, args.threads, io_binding=False)
            loops.append((row, "session", lambda s=kvs: session_loop(s, prompt, args.new_tokens)))
            try:
                kvb = kv_cache_session(path, args.threads, io_binding=True)
                loops.append((row, "iobind", lambda s=kvb: session_loop(s, prompt, args.new_tokens)))
            except Exception as exc:  # no IO binding in this checkout
                row.notes.append(f"IO binding: {exc}")
        try:
            model = genai_model(path.parent, args.threads)
            loops.append((row, "genai", lambda m=model: genai_loop(m, prompt, args.new_tokens)))
        except Exception as exc:
            row.notes.append(f"onnxruntime-genai: {type(exc).__name__}: {exc}"[:300])
    for row, kind, loop in loops:  # warm-up and token checks against the plain loop
        tokens, _ = loop()
        same = leading_match(tokens, plain_tokens[row.tool])
        if kind != "plain" and same < len(tokens):
            row.notes.append(f"{kind}: {same}/{len(tokens)} leading tokens equal the plain loop's")
    if len(rows) == 2:
        a, b = (plain_tokens[r.tool] for r in rows)
        for row in rows:
            row.greedy_match = leading_match(a, b)
    for _ in range(args.rounds):
        for row, kind, loop in loops:
            _, seconds = loop()
            row.rates.setdefault(kind, []).append(args.new_tokens / seconds)
    for row in rows:
        best = {k: max(v) for k, v in row.rates.items()}
        row.plain_tok_s = best.get("plain")
        row.session_tok_s = best.get("session")
        row.iobind_tok_s = best.get("iobind")
        row.genai_tok_s = best.get("genai")


# ---------------------------------------------------------------- table


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(rows: list[Row], ref_ppl: float, notes: list[str]) -> str:
    """One table per precision, the two tools side by side, ratios edge-export / builder."""
    lines = []
    for precision in dict.fromkeys(r.precision for r in rows):
        group = {r.tool: r for r in rows if r.precision == precision}
        ee, og_ = group.get("edge-export"), group.get("ort-genai builder")
        lines.append(
            f"== SmolLM2-135M {precision}: edge-export {EE_RECIPES[precision]} vs builder -p {precision} =="
        )
        lines.append(f"{'':44} {'edge-export':>12} {'builder':>12} {'ee/builder':>10}")

        def line(label: str, a: float | None, b: float | None, spec: str, ratio: bool = True) -> None:
            r = a / b if ratio and a is not None and b else None
            lines.append(f"{label:44} {_fmt(a, spec):>12} {_fmt(b, spec):>12} {_fmt(r, '.2f'):>10}")

        def get(row: Row | None, attr: str) -> float | None:
            return None if row is None else getattr(row, attr)

        line("export wall s", get(ee, "export_s"), get(og_, "export_s"), ".0f")
        line("export peak RSS MiB", get(ee, "peak_rss_mib"), get(og_, "peak_rss_mib"), ".0f")
        line("size MiB (.onnx + data)", get(ee, "size_mib"), get(og_, "size_mib"), ".1f")
        line("decode tok/s, same plain-ORT loop", get(ee, "plain_tok_s"), get(og_, "plain_tok_s"), ".1f")
        line("decode tok/s, ORT GenAI generator", get(ee, "genai_tok_s"), get(og_, "genai_tok_s"), ".1f")
        line("decode tok/s, edge-export session", get(ee, "session_tok_s"), get(og_, "plain_tok_s"), ".1f")
        if ee is not None and ee.iobind_tok_s is not None:
            line(
                "decode tok/s, edge-export session, IO binding",
                ee.iobind_tok_s,
                get(og_, "plain_tok_s"),
                ".1f",
            )
        ppl_a, ppl_b = get(ee, "ppl"), get(og_, "ppl")
        line("perplexity", ppl_a, ppl_b, ".3f", ratio=False)
        delta = [None if p is None else 100 * (p / ref_ppl - 1) for p in (ppl_a, ppl_b)]
        line("perplexity delta % vs fp32 torch", delta[0], delta[1], "+.1f", ratio=False)
        line(
            "next-token agreement vs fp32 torch",
            get(ee, "agreement"),
            get(og_, "agreement"),
            ".3f",
            ratio=False,
        )
        for row in group.values():
            for note in row.notes:
                lines.append(f"  note ({row.tool}): {note}")
        lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) both graphs per precision, measure them in this process, print a table."""
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    gguf = gguf_path()
    hf = prepare_hf(work, gguf)
    rows: list[Row] = []
    for precision in precisions:
        for make in (
            lambda p=precision: build_edge_export(p, gguf, work, args.edge_export),
            lambda p=precision: build_genai(p, hf, work),
        ):
            try:
                rows.append(make())
            except Exception as exc:
                print(f"build failed: {exc}", file=sys.stderr)
    config = json.loads((hf / "config.json").read_text())
    kv = (
        config["num_key_value_heads"],
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
    )
    ids = passage_ids(hf, args.ppl_tokens)
    ref_logits = torch_reference(hf, ids)
    ref_ppl = perplexity(ref_logits, ids)
    load_start = os.getloadavg()
    for precision in precisions:
        print(f"measuring {precision} ...", file=sys.stderr, flush=True)
        measure([r for r in rows if r.precision == precision], args, ids, ref_logits, kv)
    load_end = os.getloadavg()
    import onnxruntime_genai as og

    notes = [
        f"fp32 PyTorch reference perplexity {ref_ppl:.3f} on the first {len(ids)} tokens of "
        "edge-export's built-in passage (same tokens for every graph, one full forward pass); "
        "agreement = share of positions whose argmax equals the reference's.",
        f"decode: prompt = first {args.prompt_len} passage tokens, {args.new_tokens} greedy new tokens "
        f"timed after the prefill, best of {args.rounds} loops alternating over every "
        f"(graph, runtime); onnxruntime {ort.__version__}, onnxruntime-genai {og.__version__}, "
        f"intra-op threads {args.threads} (genai_config overlaid with the same).",
        "plain-ORT loop: numpy feeds, past = previous present (benchmarks/_ort_bench.py names); "
        "session: edge-export's KVCacheSession over devices.agent.OnnxModel (casts, float32 copies); "
        "the session rows' ratio is vs the builder's graph in the plain loop.",
        "export: edge-export includes its validation gates (--no-latency); the builder has no "
        "validation step. Built once and cached in --work (build.json holds the measured time).",
        f"machine: {platform.machine()}, {os.cpu_count()} cores shared with other work; 1/5/15-min "
        f"load average at start of timing {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
        f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}.",
    ]
    print(render(rows, ref_ppl, notes))
    out = work / "onnx_vs_ort_genai.json"
    out.write_text(
        json.dumps({"ref_ppl": ref_ppl, "rows": [asdict(r) for r in rows], "notes": notes}, indent=2)
    )
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
