"""Quantization for ExecuTorch: torchao source transforms and PT2E for XNNPACK.

torchao transforms (8da4w linears, int8/int4 embeddings) run on the eager module before export.
PT2E (int8) runs on the exported graph: annotate with XNNPACK's quantizer, observe, convert.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def strip_integer_annotations(graph_module: torch.fx.GraphModule) -> int:
    """Drop PT2E annotations from integer arithmetic; returns how many nodes were touched.

    HF models build attention masks and positions with integer ops (`arange + 0`, index maths).
    XNNPACK's quantizer annotates every add/mul it matches, and the observers it inserts turn
    those integer tensors into float ones (IndexError: tensors used as indices must be long).
    Only floating-point values carry activations worth quantizing, so annotations whose node
    output or input is not floating point are removed.
    """
    touched = 0
    for node in graph_module.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if annotation is None:
            continue
        if not _is_float(node.meta.get("val")):
            del node.meta["quantization_annotation"]
            touched += 1
            continue
        for inp in list(annotation.input_qspec_map):
            if not _is_float(inp.meta.get("val")):
                del annotation.input_qspec_map[inp]
                touched += 1
    return touched


def restore_integer_scalars(graph_module: torch.fx.GraphModule) -> int:
    """Give back integer dtype to scalars XNNPACK's quantizer turned into float tensors.

    Its `transform_for_annotation` replaces every scalar operand of add/mul with a float tensor
    attribute; on integer index maths (`arange + 0` in HF mask code) that promotes the result to
    float and indexing fails later. Constants feeding an add/mul whose exported output is an
    integer tensor are cast back to that integer dtype. Returns how many were restored.
    """
    restored = 0
    targets = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)
    for node in graph_module.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or node.target not in targets or not isinstance(val, torch.Tensor):
            continue
        if val.dtype.is_floating_point:
            continue
        for arg in node.args:
            if not (isinstance(arg, torch.fx.Node) and arg.op == "get_attr"):
                continue
            tensor = getattr(graph_module, arg.target)
            if tensor.dtype.is_floating_point:
                fixed = tensor.to(val.dtype)
                graph_module.register_buffer(arg.target, fixed)
                arg.meta["val"] = arg.meta["val"].fake_mode.from_tensor(fixed, static_shapes=True)
                restored += 1
    return restored


def _float_only(quantizer: Any) -> Any:
    """XNNPACK's quantizer kept off integer arithmetic: scalars restored, annotations stripped."""
    inner_transform = quantizer.transform_for_annotation
    inner_annotate = quantizer.annotate

    def transform_for_annotation(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        model = inner_transform(model)
        restore_integer_scalars(model)
        return model

    def annotate(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        inner_annotate(model)
        strip_integer_annotations(model)
        return model

    quantizer.transform_for_annotation = transform_for_annotation
    quantizer.annotate = annotate
    return quantizer


def pt2e_int8(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic_shapes: Any,
    per_channel: bool,
    calibration: Iterable[tuple[torch.Tensor, ...]] | None,
) -> torch.nn.Module:
    """The PT2E-quantized module (still eager-callable; export it again to lower).

    Dynamic (calibration None): int8 weights, activation ranges computed at run time per call.
    Static: activation ranges observed on the calibration inputs.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=calibration is None)
    quantizer = _float_only(XNNPACKQuantizer().set_global(config))
    graph = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for args in calibration if calibration is not None else [example]:
            prepared(*args)
    return convert_pt2e(prepared)


def torchao_linears(
    module: torch.nn.Module, group_size: int, head: torch.nn.Module | None, head_bits: int
) -> None:
    """In place: 8da4w linears (int8 dynamic activations, int4 weights in groups of group_size,
    ExecuTorch's HQQ scale choice); the LM head at `head_bits` (8: per-channel int8 weights).

    The head matters most: on SmolLM2 an int4 head gave +16.4% perplexity (next-token agreement
    0.63), the same model with an 8-bit head is in README's table.
    """
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_

    def config(bits: int, granularity: Any) -> Any:
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8 if bits == 8 else torch.int4,
            weight_granularity=granularity,
            intx_choose_qparams_algorithm="hqq_scale_only",
        )

    separate_head = head is not None and head_bits == 8
    if separate_head:
        quantize_(module, config(8, PerAxis(0)), filter_fn=lambda m, _fqn: m is head)

    def is_body(m: torch.nn.Module, _fqn: str) -> bool:
        return isinstance(m, torch.nn.Linear) and not (separate_head and m is head)

    quantize_(module, config(4, PerGroup(group_size)), filter_fn=is_body)


def torchao_embedding(module: torch.nn.Module, embedding: torch.nn.Module, bits: int) -> None:
    """In place: the token embedding table to int8 per row or int4 in groups of 32 (weight-only).

    Only the token table: it is the large one, and ExecuTorch fuses its dequantize + gather into a
    quantized embedding kernel, which it did not do for BERT's position/type tables.
    """
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import IntxWeightOnlyConfig, quantize_

    config = IntxWeightOnlyConfig(
        weight_dtype=torch.int8 if bits == 8 else torch.int4,
        granularity=PerAxis(0) if bits == 8 else PerGroup(32),
        intx_choose_qparams_algorithm="hqq_scale_only",
    )
    quantize_(module, config, filter_fn=lambda m, _fqn: m is embedding)
