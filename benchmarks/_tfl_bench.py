"""Timing code shared by every .tflite file in the TFLite benchmark (one code path for both tools).

Encoders: latency of one signature `seq_<n>` through ai-edge-litert's Interpreter signature runner
(XNNPACK delegate, applied by default) on the benchmarks' reference text, plus the cosine of the
mean-pooled hidden state against PyTorch. Decoders: edge-export's own LiteRT decoding session
(`ExplicitCacheSession`: CompiledModel over the prefill_<n> / decode signatures with the KV cache
as explicit inputs and outputs) driven by edge-export's `greedy_generate`; the session is built
from the file directly, so a file without an edge-export manifest (the bare export) runs the same
way. Both classes time in repeats so that the tools can alternate.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from _et_bench import DecoderPteBench


def versions() -> dict[str, str]:
    """Installed versions of the libraries both sides use."""
    names = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")
    return {name: version(name) for name in names}


def _timed_ms(action: Callable[[], Any], count: int) -> list[float]:
    """Wall time of `count` calls of `action`, in ms each."""
    out = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        out.append((time.perf_counter() - start) * 1000)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class EncoderTfliteBench:
    """Batch-1 latency of one sequence-bucket signature, in chunks of runs.

    Construction loads the file, warms the runner up and checks the output against the reference
    file of benchmarks/_bench_common.py (its token ids must fill the bucket exactly).
    """

    def __init__(self, path: Path, reference: Path, seq_len: int, threads: int, warmup: int = 10) -> None:
        from ai_edge_litert.interpreter import Interpreter

        ref = json.loads(reference.read_text())
        ids = ref["inputs"]["input_ids"]
        if len(ids) != seq_len:
            raise ValueError(f"reference has {len(ids)} tokens, signature seq_{seq_len} needs {seq_len}")
        start = time.perf_counter()
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.signatures = sorted(self.interpreter.get_signature_list())
        self.runner = self.interpreter.get_signature_runner(f"seq_{seq_len}")
        self.load_s = time.perf_counter() - start
        self.feeds = {
            name: np.asarray([ref["inputs"].get(name, [0] * seq_len)], dtype=detail["dtype"])
            for name, detail in self.runner.get_input_details().items()
        }
        outputs: dict[str, np.ndarray] = {}
        for _ in range(warmup):
            outputs = self.runner(**self.feeds)
        hidden = next(v for v in outputs.values() if v.ndim == 3)  # [1, seq, hidden]
        self.facts = {
            "signatures": self.signatures,
            "inputs": {k: f"{v.dtype}{list(v.shape)}" for k, v in self.feeds.items()},
            "outputs": {k: f"{v.dtype}{list(v.shape)}" for k, v in outputs.items()},
            "cosine_vs_torch": cosine(hidden[0].mean(axis=0), np.asarray(ref["mean_pooled"])),
        }
        self.times_ms: list[float] = []

    def run_chunk(self, iterations: int = 20) -> None:
        """Time `iterations` calls of the signature."""
        self.times_ms += _timed_ms(lambda: self.runner(**self.feeds), iterations)

    def result(self) -> dict[str, Any]:
        """p50/p90 over every timed call, the output check and what the file looks like."""
        return {
            "p50_ms": statistics.median(self.times_ms),
            "p90_ms": float(np.percentile(self.times_ms, 90)),
            "iterations": len(self.times_ms),
            "load_s": self.load_s,
            **self.facts,
        }


class DecoderTfliteBench(DecoderPteBench):
    """Time to first token and greedy decode speed of one prefill/decode .tflite.

    One loop = the prompt through the session's prefill path (the largest prefill signature that
    fits, padded, then one decode step) and its argmax, then `decode_steps` single-token steps.
    Construction runs one untimed loop (XNNPACK packs weights on first use) whose tokens are the
    greedy output; later loops must reproduce them. Timed loops (`run_once`) and the medians
    (`result`) are the ExecuTorch benchmark's, so both benchmarks report alike.
    """

    def __init__(  # the .pte loading of the base class does not apply
        self,
        path: Path,
        prompt_ids: list[int],
        decode_steps: int,
        prefill_lengths: tuple[int, ...],
        cache_length: int,
        threads: int,
    ) -> None:
        from edge_export.devices.agent.lm import prompt_logits
        from edge_export.devices.agent.tflite_model import ExplicitCacheSession

        start = time.perf_counter()
        self.session = ExplicitCacheSession(path, list(prefill_lengths), cache_length, threads)
        self.load_s = time.perf_counter() - start
        self.facts: dict[str, Any] = {"prefill_lengths": list(prefill_lengths), "cache_length": cache_length}
        self.prompt_ids, self.decode_steps = list(prompt_ids), decode_steps
        self.ttft_ms: list[float] = []
        self.tokens_per_s: list[float] = []
        self.nondeterministic = 0
        # what the prompt path and one decode step return (also the first use of both signatures)
        self.prefill_logits_shape = list(prompt_logits(self.session, self.prompt_ids).shape)
        self.decode_logits_shape = list(self.session.step(np.array([self.prompt_ids[-1]])).shape)
        self.tokens, _, _ = self._loop()

    def _loop(self) -> tuple[list[int], float, float]:
        from edge_export.devices.agent.lm import greedy_generate

        stamps: list[float] = []
        start = time.perf_counter()
        # decode_steps + 1 tokens: the first comes from the prompt, each later one from one step
        tokens = greedy_generate(
            self.session,
            self.prompt_ids,
            self.decode_steps + 1,
            None,
            lambda _: stamps.append(time.perf_counter()),
        )
        ttft_ms = (stamps[0] - start) * 1000
        return tokens, ttft_ms, self.decode_steps / (stamps[-1] - stamps[0])
