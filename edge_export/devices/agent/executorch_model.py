"""ExecuTorch adapter: load a model.pte with executorch.runtime and run it from numpy feeds.

Encoder programs take their inputs positionally in the manifest's IO order. LM programs keep a
static KV cache inside; they are driven through `lm_session()` (prefill and decode both call
`forward(input_ids [1, n], cache_position [n])`).
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .lm import StaticCacheSession

# Kernels some programs call outside delegates: custom SDPA / KV-cache ops, quantized embeddings.
_KERNEL_MODULES = ("executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized")


def runtime_version() -> str:
    """executorch's version (raises ImportError when it is not installed)."""
    from executorch.version import __version__

    return str(__version__)


def host_can_run(manifest: Mapping[str, Any]) -> str | None:
    """None when this machine can execute the program, else why not (Core ML off Apple)."""
    backend = manifest.get("export", {}).get("backend")
    if backend == "coreml" and platform.system() != "Darwin":
        return "not run here: the Core ML delegate executes only on Apple hardware (macOS/iOS)"
    return None


class ExecutorchModel:
    """A loaded `forward` method plus the manifest's IO names."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], threads: int | None = None) -> None:
        import torch
        from executorch.runtime import Runtime

        for module in _KERNEL_MODULES:
            importlib.import_module(module)
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        self._torch = torch
        self.program = Runtime.get().load_program(str(path))
        self.method = self.program.load_method("forward")
        io = manifest["io"]
        self.input_names = [t["name"] for t in io["inputs"]]
        self.output_names = [t["name"] for t in io["outputs"]]
        self.capacity = io.get("bounds", {}).get("sequence")

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One call of `forward` with the named feeds in program order."""
        args = [
            self._torch.from_numpy(np.ascontiguousarray(feeds[n], dtype=np.int64)) for n in self.input_names
        ]
        outputs = self.method.execute(args)
        return {
            name: np.asarray(out.float().numpy(), dtype=np.float32)
            for name, out in zip(self.output_names, outputs, strict=True)
        }

    def fixed_shape_variants(self) -> dict[str, Any]:
        """One program for every sequence length (bounded by the export's dynamic shapes)."""
        return {}

    def lm_session(self) -> StaticCacheSession | None:
        """A decoding session for static-cache LM programs (None for encoders)."""
        if "cache_position" not in self.input_names:
            return None
        return StaticCacheSession(lambda ids, pos: self.run({"input_ids": ids, "cache_position": pos})["logits"],
                                  self.capacity)  # fmt: skip

    def warm_up(self) -> int:
        """Start the kernel thread pool now (it probes the CPU on first use); returns its size."""
        from executorch.extension.pybindings import portable_lib

        return int(portable_lib._threadpool_get_thread_count())

    def constant(self, name: str) -> Any:
        """A metadata method's value (get_max_seq_len, get_eos_ids, ...)."""
        method = self.program.load_method(name)
        value = method.execute([])
        return [v.tolist() if hasattr(v, "tolist") else v for v in value]

    def compute_plan(self) -> None:
        """A per-operation compute plan exists only for Core ML on a Mac."""
        return None

    def providers(self) -> list[str]:
        """Backends the program delegates to (what ran where is in the bundle's residency)."""
        return ["executorch"]
