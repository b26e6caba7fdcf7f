"""Timing code shared by every ONNX model in the benchmarks (one code path for all tools).

Encoders: p50 latency of one forward pass at a fixed input. Decoders: a greedy KV-cache loop
written against the input/output names the session reports (the Optimum convention:
`input_ids`, `attention_mask`, optional `position_ids`, `past_key_values.{i}.key|value` in;
`logits`, `present.{i}.key|value` out).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_PAST = re.compile(r"^past_key_values[._](\d+)[._](key|value)$")
_PRESENT = re.compile(r"^present[._](\d+)[._](key|value)$")


def make_session(model: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with the options every benchmarked model gets."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def io_names(session: ort.InferenceSession) -> tuple[list[str], list[str]]:
    """Input and output names of a session."""
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


class EncoderBench:
    """Batch-1 latency of one encoder graph, taken in chunks so that tools can alternate.

    Construction warms the session up and checks the output: cosine of the mean-pooled
    hidden state against PyTorch's.
    """

    def __init__(self, model: Path, reference: Path, threads: int, warmup: int = 10) -> None:
        ref = json.loads(reference.read_text())
        self.session = make_session(model, threads)
        self.feeds = _encoder_feeds(self.session, ref["inputs"])
        outputs: list[Any] = []
        for _ in range(warmup):
            outputs = self.session.run(None, self.feeds)
        pooled = _hidden_state(self.session, outputs)[0].astype(np.float64).mean(axis=0)
        expected = np.asarray(ref["mean_pooled"], dtype=np.float64)
        norms = np.linalg.norm(pooled) * np.linalg.norm(expected)
        self.cosine = float(pooled @ expected / norms)
        self.times_ms: list[float] = []

    def run_chunk(self, iterations: int = 20) -> None:
        """Time `iterations` forward passes."""
        for _ in range(iterations):
            start = time.perf_counter()
            self.session.run(None, self.feeds)
            self.times_ms.append((time.perf_counter() - start) * 1000)

    def result(self) -> dict[str, float | int]:
        """p50/p90 latency over every timed pass, and the cosine check."""
        return {
            "p50_ms": statistics.median(self.times_ms),
            "p90_ms": float(np.percentile(self.times_ms, 90)),
            "iterations": len(self.times_ms),
            "cosine_vs_torch": self.cosine,
        }


def _encoder_feeds(session: ort.InferenceSession, inputs: dict[str, list[int]]) -> dict:
    length = len(inputs["input_ids"])
    feeds = {}
    for spec in session.get_inputs():
        values = inputs.get(spec.name, [0] * length)  # e.g. token_type_ids if not tokenised
        feeds[spec.name] = np.asarray([values], dtype=ORT_DTYPES[spec.type])
    return feeds


def _hidden_state(session: ort.InferenceSession, outputs: list[Any]) -> np.ndarray:
    names = [o.name for o in session.get_outputs()]
    if "last_hidden_state" in names:
        return outputs[names.index("last_hidden_state")]
    return next(out for out in outputs if getattr(out, "ndim", 0) == 3)


@dataclass(frozen=True)
class DecoderIO:
    """Names and dtypes of a KV-cache decoder graph, read from its session."""

    int_dtype: Any
    kv_dtype: Any
    has_position_ids: bool
    past_inputs: dict[tuple[int, str], str]
    outputs: list[str]  # logits first, then the present.* outputs
    present_to_past: dict[str, str]

    @classmethod
    def from_session(cls, session: ort.InferenceSession) -> DecoderIO:
        """Match present.{i}.{key,value} outputs to past_key_values.{i}.{key,value} inputs."""
        inputs = {i.name: i for i in session.get_inputs()}
        output_names = [o.name for o in session.get_outputs()]
        past = {(int(m[1]), m[2]): m[0] for n in inputs if (m := _PAST.match(n))}
        present = {(int(m[1]), m[2]): m[0] for n in output_names if (m := _PRESENT.match(n))}
        required = {"input_ids", "attention_mask"} <= inputs.keys() and "logits" in output_names
        if not required or not past or past.keys() != present.keys():
            raise ValueError(f"not a KV-cache decoder graph: inputs {sorted(inputs)}, outputs {output_names}")
        return cls(
            int_dtype=ORT_DTYPES[inputs["input_ids"].type],
            kv_dtype=ORT_DTYPES[inputs[next(iter(past.values()))].type],
            has_position_ids="position_ids" in inputs,
            past_inputs=past,
            outputs=["logits", *present.values()],
            present_to_past={present[k]: past[k] for k in present},
        )


class DecoderBench:
    """Greedy KV-cache decode speed of one decoder graph, one timed loop per chunk.

    Each loop prefills the reference prompt, then times `steps` single-token decode steps.
    Construction runs one untimed loop (warm-up) and the accuracy checks: `greedy_match` is how
    many leading generated tokens equal PyTorch's greedy output, `top1_agreement` the
    teacher-forced share of positions that agree.
    """

    def __init__(self, model: Path, reference: Path, threads: int, steps: int) -> None:
        self.ref = json.loads(reference.read_text())
        self.session = make_session(model, threads)
        self.io = DecoderIO.from_session(self.session)
        self.steps = steps
        tokens, _ = _greedy_loop(self.session, self.io, self.ref, steps)
        expected = self.ref["greedy_tokens"][: len(tokens)]
        pairs = enumerate(zip(tokens, expected, strict=False))
        self.checks = {
            "greedy_match": next((i for i, (a, b) in pairs if a != b), len(tokens)),
            "generated": len(tokens),
            "top1_agreement": _teacher_forced_agreement(self.session, self.io, self.ref),
        }
        self.rates: list[float] = []

    def run_chunk(self) -> None:
        """One timed greedy loop."""
        _, seconds = _greedy_loop(self.session, self.io, self.ref, self.steps)
        self.rates.append(self.steps / seconds)

    def result(self) -> dict[str, float | int]:
        """Median decode tokens/s over the timed loops, and the accuracy checks."""
        return {
            "tokens_per_s": statistics.median(self.rates),
            "loops": len(self.rates),
            **self.checks,
        }


def _teacher_forced_agreement(session: ort.InferenceSession, io: DecoderIO, ref: dict) -> float:
    """Share of positions whose argmax equals PyTorch's greedy token, fed PyTorch's tokens.

    Unlike the greedy prefix, one early disagreement does not spoil every later position.
    """
    expected = ref["greedy_tokens"]
    sequence = ref["prompt_ids"] + expected[:-1]
    empty = np.zeros((1, ref["num_kv_heads"], 0, ref["head_dim"]), dtype=io.kv_dtype)
    past = {name: empty for name in io.past_inputs.values()}
    logits = session.run(["logits"], _step_feeds(io, sequence, 0, past))[0]
    predicted = logits[0, len(ref["prompt_ids"]) - 1 :].argmax(axis=-1)
    return float(np.mean(predicted == np.asarray(expected)))


def _greedy_loop(
    session: ort.InferenceSession, io: DecoderIO, ref: dict[str, Any], steps: int
) -> tuple[list[int], float]:
    """One prefill plus `steps` decode steps; returns the tokens and the decode time (s)."""
    prompt = ref["prompt_ids"]
    empty = np.zeros((1, ref["num_kv_heads"], 0, ref["head_dim"]), dtype=io.kv_dtype)
    past = {name: empty for name in io.past_inputs.values()}
    outputs = session.run(io.outputs, _step_feeds(io, prompt, 0, past))
    tokens = [int(np.argmax(outputs[0][0, -1]))]
    start = time.perf_counter()
    for _ in range(steps):
        past = {io.present_to_past[n]: v for n, v in zip(io.outputs[1:], outputs[1:], strict=True)}
        position = len(prompt) + len(tokens) - 1
        outputs = session.run(io.outputs, _step_feeds(io, tokens[-1:], position, past))
        tokens.append(int(np.argmax(outputs[0][0, -1])))
    return tokens, time.perf_counter() - start


def _step_feeds(
    io: DecoderIO, new_ids: list[int], past_len: int, past: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    total = past_len + len(new_ids)
    feeds = {
        "input_ids": np.asarray([new_ids], dtype=io.int_dtype),
        "attention_mask": np.ones((1, total), dtype=io.int_dtype),
        **past,
    }
    if io.has_position_ids:
        feeds["position_ids"] = np.arange(past_len, total, dtype=io.int_dtype)[None, :]
    return feeds
