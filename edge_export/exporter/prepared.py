"""A loaded model ready for export: HF model, export wrapper, IO spec, tokenizer, example inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from edge_export.exporter.families import Family
from edge_export.exporter.iospec import IOSpec
from edge_export.exporter.source import ModelSource


@runtime_checkable
class Runnable(Protocol):
    """A loaded artifact on the host (or the PyTorch reference): named numpy inputs to named numpy
    outputs, plus two capabilities every runnable answers (neutrally when it lacks them)."""

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run one forward pass."""
        ...

    def lm_session(self) -> Any | None:
        """A decoding session when the program keeps its KV cache inside (stateful LMs), else None
        (the cache is explicit past/present inputs and outputs)."""
        ...

    def fixed_shape_variants(self) -> dict[str, tuple[int, Any]]:
        """label -> (sequence length, runnable) for programs made of fixed-shape variants (TFLite
        sequence buckets); empty when the program takes any length."""
        ...


@dataclass
class CalibrationSet:
    """Representative graph inputs (numpy feeds keyed by input name) for static quantization."""

    feeds: list[dict[str, np.ndarray]]
    description: str = ""


@dataclass
class PreparedModel:
    """Everything a target needs to export one model for one task."""

    source: ModelSource
    task: str
    family: Family
    hf_model: torch.nn.Module
    module: torch.nn.Module
    io: IOSpec
    tokenizer: Any | None
    sha256: str
    config: Any = None
    max_positions: int = 512
    # What was loaded (tensor count, parameters, sha256 of the loaded weights) and facts about the
    # model every result should show (e.g. that it has no tokenizer).
    weights: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        """The config's model_type (llama, gemma3_text, gpt2 ...): what family tables are keyed by."""
        return str(getattr(self.hf_model.config, "model_type", "") or "")

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Example positional inputs for torch.export; sizes avoid 0/1 specialisation."""
        vocab = int(self.hf_model.config.vocab_size)
        gen = torch.Generator().manual_seed(0)
        if self.io.kind == "encoder":
            batch, seq = 2, 8
            tensors = [torch.randint(0, vocab, (batch, seq), generator=gen)]
            tensors += [torch.ones(batch, seq, dtype=torch.long)]
            if "token_type_ids" in self.io.input_names:
                tensors.append(torch.zeros(batch, seq, dtype=torch.long))
            return tuple(tensors)
        batch, seq, past = 2, 3, 5
        geo = self.io.cache
        kv = (batch, geo["kv_heads"], past, geo["head_dim"])
        tensors = [
            torch.randint(0, vocab, (batch, seq), generator=gen),
            torch.ones(batch, past + seq, dtype=torch.long),
            torch.arange(past, past + seq).expand(batch, seq).contiguous(),
        ]
        tensors += [torch.randn(kv, generator=gen) for _ in range(2 * geo["num_layers"])]
        return tuple(tensors)

    def dynamic_shapes(self) -> dict[str, Any]:
        """torch.export dynamic shapes keyed by the wrapper's forward parameter names."""
        dim = torch.export.Dim
        batch = dim("batch", min=1, max=1024)
        if self.io.kind == "encoder":
            seq = dim("sequence", min=1, max=self.max_positions)
            return {name: {0: batch, 1: seq} for name in self.io.input_names}
        seq = dim("sequence", min=1, max=self.max_positions)
        past = dim("past_sequence", min=0, max=self.max_positions)
        total = dim("total_sequence", min=1, max=2 * self.max_positions)
        kv = tuple({0: batch, 2: past} for _ in range(2 * self.io.cache["num_layers"]))
        return {
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: total},
            "position_ids": {0: batch, 1: seq},
            "past": kv,
        }

    def reference(self) -> TorchRunnable:
        """The fp32 PyTorch reference with the same named IO as the exported graph."""
        return TorchRunnable(self.module, self.io)

    def save_tokenizer(self, folder: Path) -> list[Path]:
        """Write the tokenizer files into a bundle folder; returns what was written."""
        if self.tokenizer is None:
            return []
        before = set(folder.iterdir()) if folder.exists() else set()
        self.tokenizer.save_pretrained(str(folder))
        return sorted(set(folder.iterdir()) - before)


class TorchRunnable:
    """Runs the export wrapper on numpy feeds, so reference and candidates share one interface."""

    def __init__(self, module: torch.nn.Module, io: IOSpec) -> None:
        self.module = module
        self.io = io

    def lm_session(self) -> None:
        """The reference takes its KV cache as explicit inputs: no session of its own."""
        return None

    def fixed_shape_variants(self) -> dict[str, tuple[int, Any]]:
        """The reference takes any sequence length."""
        return {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass in fp32 without gradients."""
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.io.input_names]
        with torch.no_grad():
            outputs = self.module(*args)
        return {
            name: tensor.detach().float().numpy()
            for name, tensor in zip(self.io.output_names, outputs, strict=True)
        }
