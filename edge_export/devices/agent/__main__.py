"""Agent command line: `python -m edge_export.devices.agent run --bundle B --inputs I --out O`.

Writes O/outputs.npz and O/timings.json. Exit 0 on success; 3 when the bundle's runtime is
missing (timings.json then carries the error); 1 on any other failure (also in timings.json).
`info [--work-dir W]` prints the device's facts as JSON; `verify --root R --hashes H` checks pushed
files against their sha256 (exit 0 when all match, 5 otherwise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .facts import device_info, print_json, verify
from .lm import greedy_generate, session_for
from .measure import now_ms, peak_rss_mb
from .runtimes import MissingRuntime, load_bundle


def _graph_mode(model: Any, feeds: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.warmup):
        outputs = model.run(feeds)
    latencies = []
    for _ in range(args.iterations):
        start = now_ms()
        outputs = model.run(feeds)
        latencies.append(now_ms() - start)
    np.savez(args.out / "outputs.npz", **outputs)
    return {"latencies_ms": latencies}


def _generate_mode(
    model: Any, manifest: dict[str, Any], feeds: dict[str, np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    session = session_for(model, manifest["io"])
    prompt = [int(t) for t in feeds["prompt_ids"].reshape(-1)]
    ttft, decode_ms, tokens = [], [], []
    for round_index in range(args.warmup + args.iterations):
        stamps: list[float] = []
        start = now_ms()
        tokens = greedy_generate(
            session, prompt, args.decode_tokens, None, lambda _, marks=stamps: marks.append(now_ms())
        )
        if round_index < args.warmup:
            continue
        ttft.append(stamps[0] - start)
        decode_ms += [b - a for a, b in itertools.pairwise(stamps)]
    np.savez(args.out / "outputs.npz", generated_ids=np.array(tokens, dtype=np.int64))
    return {"ttft_ms": ttft, "decode_ms": decode_ms, "latencies_ms": ttft}


def _time_limit(seconds: float) -> None:
    """Stop the run by itself after `seconds` (a host that lost the connection cannot stop it)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        return

    def expired(*_: Any) -> None:
        raise TimeoutError(f"the run exceeded its time limit of {seconds:.0f}s")

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def run(args: argparse.Namespace) -> int:
    """Load, feed, time; always leaves a timings.json behind."""
    args.out.mkdir(parents=True, exist_ok=True)
    _time_limit(args.time_limit)
    report: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine()}
    code = 0
    try:
        start = now_ms()
        model, manifest, version = load_bundle(args.bundle, args.threads)
        report.update(load_ms=now_ms() - start, runtime=version)
        with np.load(args.inputs) as data:
            feeds = {k: data[k] for k in data.files}
        if args.mode == "generate":
            report.update(_generate_mode(model, manifest, feeds, args))
        else:
            report.update(_graph_mode(model, feeds, args))
        providers, plan = model.providers(), model.compute_plan()  # every runtime's model answers both
        if providers is not None:
            report["providers"] = providers
        if plan is not None:
            report["compute"] = plan
    except MissingRuntime as exc:
        report["error"] = {"type": type(exc).__name__, "message": str(exc)}
        code = 3
    except Exception as exc:  # the host reads the error from timings.json
        report["error"] = {"type": type(exc).__name__, "message": str(exc).splitlines()[0][:500]}
        code = 1
    if hasattr(signal, "SIGALRM"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    report["peak_rss_mb"] = peak_rss_mb()
    (args.out / "timings.json").write_text(json.dumps(report))
    return code


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="edge-export-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("run")
    cmd.add_argument("--bundle", type=Path, required=True)
    cmd.add_argument("--inputs", type=Path, required=True)
    cmd.add_argument("--out", type=Path, required=True)
    cmd.add_argument("--mode", choices=("graph", "generate"), default="graph")
    cmd.add_argument("--warmup", type=int, default=3)
    cmd.add_argument("--iterations", type=int, default=20)
    cmd.add_argument("--decode-tokens", type=int, default=32)
    cmd.add_argument("--threads", type=int, default=None)
    cmd.add_argument("--time-limit", type=float, default=0.0, help="seconds; 0 = none")
    info = sub.add_parser("info")
    info.add_argument("--work-dir", type=Path, default=None)
    check = sub.add_parser("verify")
    check.add_argument("--root", type=Path, required=True)
    check.add_argument("--hashes", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "info":
        print_json(device_info(args.work_dir))
        return 0
    if args.command == "verify":
        result = verify(args.root, json.loads(args.hashes.read_text()))
        print_json(result)
        return 0 if result["ok"] else 5
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
