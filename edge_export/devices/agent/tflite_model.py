"""LiteRT adapter: load a model.tflite with ai-edge-litert and run it from numpy feeds.

Encoders have one fixed-shape signature per sequence-length bucket (batch 1): each row goes
through the smallest bucket that holds it, padded with attention mask 0, and the outputs are cut
back to the real length. Decoders have prefill_<n> and decode signatures with the KV cache as
explicit inputs/outputs; `lm_session()` drives them. Quantized (int8/int16) inputs and outputs
are converted with each tensor's own scale and zero point.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_MASKED = np.finfo(np.float32).min


def runtime_version() -> str:
    """ai-edge-litert's version (raises ImportError when it is not installed)."""
    from importlib.metadata import version

    import ai_edge_litert.interpreter  # noqa: F401  (the import is the availability check)

    return version("ai-edge-litert")


def _quantized(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scales = detail["quantization_parameters"]["scales"]
    if detail["dtype"] in (np.int8, np.int16, np.uint8) and len(scales) == 1:
        return float(scales[0]), int(detail["quantization_parameters"]["zero_points"][0])
    return None


def to_input(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Cast (or quantize, for quantized float inputs) a feed to the signature input's dtype."""
    quant = _quantized(detail)
    if quant is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
        scale, zero = quant
        info = np.iinfo(detail["dtype"])
        q = np.clip(np.round(np.asarray(value) / scale) + zero, info.min, info.max)
        return q.astype(detail["dtype"])
    return np.ascontiguousarray(value, dtype=detail["dtype"])


def from_output(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Dequantize a quantized output with its scale/zero point; float outputs pass through."""
    quant = _quantized(detail)
    if quant is not None:
        scale, zero = quant
        return ((value.astype(np.float32) - zero) * scale).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


class _Signature:
    """One signature runner with its input/output details."""

    def __init__(self, interpreter: Any, name: str) -> None:
        self.runner = interpreter.get_signature_runner(name)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: to_input(v, self.inputs[k]) for k, v in feeds.items()}
        raw = self.runner(**cast)
        return {k: from_output(v, self.outputs[k]) for k, v in raw.items()}


class TfliteModel:
    """A loaded .tflite plus the manifest's signature table and IO names."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.threads = path, threads
        export = manifest["export"]
        self.signatures: dict[str, Any] = export["signatures"]
        # Decoders run on CompiledModel (see ExplicitCacheSession); encoders on the Interpreter.
        decoder = "decode" in self.signatures
        self.interpreter = None if decoder else Interpreter(model_path=str(path), num_threads=threads or None)
        self.io = manifest["io"]
        self.output_map: dict[str, str] = export.get("output_map", {})
        self._runners: dict[str, _Signature] = {}
        self._session: ExplicitCacheSession | None = None
        buckets = sorted(v["sequence"] for v in self.signatures.values() if "sequence" in v)
        self.buckets = buckets
        self.capacity = export.get("max_seq_len")

    def _runner(self, name: str) -> _Signature:
        if name not in self._runners:
            self._runners[name] = _Signature(self.interpreter, name)
        return self._runners[name]

    def run(self, feeds: Mapping[str, Any], bucket: int | None = None) -> dict[str, np.ndarray]:
        """Encoders: each row through the smallest bucket that fits (or `bucket`), padded with
        attention mask 0; outputs cut back to the input length."""
        names = [t["name"] for t in self.io["inputs"]]
        batch, length = np.asarray(feeds[names[0]]).shape
        fitting = [b for b in self.buckets if b >= length and (bucket is None or b == bucket)]
        if not fitting:
            raise ValueError(f"{length} tokens exceed the largest sequence bucket ({self.buckets[-1]})")
        bucket = fitting[0]
        runner = self._runner(f"seq_{bucket}")
        rows: list[dict[str, np.ndarray]] = []
        for row in range(batch):
            padded = {}
            for name in names:
                value = np.zeros((1, bucket), dtype=np.int64)
                value[0, :length] = np.asarray(feeds[name])[row]
                padded[name] = value
            rows.append(self._named(runner(padded)))
        return {name: self._trim(name, np.concatenate([r[name] for r in rows]), length) for name in rows[0]}

    def _named(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.output_map.get(k, k): v for k, v in outputs.items()}

    def _trim(self, name: str, value: np.ndarray, length: int) -> np.ndarray:
        spec = next((t for t in self.io["outputs"] if t["name"] == name), None)
        if spec is not None and "sequence" in spec["shape"]:
            axis = spec["shape"].index("sequence")
            return np.take(value, np.arange(length), axis=axis)
        return value

    def fixed_shape_variants(self) -> dict[str, tuple[int, _Bucket]]:
        """Every sequence bucket as its own runnable, so validation covers each signature."""
        return {f"seq_{b}": (b, _Bucket(self, b)) for b in self.buckets}

    def lm_session(self) -> ExplicitCacheSession | None:
        """A decoding session for prefill/decode programs (None for encoders)."""
        if "decode" not in self.signatures:
            return None
        if self._session is None:  # one compiled model per loaded bundle; callers reset it
            prefill = [int(v["prefill"]) for v in self.signatures.values() if "prefill" in v]
            self._session = ExplicitCacheSession(self.path, prefill, int(self.capacity), self.threads)
        return self._session

    def compute_plan(self) -> None:
        """A per-operation compute plan exists only for Core ML on a Mac."""
        return None

    def providers(self) -> list[str]:
        """The interpreter applies the XNNPACK delegate by default (residency is in the bundle)."""
        return ["litert-xnnpack"]


class _Bucket:
    """A TfliteModel pinned to one sequence bucket."""

    def __init__(self, model: TfliteModel, bucket: int) -> None:
        self._model = model
        self._bucket = bucket

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run through this bucket's signature only."""
        return self._model.run(feeds, self._bucket)


class ExplicitCacheSession:
    """Batch-1 decoding over signatures that take and return the whole KV cache.

    Runs on LiteRT's CompiledModel with two sets of cache buffers used in turn as input and
    output, so no cache is copied between steps (the Interpreter's signature runners copy the
    whole cache in and out on every call: 30% slower decode on SmolLM2 at 1024 positions).
    `step(ids)` returns logits for every position by running the decode signature per token
    (what validation compares); `prefill(ids)` is the fast prompt path: prefill signatures for all
    but the last token, padded to the chosen length, then one decode step for the logits.
    """

    def __init__(self, path: Path, prefill: list[int], capacity: int, threads: int | None = None) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, Options

        self._model = CompiledModel.from_file(
            str(path), options=Options(cpu_options=CpuOptions(threads or 0))
        )
        self._prefill = sorted(prefill)
        self.capacity = capacity
        details = self._model.get_input_tensor_details("decode")
        self._cache_names = [k for k in details if k.startswith("kv_cache")]
        self._vocab = int(np.prod(self._model.get_output_tensor_details("decode")["logits"]["shape"]))
        zeros = {k: np.zeros(details[k]["shape"], dtype=np.float32) for k in self._cache_names}
        self._caches = [
            {k: self._model.create_input_buffer_by_name("decode", k) for k in self._cache_names},
            {k: self._model.create_output_buffer_by_name("decode", k) for k in self._cache_names},
        ]
        for buffers in self._caches:  # stale values are masked, but never NaN
            for name, buffer in buffers.items():
                buffer.write(zeros[name])
        self._inputs = {
            sig: {n: self._model.create_input_buffer_by_name(sig, n) for n in ("tokens", "input_pos", "mask")}
            for sig in ["decode", *(f"prefill_{n}" for n in self._prefill)]
        }
        self._logits = self._model.create_output_buffer_by_name("decode", "logits")
        self._current = 0
        self.length = 0

    def reset(self) -> None:
        """The next token goes to position 0 (stale cache entries are masked until overwritten)."""
        self.length = 0

    def _call(self, signature: str, tokens: np.ndarray, positions: np.ndarray) -> None:
        mask = np.where(np.arange(self.capacity)[None, :] <= positions[:, None], 0.0, _MASKED)
        small = self._inputs[signature]
        small["tokens"].write(tokens.astype(np.int32).reshape(1, -1))
        small["input_pos"].write(positions.astype(np.int32))
        small["mask"].write(mask[None, None].astype(np.float32))
        source, target = self._caches[self._current], self._caches[1 - self._current]
        outputs = dict(target)
        if signature == "decode":
            outputs["logits"] = self._logits
        self._model.run_by_name(signature, small | source, outputs)
        self._current = 1 - self._current

    def _check_room(self, count: int) -> None:
        if self.length + count > self.capacity:
            raise ValueError(f"{self.length + count} tokens exceed the program's cache of {self.capacity}")

    def _decode_one(self, token: int) -> np.ndarray:
        self._check_room(1)
        self._call("decode", np.array([token]), np.array([self.length]))
        self.length += 1
        return np.asarray(self._logits.read(self._vocab, np.float32)).reshape(1, 1, -1)

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed tokens [1, n] one decode step each; returns logits [1, n, vocab]."""
        ids = np.asarray(token_ids).reshape(-1)
        self._check_room(len(ids))
        return np.concatenate([self._decode_one(int(t)) for t in ids], axis=1)

    def _prefill_chunk(self, ids: np.ndarray) -> int:
        """Fill the cache with a prefix of ids through one prefill call; returns how many it took."""
        room = self.capacity - self.length
        fits = [n for n in self._prefill if n <= room]
        if not fits:
            return 0
        covering = [n for n in fits if n >= len(ids)]
        size = covering[0] if covering else fits[-1]
        used = min(size, len(ids))
        tokens = np.zeros(size, dtype=np.int64)
        tokens[:used] = ids[:used]
        # padded rows sit at later positions, which real tokens overwrite before anyone attends them
        self._call(f"prefill_{size}", tokens, np.arange(self.length, self.length + size))
        self.length += used
        return used

    def prefill(self, token_ids: np.ndarray) -> np.ndarray:
        """The prompt through prefill signatures; returns the last position's logits [1, 1, vocab]."""
        ids = np.asarray(token_ids).reshape(-1)
        self._check_room(len(ids))
        body = ids[:-1]
        while len(body):
            used = self._prefill_chunk(body)
            if used == 0:
                self.step(body)
                break
            body = body[used:]
        return self._decode_one(int(ids[-1]))
