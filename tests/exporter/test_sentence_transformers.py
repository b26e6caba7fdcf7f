"""sentence-transformers encoders carry their pooling and max_seq_length into the bundle, so a
plain client (tokenizer with truncation at its limit + the ONNX graph) gets the embedding
sentence-transformers computes. all-MiniLM-L6-v2 truncates at 256 tokens while its tokenizer
says 512: a client truncating at 512 got cosine 0.93 on a long passage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edge_export.devices.agent.onnx_model import OnnxModel
from edge_export.exporter.loading import read_pooling, read_sentence_transformers
from edge_export.exporter.textdata import builtin_text
from edge_export.run.bundle import verify_bundle

ST_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")


def sentence_transformers_embedding(folder: Path, text: str, max_length: int) -> np.ndarray:
    """What sentence-transformers computes for all-MiniLM-L6-v2 (its modules.json: Transformer
    with max_seq_length, mean Pooling, Normalize), spelled out in transformers and torch because
    sentence-transformers itself is not installed here."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_read_sentence_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    facts = read_sentence_transformers(minilm_dir, read_pooling(minilm_dir))
    assert facts is not None
    assert (facts["pooling"], facts["normalize"], facts["max_seq_length"]) == ("mean", True, 256)
    assert facts["files"] == list(ST_FILES)
    assert read_sentence_transformers(minilm_dir, None) is None  # no pooling: not an ST encoder
    # no sentence_bert_config.json: sentence-transformers then uses the tokenizer's own limit
    (tmp_path / "modules.json").write_text((minilm_dir / "modules.json").read_text())
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling/config.json").write_text((minilm_dir / "1_Pooling/config.json").read_text())
    bare = read_sentence_transformers(tmp_path, read_pooling(tmp_path))
    assert bare is not None and bare["max_seq_length"] is None
    assert bare["files"] == ["modules.json", "1_Pooling/config.json"]


def test_minilm_bundle_records_pooling_and_max_seq_length(
    minilm_run: tuple[int, Path], minilm_dir: Path
) -> None:
    bundle = minilm_run[1] / "onnx-int8-dynamic"
    manifest = json.loads((bundle / "manifest.json").read_text())
    block = manifest["io"]["extras"]["sentence_transformers"]
    assert (block["pooling"], block["normalize"], block["max_seq_length"]) == ("mean", True, 256)
    assert block["applied_in_graph"] is True
    for name in ST_FILES:
        assert (bundle / name).read_bytes() == (minilm_dir / name).read_bytes()
        assert name in manifest["files"]
    assert verify_bundle(bundle) == []
    assert json.loads((bundle / "tokenizer_config.json").read_text())["model_max_length"] == 256


def test_plain_client_gets_the_sentence_transformers_embedding_of_a_long_passage(
    minilm_run: tuple[int, Path], minilm_dir: Path
) -> None:
    """Tokenizer from the bundle truncating at its own limit, the ONNX graph, mean pooling: the
    same embedding sentence-transformers gives at max_seq_length 256, where truncating at the
    tokenizer's former 512 gives a different one (the check can fail)."""
    from transformers import AutoTokenizer

    bundle = minilm_run[1] / "onnx-fp32"
    passage = builtin_text().passage
    tokenizer = AutoTokenizer.from_pretrained(str(bundle))
    assert tokenizer.model_max_length == 256
    assert len(tokenizer(passage)["input_ids"]) > 300  # long enough for truncation to matter
    feeds = dict(tokenizer([passage], truncation=True, return_tensors="np"))
    assert feeds["input_ids"].shape == (1, 256)
    out = OnnxModel(bundle / "model.onnx").run(feeds)
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    mean_pooled = (out["last_hidden_state"] * mask).sum(1)[0] / mask.sum()
    reference = sentence_transformers_embedding(minilm_dir, passage, 256)
    assert cosine(mean_pooled, reference) >= 0.999
    assert cosine(out["sentence_embedding"][0], reference) >= 0.999
    at_512 = sentence_transformers_embedding(minilm_dir, passage, 512)
    assert cosine(at_512, reference) < 0.99
