"""Numeric comparison of a candidate output with the fp32 reference.

All functions take `valid`, a boolean mask over the leading (batch, sequence) positions, so padded
positions never count: padding outputs are not part of any model's contract.
"""

from __future__ import annotations

import numpy as np


def _rows(array: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Flatten to [rows, features] keeping only valid leading positions."""
    array = np.asarray(array, dtype=np.float64)
    if valid is not None and valid.shape == array.shape[: valid.ndim]:
        array = array[valid.astype(bool)]
    return array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)


def max_abs_error(ref: np.ndarray, cand: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Largest absolute difference."""
    return float(np.max(np.abs(_rows(ref, valid) - _rows(cand, valid)), initial=0.0))


def sqnr_db(ref: np.ndarray, cand: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    r, c = _rows(ref, valid), _rows(cand, valid)
    noise = float(np.sum((r - c) ** 2))
    signal = float(np.sum(r**2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(signal, 1e-30) / noise))


def row_cosines(ref: np.ndarray, cand: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of each row (token or sample vector)."""
    r, c = _rows(ref, valid), _rows(cand, valid)
    dot = np.sum(r * c, axis=-1)
    norms = np.linalg.norm(r, axis=-1) * np.linalg.norm(c, axis=-1)
    both_zero = norms == 0
    return np.where(both_zero, 1.0, dot / np.where(both_zero, 1.0, norms))


def norm_ratio_dev(ref: np.ndarray, cand: np.ndarray, valid: np.ndarray | None = None) -> float:
    """|norm(candidate) / norm(reference) - 1| over all valid rows together: the overall scale a
    cosine cannot see (an embedding x1.2 has cosine 1.0 and deviation 0.2). Over all rows, not the
    worst row: single rows of quantized logits legitimately move by 20-120% (SmolLM2 int8 / int4)."""
    r, c = _rows(ref, valid), _rows(cand, valid)
    ref_norm, cand_norm = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if ref_norm == 0.0:
        return 0.0 if cand_norm == 0.0 else float("inf")
    return abs(cand_norm / ref_norm - 1.0)


def top1_agreement(ref: np.ndarray, cand: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Fraction of rows whose argmax is the same."""
    r, c = _rows(ref, valid), _rows(cand, valid)
    if len(r) == 0:
        return 1.0
    return float(np.mean(np.argmax(r, axis=-1) == np.argmax(c, axis=-1)))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over valid tokens: the embedding of a model without its own pooling head."""
    weights = mask[..., None].astype(np.float64)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def matching_prefix(ref_tokens: list[int], cand_tokens: list[int]) -> int:
    """How many leading tokens two generations share."""
    count = 0
    for a, b in zip(ref_tokens, cand_tokens, strict=False):
        if a != b:
            break
        count += 1
    return count
