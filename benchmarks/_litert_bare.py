"""The bare-library side of benchmarks/tflite_vs_litert.py: what a user writes with litert-torch and
ai-edge-quantizer directly, for the same recipe edge-export applies. It imports nothing from
edge-export and runs as a measured subprocess (same wall-time and RSS measurement as edge-export):

    python benchmarks/_litert_bare.py {minilm|smollm2} HF_DIR {fp32|int8|int4} OUT_DIR

and leaves the result in OUT_DIR/model.tflite.

MiniLM: the plain transformers AutoModel in a small wrapper of our own (last_hidden_state plus the
mean-pooled, L2-normalized sentence embedding, the outputs of edge-export's encoder wrapper),
converted with litert_torch.Converter into one batch-1 signature `seq_<n>` per sequence bucket
(edge-export's default buckets), then quantized with ai-edge-quantizer: int8 = the built-in
recipe `dynamic_wi8_afp32` (the same config as edge-export's int8-dynamic), int4 = the configs of
edge-export's int4-block written out (int8 token table, int4 blocks of 32 for linear layers).

SmolLM2: litert-torch's Hugging Face export, `litert_torch.generative.export_hf.export.export`,
prefill 8 and 64, KV cache 1024, quantized by its own `quantization_recipe` (HF_RECIPE below:
built-in ai-edge-quantizer recipes; see the table footnotes for how they differ from edge-export's).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

from _bench_common import sentence_embedder

BUCKETS = (16, 32, 64, 128, 256, 512)
PREFILL_LENGTHS = (8, 64)
CACHE_LENGTH = 1024
# ai-edge-quantizer recipe names for litert-torch's HF export, per benchmark precision. fp32 must
# say "none": left out, the export quantizes with its default recipe, dynamic_wi8_afp32.
HF_RECIPE = {"fp32": "none", "int8": "dynamic_wi8_afp32", "int4": "dynamic_wi4b32_afp32"}


def convert_minilm(hf_dir: Path, out: Path) -> None:
    """fp32 .tflite with one batch-1 signature per sequence bucket."""
    import litert_torch
    import torch
    from transformers import AutoModel

    module = sentence_embedder(AutoModel.from_pretrained(hf_dir).eval()).eval()
    converter = litert_torch.Converter()
    for n in BUCKETS:
        # one tensor per input: inputs sharing a tensor are traced as one graph input (aliased)
        sample = {name: torch.ones(1, n, dtype=torch.long) for name in ("input_ids", "attention_mask")}
        sample["token_type_ids"] = torch.zeros(1, n, dtype=torch.long)
        converter.add_signature(f"seq_{n}", module, sample_kwargs=sample)
    converter.convert().export(str(out))


def quantize_minilm(fp32: Path, precision: str, out: Path) -> None:
    """ai-edge-quantizer on the fp32 file, edge-export's int8-dynamic / int4-block settings."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(str(fp32))
    if precision == "int8":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    else:
        ops = qtyping.TFLOperationName
        qt.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)
        qt.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4, qtyping.QuantGranularity.BLOCKWISE_32)
    qt.quantize().export_model(str(out), overwrite=True)


def import_hf_export() -> types.ModuleType:
    """`litert_torch.generative.export_hf.export`, importable without TensorFlow.

    The module imports `tensorflow.lite.python.schema_py_generated` (for one model family) when
    it is imported. ai-edge-litert ships the same generated schema module, so stand-in packages
    point there while the import runs; they are removed afterwards so that nothing later (torch's
    dynamo probes for tensorflow by spec) mistakes them for TensorFlow."""
    if importlib.util.find_spec("tensorflow") is not None:
        from litert_torch.generative.export_hf import export

        return export
    from ai_edge_litert import schema_py_generated

    stand_ins: dict[str, types.ModuleType] = {}
    for name in ("tensorflow", "tensorflow.lite", "tensorflow.lite.python"):
        package = stand_ins[name] = types.ModuleType(name)
        package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package.__path__ = []
    stand_ins["tensorflow.lite.python"].schema_py_generated = schema_py_generated
    stand_ins["tensorflow.lite.python.schema_py_generated"] = schema_py_generated
    sys.modules.update(stand_ins)
    try:
        from litert_torch.generative.export_hf import export
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return export


def export_smollm2(hf_dir: Path, precision: str, out_dir: Path) -> Path:
    """litert-torch's HF LLM export with its built-in quantization; returns the .tflite file."""
    import_hf_export().export(
        str(hf_dir),
        str(out_dir),
        prefill_lengths=list(PREFILL_LENGTHS),
        cache_length=CACHE_LENGTH,
        quantization_recipe=HF_RECIPE[precision],
        bundle_litert_lm=False,
        keep_temporary_files=True,  # work in out_dir itself, not in a temporary folder inside it
    )
    # fp32: model.tflite; quantized: model_quantized.tflite beside the fp32 model.tflite
    return out_dir / ("model.tflite" if precision == "fp32" else "model_quantized.tflite")


def main(model: str, hf_dir: str, precision: str, out_dir: str) -> None:
    """Convert (and quantize unless fp32) into OUT_DIR/model.tflite."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.tflite"
    if model == "smollm2":
        os.replace(export_smollm2(Path(hf_dir), precision, folder), target)
    elif precision == "fp32":
        convert_minilm(Path(hf_dir), target)
    else:
        fp32 = folder / "model.fp32.tflite"
        convert_minilm(Path(hf_dir), fp32)
        quantize_minilm(fp32, precision, target)
        fp32.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("minilm", "smollm2") or sys.argv[3] not in HF_RECIPE:
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
