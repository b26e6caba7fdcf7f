"""ONNX Runtime adapter: load a model.onnx and run named numpy feeds (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def runtime_version() -> str:
    """onnxruntime's version (raises ImportError when it is not installed)."""
    import onnxruntime

    return str(onnxruntime.__version__)


class OnnxModel:
    """An InferenceSession with feeds cast to the graph's declared input types."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def lm_session(self) -> None:
        """The KV cache is explicit past/present inputs and outputs: no session of its own."""
        return None

    def fixed_shape_variants(self) -> dict[str, Any]:
        """One graph for every sequence length."""
        return {}

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the graph; extra feeds are ignored, missing ones are an error from ORT."""
        cast = {
            name: np.ascontiguousarray(feeds[name], dtype=dtype)
            for name, dtype in self.input_types.items()
            if name in feeds
        }
        values = self.session.run(self.output_names, cast)
        return {
            name: np.asarray(v, dtype=np.float32) for name, v in zip(self.output_names, values, strict=True)
        }

    def compute_plan(self) -> None:
        """A per-operation compute plan exists only for Core ML on a Mac."""
        return None

    def providers(self) -> list[str]:
        """Execution providers actually in use (what ran where)."""
        return list(self.session.get_providers())
