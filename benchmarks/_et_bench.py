"""Timing code shared by every ExecuTorch program in the benchmarks (one code path for all tools).

A decoder .pte is expected to have a method `forward(input_ids int64 [1, n], cache_position int64
[n]) -> logits` with the KV cache held as mutable buffers inside the program (the convention of
Optimum's and edge-export's XNNPACK LLM exports). Logits may be [1, vocab] (last token only) or
[1, n, vocab] (every position); the last row is used. Restarting at cache_position 0 overwrites
the static cache, so one loaded method serves every repeat.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

# ExecuTorch ScalarType codes (same numbering as c10::ScalarType) of the dtypes met here.
ET_DTYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 11: "bool"}
ET_DTYPES |= {15: "bfloat16"}
TORCH_INT = {"int64": torch.long, "int32": torch.int32}


def register_runtime_ops() -> None:
    """Load the kernels that a .pte may call besides the portable/XNNPACK ones.

    `custom_ops` registers llama::custom_sdpa / llama::update_cache (Optimum's
    --use_custom_sdpa / --use_custom_kv_cache); `kernels.quantized` the quantized_decomposed
    kernels. Importing the package `executorch.extension.llm.custom_ops` alone is not enough.
    """
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def set_threads(threads: int) -> int:
    """Size ExecuTorch's shared threadpool (used by XNNPACK and the custom ops); returns the count."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count())


def executorch_version() -> str:
    """Installed executorch version."""
    from importlib.metadata import version

    return version("executorch")


def _tensor_info(info: Any) -> dict[str, Any]:
    dtype = info.dtype()
    return {"sizes": list(info.sizes()), "dtype": ET_DTYPES.get(int(dtype), str(dtype))}


def _scalar(values: list[Any]) -> Any:
    """A constant method's output: a one-element list of bool/int/float (or a tensor)."""
    if len(values) == 1:
        value = values[0]
        if isinstance(value, torch.Tensor):
            return value.tolist()
        return value
    return [v.tolist() if isinstance(v, torch.Tensor) else v for v in values]


def inspect_program(program: Any) -> dict[str, Any]:
    """Method names, the values of the input-less (metadata) methods, and forward's tensor meta."""
    names = sorted(program.method_names)
    metadata: dict[str, Any] = {}
    for name in names:
        meta = program.metadata(name)
        if name != "forward" and meta.num_inputs() == 0:
            metadata[name] = _scalar(list(program.load_method(name).execute([])))
    facts: dict[str, Any] = {"methods": names, "metadata": metadata}
    if "forward" in names:
        meta = program.metadata("forward")
        facts["forward_inputs"] = [_tensor_info(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
        facts["forward_outputs"] = [
            _tensor_info(meta.output_tensor_meta(i)) for i in range(meta.num_outputs())
        ]
    return facts


class DecoderPteBench:
    """Greedy prefill + decode loop on one .pte, timed in repeats so that tools can alternate.

    Construction loads the program, records its facts and runs one untimed warm-up loop whose
    tokens are the greedy output (later loops must reproduce them).
    """

    def __init__(self, pte: Path, prompt_ids: list[int], decode_steps: int) -> None:
        from executorch.runtime import Runtime, Verification

        start = time.perf_counter()
        program = Runtime.get().load_program(pte, verification=Verification.Minimal)
        self.facts = inspect_program(program)
        if "forward" not in self.facts["methods"]:
            raise RuntimeError(f"{pte.name} has no 'forward' method: {self.facts['methods']}")
        self.forward = program.load_method("forward")
        self.load_s = time.perf_counter() - start
        self._program = program  # keeps the program alive as long as its method
        inputs = self.facts["forward_inputs"]
        if len(inputs) != 2:
            raise RuntimeError(f"forward takes {len(inputs)} inputs, expected (input_ids, cache_position)")
        self.id_dtype = TORCH_INT.get(inputs[0]["dtype"], torch.long)
        self.pos_dtype = TORCH_INT.get(inputs[1]["dtype"], torch.long)
        self.prompt_ids = list(prompt_ids)
        self.decode_steps = decode_steps
        self.ttft_ms: list[float] = []
        self.tokens_per_s: list[float] = []
        self.nondeterministic = 0
        self.prefill_logits_shape: list[int] = []
        self.decode_logits_shape: list[int] = []
        self.tokens, _, _ = self._loop()

    def _step(self, ids: list[int], start: int) -> tuple[int, list[int]]:
        input_ids = torch.tensor([ids], dtype=self.id_dtype)
        cache_position = torch.arange(start, start + len(ids), dtype=self.pos_dtype)
        logits = self.forward.execute([input_ids, cache_position])[0]
        last = logits[0, -1] if logits.dim() == 3 else logits.reshape(-1, logits.shape[-1])[-1]
        return int(torch.argmax(last)), list(logits.shape)

    def _loop(self) -> tuple[list[int], float, float]:
        start = time.perf_counter()
        token, self.prefill_logits_shape = self._step(self.prompt_ids, 0)
        ttft_ms = (time.perf_counter() - start) * 1000
        tokens = [token]
        position = len(self.prompt_ids)
        start = time.perf_counter()
        for i in range(self.decode_steps):
            token, self.decode_logits_shape = self._step([tokens[-1]], position + i)
            tokens.append(token)
        tokens_per_s = self.decode_steps / (time.perf_counter() - start)
        return tokens, ttft_ms, tokens_per_s

    def run_once(self) -> None:
        """One timed loop: prefill of the prompt from position 0, then the decode steps."""
        tokens, ttft_ms, tokens_per_s = self._loop()
        self.ttft_ms.append(ttft_ms)
        self.tokens_per_s.append(tokens_per_s)
        if tokens != self.tokens:
            self.nondeterministic += 1

    def result(self) -> dict[str, Any]:
        """Medians over the timed loops, the greedy tokens and what the logits looked like."""
        n = len(self.prompt_ids)
        full = len(self.prefill_logits_shape) == 3 and self.prefill_logits_shape[1] == n > 1
        return {
            "ttft_ms": statistics.median(self.ttft_ms),
            "tokens_per_s": statistics.median(self.tokens_per_s),
            "ttft_ms_runs": [round(x, 2) for x in self.ttft_ms],
            "tokens_per_s_runs": [round(x, 2) for x in self.tokens_per_s],
            "load_s": self.load_s,
            "greedy_tokens": self.tokens,
            "nondeterministic_loops": self.nondeterministic,
            "prefill_logits_shape": self.prefill_logits_shape,
            "decode_logits_shape": self.decode_logits_shape,
            "logits": "full (every position)" if full else "last token only",
            **self.facts,
        }
