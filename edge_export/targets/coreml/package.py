"""Read a saved .mlpackage back on Linux: structure for the report, decompressed weights for the
host estimate. Nothing here calls Core ML (predictions exist only on macOS).

The MIL program is rebuilt from the package with coremltools' milproto loader (what
ct.optimize.coreml does internally); compressed weights (constexpr_blockwise_shift_scale,
constexpr_lut_to_dense, constexpr_affine_dequantize, ...) are decompressed with coremltools' own
`materialized_val_inference`, so the values are what Core ML reconstructs on the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# specification version -> the minimum deployment target it implies
_SPEC_TARGET = {7: "iOS16", 8: "iOS17", 9: "iOS18"}


def _spec(path: Path) -> Any:
    import coremltools as ct

    return ct.utils.load_spec(str(path))


def load_program(path: Path) -> Any:
    """The pymil Program of a saved package (weights read from its weights/ folder)."""
    from coremltools.converters.mil.frontend.milproto import load as milproto

    spec = _spec(path)
    return milproto.load(spec, spec.specificationVersion, str(path / "Data" / "com.apple.CoreML" / "weights"))


def walk_ops(block: Any) -> Iterator[Any]:
    """Every op of a block (pymil Function/Block or MIL proto Block), nested blocks included."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from walk_ops(inner)


def spec_ops(spec: Any) -> Iterator[Any]:
    """Every op of a saved program's proto, over every function, nested blocks included."""
    for function in spec.mlProgram.functions.values():
        yield from walk_ops(function.block_specializations[function.opset])


def _feature(feature: Any) -> dict[str, Any]:
    """Name, dtype, shape and shape flexibility of one input/output/state description."""
    from coremltools import proto

    dtypes = {v: k for k, v in proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    kind = feature.type.WhichOneof("Type")
    array = feature.type.stateType.arrayType if kind == "stateType" else feature.type.multiArrayType
    out: dict[str, Any] = {"name": feature.name, "kind": kind, "dtype": dtypes.get(array.dataType, "?"),
                           "shape": [int(d) for d in array.shape]}  # fmt: skip
    flexible = array.WhichOneof("ShapeFlexibility") if kind == "multiArrayType" else None
    if flexible == "shapeRange":
        out["flexible"] = "range"
        out["ranges"] = [[int(r.lowerBound), int(r.upperBound)] for r in array.shapeRange.sizeRanges]
    elif flexible == "enumeratedShapes":
        out["flexible"] = "enumerated"
        out["shapes"] = [[int(d) for d in s.shape] for s in array.enumeratedShapes.shapes]
    return out


def op_histogram(path: Path, spec: Any = None) -> dict[str, int]:
    """MIL operator -> count over every function of the program (compression ops included)."""
    spec = spec if spec is not None else _spec(path)
    counts: Counter[str] = Counter(op.type for op in spec_ops(spec))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def const_tensors(spec: Any) -> list[tuple[str, str, tuple[int, ...]]]:
    """(op name, stored dtype, shape) of every tensor a const or constexpr op holds, read from the
    program proto alone: the weight blobs are not opened, so this is cheap on a 250 MB package.
    Covers plain consts, the attributes of iOS16 constexpr ops (quantized data, scales, zero
    points) and the value bindings of iOS18 ones."""
    from coremltools.converters.mil.mil import types

    def tensor(value: Any) -> tuple[str, tuple[int, ...]] | None:
        if value.type.WhichOneof("type") != "tensorType":
            return None
        kind = value.type.tensorType
        dims = tuple(int(d.constant.size) for d in kind.dimensions if d.WhichOneof("dimension") == "constant")
        if len(dims) != kind.rank or kind.dataType not in types.PROTO_TO_BUILTIN_TYPE:
            return None
        return types.builtin_to_string(types.PROTO_TO_BUILTIN_TYPE[kind.dataType]), dims

    out = []
    for op in spec_ops(spec):
        if op.type != "const" and not op.type.startswith("constexpr_"):
            continue
        name = op.outputs[0].name if op.outputs else op.type
        values = [v for key, v in op.attributes.items() if key != "name"]
        bound = [b for arg in op.inputs.values() for b in arg.arguments]
        values += [b.value for b in bound if b.WhichOneof("binding") == "value"]
        for value in values:
            found = tensor(value)
            if found:
                out.append((name, *found))
    return out


def linear_weights(spec: Any) -> dict[str, str]:
    """linear op name -> the name of the var its weight input reads (a const or constexpr output)."""
    return {
        op.outputs[0].name: op.inputs["weight"].arguments[0].name
        for op in spec_ops(spec)
        if op.type == "linear" and op.inputs["weight"].arguments
    }


def _weight_storage(spec: Any) -> dict[str, dict[str, int]]:
    """Stored bytes and element counts of weight tensors by stored dtype (int4 data, fp16 scales...)."""
    by_dtype: dict[str, dict[str, int]] = {}
    for _, dtype, shape in const_tensors(spec):
        count = int(np.prod(shape))
        if count < 2:
            continue
        width = int("".join(c for c in dtype if c.isdigit()) or 8)
        entry = by_dtype.setdefault(dtype, {"tensors": 0, "elements": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["elements"] += count
        entry["bytes"] += (count * width + 7) // 8
    return by_dtype


def structure(path: Path) -> dict[str, Any]:
    """Everything checkable here about a package: spec, IO, operators, weights by stored dtype."""
    spec = _spec(path)
    description = spec.description
    files = [p for p in path.rglob("*") if p.is_file()]
    return {
        "package_bytes": sum(p.stat().st_size for p in files),
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "minimum_deployment_target": _SPEC_TARGET.get(int(spec.specificationVersion), "unknown"),
        "inputs": [_feature(f) for f in description.input],
        "outputs": [_feature(f) for f in description.output],
        "states": [_feature(f) for f in description.state],
        "mil_ops": op_histogram(path, spec),
        "weights_by_dtype": _weight_storage(spec),
    }


def decompressed_weights(path: Path, min_elements: int = 2) -> dict[str, np.ndarray]:
    """MIL weight name -> float32 array, for every float tensor a compute op reads: plain consts and
    the outputs of constexpr chains (decompressed as Core ML will on the device)."""
    from coremltools.converters.mil.mil import types

    program = load_program(path)
    out: dict[str, np.ndarray] = {}
    for function in program.functions.values():
        for op in walk_ops(function):
            if not (op.op_type == "const" or op.op_type.startswith("constexpr_")):
                continue
            for index, var in enumerate(op.outputs):
                feeds_compute = any(not c.op_type.startswith("constexpr_") for c in var.child_ops)
                if not feeds_compute or not types.is_tensor(var.sym_type) or not types.is_float(var.dtype):
                    continue
                value = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
                if isinstance(value, (list, tuple)):
                    value = value[index]
                array = np.asarray(value)
                if value is not None and array.size >= min_elements:
                    out[var.name] = array.astype(np.float32)
    return out
