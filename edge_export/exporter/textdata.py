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
from edge_export.files import read_user_text


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


def _jsonl_record_text(record: object, where: str) -> str:
    """The text of one JSONL record: a string, or an object's "text" (else its first string field)."""
    if isinstance(record, str):
        text: object = record
    elif isinstance(record, dict):
        text = record.get("text", next((v for v in record.values() if isinstance(v, str)), None))
    else:
        raise InputError(
            f"{where} is a JSON {type(record).__name__}, not a text record",
            hint='write one {"text": "..."} object (or one JSON string) per line',
        )
    if not isinstance(text, str):
        raise InputError(
            f'{where} has no text: its "text" field is missing or not a string',
            hint='write one {"text": "..."} object (or one JSON string) per line',
        )
    return text


def _jsonl_texts(path: Path, content: str) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            message = getattr(exc, "msg", "nested too deeply")
            raise InputError(
                f"{path}:{number} is not valid JSON ({message})", hint="one JSON value per line"
            ) from exc
        text = _jsonl_record_text(record, f"{path}:{number}")
        if text.strip():
            texts.append(text)
    return texts


def load_text(path: Path | None) -> TextData:
    """Text from a data file, or the built-in sample when no file is given."""
    if path is None:
        return builtin_text()
    if not path.exists() and not path.is_symlink():
        raise InputError(f"data file {path} does not exist", hint="pass an existing .txt or .jsonl file")
    if path.suffix not in (".jsonl", ".txt") and not path.is_dir():
        raise InputError(f"unsupported data file type {path.suffix!r}", hint="use a .txt or .jsonl file")
    content = read_user_text(path, "--data", InputError)
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(path, content)
    else:
        texts = [line.strip() for line in content.splitlines() if line.strip()]
    if len(texts) < 2:
        raise InputError(f"data file {path} has fewer than 2 text samples", hint="add more lines of text")
    return TextData(texts, "\n\n".join(texts), str(path))
