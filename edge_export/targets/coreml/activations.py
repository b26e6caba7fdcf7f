"""int8 activations for Core ML (coreml:int8-w8a8) without a Mac.

coremltools' `linear_quantize_activations` measures activation ranges by running the package with
`MLModel.predict`, which exists only on macOS. The ranges it needs are the float inputs of the
`linear` ops, and those are the inputs of the PyTorch model's nn.Linear modules: here they are
measured in PyTorch on the calibration text (min/max, as coremltools does), keyed by the MIL
var each linear reads, and handed to coremltools' own pass that inserts the quantize/dequantize
pair in front of each linear (then redundant pairs are dropped). So the package holds exactly what
coremltools would write, with ranges from the fp32 reference instead of the fp16 program.

Each MIL linear is matched to its nn.Linear through its weight's name (the matching the host
estimate uses). Linears whose input range is an outlier (more than `outlier_ratio` x the median
peak, e.g. the "massive activations" of LLM down-projections) keep float inputs, as in
onnx:int8-static. The host estimate reads the scales back out of the package and fake-quantizes
the same nn.Linear inputs (`fake_quant_hooks`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from edge_export.exporter.prepared import CalibrationSet, PreparedModel, TorchRunnable
from edge_export.targets.stages import outlier_names


def linear_modules(module: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Weight parameter key (as the host estimate normalises names) -> nn.Linear, tied names included."""
    from edge_export.targets.coreml.estimate import torch_key

    out: dict[str, torch.nn.Linear] = {}
    for name, sub in module.named_modules(remove_duplicate=False):
        if isinstance(sub, torch.nn.Linear):
            out[torch_key(f"{name}.weight" if name else "weight")] = sub
    return out


def match_linear(weight_name: str, linears: Mapping[str, torch.nn.Linear]) -> torch.nn.Linear | None:
    """The nn.Linear whose weight a MIL const / constexpr output named `weight_name` holds."""
    from edge_export.targets.coreml.estimate import match, mil_key

    key = match(mil_key(weight_name), list(linears))
    return linears[key] if key else None


def _weight_name(op: Any) -> str | None:
    """The name of the weight tensor a MIL linear reads (a const or a decompression op's output)."""
    weight = op.inputs.get("weight")
    if weight is None or weight.op is None:
        return None
    return str(weight.name)


def mil_linears(program: Any) -> list[Any]:
    """Every `linear` op of the program whose input is computed (not a constant)."""
    from edge_export.targets.coreml.package import walk_ops

    ops = []
    for function in program.functions.values():
        for op in walk_ops(function):
            x = op.inputs.get("x") if op.op_type == "linear" else None
            if x is not None and (x.op is None or x.op.op_type != "const"):
                ops.append(op)
    return ops


@contextmanager
def _recording(linears: Mapping[str, torch.nn.Linear]) -> Iterator[dict[int, list[float]]]:
    """Record [min, max] of every nn.Linear's input while the block runs (keyed by id(module))."""
    ranges: dict[int, list[float]] = {}

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        low, high = float(x.min()), float(x.max())
        seen = ranges.setdefault(id(module), [low, high])
        seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

    handles = [m.register_forward_pre_hook(hook) for m in {id(m): m for m in linears.values()}.values()]
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()


def calibrate(
    program: Any, model: PreparedModel, calibration: CalibrationSet, ratio: float
) -> dict[str, Any]:
    """Ranges of each MIL linear's input, measured on the reference model over the calibration feeds.

    Returns {"stats": {x var name: {"rmin", "rmax"}}, "matched": [linear op names], "float_linears":
    [outlier op names, left in float], "unmatched": [op names with no nn.Linear]}; outliers and
    unmatched ops get no activation quantization."""
    linears = linear_modules(model.module)
    runner = TorchRunnable(model.module, model.io)
    with _recording(linears) as ranges:
        for feed in calibration.feeds:
            runner.run(feed)
    stats: dict[str, dict[str, float]] = {}
    peaks: dict[str, float] = {}
    unmatched = []
    for op in mil_linears(program):
        name = _weight_name(op)
        module = match_linear(name, linears) if name else None
        if module is None or id(module) not in ranges:
            unmatched.append(str(op.name))
            continue
        low, high = ranges[id(module)]
        stats[str(op.inputs["x"].name)] = {"rmin": low, "rmax": high}
        peaks[str(op.name)] = max(abs(low), abs(high))
    outliers = outlier_names(peaks, ratio)
    return {"stats": stats, "matched": sorted(peaks), "float_linears": outliers, "unmatched": unmatched}


def quantize_activations(mlmodel: Any, program: Any, model: PreparedModel, calibration: CalibrationSet,
                         ratio: float) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The package with int8 (symmetric, per-tensor) quantize/dequantize pairs on linear inputs."""
    import coremltools as ct
    import coremltools.optimize as cto
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    found = calibrate(program, model, calibration, ratio)
    if not found["stats"]:
        raise ValueError("no linear layer of the package could be matched to the model for calibration")
    skip: dict[str, Any] = {name: None for name in found["float_linears"] + found["unmatched"]}
    config = cto.coreml.OptimizationConfig(
        op_type_configs={"linear": cto.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")},
        op_name_configs=skip or None,
    )
    # Inputs only: coremltools' suffix pass would also quantize each linear's output, which the
    # next op (residual add, attention matmul, activation) reads in fp16 anyway.
    prefix = PASS_REGISTRY["compression::insert_prefix_quantize_dequantize_pair"]
    prefix.set_options([PassOption("config", config)])
    prefix.set_options([PassOption("activation_stats", found["stats"])])
    passes = [prefix, PASS_REGISTRY["common::dequantize_quantize_pair_elimination"]]
    quantized = model_utils._apply_graph_pass(
        mlmodel, passes, spec_version=ct._SPECIFICATION_VERSION_IOS_17,
        pymil_load_func=milproto.load, skip_model_load=True,
    )  # fmt: skip
    info = {
        "activations": "int8 symmetric per-tensor on linear inputs (min/max over the calibration text)",
        "quantized_linears": len(found["matched"]) - len(found["float_linears"]),
        "float_linears": found["float_linears"],
        "unmatched_linears": found["unmatched"],
        "calibration": calibration.description,
    }
    return quantized, info


def package_activation_scales(program: Any) -> dict[str, tuple[float, float]]:
    """Weight name -> (scale, zero point) of the int8 quantize op feeding that linear's input."""
    out = {}
    for op in mil_linears(program):
        x, name = op.inputs["x"], _weight_name(op)
        if name is None or x.op is None or x.op.op_type != "dequantize":
            continue
        scale = np.asarray(x.op.inputs["scale"].val, dtype=np.float32).reshape(-1)
        zero = x.op.inputs.get("zero_point")
        zero_point = 0.0 if zero is None else float(np.asarray(zero.val).reshape(-1)[0])
        out[name] = (float(scale[0]), zero_point)
    return out


def fake_quant_hooks(module: torch.nn.Module, scales: Mapping[str, tuple[float, float]]) -> int:
    """Quantize-dequantize the inputs of the nn.Linear modules the package quantizes, with its
    scales (int8, round half to even, as Core ML's quantize op); returns how many were hooked."""
    linears = linear_modules(module)
    hooked = {}
    for name, (scale, zero_point) in scales.items():
        target = match_linear(name, linears)
        if target is not None:
            hooked[id(target)] = (target, scale, zero_point)

    def make(scale: float, zero_point: float) -> Any:
        def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127)
            return ((q - zero_point) * scale).to(x.dtype), *args[1:]

        return hook

    for target, scale, zero_point in hooked.values():
        target.register_forward_pre_hook(make(scale, zero_point))
    return len(hooked)
