"""A loaded model ready for export: HF model, export wrapper, IO spec, tokenizer, example inputs."""

from __future__ import annotations

import json
import shutil
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
        """Write the tokenizer files into a bundle folder, readable by transformers 4.x and 5.x,
        plus a sentence-transformers encoder's config files; returns the files written.

        For sentence-transformers encoders the tokenizer's model_max_length becomes the model's
        max_seq_length, so a client that truncates at the tokenizer's limit feeds what
        sentence-transformers feeds (all-MiniLM-L6-v2: 256, not the tokenizer's 512).
        """
        before = set(folder.rglob("*")) if folder.exists() else set()
        sentence_transformers = self.io.extras.get("sentence_transformers") or {}
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
            overrides = {}
            if sentence_transformers.get("max_seq_length"):
                overrides["model_max_length"] = sentence_transformers["max_seq_length"]
            portable_tokenizer_config(folder / "tokenizer_config.json", overrides)
        for name in sentence_transformers.get("files", []):
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.source.folder / name, target)
        return sorted(p for p in set(folder.rglob("*")) - before if p.is_file())


# tokenizer_config.json class names only transformers 5 knows -> the class both major versions
# load the same files with. transformers 5 saves any tokenizers-backed tokenizer it has no model
# class for (every GGUF tokenizer among them) as TokenizersBackend, which transformers 4.x's
# AutoTokenizer refuses ("does not exist or is not currently imported"); PreTrainedTokenizerFast
# reads the same tokenizer.json in 4.x and is kept by 5.x as an alias of TokenizersBackend.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(path: Path, overrides: Mapping[str, Any]) -> None:
    """Rewrite a saved tokenizer_config.json with a tokenizer_class transformers 4.x also knows
    and the given keys set; nothing to do when the file is absent."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = dict(overrides)
    name = config.get("tokenizer_class")
    if name in PORTABLE_TOKENIZER_CLASSES:
        changed["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES[name]
    if any(config.get(k) != v for k, v in changed.items()):
        path.write_text(json.dumps(config | changed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
