"""The bundle's own tokenizer in the loop: the tokenizer shipped in a bundle must turn the
validation text into exactly the ids the source tokenizer makes (every sample and the passage),
with the same special tokens, chat template and padding side. Validation feeds ids, so without
this check a bundle carrying another model's tokenizer, or a vocabulary with shuffled ids, passes
every gate while an app using it would feed the model nonsense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_export.exporter.loading import TOKENIZER_FILES

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _facts(tokenizer: Any) -> dict[str, Any]:
    """What a client reads besides the ids: special tokens (text and id), chat template, padding side."""
    facts: dict[str, Any] = {"padding_side": getattr(tokenizer, "padding_side", None)}
    for name in _SPECIAL:
        token = getattr(tokenizer, name, None)
        facts[name] = None if token is None else [str(token), getattr(tokenizer, f"{name}_id", None)]
    facts["chat_template"] = getattr(tokenizer, "chat_template", None)
    return facts


def check_bundle_tokenizer(source: Any, bundle: Path, texts: list[str]) -> dict[str, Any]:
    """Compare the bundle's tokenizer with the source's on `texts`; `failure` is None when equal.

    `source` is the tokenizer the model was loaded with (None: the model has none, nothing to
    check). The result is recorded in the accuracy section of the result and manifest."""
    if source is None:
        return {"checked": False, "reason": "the model has no tokenizer", "failure": None}
    if not any((bundle / name).is_file() for name in TOKENIZER_FILES):
        return {"checked": True, "failure": "the bundle ships no tokenizer, but the model has one"}
    from transformers import AutoTokenizer

    try:
        shipped = AutoTokenizer.from_pretrained(str(bundle))
    except Exception as exc:  # tokenizers raises plain Exception for a broken model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"checked": True, "failure": f"the bundle's tokenizer does not load: {first}"}
    mismatched = []
    for index, text in enumerate(texts):
        expected, got = source(text)["input_ids"], shipped(text)["input_ids"]
        if expected != got:
            at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
            mismatched.append({"sample": index, "position": at if at is not None else min(len(expected), len(got)),
                               "expected": expected[:12], "got": got[:12]})  # fmt: skip
    facts, shipped_facts = _facts(source), _facts(shipped)
    differing = sorted(key for key in facts if facts[key] != shipped_facts[key])
    problems = []
    if mismatched:
        problems.append(f"ids differ from the source tokenizer's on {len(mismatched)} of {len(texts)} texts")
    if differing:
        problems.append(f"{', '.join(differing)} differ from the source tokenizer's")
    return {
        "checked": True,
        "texts": len(texts),
        "mismatched_texts": len(mismatched),
        "first_mismatch": mismatched[0] if mismatched else None,
        "differing": differing,
        "failure": f"the bundle's tokenizer is not the model's: {'; '.join(problems)}" if problems else None,
    }
