"""Real text for validation and calibration: a small built-in sample, or the user's --data file.

Supported data files: .txt (one sample per non-empty line) and .jsonl (the "text" field, or the
first string field of each object).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edge_export.errors import InputError


@dataclass(frozen=True)
class TextData:
    """Short samples (sentences) and one long passage (for perplexity and long sequences)."""

    samples: list[str]
    passage: str
    origin: str


def _builtin(name: str) -> str:
    return resources.files("edge_export.data").joinpath(name).read_text(encoding="utf-8")


def builtin_text() -> TextData:
    """The sample shipped with edge-export: 20 plain English sentences and a 4-paragraph passage."""
    samples = [line.strip() for line in _builtin("sample.txt").splitlines() if line.strip()]
    return TextData(samples, _builtin("passage.txt").strip(), "built-in sample")


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number} is not valid JSON ({exc.msg})") from exc
        if isinstance(record, str):
            texts.append(record)
            continue
        value = record.get("text") if isinstance(record, dict) else None
        if value is None and isinstance(record, dict):
            value = next((v for v in record.values() if isinstance(v, str)), None)
        if value:
            texts.append(value)
    return texts


def load_text(path: Path | None) -> TextData:
    """Text from a data file, or the built-in sample when no file is given."""
    if path is None:
        return builtin_text()
    if not path.is_file():
        raise InputError(f"data file {path} does not exist", hint="pass an existing .txt or .jsonl file")
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(path)
    elif path.suffix == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise InputError(f"unsupported data file type {path.suffix!r}", hint="use a .txt or .jsonl file")
    if len(texts) < 2:
        raise InputError(f"data file {path} has fewer than 2 text samples", hint="add more lines of text")
    return TextData(texts, "\n\n".join(texts), str(path))
