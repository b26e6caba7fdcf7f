"""The plain side of benchmarks/coreml_convert.py: the coremltools recipe a user writes by hand for
the same Core ML recipe edge-export applies. It runs as a measured subprocess (same wall-time and
RSS measurement as edge-export):

    python benchmarks/_coreml_plain.py {minilm|smollm2} HF_DIR {fp16|int8-weight|int4-block|palettize-4bit} OUT

and leaves the result in OUT/model.mlpackage.

MiniLM: the plain transformers AutoModel in a small wrapper of our own (last_hidden_state plus the
mean-pooled, L2-normalized sentence embedding, the outputs of edge-export's encoder wrapper),
torch.export at batch 1 with a dynamic sequence length (1..512), run_decompositions, then
ct.convert to an ML Program with int32 inputs of shape (1, RangeDim(1, 512)), fp16 compute.

SmolLM2: the fp32 HF folder in edge-export's stateful KV-cache wrapper (StatefulLM, export_decoder:
what Apple's stateful-LLM guide has a user write, a static KV cache in torch buffers that
coremltools turns into Core ML state), context 512, ct.convert with iOS18 (states), fp16 compute.

Both: `edge_export.targets.coreml.op_fixes` registers the torch ops stock coremltools 9.0 lacks for
transformers-5 graphs (without it the conversion fails). Compression is the same
ct.optimize.coreml call and config as edge-export's (edge_export/targets/coreml/compress.py),
applied to the converted fp16 model in memory, then the package is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _bench_common import sentence_embedder

MAX_SEQ_LEN = 512
THRESHOLD = 2048  # compress.py's weight_threshold: every float weight with >= 2048 elements
BLOCK_SIZE = 32  # coreml:int4-block
GROUP_SIZE = 16  # coreml:palettize-4bit (per_grouped_channel)
RECIPES = ("fp16", "int8-weight", "int4-block", "palettize-4bit")


def deployment_target(model: str, recipe: str) -> Any:
    """iOS17, or iOS18 where the recipe or model needs it (int4 blocks, grouped palettes, states)."""
    import coremltools as ct

    needs_ios18 = model == "smollm2" or recipe in ("int4-block", "palettize-4bit")
    return ct.target.iOS18 if needs_ios18 else ct.target.iOS17


def convert_minilm(hf_dir: Path, target: Any) -> Any:
    """all-MiniLM-L6-v2 as an fp16 ML Program with a flexible sequence length."""
    import coremltools as ct
    import numpy as np
    import torch
    from transformers import AutoModel

    module = sentence_embedder(AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()).eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    example = (
        torch.randint(0, 1000, (1, 8)),
        torch.ones(1, 8, dtype=torch.long),
        torch.zeros(1, 8, dtype=torch.long),
    )
    seq = torch.export.Dim("sequence", min=1, max=MAX_SEQ_LEN)
    with torch.no_grad():
        program = torch.export.export(module, example, dynamic_shapes={n: {1: seq} for n in names})
    program = program.run_decompositions({})
    shape = ct.Shape((1, ct.RangeDim(1, MAX_SEQ_LEN, default=128)))
    return ct.convert(
        program,
        inputs=[ct.TensorType(name=n, shape=shape, dtype=np.int32) for n in names],
        outputs=[
            ct.TensorType(name=n, dtype=np.float32) for n in ("last_hidden_state", "sentence_embedding")
        ],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,  # Core ML cannot load a model on Linux
    )


def convert_smollm2(hf_dir: Path, target: Any) -> Any:
    """SmolLM2 as a stateful fp16 ML Program (KV cache as Core ML state, context 512)."""
    import coremltools as ct
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from edge_export.targets.coreml.decoder import StatefulLM, export_decoder

    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    program = export_decoder(StatefulLM(hf_model, MAX_SEQ_LEN))  # int32 inputs, tokens 1..512
    return ct.convert(
        program,
        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,
    )


def compression_config(recipe: str) -> Any:
    """The op config edge-export's compress.py builds for the recipe."""
    import coremltools.optimize as cto

    if recipe == "int8-weight":
        return cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=THRESHOLD
        )
    if recipe == "int4-block":
        return cto.coreml.OpLinearQuantizerConfig(
            mode="linear",  # a zero point per block, as edge-export
            dtype="int4",
            granularity="per_block",
            block_size=BLOCK_SIZE,
            weight_threshold=THRESHOLD,
        )
    return cto.coreml.OpPalettizerConfig(
        mode="kmeans",
        nbits=4,
        granularity="per_grouped_channel",
        group_size=GROUP_SIZE,
        weight_threshold=THRESHOLD,
        num_kmeans_workers=1,
    )


def lm_overrides(mlmodel: Any) -> dict[str, Any]:
    """SmolLM2, as edge-export does: the fp32 rotary cos/sin tables stay uncompressed. (edge-export's
    int4-block also gives some tensors an fp16 zero point per block, which the public
    ct.optimize.coreml API cannot: this side keeps coremltools' int4 zero points everywhere.)"""
    overrides: dict[str, Any] = {}
    for function in mlmodel._mil_program.functions.values():
        for op in function.operations:
            if op.op_type == "const" and ("cos_table" in op.name or "sin_table" in op.name):
                overrides[op.name] = None
    return overrides


def main(model: str, hf_dir: str, recipe: str, out_dir: str) -> None:
    """Convert (and compress unless fp16) into OUT_DIR/model.mlpackage."""
    import coremltools.optimize as cto

    from edge_export.targets.coreml import op_fixes

    op_fixes.install()  # torch ops coremltools 9.0 lacks for transformers-5 graphs
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = deployment_target(model, recipe)
    convert = convert_smollm2 if model == "smollm2" else convert_minilm
    mlmodel = convert(Path(hf_dir), target)
    if recipe != "fp16":
        overrides = lm_overrides(mlmodel) if model == "smollm2" else {}
        config = cto.coreml.OptimizationConfig(
            global_config=compression_config(recipe), op_name_configs=overrides or None
        )
        if recipe.startswith("palettize"):
            mlmodel = cto.coreml.palettize_weights(mlmodel, config)
        else:
            mlmodel = cto.coreml.linear_quantize_weights(mlmodel, config)
    mlmodel.save(str(folder / "model.mlpackage"))


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] not in ("minilm", "smollm2") or sys.argv[3] not in RECIPES:
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
