"""Greedy generation and perplexity over a graph with explicit KV-cache inputs and outputs.

The same session drives the PyTorch reference and every runtime whose graph follows the
past_key_values.{i}.key/value -> present.{i}.key/value convention, so their results compare 1:1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class KVCacheSession:
    """Batch-1 decoding state: past tensors, their length, and one `step` per chunk of tokens."""

    prefill = None  # no separate prompt path: `step` takes the whole prompt

    def __init__(self, run: RunFn, io: Mapping[str, Any]) -> None:
        self._run = run
        names = [t["name"] for t in io["inputs"]]
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_positions = "position_ids" in names
        cache = io["cache"]
        self._empty = np.zeros((1, cache["kv_heads"], 0, cache["head_dim"]), dtype=np.float32)
        self.past: dict[str, np.ndarray] = {}
        self.length = 0
        self.capacity: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the cache; the next step is a prefill."""
        self.past = {name: self._empty for name in self.past_names}
        self.length = 0

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed tokens [1, n]; returns logits [1, n, vocab] and extends the cache."""
        token_ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        count = token_ids.shape[1]
        feeds: dict[str, np.ndarray] = {
            "input_ids": token_ids,
            "attention_mask": np.ones((1, self.length + count), dtype=np.int64),
        }
        if self.has_positions:
            feeds["position_ids"] = np.arange(self.length, self.length + count, dtype=np.int64)[None]
        feeds.update(self.past)
        out = self._run(feeds)
        self.past = {p: np.asarray(out[q]) for p, q in zip(self.past_names, self.present_names, strict=True)}
        self.length += count
        return np.asarray(out["logits"])


class StaticCacheSession:
    """Batch-1 decoding for programs that keep their KV cache inside (ExecuTorch .pte).

    `run(input_ids [1, n], cache_position [n]) -> logits [1, n, vocab]`; reset only rewinds the
    position because every call overwrites the cache from its start position on.
    """

    prefill = None  # no separate prompt path: `step` takes the whole prompt

    def __init__(self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], capacity: int | None) -> None:
        self._run = run
        self.capacity = capacity
        self.length = 0

    def reset(self) -> None:
        """The next step is a prefill at position 0."""
        self.length = 0

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed tokens [1, n] at the next positions; returns logits [1, n, vocab]."""
        token_ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
        count = token_ids.shape[1]
        if self.capacity is not None and self.length + count > self.capacity:
            raise ValueError(f"{self.length + count} tokens exceed the program's cache of {self.capacity}")
        positions = np.arange(self.length, self.length + count, dtype=np.int64)
        logits = np.asarray(self._run(token_ids, positions))
        self.length += count
        return logits.reshape(1, count, -1)


class Session(Protocol):
    """What generation and perplexity need from a decoding session (any runtime's)."""

    capacity: int | None
    length: int
    # The fast prompt path (ids [n] -> logits [1, 1, vocab]) where the program has one (TFLite
    # prefill signatures), else None.
    prefill: Callable[[np.ndarray], np.ndarray] | None

    def reset(self) -> None:
        """Forget the cache; the next step starts at position 0."""

    def step(self, token_ids: np.ndarray) -> np.ndarray:
        """Feed tokens [1, n]; logits [1, n, vocab]."""
        ...


def session_for(model: Any, io: Mapping[str, Any]) -> Session:
    """The model's own session when it keeps state inside, else one over explicit past/present."""
    own = model.lm_session()
    return own if own is not None else KVCacheSession(model.run, io)


def prompt_logits(session: Session, prompt: list[int]) -> np.ndarray:
    """Logits [1, 1, vocab] after the whole prompt, through the session's fast prompt path when it
    has one (prefill signatures), else the last position of `step`."""
    fast = session.prefill
    if fast is not None:
        session.reset()
        return np.asarray(fast(np.array(prompt)))
    session.reset()
    return session.step(np.array(prompt))[:, -1:]


def greedy_generate(
    session: Session,
    prompt: list[int],
    max_new_tokens: int,
    eos_token_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Prefill the prompt, then append argmax tokens one at a time (stops at EOS)."""
    logits = prompt_logits(session, prompt)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(logits[0, -1]))
        generated.append(token)
        if on_token is not None:
            on_token(token)
        if eos_token_id is not None and token == eos_token_id:
            break
        logits = session.step(np.array([token]))
    return generated


def forced_decode_logits(session: Session, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] of the decode path: the prompt, then `tokens` fed one at a time
    through the session's own cache (teacher forcing), so a candidate's single-token steps are
    scored on the reference's continuation even after its own greedy choice went elsewhere."""
    rows = [prompt_logits(session, prompt)[0, -1]]
    for token in tokens[:-1]:
        rows.append(session.step(np.array([token]))[0, -1])
    return np.stack(rows).astype(np.float32)


def token_logits(session: Session, token_ids: list[int], chunk: int = 256) -> np.ndarray:
    """Logits [n, vocab] for every position of a text, fed in chunks through the cache."""
    session.reset()
    parts = [session.step(np.array(token_ids[i : i + chunk]))[0] for i in range(0, len(token_ids), chunk)]
    return np.concatenate(parts, axis=0)


def perplexity(logits: np.ndarray, token_ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of token_ids[1:] given logits[:-1]."""
    logits = logits[:-1].astype(np.float64)
    targets = np.asarray(token_ids[1:])
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(targets)), targets].mean()
    return float(np.exp(nll))
