"""PyTorch -> fp32 .tflite with litert-torch.

Encoders: one fixed-shape signature per sequence-length bucket (batch 1), named seq_<n>; the
module is traced with keyword inputs so the signature inputs keep the model's input names.
Decoders: litert-torch's Hugging Face export (prefill_<n> and decode signatures over an explicit
KV cache of max_seq_len), run on a temporary copy of the model saved as safetensors.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from edge_export.exporter.prepared import PreparedModel


def signature_name(length: int) -> str:
    """The encoder signature for one sequence-length bucket."""
    return f"seq_{length}"


def encoder(model: PreparedModel, buckets: list[int], out: Path) -> dict[str, Any]:
    """Convert the export wrapper once per bucket into one file; returns the signature table."""
    import litert_torch

    module = copy.deepcopy(model.module).eval()
    converter = litert_torch.Converter()
    for length in buckets:
        sample = {name: torch.ones(1, length, dtype=torch.long) for name in model.io.input_names}
        converter.add_signature(signature_name(length), module, sample_kwargs=sample)
    converter.convert(strict_export=False).export(str(out))
    return {signature_name(n): {"sequence": n} for n in buckets}


@contextlib.contextmanager
def _tflite_schema_alias() -> Iterator[None]:
    """litert-torch's HF export imports `tensorflow.lite.python.schema_py_generated` at import
    time (for one model family) although TensorFlow is not a dependency; ai-edge-litert ships the
    same generated schema. Alias it for the duration of the import only, then remove the alias so
    nothing else sees a fake `tensorflow` package."""
    if importlib.util.find_spec("tensorflow") is not None:
        yield
        return
    from ai_edge_litert import schema_py_generated

    added = []
    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        package = ModuleType(name)
        package.__path__ = []
        package.__spec__ = ModuleSpec(name, None, is_package=True)
        sys.modules[name] = package
        added.append(name)
    sys.modules["tensorflow.lite.python.schema_py_generated"] = schema_py_generated
    added.append("tensorflow.lite.python.schema_py_generated")
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def hf_export_modules() -> tuple[Any, Any, Any]:
    """(export, export_lib, exportable_module) of litert_torch.generative.export_hf, importable
    without TensorFlow, with transformers left as it was.

    Importing export_lib replaces `transformers.integrations.use_kernel_forward_from_hub` for the
    whole process (litert_torch/generative/export_hf/core/patches.py): every transformers model
    module imported afterwards (e.g. Mistral, Phi-3, Qwen3 when they had not been used yet) gets
    litert's RMSNorm with StableHLO composite markers, which ONNX and ExecuTorch exports of those
    models then fail on ("'NoneType' object has no attribute 'kind'" in ExecuTorch's
    ToOutVarPass). The original decorator is put back before any model module is imported."""
    import transformers

    original = transformers.integrations.use_kernel_forward_from_hub
    with _tflite_schema_alias():
        # the patch module first, on its own, and undo it before anything imports model modules:
        # export_lib itself imports some (Qwen3, Gemma3), which would keep litert's RMSNorm
        try:
            from litert_torch.generative.export_hf.core import patches  # noqa: F401
        finally:
            transformers.integrations.use_kernel_forward_from_hub = original
        from litert_torch.generative.export_hf import export
        from litert_torch.generative.export_hf.core import export_lib, exportable_module
    return export, export_lib, exportable_module


def _save_float_copy(model: PreparedModel, folder: Path) -> None:
    """save_pretrained of the loaded (float) weights; a GGUF source's quantization_config is
    dropped because the weights in memory are already dequantized."""
    model.hf_model.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    # litert-torch's cache reads num_key_value_heads, which configs without grouped-query
    # attention (GPT-2: n_head only) do not carry: every head has its own keys/values there
    if "num_key_value_heads" not in config:
        config["num_key_value_heads"] = int(model.hf_model.config.num_attention_heads)
    config_path.write_text(json.dumps(config, indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    else:  # litert-torch's loader always reads a tokenizer; it only affects its side outputs
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from transformers import PreTrainedTokenizerFast

        stand_in = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
        PreTrainedTokenizerFast(tokenizer_object=stand_in, unk_token="<unk>").save_pretrained(folder)


def decoder(model: PreparedModel, max_seq_len: int, prefill_lengths: list[int], out: Path) -> dict[str, Any]:
    """Prefill/decode signatures with the KV cache as explicit inputs/outputs; returns the table."""
    export, export_lib, exportable = hf_export_modules()
    with tempfile.TemporaryDirectory(prefix="edge-export-tflite-") as tmp:
        source, work = Path(tmp) / "hf", Path(tmp) / "work"
        work.mkdir()
        _save_float_copy(model, source)
        config = exportable.ExportableModuleConfig(
            model=str(source),
            output_dir=str(work),
            work_dir=str(work),
            task=export.ExportTask.TEXT_GENERATION,
            prefill_lengths=list(prefill_lengths),
            cache_length=int(max_seq_len),
            quantization_recipe=None,  # quantized by edge-export afterwards, per recipe
            bundle_litert_lm=False,
            keep_temporary_files=True,
            trust_remote_code=False,
            # sparse MoE: transformers' batched_mm experts, as edge-export's own loader sets them
            # (the default grouped_mm sizes its work from the routing: aten.histc, no lowering)
            moe_exports_implementation=getattr(model.hf_model.config, "_experts_implementation", None)
            if model.hf_model._can_set_experts_implementation()
            else None,
            extra_kwargs={},
        )
        # Only the prefill/decode model: the tokenizer goes into the bundle from edge-export's
        # own copy (tiny test models have none), and the .litertlm packaging is not wanted here.
        artifacts = export.run_export_tasks([export_lib.export_text_prefill_decode_model], config)
        shutil.move(str(artifacts.prefill_decode_model_path), out)
    table: dict[str, Any] = {f"prefill_{n}": {"prefill": n} for n in prefill_lengths}
    table["decode"] = {"decode": 1}
    return table
