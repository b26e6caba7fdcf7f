"""The bare-library side of benchmarks/tflite_vs_litert.py: what a user writes with litert-torch and
ai-edge-quantizer directly, with the same recipe edge-export applies. Run as a measured subprocess:

    python benchmarks/_litert_bare.py {minilm|smollm2} HF_DIR {fp32|int8|int4} OUT.tflite

MiniLM: the plain transformers AutoModel, one signature per sequence bucket (16..512), like
edge-export's encoder export (edge-export's wrapper also returns the pooled sentence embedding).
SmolLM2: litert-torch's Hugging Face export (prefill 8 and 64, cache 1024, no quantization), then
ai-edge-quantizer. Quantization configs are the ones edge-export's recipes load.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

BUCKETS = (16, 32, 64, 128, 256, 512)


def convert_minilm(hf_dir: Path, out: Path) -> None:
    """fp32 .tflite with one batch-1 signature per bucket."""
    import litert_torch
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(hf_dir).eval()
    converter = litert_torch.Converter()
    for n in BUCKETS:
        ones = torch.ones(1, n, dtype=torch.long)
        sample = {"input_ids": ones, "attention_mask": ones, "token_type_ids": torch.zeros_like(ones)}
        converter.add_signature(f"seq_{n}", model, sample_kwargs=sample)
    converter.convert().export(str(out))


def convert_smollm2(hf_dir: Path, out: Path) -> None:
    """litert-torch's HF LLM export, unquantized (TensorFlow's schema module aliased as
    edge-export does: the export module imports it although TensorFlow is not installed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edge_export.targets.tflite.convert import hf_export_modules

    export, _, _ = hf_export_modules()
    with tempfile.TemporaryDirectory() as tmp:
        export.export(str(hf_dir), tmp, prefill_lengths=[8, 64], cache_length=1024,
                      quantization_recipe="none", bundle_litert_lm=False, keep_temporary_files=True)  # fmt: skip
        shutil.move(str(Path(tmp) / "model.tflite"), out)


def quantize(fp32: Path, precision: str, out: Path) -> None:
    """ai-edge-quantizer with edge-export's int8-dynamic / int4-block configs."""
    from ai_edge_quantizer import qtyping, quantizer

    ops = qtyping.TFLOperationName
    qt = quantizer.Quantizer(str(fp32))
    if precision == "int8":
        qt.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8)
    else:
        qt.add_dynamic_config(".*", ops.EMBEDDING_LOOKUP, 8)
        qt.add_dynamic_config(".*", ops.FULLY_CONNECTED, 4, qtyping.QuantGranularity.BLOCKWISE_32)
        qt.add_dynamic_config("down_proj", ops.FULLY_CONNECTED, 8)
        qt.add_dynamic_config("logits", ops.FULLY_CONNECTED, 8)
    qt.quantize(enable_progress_bar=False).export_model(str(out), overwrite=True)


def main(model: str, hf_dir: str, precision: str, out: str) -> None:
    """Convert, then quantize unless fp32."""
    target = Path(out)
    fp32 = target if precision == "fp32" else target.with_suffix(".fp32.tflite")
    (convert_minilm if model == "minilm" else convert_smollm2)(Path(hf_dir), fp32)
    if precision != "fp32":
        quantize(fp32, precision, target)
        fp32.unlink()


if __name__ == "__main__":
    main(*sys.argv[1:5])
