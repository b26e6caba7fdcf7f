"""The SmolLM2 .pte runs unchanged in ExecuTorch's own TextLLMRunner (Python binding of the C++ LLM
runner), after exactly the imports docs/targets.md tells users to write, and decodes the tokens
the PyTorch reference decodes (fp32) / our validated session decodes (8da4w)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import load_report, result_for

from edge_export.exporter.textdata import builtin_text

DOCS = Path(__file__).resolve().parents[2] / "docs" / "targets.md"
NEW_TOKENS = 8

# Runs in a fresh interpreter: kernel registration is process-wide, so a test process that already
# loaded a .pte (with the kernels imported) would hide a missing import.
RUNNER = """
import json, sys
{imports}
from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

prompt, new_tokens, bundles = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for bundle in bundles:
    runner = TextLLMRunner(bundle + "/model.pte", bundle + "/tokenizer.json")
    pieces = []
    config = GenerationConfig(echo=False, max_new_tokens=new_tokens, temperature=0.0)
    runner.generate(prompt, config, token_callback=pieces.append)
    print("PIECES", json.dumps(pieces), flush=True)
"""


def documented_imports() -> list[str]:
    """The import lines of the docs' TextLLMRunner example (what a user copies)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    block = next(b for b in blocks if "TextLLMRunner" in b)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("import executorch")]


def run_runner(imports: list[str], prompt: str, bundles: list[Path]) -> subprocess.CompletedProcess[str]:
    script = RUNNER.format(imports="\n".join(imports))
    argv = [sys.executable, "-c", script, prompt, str(NEW_TOKENS), *map(str, bundles)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_documented_imports_register_the_llm_kernels() -> None:
    assert documented_imports() == [
        "import executorch.extension.llm.custom_ops.custom_ops",
        "import executorch.kernels.quantized",
    ]


def test_smollm2_pte_in_textllmrunner_decodes_the_validated_tokens(et_smollm2_run: tuple[int, Path]) -> None:
    """Greedy (temperature 0) over the validation prompt: the runner's pieces spell the start of
    the fp32 reference's greedy text (HF modeling code in PyTorch) and of our 8da4w session's."""
    out = et_smollm2_run[1]
    report = load_report(out)
    prompt = builtin_text().samples[0]  # the whole first sample is the generation prompt (19 tokens)
    bundles = [out / "executorch-xnnpack-fp32", out / "executorch-xnnpack-8da4w"]
    proc = run_runner(documented_imports(), prompt, bundles)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PIECES ")]
    fp32_pieces, int4_pieces = (json.loads(line.removeprefix("PIECES ")) for line in lines)
    fp32 = result_for(report, "executorch:xnnpack-fp32")["accuracy"]["details"]
    int4 = result_for(report, "executorch:xnnpack-8da4w")["accuracy"]["details"]
    assert len(fp32_pieces) == len(int4_pieces) == NEW_TOKENS
    assert fp32["reference_generation"].startswith("".join(fp32_pieces)), (fp32_pieces, fp32)
    assert int4["candidate_generation"].startswith("".join(int4_pieces)), (int4_pieces, int4)
    assert "".join(fp32_pieces).strip()  # not an empty or whitespace-only continuation


def test_the_package_import_alone_leaves_the_cache_op_missing(et_smollm2_run: tuple[int, Path]) -> None:
    """What the docs used to say: the package import registers nothing and generation fails."""
    bundle = et_smollm2_run[1] / "executorch-xnnpack-fp32"
    proc = run_runner(["import executorch.extension.llm.custom_ops"], "Hello", [bundle])
    assert proc.returncode != 0
    assert "Missing operator" in proc.stderr and "llama::update_cache.out" in proc.stderr
