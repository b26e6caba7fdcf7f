"""What an export cache key is made of: everything that shapes a bundle and its host accuracy.

The key is the sha256 of a canonical JSON document of the parts the run passes in (model content,
recipe and resolved options, validation settings and data, library versions). Two runs share an
entry only when every part is equal, so a change to any of them re-exports just what it touches.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_export.files import file_sha256
from edge_export.report.schema import tool_versions

# Bump when the entry layout or the meaning of a key part changes: old entries then never match.
CACHE_FORMAT = 1
# Small files beside the weights that shape a bundle: configs, tokenizers, the model's own code.
_AUX_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".py", ".jinja")


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of `parts` (sorted keys, mappings and tuples made plain)."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **_plain(parts)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # a Path, an enum: their text is what they mean here


def text_sha256(samples: Iterable[str], passage: str) -> str:
    """sha256 of the validation/calibration text itself (not its path: a moved file is the same data,
    an edited one is not)."""
    return hashlib.sha256(json.dumps([list(samples), passage]).encode()).hexdigest()


def model_files_sha256(folder: Path, weight_files: Iterable[Path], single_file: bool) -> str:
    """sha256 of the small files beside the weights (tokenizer, generation config, remote code):
    the model's own sha256 covers only the weights and config.json, but the tokenizer ends up in
    the bundle and decides the validation ids. A single-file model (GGUF) carries them inside."""
    digest = hashlib.sha256()
    if single_file:
        return digest.hexdigest()
    skip = {p.resolve() for p in weight_files}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.resolve() in skip or not (path.suffix in _AUX_SUFFIXES or path.name.startswith("tokenizer")):
            continue
        digest.update(relative.as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def library_versions(extra: str, module: str | None = None) -> dict[str, str]:
    """Versions that shape an artifact: edge-export (and a digest of its code), Python, the core
    libraries, the platform, every package of the target's pip extra, and the distribution that
    provides the target's module (a third-party target). A package that is not installed is
    recorded as "missing"."""
    versions = dict(tool_versions())
    versions["edge_export_code"] = package_code_sha256()
    versions["platform"] = f"{platform.system()}-{platform.machine()}"
    names = list(_extra_packages(extra))
    if module:
        names += _distributions().get(module.split(".")[0], [])
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


@functools.cache
def package_code_sha256() -> str:
    """sha256 of edge-export's own source files: a development install keeps its version number
    while its code changes, and bundles made by an older exporter must not be reused by a newer one."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


@functools.cache
def _extra_packages(extra: str) -> tuple[str, ...]:
    """Names of the packages edge-export's metadata lists under `extra` (none for an unknown extra)."""
    from packaging.requirements import Requirement

    try:
        requirements = importlib.metadata.requires("edge-export") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree without installed metadata
        return ()
    names = []
    for text in requirements:
        requirement = Requirement(text)
        marker = requirement.marker
        in_extra = marker is not None and "extra" in str(marker) and marker.evaluate({"extra": extra})
        if in_extra and requirement.name != "edge-export":  # `all` names edge-export's own extras
            names.append(requirement.name)
    return tuple(sorted(set(names)))


@functools.lru_cache(maxsize=1)
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()
