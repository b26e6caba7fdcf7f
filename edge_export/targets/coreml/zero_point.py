"""int4 per-block weights with a float (fp16) zero point per block, for coreml:int4-block.

coremltools' "linear" mode stores the zero point in the data's own type (int4) and widens each
block's range to contain 0, so the block minimum is not representable: every weight of a block
moves by up to half a step. Core ML's iOS18 `constexpr_blockwise_shift_scale` also takes an fp16
offset (`scale * (data - offset)`), which puts the 16 levels exactly on [min, max] of the block.
That costs 16 bits per block instead of 4 (block 32: 5.0 instead of 4.625 bits per weight) and
matters most where the weights already lie on a 4-bit grid (a Q4_1 GGUF: every block is
`m + d * k`, reproduced exactly here, while an int4 zero point re-quantizes it with a fresh
half-step error). The pass is coremltools' own `linear_quantize_weights` with only the per-block
parameters computed differently; everything else (which consts, configs per op, serialization) is
unchanged.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np


def float_offset_blocks(
    weight: np.ndarray, block_sizes: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(uint4 data, fp16-or-weight-dtype scale, offset) with `scale * (data - offset)` ~ weight, the
    levels spanning each block's [min, max]. block_sizes: per axis, 0 = the whole axis is one block.
    None when an axis does not divide into its blocks (coremltools then skips the tensor)."""
    new_shape: list[int] = []
    scale_shape: list[int] = []
    inner: list[int] = []
    for dim, block in zip(weight.shape, block_sizes, strict=True):
        block = block if block > 0 else dim
        if dim % block:
            return None
        new_shape += [dim // block, block]
        scale_shape.append(dim // block)
        inner.append(len(new_shape) - 1)
    blocks = weight.astype(np.float32).reshape(new_shape)
    low = blocks.min(axis=tuple(inner), keepdims=True)
    high = blocks.max(axis=tuple(inner), keepdims=True)
    span = high - low
    # a constant block: one level at its value (scale |value|, or 1 for zeros)
    scale = np.where(span > 0, span / 15.0, np.where(low != 0, np.abs(low), 1.0))
    scale = scale.astype(weight.dtype).astype(np.float32)  # the stored precision decides the levels
    offset = (-low / scale).astype(weight.dtype).astype(np.float32)
    data = np.clip(np.round(blocks / scale + offset), 0, 15)
    return (
        data.reshape(weight.shape).astype(np.uint8),
        scale.reshape(scale_shape).astype(weight.dtype),
        offset.reshape(scale_shape).astype(weight.dtype),
    )


# "auto": a float zero point where it cuts a tensor's squared error at least this many times. On
# weights already on a 4-bit grid (SmolLM2's Q4_1 layers) it removes the error (ratio in the
# thousands); on continuous float weights both zero points land within ~1.5x of each other.
AUTO_ERROR_RATIO = 4.0


def _error(weight: np.ndarray, data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> float:
    """Mean squared error of `scale * (data - offset)` (block parameters repeated) against weight."""
    repeats = [w // s for w, s in zip(weight.shape, scale.shape, strict=True)]
    full_scale = scale.astype(np.float32)
    full_offset = np.zeros_like(full_scale) if offset is None else offset.astype(np.float32)
    for axis, count in enumerate(repeats):
        full_scale = np.repeat(full_scale, count, axis=axis)
        full_offset = np.repeat(full_offset, count, axis=axis)
    restored = full_scale * (data.astype(np.float32) - full_offset)
    return float(np.mean((restored - weight.astype(np.float32)) ** 2))


def linear_quantize_weights(
    mlmodel: Any, config: Any, choice: str, always_fp16: Collection[str] = ()
) -> tuple[Any, dict[str, int]]:
    """coremltools.optimize.coreml.linear_quantize_weights, with an fp16 zero point for the tensors
    the config quantizes to 4 bits in "linear" mode: every one (choice "fp16"), or those where it
    cuts the error AUTO_ERROR_RATIO times and the consts named in `always_fp16` ("auto"). int8 and
    symmetric configs are unchanged. Returns the model and how many 4-bit tensors got each kind."""
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.models import utils as model_utils
    from coremltools.optimize import _utils as optimize_utils
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as stock

    counts = {"fp16": 0, "int4": 0}

    class FloatZeroPoint(stock):  # type: ignore[misc, valid-type]
        current = ""

        def transform_op(self, op: Any) -> None:
            self.current = str(op.name)
            super().transform_op(op)

        def blockwise_compress_by_dtype(
            self, original_data: np.ndarray, dtype: Any, mode: str, block_sizes: list[int]
        ) -> Any:
            if isinstance(dtype, str):
                dtype = types.string_to_builtin(dtype)
            if mode != "LINEAR" or dtype.get_bitwidth() != 4:
                return super().blockwise_compress_by_dtype(original_data, dtype, mode, block_sizes)
            params = float_offset_blocks(original_data, block_sizes)
            if params is None:
                return None
            data, scale, offset = params
            if choice == "auto" and self.current not in always_fp16:
                stock_params = super().blockwise_compress_by_dtype(original_data, dtype, mode, block_sizes)
                stock_error = _error(
                    original_data, stock_params.data, stock_params.scale, stock_params.offset
                )
                if stock_error <= AUTO_ERROR_RATIO * _error(original_data, data, scale, offset):
                    counts["int4"] += 1
                    return stock_params
            counts["fp16"] += 1
            data = data.astype(types.nptype_from_builtin(types.uint4))
            return optimize_utils.QuantParams(data=data, scale=scale, offset=offset, nbits=np.uint8(4))

    quantizer = FloatZeroPoint()
    quantizer.set_options([PassOption("config", config), PassOption("joint_compression", False)])
    return model_utils._apply_graph_pass(mlmodel, quantizer), counts
