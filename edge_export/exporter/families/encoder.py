"""BERT-like encoders (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA, CamemBERT, DeBERTa-v2/v3,
ModernBERT, MiniLM ...).

Inputs: input_ids, attention_mask (+ token_type_ids when the model uses segment ids), all with
dynamic batch and sequence axes. Outputs per task: last_hidden_state (+ sentence_embedding when the
folder is a sentence-transformers model), or logits ([batch, labels] for text classification,
[batch, sequence, labels] for token classification, [batch, sequence, vocab] for fill-mask).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from edge_export.exporter.families import Family
from edge_export.exporter.iospec import IOSpec, TensorSpec

MODEL_TYPES = (
    "bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "deberta-v2", "modernbert",
)  # fmt: skip
TASKS = ("feature-extraction", "text-classification", "token-classification", "fill-mask")


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str, normalize: bool) -> torch.Tensor:
    """Sentence-transformers pooling over valid tokens (mean, cls or max), optionally L2-normed."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = (hidden + (weights - 1.0) * 1e9).max(dim=1).values
    else:
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if normalize:
        pooled = nn.functional.normalize(pooled, p=2.0, dim=-1)
    return pooled


class EncoderForExport(nn.Module):
    """Fixed positional signature over an HF encoder, returning a tuple of tensors."""

    def __init__(self, model: nn.Module, task: str, pooling: dict[str, Any] | None) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = pooling

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        if self.task != "feature-extraction":
            return (out.logits,)
        hidden = out.last_hidden_state
        if not self.pooling:
            return (hidden,)
        embedding = pool(hidden, attention_mask, self.pooling["mode"], self.pooling["normalize"])
        return hidden, embedding


def uses_token_type_ids(hf_model: nn.Module) -> bool:
    """True when the model takes segment ids that can differ from zero."""
    params = inspect.signature(hf_model.forward).parameters
    return "token_type_ids" in params and getattr(hf_model.config, "type_vocab_size", 0) > 1


def build(hf_model: nn.Module, task: str, extras: dict[str, Any]) -> tuple[nn.Module, IOSpec]:
    """Wrapper and IO spec for one encoder task."""
    config = hf_model.config
    names = ["input_ids", "attention_mask"]
    if uses_token_type_ids(hf_model):
        names.append("token_type_ids")
    inputs = [TensorSpec(n, "int64", ("batch", "sequence")) for n in names]
    pooling = extras.get("pooling") if task == "feature-extraction" else None
    if task == "feature-extraction":
        outputs = [TensorSpec("last_hidden_state", "float32", ("batch", "sequence", config.hidden_size))]
        if pooling:
            outputs.append(TensorSpec("sentence_embedding", "float32", ("batch", config.hidden_size)))
        primary = "sentence_embedding" if pooling else "last_hidden_state"
    elif task == "text-classification":
        outputs = [TensorSpec("logits", "float32", ("batch", config.num_labels))]
        primary = "logits"
    elif task == "token-classification":
        outputs = [TensorSpec("logits", "float32", ("batch", "sequence", config.num_labels))]
        primary = "logits"
    else:
        outputs = [TensorSpec("logits", "float32", ("batch", "sequence", config.vocab_size))]
        primary = "logits"
    spec = IOSpec("encoder", inputs, outputs, primary, extras={"pooling": pooling})
    return EncoderForExport(hf_model, task, pooling), spec


FAMILY = Family("bert-like encoder", MODEL_TYPES, TASKS, build)
