"""Parsers of the native benchmark tools' output, on text in the formats their sources print
(LiteRT benchmark_model with and without percentiles, onnxruntime_perf_test old and new averages,
ExecuTorch executor_runner with and without per-iteration lines), and the inventory's checks."""

from __future__ import annotations

import math

import pytest

from edge_export.devices.inventory import parse_inventory
from edge_export.devices.native import (
    NativeOutputError,
    parse_benchmark_model,
    parse_executor_runner,
    parse_perf_test,
)
from edge_export.errors import ConfigError

BENCHMARK_MODEL_OUT = """INFO: STARTING!
INFO: Graph: [/data/local/tmp/edge-export/bundles/x/model.tflite]
INFO: Loaded model /data/local/tmp/edge-export/bundles/x/model.tflite
INFO: The input model file size (MB): 92.6
INFO: Initialized session in 41.2ms.
INFO: Running benchmark for at least 2 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=2 first=21873 curr=17790 min=17790 max=21873 avg=19831.5 std=2041 p5=17790 median=21873 p95=21873

INFO: Running benchmark for at least 20 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=15873 curr=15790 min=15770 max=16901 avg=1.58014e+04 std=250 p5=15774 median=15796 p95=16850

INFO: Inference timings in us: Init: 41200, First inference: 21873, Warmup (avg): 19831.5, Inference (avg): 15801.4
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=98.2 overall=110.5
INFO: Overall peak memory footprint (MB) via periodic monitoring: 121.4
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 118 MB
"""


def test_benchmark_model_uses_the_measured_runs_not_the_warmup() -> None:
    parsed = parse_benchmark_model(BENCHMARK_MODEL_OUT, "")
    stats = parsed["stats"]
    assert stats["iterations"] == 20
    assert stats["mean_ms"] == pytest.approx(15.8014) and stats["p50_ms"] == pytest.approx(15.796)
    assert stats["min_ms"] == pytest.approx(15.77) and stats["max_ms"] == pytest.approx(16.901)
    assert stats["std_ms"] == pytest.approx(0.25) and stats["p95_ms"] == pytest.approx(16.85)
    assert parsed["load_ms"] == pytest.approx(41.2) and parsed["peak_rss_mb"] == pytest.approx(121.4)


def test_benchmark_model_without_percentiles_or_peak_monitoring() -> None:
    """TensorFlow's copy prints plain Stat lines; without the peak flag only VmRSS is there."""
    text = BENCHMARK_MODEL_OUT.replace(" p5=15774 median=15796 p95=16850", "")
    text = "\n".join(line for line in text.splitlines() if "periodic monitoring" not in line)
    parsed = parse_benchmark_model(text, "")
    assert "p50_ms" not in parsed["stats"] and parsed["stats"]["mean_ms"] == pytest.approx(15.8014)
    assert parsed["peak_rss_mb"] == 118.0


def test_benchmark_model_failure_is_named() -> None:
    with pytest.raises(NativeOutputError, match="benchmark_model printed no 'Inference timings in us'"):
        parse_benchmark_model("INFO: STARTING!\n", "ERROR: Benchmarking failed.\n")


PERF_TEST_OUT = """Session creation time cost: 0.41236 s
First inference time cost: 12 ms
Total inference time cost: 0.197924 s
Total inference requests: 20
Average inference time cost total: 9.896200 ms
Total inference run time: 0.198512 s
Number of inferences per second: 100.75
Avg CPU usage: 96 %
Peak working set size: 157392896 bytes
Avg CPU usage:96
Peak working set size:157392896
Runs:20
Min Latency: 0.00912 s
Max Latency: 0.0121 s
P50 Latency: 0.00978 s
P90 Latency: 0.0105 s
P95 Latency: 0.0111 s
P99 Latency: 0.0121 s
P999 Latency: 0.0121 s
"""


def test_perf_test_converts_seconds_and_bytes() -> None:
    parsed = parse_perf_test(PERF_TEST_OUT, "")
    stats = parsed["stats"]
    assert stats["iterations"] == 20 and stats["mean_ms"] == pytest.approx(9.8962)
    assert stats["p50_ms"] == pytest.approx(9.78) and stats["p99_ms"] == pytest.approx(12.1)
    assert stats["min_ms"] == pytest.approx(9.12) and stats["max_ms"] == pytest.approx(12.1)
    assert parsed["load_ms"] == pytest.approx(412.36) and parsed["peak_rss_mb"] == pytest.approx(
        150.1, abs=0.1
    )


def test_perf_test_older_average_line_and_run_failure() -> None:
    old = PERF_TEST_OUT.replace(
        "Average inference time cost total: 9.896200 ms", "Average inference time cost: 9.8962 ms"
    )
    assert parse_perf_test(old, "")["stats"]["mean_ms"] == pytest.approx(9.8962)
    with pytest.raises(NativeOutputError, match=r"onnxruntime_perf_test: .*Invalid input name: ids"):
        parse_perf_test("Run failed:Invalid input name: ids\n", "")


def test_executor_runner_per_iteration_lines_drop_the_warmup() -> None:
    err = (
        "".join(
            f"I 00:00:01.{i:06d} executorch:executor_runner.cpp:342] Iteration {i + 1} of 5: {t} ms\n"
            for i, t in enumerate((30.5, 12.25, 12.0, 12.5, 1.2e1))
        )
        + "I 00:00:01.300000 executorch:executor_runner.cpp:360] Model executed successfully 5 time(s) in 79.250000 ms.\n"
    )
    parsed = parse_executor_runner("", err, warmup=1)
    assert parsed["latencies_ms"] == [12.25, 12.0, 12.5, 12.0]
    assert math.isnan(parsed["load_ms"])


def test_executor_runner_total_only_gives_the_mean_and_failures_are_named() -> None:
    err = "I 00:00:01.3 executorch:executor_runner.cpp:360] Model executed successfully 4 time(s) in 50.000000 ms.\n"
    assert parse_executor_runner("", err)["stats"] == {"iterations": 4, "mean_ms": 12.5}
    with pytest.raises(NativeOutputError, match="executor_runner: Execution of method forward failed"):
        parse_executor_runner(
            "", "E 00:00:00.1 executorch:x.cpp:1] Execution of method forward failed with status 0x12\n"
        )


def test_inventory_checks_native_tools() -> None:
    specs = parse_inventory(
        {"phone": {"type": "adb", "serial": "s", "python": None, "benchmark_tools": {"tflite": "/data/bm"}}},
        "x",
    )
    assert specs["phone"].benchmark_tools == {"tflite": ["/data/bm"]}
    with pytest.raises(ConfigError, match=r"device 'phone'.*without 'python' needs 'benchmark_tools'"):
        parse_inventory({"phone": {"type": "adb", "serial": "s", "python": None}}, "x")
    with pytest.raises(ConfigError, match=r"benchmark_tools.onnx must start with the tool's absolute path"):
        parse_inventory(
            {"phone": {"type": "adb", "serial": "s", "benchmark_tools": {"onnx": "perf_test"}}}, "x"
        )
    with pytest.raises(ConfigError, match=r"device 'phone': benchmark_tools.tensorrt"):
        parse_inventory({"phone": {"type": "adb", "serial": "s", "benchmark_tools": {"tensorrt": "/x"}}}, "x")
