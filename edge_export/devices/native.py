"""The runtimes' own benchmark binaries on a device: TFLite/LiteRT `benchmark_model`, ExecuTorch
`executor_runner` and `onnxruntime_perf_test`, for devices without Python (most phones) or to time
the runtime without any Python in the loop.

Each tool is configured per device (`benchmark_tools` in the inventory). The host writes the
latency inputs in the form the tool reads (raw tensor files, or ONNX TensorProto files), builds its
argument list and parses what it prints into the same fields as the agent's timings. The command
lines and output formats follow the tools' sources (LiteRT f674577, ExecuTorch 1.3+, ONNX Runtime
1.2x); the tools return no outputs to gate, so a native run gives latency only.

Only graph runs (encoders, classifiers) go through a tool: an LLM's token loop needs the agent.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TOOL_NAMES = {"tflite": "benchmark_model", "executorch": "executor_runner", "onnx": "onnxruntime_perf_test"}
_NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"


class NativeOutputError(ValueError):
    """The tool's output did not contain the timings it always prints on success."""


@dataclass
class NativePlan:
    """What to upload into the run folder, the links to make there, and the command to run."""

    argv: list[str]
    uploads: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # name in the run folder -> remote target
    parse: Callable[[str, str], dict[str, Any]] = lambda out, err: {}
    shape: tuple[int, int] = (0, 0)  # (batch, sequence) the tool actually runs
    note: str = ""


def plan(
    runtime: str, tool: list[str], bundle: Path, remote_bundle: str, run_dir: str,
    inputs: Mapping[str, np.ndarray], warmup: int, iterations: int, threads: int | None, limit_s: float,
) -> NativePlan:  # fmt: skip
    """The command line and files for one timed run of `bundle` with the device's tool."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [t["name"] for t in manifest["io"]["inputs"]]
    feeds = {n: np.asarray(inputs[n]) for n in names}
    builder = {"tflite": _tflite, "onnx": _onnx, "executorch": _executorch}[runtime]
    return builder(
        tool, bundle, manifest, remote_bundle, run_dir, feeds, warmup, iterations, threads, limit_s
    )


# -- TFLite / LiteRT benchmark_model ---------------------------------------------------------------
def _tflite(
    tool: list[str], bundle: Path, manifest: Mapping[str, Any], remote: str, run_dir: str,
    feeds: dict[str, np.ndarray], warmup: int, iterations: int, threads: int | None, limit_s: float,
) -> NativePlan:  # fmt: skip
    """One signature (the smallest sequence bucket that holds the input), batch 1, real tokens."""
    batch, length = next(iter(feeds.values())).shape
    if batch != 1:
        raise ValueError("benchmark_model runs one sequence at a time: set latency batch_size 1")
    buckets = sorted(v["sequence"] for v in manifest["export"]["signatures"].values() if "sequence" in v)
    fitting = [b for b in buckets if b >= length]
    if not fitting:
        raise ValueError("benchmark_model runs encoder signatures only (an LLM needs the Python agent)")
    bucket = fitting[0]
    dtypes = _tflite_input_dtypes(bundle / manifest["artifact"], f"seq_{bucket}", feeds)
    uploads, files = {}, []
    for name, value in feeds.items():
        padded = np.zeros((1, bucket), dtype=dtypes[name])
        padded[0, :length] = value[0]
        uploads[f"{name}.bin"] = padded.tobytes()
        files.append(f"{name.replace(':', chr(92) + ':')}:{posixpath.join(run_dir, name + '.bin')}")
    argv = [
        *tool, f"--graph={posixpath.join(remote, manifest['artifact'])}", f"--signature_to_run_for=seq_{bucket}",
        f"--input_layer_value_files={','.join(files)}", f"--num_runs={iterations}",
        f"--warmup_runs={warmup}", "--min_secs=0", "--warmup_min_secs=0", f"--max_secs={limit_s:g}",
        "--report_peak_memory_footprint=true",
    ]  # fmt: skip
    if threads:
        argv.append(f"--num_threads={threads}")
    note = f"signature seq_{bucket}" + (f" (input padded from {length})" if bucket != length else "")
    return NativePlan(argv, uploads, parse=parse_benchmark_model, shape=(1, bucket), note=note)


def _tflite_input_dtypes(model: Path, signature: str, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The signature's input dtypes, read with the host's LiteRT interpreter (int64 without it)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return {name: np.int64 for name in feeds}
    details = Interpreter(model_path=str(model)).get_signature_runner(signature).get_input_details()
    return {name: details[name]["dtype"] for name in feeds}


def _stat_fields(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+)=" + _NUMBER, line)}


def parse_benchmark_model(stdout: str, stderr: str) -> dict[str, Any]:
    """`Inference timings in us: ...`, the measured runs' `count=... avg=... std=...` line (the
    last one; the first is the warmup's) and the peak memory line, into milliseconds and MiB."""
    text = stdout + "\n" + stderr
    summary = re.search(
        rf"Inference timings in us: Init: {_NUMBER}, First inference: {_NUMBER}, "
        rf"Warmup \(avg\): {_NUMBER}, Inference \(avg\): {_NUMBER}", text,
    )  # fmt: skip
    stats = [_stat_fields(m.group(0)) for m in re.finditer(r"count=\d+[^\n]*", text)]
    if summary is None or not stats:
        raise NativeOutputError("benchmark_model printed no 'Inference timings in us' summary")
    measured = stats[-1]
    count = int(measured["count"])
    avg_us = measured.get("avg", measured.get("curr", float(summary.group(4))))
    result: dict[str, Any] = {
        "load_ms": float(summary.group(1)) / 1000.0,
        "stats": {
            "iterations": count,
            "mean_ms": avg_us / 1000.0,
            "std_ms": measured.get("std", 0.0) / 1000.0,
            "min_ms": measured.get("min", measured.get("curr", avg_us)) / 1000.0,
            "max_ms": measured.get("max", measured.get("curr", avg_us)) / 1000.0,
        },
    }
    if "median" in measured:
        result["stats"]["p50_ms"] = measured["median"] / 1000.0
    if "p95" in measured:
        result["stats"]["p95_ms"] = measured["p95"] / 1000.0
    peak = re.search(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUMBER}", text)
    rss = re.search(rf"- VmRSS\s*:\s*{_NUMBER} MB", text)
    result["peak_rss_mb"] = float(peak.group(1)) if peak else float(rss.group(1)) if rss else math.nan
    return result


# -- ONNX Runtime onnxruntime_perf_test ------------------------------------------------------------
def _onnx(
    tool: list[str], bundle: Path, manifest: Mapping[str, Any], remote: str, run_dir: str,
    feeds: dict[str, np.ndarray], warmup: int, iterations: int, threads: int | None, limit_s: float,
) -> NativePlan:  # fmt: skip
    """The real inputs as test_data_set_0/input_<i>.pb next to a link to the model (the tool reads
    its inputs from beside the model file); the tool's one fixed warm-up run."""
    from onnx import numpy_helper

    uploads = {
        f"test_data_set_0/input_{i}.pb": numpy_helper.from_array(value, name).SerializeToString()
        for i, (name, value) in enumerate(feeds.items())
    }
    links = {p.name: posixpath.join(remote, p.name) for p in sorted(bundle.iterdir()) if p.is_file()}
    argv = [*tool, "-m", "times", "-r", str(iterations), "-e", "cpu", "-s"]
    if threads:
        argv += ["-x", str(threads)]
    argv.append(posixpath.join(run_dir, manifest["artifact"]))
    batch, length = next(iter(feeds.values())).shape
    note = "onnxruntime_perf_test: one warm-up run (fixed by the tool)" if warmup != 1 else ""
    return NativePlan(argv, uploads, links, parse=parse_perf_test, shape=(batch, length), note=note)


def parse_perf_test(stdout: str, stderr: str) -> dict[str, Any]:
    """Session creation time, the P50/P90/P95/P99 and min/max latencies (printed in seconds), the
    average (ms) and the peak working set (bytes)."""
    text = stdout + "\n" + stderr
    average = re.search(rf"Average inference time cost(?: total)?: {_NUMBER} ms", text)
    requests = re.search(r"Total inference requests: (\d+)", text)
    if average is None or requests is None:
        failed = re.search(r"Run failed:(.*)", text)
        raise NativeOutputError(
            f"onnxruntime_perf_test: {failed.group(1).strip()}" if failed
            else "onnxruntime_perf_test printed no 'Average inference time cost'"
        )  # fmt: skip
    stats: dict[str, Any] = {"iterations": int(requests.group(1)), "mean_ms": float(average.group(1))}
    for label, key in (("Min", "min_ms"), ("Max", "max_ms"), ("P50", "p50_ms"), ("P90", "p90_ms"),
                       ("P95", "p95_ms"), ("P99", "p99_ms")):  # fmt: skip
        found = re.search(rf"{label} Latency: {_NUMBER} s", text)
        if found:
            stats[key] = float(found.group(1)) * 1000.0
    session = re.search(rf"Session creation time cost: {_NUMBER} s", text)
    peak = re.search(r"Peak working set size: (\d+) bytes", text)
    return {
        "load_ms": float(session.group(1)) * 1000.0 if session else math.nan,
        "peak_rss_mb": int(peak.group(1)) / 2**20 if peak else math.nan,
        "stats": stats,
    }


# -- ExecuTorch executor_runner --------------------------------------------------------------------
def _executorch(
    tool: list[str], bundle: Path, manifest: Mapping[str, Any], remote: str, run_dir: str,
    feeds: dict[str, np.ndarray], warmup: int, iterations: int, threads: int | None, limit_s: float,
) -> NativePlan:  # fmt: skip
    """Raw input files at the method's declared (upper-bound) input shape, which is the shape
    executor_runner runs: real tokens first, padding (attention mask 0) after. The tool has no
    warm-up option: it runs warmup + iterations times and the first `warmup` are dropped."""
    shapes = _pte_inputs(bundle / manifest["artifact"], len(feeds))
    uploads, files = {}, []
    for (name, value), (shape, dtype) in zip(feeds.items(), shapes, strict=True):
        if len(shape) != 2 or value.shape[0] > shape[0] or value.shape[1] > shape[1]:
            raise ValueError(f"input {name} {value.shape} does not fit the method's shape {shape}")
        padded = np.zeros(shape, dtype=dtype)
        padded[: value.shape[0], : value.shape[1]] = value
        uploads[f"{name}.bin"] = padded.tobytes()
        files.append(posixpath.join(run_dir, f"{name}.bin"))
    argv = [
        *tool, f"--model_path={posixpath.join(remote, manifest['artifact'])}",
        f"--num_executions={warmup + iterations}", f"--inputs={','.join(files)}",
    ]  # fmt: skip
    if threads:
        argv.append(f"--cpu_threads={threads}")
    batch, length = shapes[0][0]
    note = f"executor_runner runs the method's full input shape {batch}x{length}"

    def parse(stdout: str, stderr: str) -> dict[str, Any]:
        return parse_executor_runner(stdout, stderr, warmup)

    return NativePlan(argv, uploads, parse=parse, shape=(batch, length), note=note)


_SCALAR_TYPES = {3: np.int32, 4: np.int64, 6: np.float32}  # ExecuTorch ScalarType codes


def _pte_inputs(program: Path, count: int) -> list[tuple[tuple[int, ...], Any]]:
    """(shape, numpy dtype) of the forward method's inputs, read with the host's ExecuTorch runtime."""
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(str(program)).metadata("forward")
    found = []
    for i in range(count):
        tensor = meta.input_tensor_meta(i)
        if int(tensor.dtype()) not in _SCALAR_TYPES:
            raise ValueError(
                f"input {i} has ExecuTorch dtype {tensor.dtype()}, which no input file here takes"
            )
        found.append((tuple(int(d) for d in tensor.sizes()), _SCALAR_TYPES[int(tensor.dtype())]))
    return found


def parse_executor_runner(stdout: str, stderr: str, warmup: int = 0) -> dict[str, Any]:
    """Per-iteration times (`Iteration i of n: t ms`, ExecuTorch 1.3+) with the first `warmup`
    dropped; older runners print only the total, which gives the mean."""
    text = stdout + "\n" + stderr
    per_run = [float(t) for t in re.findall(rf"Iteration \d+ of \d+: {_NUMBER} ms", text)]
    if len(per_run) > warmup:
        return {"latencies_ms": per_run[warmup:], "load_ms": math.nan, "peak_rss_mb": math.nan}
    total = re.search(rf"Model executed successfully (\d+) time\(s\) in {_NUMBER} ms", text)
    if total is None:
        failed = re.search(r"(Execution of method \S+ failed[^\n]*|Could not load inputs[^\n]*)", text)
        raise NativeOutputError(
            f"executor_runner: {failed.group(1)}" if failed
            else "executor_runner printed no 'Model executed successfully' line"
        )  # fmt: skip
    runs = int(total.group(1))
    stats = {"iterations": runs, "mean_ms": float(total.group(2)) / max(runs, 1)}
    return {"load_ms": math.nan, "peak_rss_mb": math.nan, "stats": stats}
