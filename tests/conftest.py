"""Shared fixtures: tiny random models per architecture family (plumbing), the two real models
shipped in PyPI packages (accuracy), and session-cached export runs so slow exports happen once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from edge_export.cli import main as cli_main
from edge_export.demo_models import demo_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


# Session fixtures that export a real model, slowest first (minutes on a 2-core CI machine). Under
# pytest-xdist (`-n 2 --dist loadgroup --no-loadscope-reorder`, as `make test` runs) every test that
# uses one is pinned to the same worker, so each export still happens once, and the slowest groups
# are handed out first (without the flag xdist would order groups by their number of tests) so that
# neither worker is left with a long export at the end.
HEAVY_FIXTURES = (
    "et_smollm2_run", "et_minilm_run", "coreml_smollm2_run", "tfl_smollm2_run", "smollm2_run",
    "coreml_minilm_run", "tfl_minilm_run", "minilm_run",
)  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the group marks into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests of each heavy fixture (see HEAVY_FIXTURES) and put the slowest first."""

    def rank(item: pytest.Item) -> int:
        used = [i for i, name in enumerate(HEAVY_FIXTURES) if name in getattr(item, "fixturenames", ())]
        return used[0] if used else len(HEAVY_FIXTURES)

    for item in items:
        position = rank(item)
        if position < len(HEAVY_FIXTURES):
            item.add_marker(pytest.mark.xdist_group(HEAVY_FIXTURES[position]))
    items.sort(key=rank)  # stable: the order within a group and among the rest is kept


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker: one torch thread (two workers share the CI machine's two cores) and the
    check that the export groups took effect."""
    if hasattr(config, "workerinput"):
        torch.set_num_threads(1)
        config.pluginmanager.register(_GroupCheck())


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr) when capsys is given."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _save(model: torch.nn.Module, folder: Path, tokenizer_from: Path | None) -> Path:
    model.save_pretrained(folder)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).exists():
                shutil.copy(tokenizer_from / name, folder / name)
    return folder


def make_encoder(folder: Path, model_type: str, task: str, tokenizer_from: Path | None) -> Path:
    """A tiny random encoder of `model_type` for `task`, saved as a HF folder (safetensors)."""
    import transformers

    torch.manual_seed(0)
    common = {"vocab_size": 30522, "num_labels": 3, "max_position_embeddings": 128}
    if model_type == "distilbert":
        config = transformers.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, **common)
    else:
        cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[model_type]
        extra = {"type_vocab_size": 2} if model_type == "bert" else {"pad_token_id": 0}
        config = cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            **extra,
            **common,
        )
    auto = {"feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "fill-mask": transformers.AutoModelForMaskedLM}[task]  # fmt: skip
    return _save(auto.from_config(config).eval(), folder, tokenizer_from)


# Tiny configs of every decoder family (2 layers, hidden 64): what each family adds beyond llama is
# switched on and made to matter at validation lengths (sliding windows of 32 under 64-token
# prompts and a 512-token passage, soft-capping, learned positions, no-RoPE layers, routed experts).
_DECODER_COMMON = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}  # fmt: skip
_MOE = {"num_experts_per_tok": 2}
DECODER_CONFIGS: dict[str, Any] = {
    "llama": lambda t: t.LlamaConfig(tie_word_embeddings=True, **_DECODER_COMMON),
    "qwen2": lambda t: t.Qwen2Config(**_DECODER_COMMON),
    "mistral": lambda t: t.MistralConfig(sliding_window=None, **_DECODER_COMMON),
    "phi3": lambda t: t.Phi3Config(pad_token_id=0, **_DECODER_COMMON),
    "gemma": lambda t: t.GemmaConfig(head_dim=16, **_DECODER_COMMON),
    "qwen3": lambda t: t.Qwen3Config(head_dim=16, **_DECODER_COMMON),
    "gemma2": lambda t: t.Gemma2Config(head_dim=16, sliding_window=32, query_pre_attn_scalar=16,
                                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                       **_DECODER_COMMON),
    "gemma3_text": lambda t: t.Gemma3TextConfig(head_dim=16, sliding_window=32, query_pre_attn_scalar=16,
                                                layer_types=["sliding_attention", "full_attention"],
                                                **_DECODER_COMMON),
    "gpt2": lambda t: t.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "smollm3": lambda t: t.SmolLM3Config(pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                         no_rope_layers=[1, 0], **_DECODER_COMMON),
    "mixtral": lambda t: t.MixtralConfig(num_local_experts=4, sliding_window=None, **_MOE, **_DECODER_COMMON),
    "qwen2_moe": lambda t: t.Qwen2MoeConfig(num_experts=4, moe_intermediate_size=32,
                                            shared_expert_intermediate_size=64, **_MOE, **_DECODER_COMMON),
    "qwen3_moe": lambda t: t.Qwen3MoeConfig(num_experts=4, moe_intermediate_size=32, head_dim=16,
                                            **_MOE, **_DECODER_COMMON),
}  # fmt: skip


def make_decoder(folder: Path, model_type: str) -> Path:
    """A tiny random decoder-only LM of `model_type` (no tokenizer: validation uses hashed ids)."""
    import transformers

    torch.manual_seed(0)
    config = DECODER_CONFIGS[model_type](transformers)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert model.config.model_type == model_type
    return _save(model, folder, None)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder (sentence-transformers, mean pooling + normalize)."""
    return demo_model_path("minilm")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) file."""
    return demo_model_path("smollm2")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """Tiny random BERT feature extractor with the MiniLM tokenizer."""
    return make_encoder(tmp_path_factory.mktemp("tiny-bert"), "bert", "feature-extraction", minilm_dir)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random Llama causal LM with tied embeddings."""
    return make_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


def export_bundle(factory: pytest.TempPathFactory, model: Path, recipe: str) -> Path:
    """Export `model` with one recipe (no latency) into a fresh session folder; the bundle path."""
    name = recipe.replace(":", "-")
    out = factory.mktemp(name) / "out"
    code, _, _ = run_cli(["export", model, "--out", out, "--recipe", recipe, "--no-latency"])
    assert code == 0
    return out / name


@pytest.fixture(scope="session")
def bert_onnx_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """tiny_bert as an onnx:fp32 bundle, once per session: copy it before changing anything."""
    return export_bundle(tmp_path_factory, tiny_bert, "onnx:fp32")


def load_report(out: Path) -> dict[str, Any]:
    """OUT/report.json as a dict."""
    return json.loads((out / "report.json").read_text())


def result_for(report: dict[str, Any], recipe: str) -> dict[str, Any]:
    """The report's result for one recipe id."""
    return next(r for r in report["results"] if r["recipe"] == recipe)


def metric(result: dict[str, Any], name: str) -> float:
    """One measured accuracy metric of a result."""
    return float(result["accuracy"]["metrics"][name])


def gate(result: dict[str, Any], name: str) -> dict[str, Any]:
    """One evaluated gate of a result."""
    return next(g for g in result["accuracy"]["gates"] if g["metric"] == name)


FAST = ["--warmup", "1", "--iterations", "3"]


def _export_once(
    factory: pytest.TempPathFactory, name: str, model: Path, recipes: list[str]
) -> tuple[int, Path]:
    """Export `model` with these recipes into a fresh session folder; (exit code, OUT)."""
    out = factory.mktemp(name) / "out"
    code, _, _ = run_cli(
        ["export", model, "--out", out, *[a for r in recipes for a in ("--recipe", r)], *FAST]
    )
    return code, out


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[int, Path]:
    """One export of the real MiniLM with every ONNX recipe (shared by many tests)."""
    recipes = ["onnx:fp32", "onnx:fp16", "onnx:int8-dynamic", "onnx:int8-static", "onnx:int4-weight"]
    return _export_once(tmp_path_factory, "minilm", minilm_dir, recipes)


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> tuple[int, Path]:
    """One export of the real SmolLM2 (GGUF): fp32, int8 (dynamic and static) and int4, KV cache."""
    recipes = ["onnx:fp32", "onnx:int8-dynamic", "onnx:int8-static", "onnx:int4-weight"]
    return _export_once(tmp_path_factory, "smollm2", smollm2_gguf, recipes)


@pytest.fixture(scope="session")
def et_minilm_run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[int, Path]:
    """The real MiniLM to ExecuTorch/XNNPACK fp32, int8 (PT2E dynamic) and 8da4w, once per session."""
    recipes = ["executorch:xnnpack-fp32", "executorch:xnnpack-int8", "executorch:xnnpack-8da4w"]
    return _export_once(tmp_path_factory, "et-minilm", minilm_dir, recipes)


@pytest.fixture(scope="session")
def tfl_minilm_run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[int, Path]:
    """The real MiniLM to TFLite fp32, int8 (dynamic and static) and int4, once per session."""
    recipes = ["tflite:fp32", "tflite:int8-dynamic", "tflite:int8-static", "tflite:int4-block"]
    return _export_once(tmp_path_factory, "tfl-minilm", minilm_dir, recipes)


@pytest.fixture(scope="session")
def tfl_smollm2_run(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> tuple[int, Path]:
    """The real SmolLM2 (GGUF) to TFLite fp32, int8-dynamic and int4 with a KV cache, once per session."""
    recipes = ["tflite:fp32", "tflite:int8-dynamic", "tflite:int4-block"]
    return _export_once(tmp_path_factory, "tfl-smollm2", smollm2_gguf, recipes)


@pytest.fixture(scope="session")
def et_smollm2_run(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> tuple[int, Path]:
    """The real SmolLM2 (GGUF) to ExecuTorch fp32 and 8da4w with a static KV cache, once per session."""
    return _export_once(
        tmp_path_factory, "et-smollm2", smollm2_gguf, ["executorch:xnnpack-fp32", "executorch:xnnpack-8da4w"]
    )


@pytest.fixture(scope="session")
def coreml_minilm_run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> tuple[int, Path]:
    """The real MiniLM to Core ML fp16, int8-weight, int8-w8a8, int4-block and palettize-4bit, once
    per session."""
    recipes = ["coreml:fp16", "coreml:int8-weight", "coreml:int8-w8a8", "coreml:int4-block",
               "coreml:palettize-4bit"]  # fmt: skip
    return _export_once(tmp_path_factory, "coreml-minilm", minilm_dir, recipes)


@pytest.fixture(scope="session")
def coreml_smollm2_run(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> tuple[int, Path]:
    """The real SmolLM2 (GGUF) to Core ML fp16 (stateful KV cache) and int4-block, once per session."""
    return _export_once(
        tmp_path_factory, "coreml-smollm2", smollm2_gguf, ["coreml:fp16", "coreml:int4-block"]
    )


class _GroupCheck:
    """Fails collection when xdist's loadgroup did not turn the group marks into node ids (pytest
    9.2 broke that for pytest-xdist 3.8: every worker then ran every real-model export)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not config.getvalue("loadgroup"):
            return
        lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(
                f"xdist_group ignored for {lost[0]}: use the pytest pinned in constraints.txt"
            )
