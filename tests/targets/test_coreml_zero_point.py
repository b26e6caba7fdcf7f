"""coreml:int4-block's zero point per block: the fp16 zero point reproduces weights already on a 4-bit
grid (a Q4_1 GGUF) where coremltools' int4 zero point re-quantizes them, and "auto" picks it only
there. Checked on a small ML Program saved and read back like any package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_export.targets.coreml.zero_point import float_offset_blocks


def q4_1_grid(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Weights as a Q4_1 GGUF dequantizes them: per 32 inputs, m + d * k with k in 0..15 (both ends used)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 16, (rows, cols))
    k[:, ::32], k[:, 1::32] = 0, 15
    d = np.abs(rng.normal(0.004, 0.001, (rows, cols // 32))).astype(np.float16).astype(np.float32)
    m = (-7.5 * d + rng.normal(0, 0.002, d.shape)).astype(np.float16).astype(np.float32)
    return (np.repeat(d, 32, axis=1) * k + np.repeat(m, 32, axis=1)).astype(np.float16)


def restore(data: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """scale * (data - offset), block parameters repeated along the input axis."""
    block = data.shape[1] // scale.shape[1]
    full = np.repeat(scale.astype(np.float32), block, axis=1)
    return full * (data - np.repeat(offset.astype(np.float32), block, axis=1))


def test_float_offset_blocks_reproduce_a_q4_1_grid() -> None:
    weight = q4_1_grid(16, 128)
    data, scale, offset = float_offset_blocks(weight, [1, 32])
    assert data.dtype == np.uint8 and data.min() >= 0 and data.max() <= 15
    assert scale.shape == offset.shape == (16, 4) and scale.dtype == np.float16
    step = float(np.median(scale))
    # exact up to the fp16 rounding of the stored weights and parameters (a step is ~0.004)
    assert np.abs(restore(data, scale, offset) - weight.astype(np.float32)).max() < 0.02 * step
    # continuous weights: every weight within half a step of its block's levels
    rng = np.random.default_rng(1)
    smooth = rng.normal(0, 0.05, (16, 128)).astype(np.float16)
    data, scale, offset = float_offset_blocks(smooth, [1, 32])
    error = np.abs(restore(data, scale, offset) - smooth.astype(np.float32))
    assert (error <= np.repeat(scale.astype(np.float32), 32, axis=1) * 0.51).all()
    assert float_offset_blocks(smooth, [1, 48]) is None  # 128 inputs do not split into blocks of 48


def _two_linear_model(grid: np.ndarray, smooth: np.ndarray) -> object:
    """An fp16 ML Program (iOS18) with one linear on grid weights and one on continuous weights."""
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec((1, grid.shape[1]), dtype=types.fp16)],
                opset_version=ct.target.iOS18)  # fmt: skip
    def prog(x: object) -> object:
        h = mb.linear(x=x, weight=mb.const(val=grid, name="grid_weight"), name="grid")
        return mb.linear(x=h, weight=mb.const(val=smooth, name="smooth_weight"), name="smooth")

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                      compute_precision=ct.precision.FLOAT16, skip_model_load=True)  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "expected"), [("auto", {"fp16": 1, "int4": 1}), ("fp16", {"fp16": 2, "int4": 0})]
)
def test_zero_point_choice_in_a_saved_package(tmp_path: Path, choice: str, expected: dict[str, int]) -> None:
    import coremltools.optimize as cto

    from edge_export.targets.coreml.package import decompressed_weights, structure
    from edge_export.targets.coreml.zero_point import linear_quantize_weights

    grid = q4_1_grid(64, 128)
    smooth = np.random.default_rng(2).normal(0, 0.05, (32, 64)).astype(np.float16)
    op = cto.coreml.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_block",
                                            block_size=32, weight_threshold=1024)  # fmt: skip
    config = cto.coreml.OptimizationConfig(global_config=op)
    compressed, counts = linear_quantize_weights(_two_linear_model(grid, smooth), config, choice)
    assert counts == expected
    compressed.save(str(tmp_path / "m.mlpackage"))
    stock = cto.coreml.linear_quantize_weights(_two_linear_model(grid, smooth), config)
    stock.save(str(tmp_path / "stock.mlpackage"))

    ours = decompressed_weights(tmp_path / "m.mlpackage")
    theirs = decompressed_weights(tmp_path / "stock.mlpackage")
    grid_error = np.abs(ours["grid_weight_quantized"] - grid.astype(np.float32)).max()
    stock_error = np.abs(theirs["grid_weight_quantized"] - grid.astype(np.float32)).max()
    assert grid_error < 1e-4 < 0.1 * stock_error  # coremltools' int4 zero point moves the grid
    smooth_error = np.abs(ours["smooth_weight_quantized"] - smooth.astype(np.float32)).max()
    assert smooth_error < 0.05 * 0.3  # within a 4-bit step of a 0.05-sigma block
    dtypes = structure(tmp_path / "m.mlpackage")["weights_by_dtype"]
    assert dtypes["uint4"]["elements"] == grid.size + (smooth.size if choice == "fp16" else 0)
