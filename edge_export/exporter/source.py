"""Resolve the MODEL argument to files on disk and check them before anything heavy loads.

MODEL is a local Hugging Face folder, a hub id (resolved through the normal HF cache, so it works
offline when cached and honours HF_HUB_OFFLINE), or a .gguf file. Weight files are checked here:
safetensors headers must parse and match the file size; pickle-only checkpoints are refused unless
the user allows pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_export.errors import InputError, MissingDependencyError
from edge_export.files import file_sha256

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*"]


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from and which files hold its weights."""

    given: str
    kind: Literal["folder", "hub", "gguf"]
    folder: Path
    weight_files: tuple[Path, ...]
    gguf_file: Path | None = None
    uses_pickle: bool = False

    def sha256(self) -> str:
        """One digest over the weight files and config, in a stable order."""
        digest = hashlib.sha256()
        files = list(self.weight_files)
        config = self.folder / "config.json"
        if self.kind != "gguf" and config.is_file():
            files.append(config)
        for path in sorted(files):
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
        return digest.hexdigest()

    def protected_paths(self) -> tuple[Path, ...]:
        """Paths an output folder must never equal, contain or sit inside: the model folder (a
        hub snapshot included) or the .gguf file, and where its files really live (a hub
        snapshot's files are links into the cache's blobs folder)."""
        roots = [self.gguf_file] if self.gguf_file is not None else [self.folder]
        files = [*self.weight_files, *([] if self.gguf_file else [self.folder / "config.json"])]
        real = {p.resolve() for p in files} | {p.resolve().parent for p in files if p.is_symlink()}
        return tuple(dict.fromkeys([*(p.resolve() for p in roots), *sorted(real)]))


def resolve(model: str, *, allow_pickle: bool = False, revision: str | None = None) -> ModelSource:
    """Turn the MODEL argument into a checked ModelSource, or raise InputError."""
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf_source(model, path)
        raise InputError(
            f"{model} is a file but not a .gguf model",
            hint="pass a Hugging Face model folder, a hub id, or a .gguf file",
        )
    if path.is_dir():
        return _folder_source(model, path, "folder", allow_pickle)
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return _folder_source(model, _from_hub(model, revision), "hub", allow_pickle)
    raise InputError(
        f"model path {model} does not exist",
        hint="check the path, or give a hub id like org/name that is in the HF cache",
    )


def _from_hub(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers always brings huggingface_hub
        raise MissingDependencyError("all", "hub ids") from exc
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS)
    except LocalEntryNotFoundError as exc:
        raise InputError(
            f"{repo_id} is not a local path and is not in the Hugging Face cache (offline)",
            hint="download it once with network access, or pass a local model folder",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise InputError(
            f"cannot resolve hub id {repo_id}: {str(exc).splitlines()[0]}",
            hint="check the id and revision, or pass a local model folder",
        ) from exc
    return Path(folder)


def _folder_source(given: str, folder: Path, kind: str, allow_pickle: bool) -> ModelSource:
    if not (folder / "config.json").is_file():
        raise InputError(
            f"{given} has no config.json, so it is not a Hugging Face model folder",
            hint="point at the folder that holds config.json and the weights",
        )
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if safetensors:
        for file in safetensors:
            check_safetensors(file)
        return ModelSource(given, kind, folder, tuple(safetensors))  # type: ignore[arg-type]
    if pickles:
        if not allow_pickle:
            raise InputError(
                f"{given} has only pickle checkpoints ({pickles[0].name}), which can run code when loaded",
                hint="convert the weights to safetensors, or pass --allow-pickle if you trust them",
            )
        return ModelSource(given, kind, folder, tuple(pickles), uses_pickle=True)  # type: ignore[arg-type]
    raise InputError(
        f"{given} has no weight files (*.safetensors)",
        hint="put the model's safetensors weights beside config.json",
    )


def check_safetensors(path: Path) -> None:
    """Parse the header and check the data fits the file: catches corrupt and truncated files."""
    size = path.stat().st_size
    problem = None
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size, 100_000_000):
                raise ValueError("header length is larger than the file")
            header = json.loads(handle.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
        if 8 + header_len + end > size:
            problem = f"truncated: {size} bytes, header needs {8 + header_len + end}"
        else:
            _check_weight_dtypes(path, header)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as exc:
        problem = f"corrupt header ({exc})"
    if problem:
        raise InputError(
            f"weights file {path} is not a valid safetensors file: {problem}",
            hint="re-download or re-save the model's weights",
        )


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def _check_weight_dtypes(path: Path, header: dict) -> None:
    """A weight or bias stored as integers (or fp8) is not a float checkpoint transformers can cast
    losslessly: it is a quantized model (GPTQ, AWQ, bitsandbytes) or a damaged file."""
    for name, entry in header.items():
        if name == "__metadata__" or not name.endswith((".weight", ".bias")):
            continue
        dtype = str(entry.get("dtype", ""))
        if dtype not in _FLOAT_DTYPES:
            raise InputError(
                f"weights file {path} stores {name} as {dtype}, where a float (F32/F16/BF16) weight belongs",
                hint="pass the model's float weights; quantized checkpoints (GPTQ, AWQ, bitsandbytes) "
                "are not an input edge-export reads",
            )


def _gguf_source(given: str, path: Path) -> ModelSource:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise InputError(
            f"{given} has a .gguf name but is not a GGUF file (magic bytes {magic!r})",
            hint="check the file was fully downloaded, or pass the real model file",
        )
    return ModelSource(given, "gguf", path.parent, (path,), gguf_file=path)


# llama.cpp's architecture names that transformers' GGUF loader renames before its own check
_GGUF_ARCH_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                      "minimax-m2": "minimax_m2", "t5encoder": "t5"}  # fmt: skip
_UNKNOWN_TYPE = re.compile(r"(\d+)\)? is not a valid GGMLQuantizationType")


def check_gguf_contents(source: ModelSource) -> None:
    """Refuse, before transformers reads it, a GGUF file whose architecture transformers' GGUF loader
    cannot read, or whose tensors are in a type it cannot dequantize: one InputError naming the
    architecture or type and the way out, where transformers would fail deep in loading (or, for a
    Mixtral-style llama, load a model with its experts missing)."""
    if source.gguf_file is None:
        return
    try:
        import gguf
    except ImportError as exc:
        raise MissingDependencyError("gguf", "loading .gguf models") from exc
    try:
        reader = gguf.GGUFReader(source.gguf_file)
    except (ValueError, struct.error, IndexError, KeyError, OSError, UnicodeDecodeError) as exc:
        unknown = _UNKNOWN_TYPE.search(str(exc))
        if unknown:
            raise InputError(
                f"{source.given} stores a tensor in GGUF type id {unknown.group(1)}, which the installed "
                "gguf package does not know",
                hint="upgrade the gguf package, or re-quantize the model to a common type such as Q4_K_M "
                "or Q8_0 with llama.cpp's llama-quantize",
            ) from exc
        raise InputError(
            f"{source.given} is not a complete GGUF file ({exc})", hint="re-download it"
        ) from exc
    _check_gguf_architecture(source.given, reader)
    _check_gguf_tensor_types(source.given, reader)


def _gguf_field(reader: object, key: str) -> object:
    """A scalar metadata value (str or number), or None when the file lacks it."""
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    return None if field is None or not field.data else field.contents()


def _readable_gguf_architectures() -> set[str] | None:
    """`general.architecture` values transformers' GGUF loader reads; None when this transformers
    does not say (the check is then left to it)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    # its table also holds the "general" and "tokenizer" key groups, and "mistral", which no file
    # names (llama.cpp writes Mistral as llama) and gguf has no tensor map for
    readable = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "mistral"}
    readable |= {arch for arch, renamed in _GGUF_ARCH_RENAMES.items() if renamed in readable}
    try:  # the second reader (qwen35, lfm2 ...); older transformers have none
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS as second
    except (ImportError, AttributeError):
        second = {}
    return readable | set(second)


def _check_gguf_architecture(given: str, reader: object) -> None:
    arch = _gguf_field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise InputError(
            f"{given} has no general.architecture in its GGUF metadata", hint="re-download or re-convert it"
        )
    readable = _readable_gguf_architectures()
    if readable is not None and arch not in readable:
        raise InputError(
            f"{given} is a GGUF of architecture '{arch}', which transformers' GGUF loader cannot read "
            f"(it reads: {', '.join(sorted(readable))})",
            hint="export the original Hugging Face checkpoint (config.json + safetensors) instead",
        )
    experts = _gguf_field(reader, f"{arch}.expert_count")
    if arch == "llama" and isinstance(experts, int) and experts > 0:
        raise InputError(
            f"{given} is a mixture-of-experts llama GGUF ({experts} experts, Mixtral-style), which "
            "transformers' GGUF loader reads as a dense Llama without its experts",
            hint="export the original Hugging Face checkpoint (config.json + safetensors) instead",
        )


def _dequantizable(qtype: object) -> bool:
    """Whether gguf (what transformers dequantizes GGUF tensors with) decodes this tensor type."""
    import gguf
    import numpy as np

    size = gguf.GGML_QUANT_SIZES.get(qtype)  # type: ignore[call-overload]
    if size is None:
        return False
    try:
        gguf.quants.dequantize(np.zeros((1, size[1]), np.uint8), qtype)  # type: ignore[arg-type]
    except NotImplementedError:
        return False
    return True


def _check_gguf_tensor_types(given: str, reader: object) -> None:
    import gguf

    by_type: dict[str, list[str]] = {}
    for tensor in reader.tensors:  # type: ignore[attr-defined]
        if not _dequantizable(tensor.tensor_type):
            by_type.setdefault(tensor.tensor_type.name, []).append(tensor.name)
    if not by_type:
        return
    kind, names = next(iter(by_type.items()))
    more = f" and {len(names) - 2} more" if len(names) > 2 else ""
    readable = ", ".join(t.name for t in gguf.GGMLQuantizationType if _dequantizable(t))
    raise InputError(
        f"{given} stores {len(names)} tensor(s) as GGUF type {kind} ({', '.join(names[:2])}{more}), "
        f"which transformers cannot dequantize (it reads {readable})",
        hint="re-quantize the model to a type it reads, such as Q4_K_M or Q8_0, with llama.cpp's "
        "llama-quantize, or export the original safetensors checkpoint",
    )
