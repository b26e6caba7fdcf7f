"""torch.export -> edge dialect -> backend lowering -> .pte, each step named for error reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# Nodes that are bookkeeping, not kernels: they never "fall back" to a CPU kernel library.
_BOOKKEEPING = ("getitem", "sym_size", "sym_numel", "_assert", "_local_scalar_dense", "alias",
                "view_copy", "unsqueeze_copy", "squeeze_copy", "et_view", "executorch_call_delegate")  # fmt: skip


def export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: Any) -> Any:
    """torch.export (non-strict) with the given dynamic shapes, embedding padding_idx dropped."""
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
    drop_embedding_padding_idx(program.graph_module)
    return program


def drop_embedding_padding_idx(graph_module: torch.fx.GraphModule) -> int:
    """Remove padding_idx from aten.embedding calls; returns how many were changed.

    padding_idx only affects gradients, but ExecuTorch's quantized-embedding fusion matches
    `embedding(weight, indices)` exactly: with BERT's padding_idx the int8 table stayed a
    `torchao::dequantize_affine` the runtime has no kernel for ("Missing out variants").
    """
    changed = 0
    for node in graph_module.graph.nodes:
        if node.target is torch.ops.aten.embedding.default and len(node.args) > 2:
            node.args = node.args[:2]
            changed += 1
    graph_module.recompile()
    return changed


def xnnpack_partitioners(dynamic_quant: bool) -> list[Any]:
    """XNNPACK's partitioners. Dynamically quantized graphs are partitioned in two passes (the
    dynamic-quant linears first, then everything else), as ExecuTorch's LLM export does: one
    generic pass over a PT2E dynamic graph fails with "Invalid partition, found dependency cycles"."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )

    if dynamic_quant:
        return [XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()]
    return [XnnpackPartitioner()]


def coreml_partitioners(precision: str, deployment_target: str) -> list[Any]:
    """The Core ML partitioner: fp16 compute; `int8` adds per-channel int8 linear weights."""
    import coremltools as ct

    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    quant = None
    if precision == "int8":
        quant = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
    specs = CoreMLBackend.generate_compile_specs(
        minimum_deployment_target=getattr(ct.target, deployment_target),
        compute_precision=ct.precision.FLOAT16,
        op_linear_quantizer_config=quant,
    )
    return [CoreMLPartitioner(compile_specs=specs, take_over_mutable_buffer=False)]


def lower(program: Any, partitioners: list[Any], constant_methods: Mapping[str, Any] | None) -> Any:
    """Edge dialect + delegation in one step (ExecuTorch's recommended path)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    return to_edge_transform_and_lower(
        program,
        partitioner=partitioners,
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=dict(constant_methods or {}),
    )


def serialize(edge: Any, path: Path) -> None:
    """Memory-plan with upper-bound shapes, fuse quantized ops, write the .pte."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    program = edge.to_executorch(
        ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        )
    )
    with open(path, "wb") as handle:
        program.write_to_file(handle)


def delegated_ops(edge: Any) -> dict[str, dict[str, int]]:
    """Operators inside each backend's delegated subgraphs, by backend id then op name."""
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    graph_module = edge.exported_program().graph_module
    found: dict[str, Counter[str]] = {}
    for node in graph_module.graph.nodes:
        if node.op != "get_attr":
            continue
        sub = getattr(graph_module, node.target, None)
        if not isinstance(sub, LoweredBackendModule):
            continue
        ops = found.setdefault(sub.backend_id, Counter())
        for inner in sub.original_module.graph.nodes:
            if inner.op == "call_function" and not is_bookkeeping(_op_name(inner.target)):
                ops[_op_name(inner.target)] += 1
    return {backend: dict(ops) for backend, ops in found.items()}


def _op_name(target: Any) -> str:
    """ "aten.linear.default" -> "linear"; "quantized_decomposed.quantize_per_tensor.default" ->
    "quantized_decomposed::quantize_per_tensor" (the namespace is kept unless it is aten)."""
    if getattr(target, "__module__", "") in ("_operator", "operator", "math"):
        return f"sym::{target.__name__}"  # Python scalar maths on symbolic sizes
    parts = getattr(target, "__name__", str(target)).split(".")
    if len(parts) < 3:
        return parts[0]
    return parts[1] if parts[0] == "aten" else f"{parts[0]}::{parts[1]}"


def is_bookkeeping(op: str) -> bool:
    """True for nodes that run no kernel (views, shape maths, delegate calls)."""
    if op.startswith(("sym::", "executorch_prim::")):
        return True
    base = op.split("::")[-1]
    return any(base.startswith(p) for p in _BOOKKEEPING)
