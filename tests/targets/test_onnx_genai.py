"""ONNX decoder bundles run unchanged in onnxruntime-genai (the runtime apps ship), token for token
the same greedy output as edge-export's own onnxruntime session over the same graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime_genai as og  # the onnx extra installs it: missing is a broken set-up
import pytest
from conftest import make_decoder, run_cli

from edge_export.devices.agent.lm import KVCacheSession, greedy_generate
from edge_export.devices.agent.onnx_model import OnnxModel
from edge_export.exporter.families.decoder import MODEL_TYPES
from edge_export.run.bundle import verify_bundle
from edge_export.targets.onnx.genai import GENAI_TYPES

PROMPTS = ([5, 17, 42, 99, 3, 7, 200, 11], [250, 1, 64, 64, 9])


def genai_greedy(bundle: Path, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """onnxruntime-genai's own generator over the bundle folder as it is: (greedy tokens, the
    logits of the prompt's last position)."""
    model = og.Model(str(bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    first_logits = np.array(generator.get_output("logits"))[0, -1]
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens, first_logits


def our_greedy(bundle: Path, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """edge-export's session over the same bundle (what validation and the device agent run),
    stopping at the EOS ids the bundle's genai_config.json declares, as genai does."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    eos = json.loads((bundle / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    session = KVCacheSession(OnnxModel(bundle / manifest["artifact"]).run, manifest["io"])
    session.reset()
    first_logits = session.step(np.array(prompt))[0, -1]
    tokens = greedy_generate(session, prompt, new_tokens)
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1], first_logits
    return tokens, first_logits


def check_io_names(bundle: Path, config: dict[str, Any]) -> None:
    """Every name the config hands genai (templates expanded per layer) is an input or output of
    the graph, and every graph input is one genai feeds."""
    decoder = config["model"]["decoder"]
    graph = onnx.load(str(bundle / decoder["filename"]), load_external_data=False).graph
    layers = decoder["num_hidden_layers"]

    def expand(names: dict[str, str]) -> set[str]:
        return {n % i if "%d" in n else n for n in names.values() for i in range(layers)}

    graph_inputs = {i.name for i in graph.input}
    assert expand(decoder["inputs"]) == graph_inputs
    assert expand(decoder["outputs"]) <= {o.name for o in graph.output}
    kv = next(i for i in graph.input if i.name == "past_key_values.0.key").type.tensor_type.shape.dim
    assert [kv[1].dim_value, kv[3].dim_value] == [decoder["num_key_value_heads"], decoder["head_size"]]


# ---- tiny random decoders: each kind of graph genai has to describe ----------------------------


def test_every_decoder_family_has_a_genai_type() -> None:
    """A new family needs a decision (genai refuses types it does not know), not a silent default."""
    assert set(GENAI_TYPES) == set(MODEL_TYPES)


@pytest.mark.parametrize(
    ("model_type", "recipes", "genai_type"),
    [
        ("llama", ["onnx:fp32", "onnx:int4-weight"], "llama"),  # tied embedding; MatMulNBits
        ("qwen3", ["onnx:fp32"], "qwen3"),  # q/k norms
        ("gemma3_text", ["onnx:fp32"], "gemma3_text"),  # sliding-window layers inside the graph
        ("gpt2", ["onnx:fp32"], "llama"),  # learned positions; genai's "gpt2" type wants past_%d
    ],
)
def test_tiny_decoder_runs_unchanged_in_onnxruntime_genai(
    tmp_path: Path, model_type: str, recipes: list[str], genai_type: str
) -> None:
    source = make_decoder(tmp_path / "model", model_type)
    out = tmp_path / "out"
    argv = ["export", source, "--out", out, *[a for r in recipes for a in ("--recipe", r)]]
    code, _, _ = run_cli([*argv, "--no-validate", "--no-latency"])
    assert code == 0
    for recipe in recipes:
        bundle = out / recipe.replace(":", "-")
        config = json.loads((bundle / "genai_config.json").read_text())
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["export"]["genai_config"]["type"] == config["model"]["type"] == genai_type
        assert "genai_config.json" in manifest["files"] and verify_bundle(bundle) == []
        assert config["search"]["past_present_share_buffer"] is False  # present = past + new
        check_io_names(bundle, config)
        for prompt in PROMPTS:
            theirs, their_logits = genai_greedy(bundle, prompt, 12)
            ours, our_logits = our_greedy(bundle, prompt, 12)
            assert theirs == ours, (recipe, prompt)
            np.testing.assert_allclose(their_logits, our_logits, rtol=0, atol=1e-4)


def test_eos_ids_outside_the_vocabulary_are_left_out(tmp_path: Path) -> None:
    """genai refuses a config whose special ids fall outside the vocabulary (this tiny Phi-3 keeps
    Phi-3's eos 32000 with 256 tokens): those ids are dropped, and the bundle still loads."""
    source = make_decoder(tmp_path / "model", "phi3")
    out = tmp_path / "out"
    code, _, _ = run_cli(
        ["export", source, "--out", out, "--recipe", "onnx:fp32", "--no-validate", "--no-latency"]
    )
    assert code == 0
    bundle = out / "onnx-fp32"
    model = json.loads((bundle / "genai_config.json").read_text())["model"]
    assert model["eos_token_id"] == [] and model["pad_token_id"] == 0  # the config's pad_token_id
    assert all(0 <= model[k] < model["vocab_size"] for k in ("bos_token_id", "pad_token_id"))
    assert genai_greedy(bundle, PROMPTS[0], 6)[0] == our_greedy(bundle, PROMPTS[0], 6)[0]


# ---- real model: SmolLM2-135M-Instruct ---------------------------------------------------------


@pytest.mark.parametrize("bundle_name", ["onnx-fp32", "onnx-int4-weight"])
def test_smollm2_bundle_chats_in_onnxruntime_genai_like_our_session(
    smollm2_run: tuple[int, Path], bundle_name: str
) -> None:
    """The bundle folder as shipped: genai's tokenizer and chat template give the ids transformers
    gives, and its greedy continuation equals our session's for 16 tokens."""
    from transformers import AutoTokenizer

    bundle = smollm2_run[1] / bundle_name
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    model = og.Model(str(bundle))
    tokenizer = og.Tokenizer(model)
    text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    prompt = [int(t) for t in tokenizer.encode(text)]
    hf = AutoTokenizer.from_pretrained(str(bundle))
    assert prompt == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    theirs, _ = genai_greedy(bundle, prompt, 16)
    ours, _ = our_greedy(bundle, prompt, 16)
    assert theirs == ours
    assert len(theirs) >= 6 and "Paris" in tokenizer.decode(np.array(theirs, dtype=np.int32))
    config = json.loads((bundle / "genai_config.json").read_text())
    assert config["model"]["eos_token_id"] == hf.eos_token_id and config["model"]["context_length"] >= 2048
