"""torch.export -> coremltools ML Program, for encoders (flexible sequence length) and stateful LMs.

Encoders export batch 1 with a symbolic sequence length and become a package whose inputs take
either any length in 1..max_seq_len (shape_mode "range") or exactly the bucket lengths
("enumerated"). Decoders become a stateful program (decoder.py). Token inputs are int32: ML
Programs have no int64 inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_export.exporter.prepared import PreparedModel
from edge_export.targets.base import Recipe

_DEFAULT_LENGTH = 128  # the shape Core ML prepares first for a range input


def deployment(target: str) -> Any:
    """The coremltools deployment target object for "iOS17" / "iOS18"."""
    import coremltools as ct

    return getattr(ct.target, target)


def convert(model: PreparedModel, recipe: Recipe, target: str, precision: str, out: Path) -> None:
    """Convert the model for this recipe's shapes and save an uncompressed package at `out`."""
    from edge_export.targets.coreml import op_fixes

    op_fixes.install()
    if model.io.kind == "decoder":
        from edge_export.targets.coreml.decoder import convert_decoder

        mlmodel = convert_decoder(model, recipe, deployment(target), precision)
    else:
        mlmodel = convert_encoder(model, recipe, deployment(target), precision)
    mlmodel.save(str(out))


def export_encoder(model: PreparedModel, max_len: int) -> torch.export.ExportedProgram:
    """torch.export of the encoder wrapper at batch 1 with a symbolic sequence length."""
    example = tuple(t[:1] for t in model.example_inputs())
    seq = torch.export.Dim("sequence", min=1, max=max_len)
    shapes = {name: {1: seq} for name in model.io.input_names}
    with torch.no_grad():
        program = torch.export.export(model.module.eval(), example, dynamic_shapes=shapes, strict=False)
    return program.run_decompositions({})


def max_length(recipe: Recipe) -> int:
    """The longest sequence the encoder package takes."""
    if recipe.options["shape_mode"] == "enumerated":
        return max(recipe.options["seq_buckets"])
    return int(recipe.options["max_seq_len"])


def input_types(model: PreparedModel, recipe: Recipe) -> list[Any]:
    """ct.TensorType per token input: a length range or the enumerated bucket lengths."""
    import coremltools as ct

    opts = recipe.options
    max_len = max_length(recipe)
    if opts["shape_mode"] == "enumerated":
        buckets = sorted(opts["seq_buckets"])
        default = min(buckets, key=lambda n: abs(n - _DEFAULT_LENGTH))
        shape: Any = ct.EnumeratedShapes(shapes=[(1, n) for n in buckets], default=(1, default))
    else:
        shape = ct.Shape((1, ct.RangeDim(1, max_len, default=min(_DEFAULT_LENGTH, max_len))))
    return [ct.TensorType(name=name, shape=shape, dtype=np.int32) for name in model.io.input_names]


def convert_encoder(model: PreparedModel, recipe: Recipe, target: Any, precision: str) -> Any:
    """The encoder as an ML Program (fp16 or fp32 compute)."""
    import coremltools as ct

    program = export_encoder(model, max_length(recipe))
    return ct.convert(
        program,
        inputs=input_types(model, recipe),
        outputs=[ct.TensorType(name=name, dtype=np.float32) for name in model.io.output_names],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        skip_model_load=True,  # nothing on Linux can load it; structure is read from the saved package
    )


def artifact_io(model: PreparedModel, recipe: Recipe) -> dict[str, Any]:
    """The package's IO for the manifest: int32 batch-1 inputs, and how the length may vary."""
    if model.io.kind == "decoder":
        from edge_export.targets.coreml.decoder import decoder_io

        return decoder_io(model, recipe)
    opts = recipe.options
    io = model.io.to_dict()
    io["inputs"] = [t | {"dtype": "int32", "shape": [1, "sequence"], "flexible": opts["shape_mode"]}
                    for t in io["inputs"]]  # fmt: skip
    io["outputs"] = [t | {"shape": [1, *t["shape"][1:]]} for t in io["outputs"]]
    io["bounds"] = {"batch": 1, "sequence": max_length(recipe)}
    if opts["shape_mode"] == "enumerated":
        io["buckets"] = {f"seq_{n}": n for n in sorted(opts["seq_buckets"])}
    return io
