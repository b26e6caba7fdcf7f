"""Validation, calibration and latency inputs built from real text and the model's IO spec.

Every validation run covers at least batch 1 and batch 2, short and long sequences, padding, and
(for decoders) a step with a non-empty KV cache taken from the reference itself.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_export.exporter.prepared import CalibrationSet, PreparedModel
from edge_export.exporter.textdata import TextData

LONG_TOKENS = 256


@dataclass
class Case:
    """Named graph feeds plus the mask of positions whose outputs count."""

    name: str
    feeds: dict[str, np.ndarray]
    valid: np.ndarray
    masked_positions: np.ndarray | None = None


def encode(model: PreparedModel, text: str, limit: int, special: bool = True) -> list[int]:
    """Token ids of a text; without a tokenizer, stable hashed word ids (plumbing only)."""
    if model.tokenizer is not None:
        ids = model.tokenizer(text, add_special_tokens=special)["input_ids"]
    else:
        vocab = int(model.hf_model.config.vocab_size)
        low = min(5, vocab - 1)
        ids = [low + zlib.crc32(w.encode()) % (vocab - low) for w in text.split()]
    return list(ids[:limit])


def pad_id(model: PreparedModel) -> int:
    """The tokenizer's pad id, else EOS, else 0."""
    tok = model.tokenizer
    for value in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
        if value is not None:
            return int(value)
    return 0


def _batch(rows: list[list[int]], pad: int, left: bool) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def _encoder_case(model: PreparedModel, name: str, texts: list[str], limit: int) -> Case:
    ids, mask = _batch([encode(model, t, limit) for t in texts], pad_id(model), left=False)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in model.io.input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return Case(name, feeds, mask.astype(bool))


def _mask_tokens(model: PreparedModel, case: Case) -> None:
    """Fill-mask: replace every 6th real token by the mask token and score only those positions."""
    mask_id = getattr(model.tokenizer, "mask_token_id", None)
    ids = case.feeds["input_ids"]
    chosen = np.zeros_like(case.valid)
    chosen[:, 1::6] = True
    chosen &= case.valid
    chosen[:, 0] = False
    if mask_id is not None:
        ids[chosen] = mask_id
    case.masked_positions = chosen


def encoder_cases(model: PreparedModel, text: TextData) -> list[Case]:
    """batch 1 short; batch 2 long with padding; a batch of real sentences."""
    long_limit = min(model.max_positions, LONG_TOKENS)
    cases = [
        _encoder_case(model, "batch1-short", text.samples[:1], 64),
        _encoder_case(model, "batch2-long-padded", [text.passage, text.samples[1]], long_limit),
        _encoder_case(model, "real-sentences", text.samples[:16], 64),
    ]
    if model.task == "fill-mask":
        for case in cases:
            _mask_tokens(model, case)
    return cases


def _empty_past(model: PreparedModel, batch: int) -> dict[str, np.ndarray]:
    geo = model.io.cache
    shape = (batch, geo["kv_heads"], 0, geo["head_dim"])
    return {n: np.zeros(shape, np.float32) for n in model.io.input_names if n.startswith("past_")}


def decoder_cases(model: PreparedModel, text: TextData, reference: Any) -> list[Case]:
    """batch 1 prefill; batch 2 left-padded prefill; batch 2 continuing from the reference's cache."""
    limit = min(model.max_positions // 2, LONG_TOKENS)
    one = np.array([encode(model, text.passage, limit)], dtype=np.int64)
    cases = [_prefill_case(model, "batch1-prefill", one, np.ones_like(one))]
    ids, mask = _batch([encode(model, t, 48) for t in text.samples[2:4]], pad_id(model), left=True)
    padded = _prefill_case(model, "batch2-padded-prefill", ids, mask)
    cases.append(padded)
    present = reference.run(padded.feeds)
    new_ids = np.array([encode(model, t, 4, special=False) for t in text.samples[4:6]], dtype=np.int64)
    new_mask = np.concatenate([mask, np.ones_like(new_ids)], axis=1)
    start = padded.feeds["position_ids"].max(axis=1, keepdims=True) + 1
    feeds = {
        "input_ids": new_ids,
        "attention_mask": new_mask,
        "position_ids": start + np.arange(new_ids.shape[1])[None],
    }
    for name in model.io.input_names:
        if name.startswith("past_key_values."):
            feeds[name] = present[name.replace("past_key_values.", "present.")]
    cases.append(Case("batch2-with-past", feeds, np.ones_like(new_ids, dtype=bool)))
    return cases


def _prefill_case(model: PreparedModel, name: str, ids: np.ndarray, mask: np.ndarray) -> Case:
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask.astype(np.int64), "position_ids": positions}
    feeds.update(_empty_past(model, ids.shape[0]))
    return Case(name, feeds, mask.astype(bool))


def calibration_set(model: PreparedModel, text: TextData, count: int, length: int = 64) -> CalibrationSet:
    """Batch-1 feeds of real text, all `length` tokens long (histogram calibrators need one shape).

    Encoders get one sentence per feed, right-padded with a zero attention mask; decoders get
    consecutive windows of the text as prefill with an empty cache.
    """
    feeds: list[dict[str, np.ndarray]] = []
    if model.io.kind == "decoder":
        stream = encode(model, " ".join([*text.samples, text.passage]), 1 << 20)
        windows = [stream[i : i + length] for i in range(0, len(stream) - length + 1, length)]
        for window in windows[:count]:
            ids = np.array([window], dtype=np.int64)
            feeds.append(_prefill_case(model, "calibration", ids, np.ones_like(ids)).feeds)
        return CalibrationSet(feeds, f"{len(feeds)} windows of {length} tokens from {text.origin}")
    for sample in [*text.samples, text.passage][:count]:
        row = encode(model, sample, length)
        ids = np.full((1, length), pad_id(model), dtype=np.int64)
        mask = np.zeros((1, length), dtype=np.int64)
        ids[0, : len(row)], mask[0, : len(row)] = row, 1
        item = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in model.io.input_names:
            item["token_type_ids"] = np.zeros_like(ids)
        feeds.append(item)
    return CalibrationSet(feeds, f"{len(feeds)} samples of {length} tokens from {text.origin}")


def latency_text(text: TextData) -> str:
    """Text long enough for any latency shape (the passage repeated)."""
    return " ".join([text.passage] * 4)


def latency_feeds(ids: list[int], batch: int, decoder: bool, token_types: bool) -> dict[str, np.ndarray]:
    """Encoders: one [batch, len(ids)] feed. Decoders: the ids as a prompt for generate mode."""
    if decoder:
        return {"prompt_ids": np.array(ids, dtype=np.int64)}
    rows = np.tile(np.array(ids, dtype=np.int64), (batch, 1))
    feeds = {"input_ids": rows, "attention_mask": np.ones_like(rows)}
    if token_types:
        feeds["token_type_ids"] = np.zeros_like(rows)
    return feeds


def latency_inputs(model: PreparedModel, text: TextData, batch: int, tokens: int) -> dict[str, np.ndarray]:
    """Latency inputs of `tokens` real-text tokens for a prepared model."""
    decoder = model.io.kind == "decoder"
    ids = encode(model, latency_text(text), tokens, special=not decoder)
    return latency_feeds(ids, batch, decoder, "token_type_ids" in model.io.input_names)
