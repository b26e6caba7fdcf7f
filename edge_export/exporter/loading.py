"""Load a resolved model source into a PreparedModel: config, task, family, weights, tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import torch

from edge_export.errors import ConfigError, InputError, MissingDependencyError
from edge_export.exporter.families import family_for
from edge_export.exporter.prepared import PreparedModel
from edge_export.exporter.source import ModelSource, check_gguf_contents
from edge_export.exporter.tasks import auto_class, check_task, infer_task
from edge_export.files import read_json_file


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch").setLevel(logging.ERROR)
    logging.getLogger("torchao").setLevel(logging.ERROR)  # probes for CUDA-only kernels on import
    warnings.filterwarnings("ignore", category=UserWarning)


def _gguf_kwargs(source: ModelSource) -> dict[str, Any]:
    if source.gguf_file is None:
        return {}
    try:
        import gguf  # noqa: F401
        from transformers import modeling_gguf_pytorch_utils
    except ImportError as exc:
        raise MissingDependencyError("gguf", "loading .gguf models") from exc
    # Its de-quantization progress bar ignores transformers' switch and would clutter CI logs.
    modeling_gguf_pytorch_utils.tqdm = lambda iterable, **_: iterable
    return {"gguf_file": source.gguf_file.name}


def load_config(source: ModelSource, trust_remote_code: bool) -> Any:
    """The model's transformers config; remote code only when the user allowed it."""
    from transformers import AutoConfig

    check_gguf_contents(source)
    try:
        return AutoConfig.from_pretrained(
            str(source.folder), trust_remote_code=trust_remote_code, **_gguf_kwargs(source)
        )
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise InputError(
                f"{source.given} needs custom code from its repository to load",
                hint="review that code, then pass --trust-remote-code",
            ) from exc
        raise InputError(f"cannot read the config of {source.given}: {text.splitlines()[0]}") from exc
    except struct.error as exc:
        raise InputError(
            f"{source.given} is not a complete GGUF file ({exc})", hint="re-download it"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the config of {source.given}: {exc}") from exc


def read_pooling(folder: Path) -> dict[str, Any] | None:
    """Pooling of a sentence-transformers folder (modules.json), or None when it has none."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling: dict[str, Any] | None = None
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            conf = json.loads((folder / module.get("path", "") / "config.json").read_text())
            for mode in ("mean", "cls", "max"):
                if conf.get(f"pooling_mode_{mode}_tokens") or conf.get(f"pooling_mode_{mode}_token"):
                    pooling = {"mode": mode, "normalize": normalize}
                    break
            else:
                raise InputError(
                    f"unsupported sentence-transformers pooling in {modules_file}",
                    hint="edge-export supports mean, cls and max pooling",
                )
    return pooling


def read_sentence_transformers(folder: Path, pooling: dict[str, Any] | None) -> dict[str, Any] | None:
    """How sentence-transformers runs this folder, beyond the pooling the graph already applies:
    the sequence length it truncates at (sentence_bert_config.json's max_seq_length, often below
    the tokenizer's model_max_length: 256 vs 512 on all-MiniLM-L6-v2, which changes the embedding
    of a long passage) and the config files a client reads, to be copied into the bundle.
    None for folders without sentence-transformers pooling."""
    if pooling is None:
        return None
    hint = "restore the model's original sentence-transformers files"
    modules = read_json_file(folder / "modules.json", "sentence-transformers file modules.json", hint)
    files = ["modules.json"]
    settings: dict[str, Any] = {}
    if (folder / "sentence_bert_config.json").is_file():
        files.append("sentence_bert_config.json")
        settings = read_json_file(
            folder / "sentence_bert_config.json", "sentence-transformers file sentence_bert_config.json", hint
        )
    for module in modules:
        config = Path(module.get("path", "")) / "config.json"
        if module.get("type", "").endswith("Pooling") and (folder / config).is_file():
            files.append(config.as_posix())
    max_length = settings.get("max_seq_length") if isinstance(settings, dict) else None
    return {
        "pooling": pooling["mode"],
        "normalize": pooling["normalize"],
        "max_seq_length": int(max_length) if isinstance(max_length, int) and max_length > 0 else None,
        "applied_in_graph": True,  # the sentence_embedding output is pooled (and normalised) already
        "files": files,
    }


def _load_weights(source: ModelSource, task: str, trust_remote_code: bool) -> torch.nn.Module:
    cls = auto_class(task)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    kwargs.update(_gguf_kwargs(source))
    if source.kind != "gguf":
        kwargs["use_safetensors"] = not source.uses_pickle
    try:
        # Mismatched shapes are reported by check_loading_info (with names), not as transformers'
        # "You set ignore_mismatched_sizes to False" error; nothing random-initialised gets through.
        model, info = cls.from_pretrained(
            str(source.folder), output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"the pickle checkpoint of {source.given} holds objects that torch's safe loader refuses "
            "to unpickle (they could run code)",
            hint="convert it to safetensors where you trust its origin; edge-export never unpickles "
            "arbitrary objects",
        ) from exc
    except (OSError, ValueError, RuntimeError, KeyError, struct.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot load the weights of {source.given} for {task}: {first}",
            hint="check the files are complete and match config.json",
        ) from exc
    check_loading_info(source, info)
    if source.kind == "gguf":
        model = _plain_copy(cls, model)
    return traceable_experts(model).float().eval()


def traceable_experts(model: Any) -> Any:
    """Sparse MoE layers (Mixtral, Qwen3-MoE ...) switched to transformers' `batched_mm` experts:
    the default `grouped_mm` / eager paths size their work from the routing (data-dependent shapes
    no exporter traces); batched_mm gathers the chosen experts' weights per token, the same maths
    with static shapes. The reference runs the same implementation as the export."""
    if model._can_set_experts_implementation():
        model.set_experts_implementation("batched_mm")
    return model


def _names(keys: Any, limit: int = 4) -> str:
    items = sorted(str(k) if not isinstance(k, tuple) else str(k[0]) for k in keys)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_loading_info(source: ModelSource, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that does not fill the architecture exactly: transformers would
    random-initialise missing tensors (only a hidden warning), drop unexpected ones and, with
    mismatched shapes, re-initialise those too. Tied weights and non-persistent buffers are not in
    its lists (transformers resolves them), so every name listed here is a real mismatch."""
    what = "GGUF tensors" if source.kind == "gguf" else "weights"
    hint = "pass the complete, unmodified model files (config.json and weights from the same model)"
    missing, unexpected = info.get("missing_keys") or (), info.get("unexpected_keys") or ()
    mismatched = info.get("mismatched_keys") or ()
    if missing:
        raise InputError(
            f"the {what} of {source.given} lack {len(missing)} tensor(s) the architecture needs: "
            f"{_names(missing)}",
            hint=hint,
        )
    if mismatched:
        shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in sorted(mismatched)[:3])
        raise InputError(f"the {what} of {source.given} have tensors of the wrong shape: {shown}", hint=hint)
    if unexpected:
        raise InputError(
            f"the {what} of {source.given} hold {len(unexpected)} tensor(s) the architecture does not "
            f"use: {_names(unexpected)}",
            hint=hint,
        )


def _plain_copy(cls: Any, model: torch.nn.Module) -> torch.nn.Module:
    """GGUF models load flagged as quantized (no .float(), odd export paths): rebuild a plain
    model from the config and copy the dequantized weights in."""
    plain = cls.from_config(model.config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise InputError(
            f"GGUF weights do not match the architecture: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain


# Any one of these files means a folder (a model or a bundle) ships a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
_JSON_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")


# Words, digits, punctuation and non-ASCII: a tokenizer that cannot map an unknown piece (e.g. its
# unk token missing from the vocabulary) fails here, not halfway through validation.
_PROBE_TEXT = "hello world: edge-export 2026, Zürich & 東京 qzxv!"


def _check_tokenizer_files(folder: Path) -> None:
    """Each tokenizer JSON file must be readable UTF-8 JSON: transformers skips some broken ones
    without a word and would hand back a different tokenizer than the model was trained with."""
    for name in _JSON_TOKENIZER_FILES:
        path = folder / name
        if path.exists() or path.is_symlink():
            read_json_file(
                path, f"tokenizer file {name}", hint="restore the model's original tokenizer files"
            )


def _load_tokenizer(source: ModelSource) -> Any | None:
    """The model's tokenizer, or None when the folder has none (transformers would otherwise
    hand back an empty default tokenizer that encodes every text to nothing). Files that are
    there but broken are an InputError naming them: a bundle never ships without its tokenizer
    by accident, and validation never runs on ids from the wrong one."""
    from transformers import AutoTokenizer

    present = [n for n in TOKENIZER_FILES if (source.folder / n).is_file()]
    if source.kind != "gguf":
        if not present:
            return None
        _check_tokenizer_files(source.folder)
    where = source.gguf_file.name if source.gguf_file else ", ".join(present)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.folder), **_gguf_kwargs(source))
        ids = tokenizer(_PROBE_TEXT)["input_ids"]
    except Exception as exc:  # tokenizers raises plain Exception for a broken model (e.g. WordLevel's unk)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputError(
            f"the tokenizer of {source.given} ({where}) fails to load: {first}",
            hint="restore the model's original tokenizer files",
        ) from exc
    if not ids:
        raise InputError(
            f"the tokenizer of {source.given} ({where}) turns text into no token ids",
            hint="restore the model's original tokenizer files",
        )
    return tokenizer


def prepare(source: ModelSource, task: str | None, *, trust_remote_code: bool = False) -> PreparedModel:
    """Load and wrap the model for export; every check that can fail fast runs before the weights load."""
    _quiet_transformers()
    config = load_config(source, trust_remote_code)
    family = family_for(getattr(config, "model_type", "") or "")
    if task:
        task = check_task(task)
    elif not getattr(config, "architectures", None) and len(family.tasks) == 1:
        task = family.tasks[0]  # GGUF configs carry no architectures; a decoder only generates
    else:
        task = infer_task(config)
    if task not in family.tasks:
        raise ConfigError(
            f"task {task} is not supported for {family.name} models",
            hint=f"use one of: {', '.join(family.tasks)}",
        )
    extras: dict[str, Any] = {}
    sentence_transformers = None
    if task == "feature-extraction":
        extras["pooling"] = read_pooling(source.folder)
        sentence_transformers = read_sentence_transformers(source.folder, extras["pooling"])
    tokenizer = _load_tokenizer(source)
    hf_model = _load_weights(source, task, trust_remote_code)
    if task == "text-generation":
        extras.update(_generation_ids(hf_model, tokenizer))
    module, io = family.build(hf_model, task, extras)
    if sentence_transformers is not None:  # recorded in the manifest's io; used by save_tokenizer
        io.extras["sentence_transformers"] = sentence_transformers
    max_positions = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa-style position ids start after padding_idx, so the last slots are unusable.
        max_positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    notes = [] if tokenizer is not None else [NO_TOKENIZER_NOTE]
    return PreparedModel(
        notes=notes,
        weights=weights_digest(hf_model),
        source=source,
        task=task,
        family=family,
        hf_model=hf_model,
        module=module.eval(),
        io=io,
        tokenizer=tokenizer,
        sha256=source.sha256(),
        config=config,
        max_positions=min(max_positions, 4096),
    )


NO_TOKENIZER_NOTE = (
    "no tokenizer in the model folder: the bundle ships without one, and validation fed synthetic "
    "token ids instead of tokenized text"
)


def weights_digest(model: torch.nn.Module) -> dict[str, Any]:
    """What was loaded, for the report: tensor count, parameter count and one sha256 over every
    tensor (name, dtype, shape, bytes; tied tensors once), so two runs can prove they used the
    same weights whatever files they came from."""
    digest = hashlib.sha256()
    seen: set[tuple[int, int]] = set()
    count = numel = 0
    for name, tensor in sorted(model.state_dict().items()):
        key = (tensor.data_ptr(), tensor.numel())
        if key in seen:
            continue
        seen.add(key)
        count += 1
        numel += tensor.numel()
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return {"tensors": count, "parameters": numel, "sha256": digest.hexdigest()}


def _generation_ids(hf_model: torch.nn.Module, tokenizer: Any | None) -> dict[str, Any]:
    conf = getattr(hf_model, "generation_config", None)
    bos = getattr(conf, "bos_token_id", None) or getattr(tokenizer, "bos_token_id", None)
    eos = getattr(conf, "eos_token_id", None) or getattr(tokenizer, "eos_token_id", None)
    return {"bos_token_id": bos, "eos_token_id": eos, "vocab_size": int(hf_model.config.vocab_size)}
