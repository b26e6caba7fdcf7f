"""What is in a .tflite and what the XNNPACK delegate takes from it.

The operator histogram per signature comes from the flatbuffer. Delegation comes from the
runtime itself: ai-edge-litert applies XNNPACK when the interpreter is built, replacing the
nodes it takes with DELEGATE nodes. The interpreter exposes the nodes of the first subgraph
(with the DELEGATE nodes' boundary tensors), so that signature is analysed: a node is delegated
when it produces a partition output, or when its outputs only feed delegated nodes; a node
whose output feeds a DELEGATE node from outside is a fallback to the reference kernels.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def histograms(path: Path) -> dict[str, dict[str, int]]:
    """Signature name -> operator name -> count, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    names = _builtin_names()
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else names.get(builtin, str(builtin)))
    result: dict[str, dict[str, int]] = {}
    for s in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(s)
        graph = model.Subgraphs(sig.SubgraphIndex())
        ops = Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
        result[sig.SignatureKey().decode()] = dict(ops.most_common())
    return result


def _first_subgraph_signature(interpreter: Any) -> str | None:
    for name in interpreter.get_signature_list():
        if interpreter._interpreter.GetSubgraphIndexFromSignature(name) == 0:
            return str(name)
    return None


def xnnpack_split(path: Path) -> tuple[str | None, Counter[str], Counter[str], int]:
    """(analysed signature, delegated ops, fallback ops, DELEGATE partitions) of subgraph 0."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    original = [n for n in nodes if n["op_name"] != "DELEGATE"]
    partition_out = {int(t) for n in partitions for t in n["outputs"]}
    partition_in = {int(t) for n in partitions for t in n["inputs"]}
    consumers: dict[int, list[int]] = defaultdict(list)
    for node in original:
        for t in node["inputs"]:
            consumers[int(t)].append(node["index"])
    delegated: dict[int, bool] = {}
    for node in reversed(original):  # nodes are in topological order; consumers come later
        outs = [int(t) for t in node["outputs"]]
        if any(t in partition_out for t in outs):
            delegated[node["index"]] = True
        elif any(t in partition_in for t in outs):
            delegated[node["index"]] = False
        else:
            after = [delegated[c] for t in outs for c in consumers[t] if c in delegated]
            delegated[node["index"]] = bool(after) and all(after)
    inside = Counter(n["op_name"] for n in original if delegated[n["index"]])
    outside = Counter(n["op_name"] for n in original if not delegated[n["index"]])
    return _first_subgraph_signature(interpreter), inside, outside, len(partitions)


def residency(path: Path) -> dict[str, Any]:
    """Same shape as the other targets' residency: backends, fallback ops and share, by-op tables."""
    signature, inside, outside, partitions = xnnpack_split(path)
    total = sum(inside.values()) + sum(outside.values())
    delegated = sum(inside.values())
    fallback = sum(outside.values())
    return {
        "analysed_signature": signature,
        "backends": {
            "xnnpack": {
                "partitions": partitions,
                "ops": delegated,
                "pct": round(100.0 * delegated / total, 1) if total else None,
            }
        },
        "fallback_ops": fallback,
        "fallback_pct": round(100.0 * fallback / total, 1) if total else None,
        "fallback_by_op": dict(outside.most_common()),
        "delegated_by_op": {"xnnpack": dict(inside.most_common())},
        "fully_delegated": fallback == 0 and partitions > 0,
    }
