"""Torch-op registrations that coremltools 9.0 lacks for transformers-5 graphs.

Import this module (or call ``install()``) before ``ct.convert``. Registration is global and
idempotent (each op is registered once, overriding nothing coremltools has), so calling it twice
is harmless.

Each converter below is a module-level function; ``_CONVERTERS`` maps the op name to it and
``install()`` registers the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch.ops import (
    _get_inputs,
    _get_kwinputs,
    noop,
    promote_input_dtypes,
)
from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
from coremltools.converters.mil.frontend.torch.utils import NUM_TO_NUMPY_DTYPE
from coremltools.converters.mil.mil import Var, types

Converter = Callable[[Any, Any], None]
"""A torch-frontend converter: (context, node) -> None; it adds the node's result to the context."""

_INSTALLED = False


def _np_dtype(dtype_var, default=np.float32):
    """Turn the converter's dtype argument (a const Var holding a torch dtype number) into numpy."""
    if dtype_var is None:
        return default
    val = dtype_var.val if isinstance(dtype_var, Var) else dtype_var
    if val is None:
        return default
    return NUM_TO_NUMPY_DTYPE[int(val)]


def new_ones(context: Any, node: Any) -> None:
    """aten.new_ones(self, size, *, dtype=None, ...): a tensor of ones of `size`.

    transformers 5's mask builder (masking_utils) calls `x.new_ones((), dtype=torch.bool)` to seed
    its and-chain of mask functions; it survives run_decompositions({}) because the empty
    decomposition table keeps every op. coremltools 9.0 registers new_zeros/new_full but not
    new_ones. Static sizes fold to a const (the bool scalar then folds away with the `and`),
    dynamic sizes become `fill`.
    """
    inputs = _get_inputs(context, node, min_expected=2)
    size = inputs[1]
    dtype = _get_kwinputs(context, node, "dtype", default=[None])[0]
    if dtype is None and len(inputs) > 2:
        dtype = inputs[2]
    np_dtype = _np_dtype(dtype, default=None)
    if np_dtype is None:  # inherit from self, like torch does
        np_dtype = types.nptype_from_builtin(inputs[0].dtype)
    if isinstance(size, list):
        size = mb.concat(values=size, axis=0)
    if size.can_be_folded_to_const():
        shape = tuple(int(s) for s in np.asarray(size.val).reshape(-1))
        val = np.ones(shape, dtype=np_dtype)
        if np_dtype == np.int64:
            val = val.astype(np.int32)
        if np_dtype == np.float64:
            val = val.astype(np.float32)
        res = mb.const(val=val if shape else val.reshape(()).item(), name=node.name)
    else:
        fill_val = (
            True
            if np_dtype == np.bool_
            else (np.int32(1) if np.issubdtype(np_dtype, np.integer) else np.float32(1))
        )
        res = mb.fill(shape=size, value=fill_val, name=node.name)
    context.add(res)


def _bool_binary(mb_op: Any, name: str) -> Converter:
    """A converter for a bool-only binary op (`and`, `or`, `xor`), named `name`.

    aten.__and__.Tensor / aten.__or__.Tensor / aten.__xor__.Tensor: transformers 5's masking_utils
    combines bool mask functions with Python `&` (and `|`), which torch.export records as the
    dunder overloads. The two places that look ops up disagree on the name:
      * InternalTorchIRNode.from_exir_node checks `kind in registry` with
        sanitize_op_kind("aten.__and__.Tensor") == "__and__" (the dunder strip only applies when
        the whole string starts with "__", i.e. before the "aten." prefix is removed), while
      * convert_single_node calls registry.get_func("__and__"), which sanitizes again and now
        strips the dunders: it looks up "and".
    coremltools 9.0 registers "and" (bitwise_and, bool only) but not "__and__", and neither "or"
    nor "xor". So the converter is registered under both names (see install()); where coremltools
    has the plain name already (its "and"), that one is kept.
    """

    def convert(context: Any, node: Any) -> None:
        x, y = _get_inputs(context, node, expected=2)
        if not (types.is_bool(x.dtype) and types.is_bool(y.dtype)):
            raise NotImplementedError(f"{name} is only supported for bool inputs, got {x.dtype}, {y.dtype}")
        context.add(mb_op(x=x, y=y, name=node.name))

    convert.__name__ = name
    return convert


def diff(context: Any, node: Any) -> None:
    """aten.diff(self, n=1, dim=-1, prepend=None, append=None): out = x[1:] - x[:-1] on dim.

    transformers 5 calls torch.diff on position ids / cache positions when no attention_mask is
    given (packed-sequence detection). Supported here: n=1 (any dim), optional prepend/append
    tensors.
    """
    inputs = _get_inputs(context, node, min_expected=1)
    x = inputs[0]
    n = inputs[1].val if len(inputs) > 1 and inputs[1] is not None else 1
    dim = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else -1
    prepend = inputs[3] if len(inputs) > 3 else None
    append = inputs[4] if len(inputs) > 4 else None
    n = _get_kwinputs(context, node, "n", default=[n])[0]
    n = n.val if isinstance(n, Var) else n
    dim = _get_kwinputs(context, node, "dim", default=[dim])[0]
    dim = int(dim.val if isinstance(dim, Var) else dim)
    prepend = _get_kwinputs(context, node, "prepend", default=[prepend])[0]
    append = _get_kwinputs(context, node, "append", default=[append])[0]
    if int(n) != 1:
        raise NotImplementedError(f"diff with n={n} is not supported (only n=1)")
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = mb.concat(values=parts, axis=dim)
    rank = x.rank
    dim = dim % rank
    begin_hi = [0] * rank
    begin_hi[dim] = 1
    end_lo = [0] * rank
    end_lo[dim] = -1
    mask_all = [True] * rank
    mask_dim = [True] * rank
    mask_dim[dim] = False
    hi = mb.slice_by_index(x=x, begin=begin_hi, end=[0] * rank, end_mask=mask_all, begin_mask=mask_dim)
    lo = mb.slice_by_index(x=x, begin=[0] * rank, end=end_lo, begin_mask=mask_all, end_mask=mask_dim)
    if types.is_bool(x.dtype):  # torch.diff on bool is logical xor
        res = mb.not_equal(x=hi, y=lo, name=node.name)
    else:
        res = mb.sub(x=hi, y=lo, name=node.name)
    context.add(res)


def where_scalarother(context: Any, node: Any) -> None:
    """aten.where.ScalarOther(condition, self, other: Scalar).

    Eager attention in transformers 5 (LlamaForCausalLM with attn_implementation="eager", graph
    kept with run_decompositions({})) uses it; coremltools registers where.self and
    where.ScalarSelf but not ScalarOther.
    """
    cond, a, b = _get_inputs(context, node, expected=3)
    if not types.is_bool(cond.dtype):
        cond = mb.cast(x=cond, dtype="bool")
    if (b.val is not None and not isinstance(b.val, np.ndarray)) or (
        isinstance(b.val, np.ndarray) and b.val.ndim == 0
    ):
        b = mb.const(val=np.array(b.val, dtype=types.nptype_from_builtin(a.dtype)))
    context.add(mb.select(cond=cond, a=a, b=b, name=node.name))


def _sym_binary(builder: Any, name: str) -> Converter:
    """A converter for a binary SymInt op (registered under the function's __name__).

    sym_min / sym_max on SymInts: torch.export emits them when a cache is sliced with a
    data-dependent start (the stateful LM's slice_update: end = min(size, start + n)).
    """

    def convert(context: Any, node: Any) -> None:
        x, y = promote_input_dtypes(_get_inputs(context, node, expected=2))
        context.add(builder(x=x, y=y, name=node.name))

    convert.__name__ = name
    return convert


# op name (as coremltools' from_exir_node sanitizes it) -> converter, in registration order.
# install() registers each converter under the op name and under its own __name__; where
# coremltools already has a converter under that own name, that one is registered instead:
#   * "__and__" etc. also need the plain name that get_func looks up ("and": coremltools' own),
#   * aten.alias is a view that returns its input: coremltools registers alias_copy as its `noop`
#     but not alias (newer torch.export keeps `alias` for some .detach()/view patterns),
#   * where.ScalarOther is also registered as "where_scalarother", as register_torch_op would.
_CONVERTERS: dict[str, Converter] = {
    "new_ones": new_ones,
    "__and__": _bool_binary(mb.logical_and, "and"),
    "__or__": _bool_binary(mb.logical_or, "or"),
    "__xor__": _bool_binary(mb.logical_xor, "xor"),
    "alias": noop,
    "diff": diff,
    "where.scalarother": where_scalarother,
    "sym_min": _sym_binary(mb.minimum, "sym_min"),
    "sym_max": _sym_binary(mb.maximum, "sym_max"),
}


def install() -> list[str]:
    """Register the ops of `_CONVERTERS` that coremltools lacks; returns the names that were added.

    Only the first call registers (later ones return []), and an op coremltools already has is
    left alone. The registry is written directly: register_torch_op refuses names ending in "_"
    (it takes them for in-place ops), which the dunder names do.
    """
    global _INSTALLED
    if _INSTALLED:
        return []
    registry = _TORCH_OPS_REGISTRY.name_to_func_mapping
    added = []
    for name, converter in _CONVERTERS.items():
        if name in registry:
            continue
        own = converter.__name__
        fn = registry.get(own) or converter
        _TORCH_OPS_REGISTRY.set_func_by_name(fn, name)  # support check in from_exir_node
        _TORCH_OPS_REGISTRY.set_func_by_name(fn, own)  # get_func() lookup during conversion
        added.append(name)
    _INSTALLED = True
    return added
