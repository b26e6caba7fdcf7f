"""What runs where in a .pte: delegated operators per backend vs kernels on the CPU fallback.

The .pte itself says which kernels the runtime calls outside delegates (its instruction list);
how many graph operators each delegate took is recorded at export time from the lowered graph.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edge_export.targets.executorch.lower import is_bookkeeping


def pte_calls(path: Path) -> dict[str, Any]:
    """Kernel calls (by operator) and delegate calls (by backend) in every method of a .pte."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    methods: dict[str, Any] = {}
    for plan in program.execution_plan:
        kernels: Counter[str] = Counter()
        delegates: Counter[str] = Counter()
        for chain in plan.chains:
            for instruction in chain.instructions:
                args = instruction.instr_args
                kind = type(args).__name__
                if kind == "KernelCall":
                    op = plan.operators[args.op_index]
                    kernels[op.name] += 1
                elif kind == "DelegateCall":
                    delegates[plan.delegates[args.delegate_index].id] += 1
        methods[plan.name] = {"kernel_calls": dict(kernels), "delegate_calls": dict(delegates)}
    return methods


def residency(path: Path, delegated: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    """Per backend: delegated op count and share; the CPU fallback kernels by name.

    `fallback_ops` counts kernel calls outside any delegate in `forward` (bookkeeping such as
    views and shape arithmetic excluded): portable/optimized aten kernels and custom ops alike.
    """
    methods = pte_calls(path)
    forward = methods.get("forward", {"kernel_calls": {}, "delegate_calls": {}})
    fallback = {op: n for op, n in forward["kernel_calls"].items() if not is_bookkeeping(op)}
    fallback_total = sum(fallback.values())
    backends: dict[str, Any] = {}
    delegated = delegated or {}
    delegated_total = sum(sum(ops.values()) for ops in delegated.values())
    total = delegated_total + fallback_total
    for backend, calls in forward["delegate_calls"].items():
        count = sum(delegated.get(backend, {}).values()) if delegated else None
        backends[backend] = {
            "delegate_calls": calls,
            "ops": count,
            "pct": round(100.0 * count / total, 1) if count is not None and total else None,
        }
    return {
        "backends": backends,
        "fallback_ops": fallback_total,
        "fallback_pct": round(100.0 * fallback_total / total, 1) if total and delegated else None,
        "fallback_by_op": dict(sorted(fallback.items(), key=lambda kv: -kv[1])),
        "delegated_by_op": delegated,
        "fully_delegated": fallback_total == 0 and bool(forward["delegate_calls"]),
        "methods": sorted(methods),
    }
