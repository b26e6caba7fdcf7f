"""TEST DOUBLES for the native benchmark binaries, for devices that run them instead of Python.

Each is a script installed into the adb stand-in's bin folder. It accepts the subset of the real
tool's flags that edge-export passes, really runs the model with this machine's runtime on the
input files it is given (onnxruntime, ai-edge-litert, executorch), and prints its timings in the
real tool's format (LiteRT benchmark_model's INFO lines; onnxruntime_perf_test's summary;
executor_runner's per-iteration log lines; like the real one it refuses input files of the wrong
size). They prove the plumbing and the parsers, not the real binaries: those need a phone.
"""

from __future__ import annotations

import sys
from pathlib import Path

PERF_TEST = r"""
import glob, os, resource, sys, time
import numpy as np, onnxruntime as ort
from onnx import TensorProto, numpy_helper
args = sys.argv[1:]
runs = int(args[args.index("-r") + 1]); model = args[-1]
assert args[args.index("-m") + 1] == "times" and "-s" in args
start = time.perf_counter()
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
created = time.perf_counter() - start
feeds = {}
for path in sorted(glob.glob(os.path.join(os.path.dirname(model), "test_data_set_0", "input_*.pb"))):
    proto = TensorProto(); proto.ParseFromString(open(path, "rb").read())
    feeds[proto.name] = numpy_helper.to_array(proto)
first = time.perf_counter(); session.run(None, feeds); first = time.perf_counter() - first
times = []
for _ in range(runs):
    t = time.perf_counter(); session.run(None, feeds); times.append(time.perf_counter() - t)
ordered = sorted(times)
print(f"Session creation time cost: {created:g} s")
print(f"First inference time cost: {int(first * 1000)} ms")
print(f"Total inference time cost: {sum(times):g} s")
print(f"Total inference requests: {runs}")
print(f"Average inference time cost total: {1000 * sum(times) / runs:f} ms")
print(f"Peak working set size: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024} bytes")
for label, q in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999)):
    print(f"{label} Latency: {ordered[int(runs * q)]:g} s")
print(f"Min Latency: {ordered[0]:g} s")
print(f"Max Latency: {ordered[-1]:g} s")
"""

BENCHMARK_MODEL = r"""
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
start = time.perf_counter()
interpreter = Interpreter(model_path=flags["graph"])
runner = interpreter.get_signature_runner(flags["signature_to_run_for"])
details = runner.get_input_details()
init = time.perf_counter() - start
feeds = {}
for item in flags["input_layer_value_files"].split(","):
    name, path = item.split(":", 1)
    feeds[name] = np.fromfile(path, dtype=details[name]["dtype"]).reshape(details[name]["shape"])
def timed(n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); runner(**feeds); out.append(int((time.perf_counter() - t) * 1e6))
    return out
def stat(v):
    a = np.asarray(v)
    return (f"count={len(v)} first={v[0]} curr={v[-1]} min={a.min()} max={a.max()} avg={a.mean():g} "
            f"std={int(a.std())} p5={int(np.percentile(a, 5))} median={int(np.median(a))} p95={int(np.percentile(a, 95))}")
warm = timed(int(flags["warmup_runs"]))
print("INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.")
print("INFO: " + stat(warm) + "\n")
runs = timed(int(flags["num_runs"]))
print("INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.")
print("INFO: " + stat(runs) + "\n")
print(f"INFO: Inference timings in us: Init: {int(init * 1e6)}, First inference: {warm[0]}, "
      f"Warmup (avg): {np.mean(warm):g}, Inference (avg): {np.mean(runs):g}")
print("INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.")
print("INFO: Memory footprint delta from the start of the tool (MB): init=12.5 overall=20.25")
print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 61.2")
"""

EXECUTOR_RUNNER = r"""
import sys, time
import numpy as np, torch
from executorch.runtime import Runtime
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
program = Runtime.get().load_program(flags["model_path"])
method = program.load_method("forward")
meta = program.metadata("forward")
dtypes = {3: np.int32, 4: np.int64, 6: np.float32}
inputs = []
for i, path in enumerate(flags["inputs"].split(",")):
    tensor = meta.input_tensor_meta(i)
    data = np.fromfile(path, dtype=dtypes[int(tensor.dtype())])
    if data.size * data.itemsize != tensor.nbytes():
        print(f"E 00:00:00.000100 executorch:inputs.cpp:177] input size ({data.nbytes}) and tensor size "
              f"({tensor.nbytes()}) mismatch!", file=sys.stderr)
        sys.exit(1)
    inputs.append(torch.from_numpy(data.reshape(list(tensor.sizes()))))
runs, total = int(flags["num_executions"]), 0.0
for i in range(runs):
    start = time.perf_counter(); method.execute(inputs); took = (time.perf_counter() - start) * 1000; total += took
    print(f"I 00:00:01.{i:06d} executorch:executor_runner.cpp:342] Iteration {i + 1} of {runs}: {took:f} ms", file=sys.stderr)
print(f"I 00:00:02.000000 executorch:executor_runner.cpp:360] Model executed successfully {runs} time(s) in {total:f} ms.", file=sys.stderr)
"""


def install(bin_dir: Path, name: str, body: str) -> Path:
    """Write one stand-in tool as an executable script run by this machine's Python."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path
