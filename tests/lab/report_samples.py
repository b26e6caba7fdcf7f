"""Synthetic lab measurement rows (the store's row format, see edge_export/lab/store.py) for the
report tests and the README screenshot: two models shaped like the real ones (MiniLM, an
encoder gated on embedding cosine; SmolLM2, a decoder gated on perplexity), recipes of three
targets, two devices, every status, latency samples, and a history of earlier runs. No export
runs: the numbers are typical of what the lab measured, with seeded noise."""

from __future__ import annotations

import random
from typing import Any

RUN_TIMES = ("2025-12-01T09:00:00+00:00", "2025-12-02T09:00:00+00:00", "2025-12-03T09:00:00+00:00",
             "2025-12-04T09:00:00+00:00")  # fmt: skip
LABELS = {"commit": "3f9c2e1", "branch": "main", "ci_job": "lab-nightly"}

# model -> recipe -> (size MB, metrics, failing gate metric or None)
ENCODER = {
    "onnx:fp32": (90.4, {"embedding_cosine_min": 1.0, "sqnr_db": 122.9}, None),
    "onnx:int8-dynamic": (23.1, {"embedding_cosine_min": 0.9962, "sqnr_db": 27.4}, None),
    "onnx:int4-weight": (16.8, {"embedding_cosine_min": 0.962, "sqnr_db": 11.2}, "embedding_cosine_min"),
    "tflite:fp32": (90.2, {"embedding_cosine_min": 0.99999, "sqnr_db": 98.1}, None),
    "tflite:int8-dynamic": (22.9, {"embedding_cosine_min": 0.9951, "sqnr_db": 25.9}, None),
    "executorch:fp32": (91.0, {"embedding_cosine_min": 1.0, "sqnr_db": 120.4}, None),
}
DECODER = {
    "onnx:fp32": (538.0, {"perplexity_delta_pct": 0.0, "next_token_agreement": 1.0}, None),
    "onnx:int8-dynamic": (136.5, {"perplexity_delta_pct": 1.9, "next_token_agreement": 0.97}, None),
    "onnx:int4-weight": (98.2, {"perplexity_delta_pct": 9.8, "next_token_agreement": 0.88}, None),
    "tflite:int8-dynamic": (139.0, {"perplexity_delta_pct": 2.4, "next_token_agreement": 0.96}, None),
}
THRESHOLDS = {"embedding_cosine_min": (">=", 0.98), "sqnr_db": (">=", 6.0), "cosine_min": (">=", 0.99),
              "perplexity_delta_pct": ("<=", 15.0), "next_token_agreement": (">=", 0.8)}  # fmt: skip
P50_MS = {"minilm": {"local": 6.0, "pi": 48.0}, "smollm2": {"local": 31.0, "pi": 260.0}}


def accuracy(recipe: str, metrics: dict[str, float], failing: str | None) -> dict[str, Any]:
    """A report@1 accuracy dict whose `failing` gate (if any) failed."""
    gates = []
    for metric, value in metrics.items():
        direction, threshold = THRESHOLDS[metric]
        passed = metric != failing
        gates.append({"metric": metric, "value": value, "threshold": threshold, "passed": passed,
                      "direction": direction})  # fmt: skip
    failure = None
    if failing:
        direction, threshold = THRESHOLDS[failing]
        failure = f"{recipe}: accuracy gates failed: {failing}={metrics[failing]:.6g} (needs {direction} {threshold:g})"
    return {"measured_on": "host", "metrics": metrics, "gates": gates, "failure": failure}


def row(run_id: str, time: str, model: str, recipe: str, device: str, *, status: str,
        size_mb: float | None, acc: dict[str, Any] | None, samples: list[float],
        failures: list[str] | None = None, error: dict[str, str] | None = None,
        not_run: str | None = None, cached: bool = False) -> dict[str, Any]:  # fmt: skip
    """One measurement row in the store's format."""
    latency: dict[str, Any] | None = None
    if samples:
        ordered = sorted(samples)
        latency = {"device": device, "p50_ms": ordered[len(ordered) // 2], "iterations": len(samples)}
    elif not_run:
        latency = {"device": device, "not_run": not_run}
    elif error and device != "host":
        latency = {"device": device, "error": error}
    size = int(size_mb * 1e6) if size_mb is not None else None
    result = {"target": recipe.split(":")[0], "recipe": recipe, "precision": recipe.split(":")[1].split("-")[0],
              "status": status, "size_bytes": size, "accuracy": acc,
              "latency_by_device": [dict(latency or {}, samples_ms=samples)],
              "error": error if status == "error" and size is None else None,
              "timings_s": {"export": 11.2, "validate": 10.6, "latency": 0.9} if size else {"export": 3.1}}  # fmt: skip
    return {
        "run_id": run_id, "cell": f"{model}|{recipe}|{device}", "time": time, "model": model,
        "model_source": f"/models/{model}", "model_sha256": "ab" * 32, "target": result["target"],
        "recipe": recipe, "precision": result["precision"], "device": device,
        "device_facts": {"machine": "x86_64" if device == "local" else "aarch64"}, "status": status,
        "failures": failures or [], "accuracy": acc, "latency": latency, "samples_ms": samples,
        "p50_ms": latency.get("p50_ms") if latency else None, "decode_tokens_per_s": None,
        "size_bytes": size, "cached": cached, "result": result, "labels": LABELS,
    }  # fmt: skip


def _samples(rng: random.Random, p50: float, count: int = 25) -> list[float]:
    return [round(p50 * rng.lognormvariate(0, 0.06) + (p50 * 0.4 if rng.random() < 0.05 else 0), 4)
            for _ in range(count)]  # fmt: skip


def run_rows(run_id: str, time: str, seed: int, drift: float = 1.0) -> list[dict[str, Any]]:
    """Every cell of one run: MiniLM x 6 recipes and SmolLM2 x 4 recipes on `local` and `pi`.
    Faults: MiniLM onnx:int4 fails its gate (on both devices); SmolLM2 tflite:int8 loses the Pi
    mid-run (error); executorch cannot run on the Pi (not_run)."""
    rng = random.Random(seed)
    rows = []
    for model, recipes in (("minilm", ENCODER), ("smollm2", DECODER)):
        for recipe, (size_mb, metrics, failing) in recipes.items():
            acc = accuracy(recipe, metrics, failing)
            target_speed = {"onnx": 1.0, "tflite": 1.3, "executorch": 0.9}[recipe.split(":")[0]]
            quant_speed = 0.6 if "int8" in recipe else 0.75 if "int4" in recipe else 1.0
            for device in ("local", "pi"):
                base = P50_MS[model][device] * target_speed * quant_speed * drift
                status = "failed" if failing else "passed"
                kwargs: dict[str, Any] = {"failures": [acc["failure"]] if failing else []}
                samples = _samples(rng, base)
                if recipe.startswith("executorch") and device == "pi":
                    status, samples = "not_run", []
                    kwargs = {"not_run": "pi: the executorch runtime is not installed on this device"}
                if model == "smollm2" and recipe.startswith("tflite") and device == "pi":
                    status, samples = "error", []
                    message = "pi: device dropped mid-run: ssh connection reset by peer"
                    kwargs = {"failures": [message], "error": {"type": "DeviceError", "message": message}}
                rows.append(row(run_id, time, model, recipe, device, status=status, size_mb=size_mb, acc=acc,
                                samples=samples, cached=seed > 0 and recipe.endswith("fp32"), **kwargs))  # fmt: skip
    return rows


def sample_lab() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(rows of the current run, history = rows of 3 earlier runs, the run record). The
    current run is 8% slower on onnx:int8 than the history: the trend shows it."""
    history = []
    for index, time in enumerate(RUN_TIMES[:-1]):
        history += run_rows(f"run-{index + 1}", time, seed=index + 1, drift=1.0 + 0.01 * index)
    current = run_rows("run-4", RUN_TIMES[-1], seed=7)
    for cell in current:
        if cell["recipe"] == "onnx:int8-dynamic" and cell["samples_ms"]:
            cell["samples_ms"] = [round(v * 1.08, 4) for v in cell["samples_ms"]]
            cell["p50_ms"] = sorted(cell["samples_ms"])[len(cell["samples_ms"]) // 2]
    run = {"run_id": "run-4", "started_at": RUN_TIMES[-1], "finished_at": "2025-12-04T09:06:41+00:00",
           "status": "finished", "labels": LABELS, "shard": None}  # fmt: skip
    return current, history, run
