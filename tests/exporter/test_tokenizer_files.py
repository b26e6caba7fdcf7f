"""Bundle tokenizer files that transformers 4.x reads too, and that transformers 5 loads as before.

transformers 5 saves a tokenizer it has no model-specific class for (every GGUF tokenizer among
them) as `"tokenizer_class": "TokenizersBackend"`, a class transformers 4.x does not have: its
AutoTokenizer then raises "Tokenizer class TokenizersBackend does not exist". Bundles name
PreTrainedTokenizerFast instead, which 4.x reads from the same tokenizer.json and 5.x keeps as an
alias of TokenizersBackend.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_export.exporter.prepared import portable_tokenizer_config

# Classes transformers 4.57 has (checked against `pip install transformers==4.57.6`), for the
# tokenizers of the families edge-export exports. A name outside this list may not load there.
_TRANSFORMERS_4_NAMES = ("PreTrainedTokenizer", "BertTokenizer", "DistilBertTokenizer", "RobertaTokenizer",
                         "GPT2Tokenizer", "LlamaTokenizer", "GemmaTokenizer", "Qwen2Tokenizer",
                         "CodeLlamaTokenizer", "XLMRobertaTokenizer", "MPNetTokenizer")  # fmt: skip
TRANSFORMERS_4_CLASSES = frozenset(
    f"{name}{suffix}" for name in _TRANSFORMERS_4_NAMES for suffix in ("", "Fast")
)
TEXT = "Hello wörld! <|im_start|>user\nThe 東京 train costs 12.50€ [SEP] today<|im_end|>"


def test_tokenizers_backend_is_renamed_and_transformers_5_loads_it_the_same(
    tmp_path: Path, minilm_dir: Path
) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    original = PreTrainedTokenizerFast(tokenizer_file=str(minilm_dir / "tokenizer.json"), unk_token="[UNK]")
    original.save_pretrained(str(tmp_path))
    config_file = tmp_path / "tokenizer_config.json"
    assert json.loads(config_file.read_text())["tokenizer_class"] == "TokenizersBackend"  # what 5.x writes
    portable_tokenizer_config(config_file, {"model_max_length": 256})
    config = json.loads(config_file.read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" in TRANSFORMERS_4_CLASSES
    assert config["model_max_length"] == 256 and config["unk_token"] == "[UNK]"  # the rest is kept
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(loaded) is TokenizersBackend  # the same class transformers 5 gave before
    assert loaded(TEXT)["input_ids"] == original(TEXT)["input_ids"]
    assert loaded.unk_token == "[UNK]" and loaded.model_max_length == 256


def test_a_model_specific_class_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    text = json.dumps({"tokenizer_class": "BertTokenizer", "model_max_length": 512})
    path.write_text(text)
    portable_tokenizer_config(path, {})
    assert path.read_text() == text  # nothing to change: not even rewritten
    portable_tokenizer_config(tmp_path / "absent.json", {"model_max_length": 1})
    assert not (tmp_path / "absent.json").exists()


def test_smollm2_bundle_tokenizer_names_a_transformers_4_class(smollm2_run: tuple[int, Path]) -> None:
    """The GGUF tokenizer (saved by transformers 5 as TokenizersBackend before this fix): the class
    is one 4.x knows, and transformers 5 encodes exactly what the tokenizer.json says."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    bundle = smollm2_run[1] / "onnx-int4-weight"
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in TRANSFORMERS_4_CLASSES
    loaded = AutoTokenizer.from_pretrained(str(bundle))
    raw = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    assert loaded(TEXT)["input_ids"] == raw.encode(TEXT).ids
    assert loaded.eos_token == "<|im_end|>" and loaded.chat_template  # chat_template.jinja beside it


def test_minilm_bundle_tokenizer_matches_the_source(minilm_run: tuple[int, Path], minilm_dir: Path) -> None:
    from transformers import AutoTokenizer

    bundle = minilm_run[1] / "onnx-fp32"
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in TRANSFORMERS_4_CLASSES
    source, loaded = (
        AutoTokenizer.from_pretrained(str(minilm_dir)),
        AutoTokenizer.from_pretrained(str(bundle)),
    )
    assert loaded(TEXT)["input_ids"] == source(TEXT)["input_ids"]
