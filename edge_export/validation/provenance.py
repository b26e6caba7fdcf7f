"""Weight provenance: every source parameter found again, unchanged, inside the artifact itself.

The accuracy gates measure "close enough to fp32"; they cannot tell "the converter did what the
recipe promises" from "something changed the model a little" (0.5% noise on one weight passes an
fp32 SQNR gate). Here each parameter of the loaded PyTorch model is looked up among the tensors the
artifact stores (read back by the target: ONNX initializers, TFLite buffers): an fp32 recipe must
hold it bit for bit, an fp16 recipe bit for bit after the cast to float16 (or in fp32 where the
recipe keeps a tensor float). Exporters rename and transpose weights (a MatMul wants [in, out]),
and store identical tensors once, so a parameter is found by its bytes in either orientation; a
stored tensor of the parameter's shape that differs names what changed.

Quantized recipes: parameters the recipe leaves float are checked the same way; the quantized ones
are listed as not verified (their integers and scales are not re-derived here yet).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_export.exporter.prepared import PreparedModel

FLOAT_RECIPES = ("fp32", "fp16")


@dataclass(frozen=True)
class StoredTensor:
    """One constant tensor as the artifact stores it (name as in the file, values as stored)."""

    name: str
    array: np.ndarray


def _key(array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    data = np.ascontiguousarray(array)
    return str(data.dtype), tuple(data.shape), hashlib.sha256(data.tobytes()).hexdigest()


def _index(stored: Sequence[StoredTensor]) -> dict[tuple[str, tuple[int, ...], str], str]:
    """Content key -> stored name, for each float tensor as stored and transposed (2-D)."""
    index: dict[tuple[str, tuple[int, ...], str], str] = {}
    for tensor in stored:
        if tensor.array.dtype.kind != "f":
            continue
        index.setdefault(_key(tensor.array), tensor.name)
        if tensor.array.ndim == 2:
            index.setdefault(_key(tensor.array.T), tensor.name)
    return index


def _named(param: str, stored: Sequence[StoredTensor]) -> StoredTensor | None:
    """The float tensor stored under the parameter's own name (exporters may prefix it with the
    wrapper's attribute: "model.model.embed_tokens.weight"), if there is exactly one."""
    hits = [
        t for t in stored if t.array.dtype.kind == "f" and (t.name == param or t.name.endswith("." + param))
    ]
    return hits[0] if len(hits) == 1 else None


def _same(array: np.ndarray, form: np.ndarray) -> bool:
    """Bit-equal, as stored or transposed (2-D)."""
    views = [array, array.T] if array.ndim == 2 else [array]
    return any(v.dtype == form.dtype and v.shape == form.shape and np.array_equal(v, form) for v in views)


def _closest_difference(expected: np.ndarray, stored: Sequence[StoredTensor]) -> str | None:
    """For a parameter found nowhere: the largest change, relative to its largest value, against
    the float tensor of its shape (either orientation) nearest to the form the recipe should have
    stored; None when no tensor has its shape."""
    best: float | None = None
    param = expected.astype(np.float64)
    scale = float(np.max(np.abs(param))) or 1.0
    for tensor in stored:
        array = tensor.array
        if array.dtype.kind != "f":
            continue
        for view in (array, array.T) if array.ndim == 2 else (array,):
            if view.shape == param.shape:
                change = float(np.max(np.abs(view.astype(np.float64) - param))) / scale
                best = change if best is None else min(best, change)
    return None if best is None else f"differs by up to {best:.3g} of its largest value"


def fp16_casts(value: np.ndarray) -> list[np.ndarray]:
    """The float16 forms a correct fp16 recipe may store: IEEE round-to-nearest, and the
    sign-preserving cast ONNX Runtime's converter uses (a nonzero magnitude below the smallest
    subnormal becomes that subnormal instead of zero, overflow becomes +-65504)."""
    tiny, big = 5.96e-08, 65504.0
    magnitude = np.abs(value)
    kept = np.where((magnitude > 0) & (magnitude < tiny), np.sign(value) * tiny, value)
    kept = np.where(np.isfinite(kept) & (np.abs(kept) > big), np.sign(kept) * big, kept)
    plain = value.astype(np.float16)
    signed = kept.astype(np.float16)
    return [plain] if np.array_equal(plain, signed) else [plain, signed]


# RMSNorms that compute x * (1 + weight): exporters constant-fold 1 + weight into one tensor, so the
# artifact legitimately holds that sum (computed in fp32, as the model does) instead of the weight.
PLUS_ONE_NORMS = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")


@dataclass
class SourceWeights:
    """The parameters an artifact must hold (float32), and which of them it may hold as 1 + w."""

    arrays: dict[str, np.ndarray]
    plus_one: frozenset[str] = frozenset()


def _candidates(value: np.ndarray, precision: str, plus_one: bool) -> list[np.ndarray]:
    """What an unchanged parameter may look like in the artifact for this recipe precision."""
    bases = [value.astype(np.float32)]
    if plus_one:
        bases.append(np.float32(1.0) + bases[0])
    forms = list(bases)
    if precision == "fp16":
        forms += [cast for base in bases for cast in fp16_casts(base)]
    return forms


def check_provenance(
    params: Mapping[str, np.ndarray] | SourceWeights, stored: Sequence[StoredTensor] | None, precision: str
) -> dict[str, Any]:
    """Find every parameter in the stored tensors; the record for the manifest, with `failure` set
    (one line naming the tensors) when a float recipe's weight differs or has no counterpart."""
    if stored is None:
        return {"checked": False, "reason": "the target does not read weights back yet", "failure": None}
    source = params if isinstance(params, SourceWeights) else SourceWeights(dict(params))
    params = source.arrays
    index = _index(stored)
    found: dict[str, str] = {}
    differs: dict[str, str] = {}
    for name, value in params.items():
        forms = _candidates(value, precision, name in source.plus_one)
        named = _named(name, stored)
        if named is not None:  # a tensor under the parameter's own name must hold it, not another
            match = named.name if any(_same(named.array, f) for f in forms) else None
        else:
            match = next((index[k] for k in map(_key, forms) if k in index), None)
        if match is not None:
            found[name] = match
        elif precision in FLOAT_RECIPES or named is not None:
            pool = [named] if named is not None else stored
            closest = [d for d in (_closest_difference(f, pool) for f in forms) if d]
            differs[name] = min(closest, key=len) if closest else "no stored tensor of its shape"
    record: dict[str, Any] = {
        "checked": True,
        "mode": {"fp32": "bit-exact fp32", "fp16": "bit-exact after the fp16 cast"}.get(
            precision, "float tensors bit-exact; quantized tensors not verified"
        ),
        "parameters": len(params),
        "matched": len(found),
        "mismatched": differs,
        "failure": None,
    }
    if precision not in FLOAT_RECIPES:
        record["not_verified"] = sorted(set(params) - set(found))
    if differs:
        names = sorted(differs)
        shown = ", ".join(f"{n} ({differs[n]})" for n in names[:3])
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        record["failure"] = (
            f"weights in the artifact are not the source's: {shown}{more} "
            f"({len(found)} of {len(params)} parameters found unchanged)"
        )
    return record


def source_parameters(model: PreparedModel) -> SourceWeights:
    """The parameters the export wrapper actually uses, as float32 numpy arrays (tied ones once, by
    their first name). A parameter the exported task never touches (BERT's pooler under feature
    extraction) is not in any artifact; one backward pass through the wrapper on the example
    inputs tells them apart. Where no gradient reaches the inputs at all, every parameter counts:
    the check may then over-report, never under-report."""
    import torch

    hf_model = model.hf_model
    params = [p for _, p in hf_model.named_parameters(remove_duplicate=True)]
    flags = [p.requires_grad for p in params]
    used: set[int] | None = None
    try:
        for param in params:
            param.requires_grad_(True)
            param.grad = None
        with torch.enable_grad():
            outputs = model.module(*model.example_inputs())
            tensors = [o for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])
                       if isinstance(o, torch.Tensor) and o.is_floating_point()]  # fmt: skip
            total = sum(t.float().sum() for t in tensors)
            if isinstance(total, torch.Tensor) and total.grad_fn is not None:
                total.backward()
                used = {id(p) for p in params if p.grad is not None}
    finally:
        for param, flag in zip(params, flags, strict=True):
            param.grad = None
            param.requires_grad_(flag)
    arrays = {
        name: param.detach().float().cpu().numpy()
        for name, param in hf_model.named_parameters(remove_duplicate=True)
        if used is None or id(param) in used
    }
    plus_one = {
        f"{prefix}.weight" if prefix else "weight"
        for prefix, module in hf_model.named_modules()
        if type(module).__name__ in PLUS_ONE_NORMS
    }
    return SourceWeights(arrays, frozenset(plus_one & set(arrays)))
