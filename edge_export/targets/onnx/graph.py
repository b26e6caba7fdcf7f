"""torch -> ONNX with the dynamo exporter, then a clean, shippable file.

Dynamo output carries stack-trace metadata on every node and may write external data; the shipped
graph has neither below 2 GB (above it, one external-data file beside the model).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from edge_export.exporter.prepared import PreparedModel
from edge_export.quiet import quiet

INLINE_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GiB cap, with headroom for the graph


OPSET = 18


def torch_to_onnx(model: PreparedModel, path: Path) -> str:
    """Export the prepared wrapper with the IO spec's dynamic axes; returns the exporter used.

    The TorchScript exporter goes first: on our wrappers (which always pass an attention mask, the
    case where it fails on Llama per STACK.md) it exported SmolLM2 in 10 s instead of 33 s and
    MiniLM in 0.8 s instead of 5 s, with identical outputs and an 11% faster MiniLM graph. The
    dynamo exporter is the fallback for graphs TorchScript cannot trace.
    """
    try:
        _torchscript_export(model, path)
        return "torchscript"
    except Exception:  # any tracing failure: try the other exporter, which raises its own error
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
        _dynamo_export(model, path)
        return "dynamo"


def _exportable(model: PreparedModel) -> Any:
    """The wrapper to export: with GPT-2's Conv1D layers as the same nn.Linear (in a copy, the
    reference keeps its own), since Conv1D exports as Gemm, which no ONNX Runtime weight quantizer
    (MatMulInteger, MatMulNBits) takes: int8 / int4 silently left GPT-2's body fp32."""
    import copy

    from edge_export.targets.stages import conv1d_shapes, conv1d_to_linear

    if not conv1d_shapes(model.module):
        return model.module
    module = copy.deepcopy(model.module)
    conv1d_to_linear(module)
    return module


def _torchscript_export(model: PreparedModel, path: Path) -> None:
    import torch

    axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in model.io.inputs}
    axes.update(
        {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in model.io.outputs}
    )
    with quiet(), torch.no_grad():
        torch.onnx.export(
            _exportable(model),
            model.example_inputs(),
            str(path),
            dynamo=False,
            input_names=model.io.input_names,
            output_names=model.io.output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _dynamo_export(model: PreparedModel, path: Path) -> None:
    """optimize=False: onnxscript's rewriter took ~30% of the SmolLM2 export time and the result
    ran no faster, because onnxruntime applies the same fusions when it loads the model."""
    import torch

    with quiet(), torch.no_grad():
        torch.onnx.export(
            _exportable(model),
            model.example_inputs(),
            str(path),
            dynamo=True,
            dynamic_shapes=model.dynamic_shapes(),
            input_names=model.io.input_names,
            output_names=model.io.output_names,
            optimize=False,
            verbose=False,
            external_data=True,
        )


def retie_transposed_copies(proto: Any) -> int:
    """Replace a MatMul weight that is exactly the transpose of a Gather table by Transpose(table).

    Constant folding turns a tied LM head into a second copy of the embedding (113 MB on
    SmolLM2); this restores the sharing without changing a single output value.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    tables = {n.input[0] for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in inits}
    retied = 0
    for node in [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits]:
        weight = inits[node.input[1]]
        for table_name in tables:
            table = inits[table_name]
            if list(table.dims) != list(weight.dims)[::-1] or len(table.dims) != 2:
                continue
            if not (numpy_helper.to_array(weight) == numpy_helper.to_array(table).T).all():
                continue
            transposed = f"{table_name}.tied_transpose"
            proto.graph.node.insert(0, helper.make_node("Transpose", [table_name], [transposed], perm=[1, 0]))
            old, node.input[1] = node.input[1], transposed
            if not any(old in n.input for n in proto.graph.node):
                proto.graph.initializer.remove(weight)
            retied += 1
            break
    return retied


def strip_metadata(proto: Any) -> int:
    """Remove node- and function-level metadata_props (stack traces); returns how many were removed."""
    removed = 0
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            removed += len(node.metadata_props)
            del node.metadata_props[:]
            graphs += [attr.g for attr in node.attribute if attr.HasField("g")]
    for function in proto.functions:
        for node in function.node:
            removed += len(node.metadata_props)
            del node.metadata_props[:]
    del proto.graph.metadata_props[:]
    return removed


def save_clean(proto: Any, path: Path) -> list[Path]:
    """Save with weights inline below 2 GB, else in one `<name>.data` file; returns written files."""
    import onnx

    strip_metadata(proto)
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    data_file = path.with_name(path.name + ".data")
    if weights < INLINE_LIMIT:
        _load_external_into(proto, path.parent)
        onnx.save_model(proto, str(path))
        return [path]
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file.name, size_threshold=1024)  # fmt: skip
    return [path, data_file]


def _load_external_into(proto: Any, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if any(uses_external_data(t) for t in proto.graph.initializer):
        load_external_data_for_model(proto, str(base))


def load_proto(path: Path) -> Any:
    """Load a model with its external data resolved."""
    import onnx

    return onnx.load_model(str(path), load_external_data=True)


def inspect_graph(path: Path) -> dict[str, Any]:
    """Operator histogram and weight bytes per dtype of a saved model."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    dtype_bytes: collections.Counter[str] = collections.Counter()
    for tensor in proto.graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        dtype_bytes[name] += len(tensor.raw_data) or 0
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {
        "operators": dict(ops.most_common()),
        "node_count": sum(ops.values()),
        "weight_bytes_by_dtype": dict(dtype_bytes),
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "file_bytes": size,
        "metadata_props_on_nodes": sum(len(n.metadata_props) for n in proto.graph.node),
    }


def untie_transposed_weights(proto: Any) -> int:
    """Fold Transpose(initializer) -> MatMul into a transposed initializer; returns how many.

    A tied LM head exports as Gather(W) for the embedding and MatMul(x, Transpose(W)) for the
    logits. Weight quantizers only take MatMuls whose B is an initializer, so without this the LM
    head (often the largest matrix of a small model) stays fp32 and int4 ends up larger than int8.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    folded = 0
    for node in list(proto.graph.node):
        source = node.input[0] if node.input else ""
        users = consumers.get(node.output[0] if node.output else "", [])
        if node.op_type != "Transpose" or source not in inits or not users:
            continue
        if any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(inits[source])
        folded_array = array.transpose(perm) if perm else array.T
        tensor = numpy_helper.from_array(folded_array.copy(), f"{source}.transposed")
        proto.graph.initializer.append(tensor)
        for user in users:
            user.input[1] = tensor.name
        proto.graph.node.remove(node)
        folded += 1
    return folded
