"""Every encoder model type x task exports to ONNX fp32 (and TFLite fp32 for a subset) and passes
the fp32 gates; the RoBERTa family's position ids (offset by padding_idx + 1) stay right at the
longest input the config allows.

Tiny random models (hidden 32, 2 layers) share the real MiniLM WordPiece tokenizer (pad 0, CLS 101,
SEP 102, MASK 103): every type accepts its ids, and each config sets the special ids to match, except
the RoBERTa family, which keeps its real pad id 1 so the position offset is the real one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_FILES, load_report, metric, run_cli

from edge_export.exporter.families.encoder import MODEL_TYPES, TASKS

_LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
_COMMON = {"vocab_size": 30522, "num_labels": 3, "max_position_embeddings": 128}
# RoBERTa-style: positions start at pad_token_id + 1, so 130 slots hold 128 tokens (like 514 / 512)
_ROBERTA = {**_LAYERS, **_COMMON, "max_position_embeddings": 130, "pad_token_id": 1, "type_vocab_size": 1}
_BERT = {**_LAYERS, **_COMMON, "pad_token_id": 0, "type_vocab_size": 2}
_DISTILBERT = {**_COMMON, "dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2, "pad_token_id": 0}
# DeBERTa-v3 geometry: disentangled relative attention, no absolute positions, no segment ids; 32
# buckets so that the log-bucketed relative positions matter at validation lengths
_DEBERTA_V3 = {**_LAYERS, **_COMMON, "relative_attention": True, "position_biased_input": False,
               "pos_att_type": ["p2c", "c2p"], "max_relative_positions": -1, "position_buckets": 32,
               "norm_rel_ebd": "layer_norm", "share_att_key": True, "type_vocab_size": 0, "pad_token_id": 0}  # fmt: skip
# alternating global / local attention (sliding window 16, the real one has 128)
_MODERNBERT = {**_LAYERS, **_COMMON, "global_attn_every_n_layers": 2, "local_attention": 16, "pad_token_id": 0,
               "cls_token_id": 101, "sep_token_id": 102, "bos_token_id": 101, "eos_token_id": 102}  # fmt: skip
ENCODER_CONFIGS: dict[str, Callable[[Any], Any]] = {
    "bert": lambda t: t.BertConfig(**_BERT),
    "roberta": lambda t: t.RobertaConfig(**_ROBERTA),
    "xlm-roberta": lambda t: t.XLMRobertaConfig(**_ROBERTA),
    "camembert": lambda t: t.CamembertConfig(**_ROBERTA),
    "distilbert": lambda t: t.DistilBertConfig(**_DISTILBERT),
    "electra": lambda t: t.ElectraConfig(embedding_size=16, **_BERT),
    "deberta-v2": lambda t: t.DebertaV2Config(**_DEBERTA_V3),
    "modernbert": lambda t: t.ModernBertConfig(**_MODERNBERT),
}
_AUTO = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "fill-mask": "AutoModelForMaskedLM",
}
# TFLite (fixed-shape signatures, one 128-token bucket to keep conversion short) for the graphs most
# unlike BERT; tests/targets/test_tflite.py already covers bert and distilbert
TFLITE = {("roberta", "fill-mask"), ("deberta-v2", "token-classification"), ("modernbert", "feature-extraction"),
          ("electra", "text-classification")}  # fmt: skip
TASK_METRIC = {"feature-extraction": "embedding_cosine_min"}


def make_tiny_encoder(folder: Path, model_type: str, task: str, tokenizer_from: Path) -> Path:
    """A tiny random `model_type` encoder for `task` with the MiniLM tokenizer, saved as a HF folder."""
    import transformers

    torch.manual_seed(0)
    config = ENCODER_CONFIGS[model_type](transformers)
    model = getattr(transformers, _AUTO[task]).from_config(config).eval()
    assert model.config.model_type == model_type
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, folder / name)
    return folder


def test_every_type_and_task_is_covered() -> None:
    assert set(ENCODER_CONFIGS) == set(MODEL_TYPES)
    assert set(_AUTO) == set(TASKS)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Callable[[str, str], Path]:
    """(model type, task) -> the folder of its tiny model, built once per module."""
    made: dict[tuple[str, str], Path] = {}

    def get(model_type: str, task: str) -> Path:
        if (model_type, task) not in made:
            folder = tmp_path_factory.mktemp(f"{model_type}-{task}")
            made[model_type, task] = make_tiny_encoder(folder, model_type, task, minilm_dir)
        return made[model_type, task]

    return get


@pytest.fixture(scope="module")
def encoder_export(
    tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Callable[[str, str], Path]
) -> Callable[[str, str], tuple[int, Path]]:
    """(model type, task) -> (exit code, OUT) of one export with onnx:fp32 (+ tflite:fp32 for the
    TFLITE subset), run once per module."""
    runs: dict[tuple[str, str], tuple[int, Path]] = {}

    def get(model_type: str, task: str) -> tuple[int, Path]:
        if (model_type, task) not in runs:
            recipes = ["onnx:fp32"] + (["tflite:fp32"] if (model_type, task) in TFLITE else [])
            out = tmp_path_factory.mktemp(f"out-{model_type}-{task}") / "out"
            config = out.parent / "config.json"
            config.write_text(json.dumps({"recipe_options": {"tflite:fp32": {"seq_buckets": [128]}}}))
            argv = ["export", tiny_encoder(model_type, task), "--out", out, "--no-latency", "--task", task,
                    "--config", config]  # fmt: skip
            code, _, _ = run_cli([*argv, *[a for r in recipes for a in ("--recipe", r)]])
            runs[model_type, task] = code, out
        return runs[model_type, task]

    return get


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_encoder_exports_and_passes_fp32(
    encoder_export: Callable[[str, str], tuple[int, Path]], model_type: str, task: str
) -> None:
    code, out = encoder_export(model_type, task)
    report = load_report(out)
    failed = [
        (r["recipe"], r.get("error"), (r.get("accuracy") or {}).get("gates")) for r in report["results"]
    ]
    assert code == 0, failed
    assert report["model"]["task"] == task
    assert len(report["results"]) == (2 if (model_type, task) in TFLITE else 1)
    for result in report["results"]:
        assert result["status"] == "passed", result
        assert metric(result, TASK_METRIC.get(task, "top1_agreement")) >= 0.99


def test_roberta_positions_at_the_longest_input(
    tiny_encoder: Callable[[str, str], Path], encoder_export: Callable[[str, str], tuple[int, Path]]
) -> None:
    """RoBERTa numbers positions from padding_idx + 1: with 130 position slots and pad id 1 the
    longest input is 128 tokens (positions 2..129). The exported graph at exactly that length,
    batch 2 with one row padded, matches transformers, and one token more is out of the table
    (what prepare() derives from the config: max_position_embeddings - pad_token_id - 1)."""
    import onnxruntime as ort
    import transformers

    from edge_export.exporter.loading import prepare
    from edge_export.exporter.source import resolve

    folder = tiny_encoder("roberta", "fill-mask")
    code, out = encoder_export("roberta", "fill-mask")
    assert code == 0
    assert prepare(resolve(str(folder)), None).max_positions == 128
    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    ids = np.random.default_rng(0).integers(999, 30000, size=(2, 128))
    mask = np.ones_like(ids)
    ids[1, 100:], mask[1, 100:] = 0, 0  # the MiniLM tokenizer pads with 0, not the config's 1
    positions = hf.roberta.embeddings.create_position_ids_from_input_ids(torch.from_numpy(ids), 1)
    assert positions[0].tolist() == list(range(2, 130))
    session = ort.InferenceSession(str(out / "onnx-fp32" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4)
    longer = torch.from_numpy(np.concatenate([ids[:1], ids[:1, :1]], axis=1))
    with pytest.raises((IndexError, RuntimeError), match="out of"):
        hf(input_ids=longer)


def test_a_family_the_target_cannot_prove_is_refused_with_its_reason(
    tiny_encoder: Callable[[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeBERTa on Core ML: the target's family table names why (exit 2, nothing written)."""
    from conftest import run_cli

    from edge_export.targets.registry import get_target

    folder = tiny_encoder("deberta-v2", "token-classification")
    code, _, err = run_cli(["export", folder, "--out", tmp_path / "out", "--recipe", "coreml:fp32"], capsys)
    assert code == 2 and not (tmp_path / "out").exists()
    assert get_target("coreml").unsupported_families["deberta-v2"] in err
    assert "targets that can: executorch, onnx, tflite" in err
