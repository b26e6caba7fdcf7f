"""The PT2E fix for HF models: XNNPACK's stock quantizer breaks integer mask maths; ours does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_export.exporter.loading import prepare
from edge_export.exporter.source import resolve
from edge_export.targets.executorch.quantize import _float_only, restore_integer_scalars


def _exported_bert(tiny_bert: Path) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    model = prepare(resolve(str(tiny_bert), allow_pickle=False, revision=None), None, trust_remote_code=False)
    example = model.example_inputs()
    graph = torch.export.export(model.module, example, strict=False).module()
    return graph, example


def _quantizer() -> object:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )


def test_stock_quantizer_breaks_hf_mask_maths(tiny_bert: Path) -> None:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    graph, example = _exported_bert(tiny_bert)
    prepared = prepare_pt2e(graph, _quantizer())
    with pytest.raises(IndexError, match="tensors used as indices"):
        prepared(*example)


def test_float_only_quantizer_runs_and_matches_float(tiny_bert: Path) -> None:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph, example = _exported_bert(tiny_bert)
    with torch.no_grad():
        reference = graph(*example)[0]
    prepared = prepare_pt2e(graph, _float_only(_quantizer()))
    prepared(*example)
    with torch.no_grad():
        quantized = convert_pt2e(prepared)(*example)[0]
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), quantized.flatten(), dim=0)
    assert cosine > 0.99


def test_restore_integer_scalars_only_touches_integer_maths(tiny_bert: Path) -> None:
    graph, _ = _exported_bert(tiny_bert)
    transformed = _quantizer().transform_for_annotation(graph)
    restored = restore_integer_scalars(transformed)
    assert restored >= 1
    float_constants = [
        n for n in transformed.graph.nodes
        if n.op == "get_attr" and str(n.target).startswith("_tensor_constant")
        and getattr(transformed, n.target).dtype.is_floating_point
    ]  # fmt: skip
    for node in float_constants:  # what is left float feeds float maths only
        assert all(u.meta["val"].dtype.is_floating_point for u in node.users)
