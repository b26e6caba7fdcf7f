"""ONNX Runtime post-export quantization: fp16, dynamic int8, static QDQ int8, int4 MatMulNBits.

Each function takes a clean fp32 model file and writes the quantized model to `out`. ORT's tools
write temporary files into the working directory, so each runs inside its own scratch folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_export.exporter.prepared import CalibrationSet
from edge_export.targets.stages import outlier_names

# ORT's quantizers log warnings we act on ourselves (e.g. the opset bump for int4 Gather).
logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)


@contextlib.contextmanager
def scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary working directory beside the output, removed afterwards."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(dir=near, prefix=".ort-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


def untied_copy(src: Path, scratch: Path) -> Path:
    """The model with tied weights folded into plain MatMul initializers (see graph.py)."""
    import onnx
    from edge_export.targets.onnx.graph import untie_transposed_weights

    proto = onnx.load_model(str(src))
    if not untie_transposed_weights(proto):
        return src
    out = scratch / "untied.onnx"
    onnx.save_model(proto, str(out))
    return out


def preprocess(src: Path, scratch: Path) -> Path:
    """Shape inference + graph optimisation that ORT's quantizers expect (auto_merge for dynamo)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = untied_copy(src, scratch)
    out = scratch / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), auto_merge=True, skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference fails on some dynamo graphs (Expand)
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out


def to_fp16(src: Path, out: Path, options: Mapping[str, Any]) -> Any:
    """fp16 weights and compute; graph inputs/outputs stay fp32 (callers feed the same arrays)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx

    proto = onnx.load_model(str(src))
    return convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)


# MatMul weights are uint8 with zero point 128 (symmetric), not int8: ORT's x86 u8 x s8 kernels
# (MatMulInteger, QLinearMatMul) add pairs of products in int16 (VPMADDUBSW) on CPUs without VNNI
# and saturate. On an AMD EPYC 7xx3 (AVX2) a row of 255 x 127 came back as 1048544 for 2072640,
# MiniLM int8-dynamic fell from cosine 0.9915 to 0.988 and SmolLM2 int8-static collapsed
# (sqnr -0.7 dB). u8 x u8 widens before multiplying: exact on every CPU, same 255 levels.
def int8_dynamic(src: Path, out: Path, options: Mapping[str, Any]) -> Any:
    """Weights int8, activations quantized on the fly: the CPU default.

    method "matmul-integer": per-channel weights, per-tensor dynamic activations (MatMulInteger);
    right for encoders. method "blockwise": 8-bit MatMulNBits whose activations are quantized per
    block at run time; decoders need it because per-tensor activation scales cannot hold their
    outlier channels (SmolLM2-135M: +53% perplexity per-tensor vs +0.3% block-wise, measured).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import onnx

    if options["method"] == "blockwise":
        from edge_export.targets.onnx.graph import untie_transposed_weights

        proto = onnx.load_model(str(src))
        untie_transposed_weights(proto)
        blockwise = {"block_size": options["block_size"], "symmetric": True, "accuracy_level": 4}
        proto = _nbits_pass(proto, 8, blockwise, ("MatMul",))
        if not options["quantize_embeddings"]:
            return proto
        # MatMulNBits cannot take a Gather at 8 bits: quantize the embedding table separately.
        with scratch_dir(out.parent) as scratch:
            onnx.save_model(proto, str(scratch / "blockwise.onnx"))
            quantize_dynamic(
                str(scratch / "blockwise.onnx"), str(scratch / "int8.onnx"),
                op_types_to_quantize=["Gather"], per_channel=bool(options["per_channel"]),
                weight_type=QuantType.QInt8,
            )  # fmt: skip
            return onnx.load_model(str(scratch / "int8.onnx"))

    with scratch_dir(out.parent) as scratch:
        pre = preprocess(src, scratch)
        target = scratch / "int8.onnx"
        quantize_dynamic(
            str(pre), str(target),
            op_types_to_quantize=["MatMul", "Gather"] if options["quantize_embeddings"] else ["MatMul"],
            per_channel=bool(options["per_channel"]),
            weight_type=QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True},
        )  # fmt: skip
        return onnx.load_model(str(target))


class _Reader:
    """CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], names: set[str]) -> None:
        self._iter = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def outlier_matmuls(model: Path, calibration: CalibrationSet, names: set[str], ratio: float) -> list[str]:
    """MatMuls (constant weights) whose calibrated input range exceeds `ratio` x the median
    (stages.outlier_names): those nodes stay in float; everything else is quantized."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    import onnx

    proto = onnx.load_model(str(model), load_external_data=False)
    weights = {t.name for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    calibrator = create_calibrator(
        str(model), op_types_to_calibrate=["MatMul"],
        augmented_model_path=str(model.with_name("augmented.onnx")),
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    calibrator.collect_data(_Reader(calibration.feeds[:4], names))
    ranges = calibrator.compute_data()
    peaks = {}
    for node in matmuls:
        if node.input[0] in ranges:
            low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges[node.input[0]].range_value)
            peaks[node.name] = max(abs(low), abs(high))
    return outlier_names(peaks, ratio)


def int8_static(
    src: Path, out: Path, options: Mapping[str, Any], calibration: CalibrationSet
) -> tuple[Any, dict]:
    """QDQ int8 with calibrated activations, MatMul/Gemm with constant weights only (what NPU EPs
    consume). Quantizing attention-score MatMuls and mask arithmetic wrecks decoders (STACK.md);
    MatMuls with outlier inputs stay float (`outlier_ratio`, 0 disables): on SmolLM2-135M that
    took perplexity from +286% to the numbers in the README.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    import onnx

    names = {i.name for i in onnx.load_model(str(src), load_external_data=False).graph.input}
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options["calibration_method"]]  # fmt: skip
    feeds = CalibrationSet(calibration.feeds[: int(options["calibration_samples"])], calibration.description)
    with scratch_dir(out.parent) as scratch:
        pre = preprocess(src, scratch)
        ratio = float(options["outlier_ratio"])
        excluded = outlier_matmuls(pre, feeds, names, ratio) if ratio > 0 else []
        target = scratch / "int8-static.onnx"
        quantize_static(
            str(pre), str(target), _Reader(feeds.feeds, names),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=bool(options["per_channel"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
            calibrate_method=method,
            nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True},
        )  # fmt: skip
        details = {"float_matmuls": excluded, "calibration": feeds.description}
        return onnx.load_model(str(target)), details


def _nbits_pass(
    proto: Any,
    bits: int,
    options: Mapping[str, Any],
    ops: tuple[str, ...],
    exclude: list[str] | None = None,
    include: list[str] | None = None,
) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        bits=bits,
        block_size=int(options["block_size"]),
        is_symmetric=bool(options["symmetric"]),
        accuracy_level=int(options["accuracy_level"]),
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quantizer = MatMulNBitsQuantizer(
        proto, algo_config=config, nodes_to_exclude=exclude, nodes_to_include=include
    )
    quantizer.process()
    return quantizer.model.model


def _output_node(proto: Any, output: str) -> list[str]:
    return [n.name for n in proto.graph.node if output in n.output and n.op_type == "MatMul"]


def int4_weight(src: Path, out: Path, options: Mapping[str, Any]) -> Any:
    """4-bit block-wise weights (MatMulNBits), embeddings too (GatherBlockQuantized).

    Quantizing the Gather of the embedding table is what makes int4 smaller than int8 on
    small-vocab models; a tied LM head shares that table and is untied first. The LM head
    (the matrix that produces logits) can be kept at 8 bits (`head_bits`), which recovers most
    of the perplexity lost to 4-bit on small LMs at a small size cost.
    """
    import onnx
    from edge_export.targets.onnx.graph import untie_transposed_weights

    proto = onnx.load_model(str(src))
    untie_transposed_weights(proto)
    ops: tuple[str, ...] = ("MatMul", "Gather") if options["quantize_embeddings"] else ("MatMul",)
    head = _output_node(proto, "logits")
    head_bits = int(options["head_bits"])
    bits = int(options["bits"])
    if head and head_bits != bits:
        proto = _nbits_pass(proto, bits, options, ops, exclude=head)
        return _nbits_pass(proto, head_bits, options, ("MatMul",), include=head)
    return _nbits_pass(proto, bits, options, ops)
