"""Every class of input error through the real CLI in a subprocess (issue 15): exit 2 (or the
documented code), one `error:` line naming the problem and the fix, no traceback, nothing at OUT
or beside it, nothing left in TMPDIR. One test per class, not per message."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_subprocess import NOBODY, expect_error, run_cli_process, tree

QUICK = ["--recipe", "onnx:fp32", "--no-latency"]


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# ---- OUT never destroys the model or anything edge-export did not write --------------------------


@pytest.mark.parametrize("where", ["equals", "contains", "inside"])
def test_out_overlapping_the_model_is_refused_and_the_model_kept(
    tmp_path: Path, tiny_bert: Path, where: str
) -> None:
    model = _copy(tiny_bert, tmp_path / "models" / "bert")
    before = tree(model)
    out = {"equals": model, "contains": model.parent, "inside": model / "out"}[where]
    run = run_cli_process(["export", model, "--out", out, "--force", *QUICK], tmp_path)
    relation = {
        "equals": " is the model",
        "contains": " contains the model",
        "inside": " is inside the model",
    }
    expect_error(run, 2, relation[where], "choose an --out outside the model folder")
    assert tree(model) == before
    assert not (model / "out").exists()


def test_out_holding_the_gguf_file_is_refused(tmp_path: Path) -> None:
    from gguf_files import write_tiny_llama_gguf

    gguf = write_tiny_llama_gguf(tmp_path / "models" / "tiny.gguf")
    size = gguf.stat().st_size
    run = run_cli_process(["export", gguf, "--out", gguf.parent, "--force", *QUICK], tmp_path)
    expect_error(run, 2, "contains the model", "tiny.gguf")
    assert gguf.stat().st_size == size


def _hub_cache(model: Path, cache: Path, repo: str) -> Path:
    """An offline Hugging Face cache holding `model` as `repo`: files in blobs/, linked from a
    snapshot folder, refs/main naming it (the layout huggingface_hub writes)."""
    import hashlib

    base = cache / ("models--" + repo.replace("/", "--"))
    snapshot = base / "snapshots" / ("0" * 40)
    for folder in (base / "blobs", snapshot, base / "refs"):
        folder.mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)
    for file in model.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, base / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    return base


@pytest.mark.parametrize("where", ["blobs", "snapshot", "cache-root"])
def test_out_overlapping_a_hub_snapshot_is_refused(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    cache = tmp_path / "hf" / "hub"
    base = _hub_cache(tiny_bert, cache, "org/tiny")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = tree(base)
    out = {"blobs": base / "blobs", "snapshot": base / "snapshots" / ("0" * 40), "cache-root": cache}[where]
    run = run_cli_process(["export", "org/tiny", "--out", out, "--force", *QUICK], tmp_path)
    expect_error(run, 2, "the model's files", "choose an --out outside the model folder")
    assert tree(base) == before


def test_force_refuses_an_out_with_foreign_files(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "out"
    (out / "onnx-fp32").mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"schema": "edge-export/report@1"}))
    (out / "onnx-fp32" / "manifest.json").write_text(json.dumps({"schema": "edge-export/manifest@1"}))
    (out / "thesis.tex").write_text("years of work")
    before = tree(out)
    run = run_cli_process(["export", tiny_bert, "--out", out, "--force", *QUICK], tmp_path)
    line = expect_error(run, 2, "--force would delete", "thesis.tex", "did not write")
    assert "move it away" in line
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmpdir"]


def test_force_replaces_a_previous_run(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / "out"
    first = run_cli_process(["export", tiny_bert, "--out", out, *QUICK, "--no-validate"], tmp_path)
    assert first.code == 0, first.stderr
    again = run_cli_process(["export", tiny_bert, "--out", out, "--force", *QUICK, "--no-validate"], tmp_path)
    assert again.code == 0, again.stderr
    assert json.loads((out / "report.json").read_text())["results"][0]["status"] == "passed"
    assert list(again.tmpdir.iterdir()) == []


# ---- OUT's parent and the file system ------------------------------------------------------------


def test_out_parent_is_a_file(tmp_path: Path, tiny_bert: Path) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    run = run_cli_process(["export", tiny_bert, "--out", out, *QUICK], tmp_path)
    expect_error(run, 2, "is a file", "afile", "--out")


def test_out_name_too_long(tmp_path: Path, tiny_bert: Path) -> None:
    out = tmp_path / ("x" * 300)
    run = run_cli_process(["export", tiny_bert, "--out", out, *QUICK], tmp_path)
    expect_error(run, 2, "too long", "shorter --out")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp folders are root-only), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="edge-export-perm-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _public_copy(source: Path, dest: Path) -> Path:
    _copy(source, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


@pytest.mark.parametrize("case", ["out-parent", "missing-parent", "model"])
def test_permission_denied_as_a_normal_user(public_dir: Path, tiny_bert: Path, case: str) -> None:
    """Run as `nobody` (the suite runs as root in CI, where nothing is ever denied)."""
    model = _public_copy(tiny_bert, public_dir / "model")
    locked = public_dir / "locked"
    locked.mkdir(mode=0o755)  # owned by root: nobody may not write here
    out = {"out-parent": locked / "out", "missing-parent": locked / "new" / "out", "model": public_dir / "o"}[
        case
    ]
    if case == "model":
        (model / "model.safetensors").chmod(0o600)  # root's file: nobody may not read it
        public_dir.chmod(0o1777)
    run = run_cli_process(["export", model, "--out", out, *QUICK], public_dir, prefix=NOBODY)
    fragments = ("permission denied", "model.safetensors") if case == "model" else ("not writable", "--out")
    expect_error(run, 2, *fragments, out=out)


def test_disk_full_names_the_path_and_the_space(tmp_path: Path, tiny_bert: Path) -> None:
    """OUT on a 1 MiB tmpfs in a private mount namespace (nothing leaks to the host)."""
    small = tmp_path / "small"
    small.mkdir()
    script = f'mount -t tmpfs -o size=1m tmpfs {small} && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, "sh"]
    run = run_cli_process(["export", tiny_bert, "--out", small / "out", *QUICK], tmp_path, prefix=prefix)
    line = expect_error(
        run, 2, "disk full while writing", str(small / ".out.staging-"), "MiB", "free some space"
    )
    assert "this run needs about" in line


# ---- files given to flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--config", "--data", "--inventory"])
def test_a_folder_where_a_file_belongs(tmp_path: Path, tiny_bert: Path, flag: str) -> None:
    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    run = run_cli_process(["export", tiny_bert, flag, folder, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, f"{flag} ", "is a folder", f"{flag} takes a file", out=tmp_path / "out")


@pytest.mark.parametrize("flag", ["--config", "--data", "--inventory"])
def test_non_utf8_files(tmp_path: Path, tiny_bert: Path, flag: str) -> None:
    name = {"--config": "c.yaml", "--data": "d.txt", "--inventory": "i.yaml"}[flag]
    path = tmp_path / name
    path.write_bytes("latency:\n  warmup: 1\n# caf\xe9\n".encode("latin-1"))
    run = run_cli_process(["export", tiny_bert, flag, path, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, flag, "not UTF-8", "0xe9", "save the file as UTF-8", out=tmp_path / "out")


def test_a_file_where_a_folder_belongs(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.write_text("not a folder")
    run = run_cli_process(["validate", bundle], tmp_path)
    expect_error(run, 2, "is a file, not a bundle folder")


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"text": "one"}', "[1, 2, 3]"], "is a JSON list, not a text record"),
        (['{"text": "one"}', "42"], "is a JSON int"),
        (['{"text": "one"}', '{"text": 7}'], 'no text: its "text" field'),
        (['{"text": "one"}', '{"label": 1}'], "no text"),
        (['{"text": "one"}', '{"text": "two"'], "is not valid JSON"),
    ],
)
def test_wrong_jsonl_shapes(tmp_path: Path, tiny_bert: Path, lines: list[str], fragment: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    run = run_cli_process(["export", tiny_bert, "--data", data, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, f"{data}:2", fragment, out=tmp_path / "out")


# ---- bundles: manifests and counts -------------------------------------------------------------


def _bundle(tmp_path: Path, manifest: object) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


GOOD_MANIFEST = {
    "schema": "edge-export/manifest@1", "model": {"source": "m", "sha256": "0"}, "task": "fill-mask",
    "target": "onnx", "recipe": {"id": "onnx:fp32", "precision": "fp32"}, "artifact": "model.onnx",
    "io": {"kind": "encoder", "inputs": [{"name": "input_ids"}]}, "files": {},
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            {"schema": "other-tool/manifest@3"},
            ("schema 'other-tool/manifest@3'", "reads edge-export/manifest@1"),
        ),
        ({"schema": None}, ("schema none",)),
        ({"recipe": {"id": "onnx:fp32"}}, ("key 'recipe.precision' is missing",)),
        ({"io": {"kind": "encoder"}}, ("key 'io.inputs' is missing",)),
        ({"artifact": "../../etc/passwd"}, ("key 'artifact' is invalid", "inside the bundle")),
        ({"files": ["model.onnx"]}, ("key 'files' is invalid",)),
    ],
)
@pytest.mark.parametrize("command", ["validate", "bench"])
def test_bad_manifests(tmp_path: Path, change: dict, fragments: tuple[str, ...], command: str) -> None:
    manifest = {k: v for k, v in {**GOOD_MANIFEST, **change}.items() if v is not None}
    run = run_cli_process([command, _bundle(tmp_path, manifest)], tmp_path)
    expect_error(run, 2, "manifest.json", *fragments)


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--iterations", "0"], ("invalid --iterations", "greater than or equal to 1", "got 0")),
        (["--warmup", "-1"], ("invalid --warmup",)),
        (["--iterations", "100000"], ("invalid --iterations", "10000", "more only holds the device")),
        (["--warmup", "5000"], ("invalid --warmup", "1000", "settle")),
    ],
)
@pytest.mark.parametrize("command", ["validate", "bench"])
def test_out_of_range_counts(
    tmp_path: Path, flags: list[str], fragments: tuple[str, ...], command: str
) -> None:
    from edge_export.run.bundle import write_manifest

    bundle = _bundle(tmp_path, GOOD_MANIFEST)
    (bundle / "model.onnx").write_bytes(b"onnx")
    write_manifest(bundle, {k: v for k, v in GOOD_MANIFEST.items() if k not in ("schema", "files")})
    run = run_cli_process([command, bundle, *flags], tmp_path)
    expect_error(run, 2, *fragments)


def test_export_counts_are_capped_too(tmp_path: Path, tiny_bert: Path) -> None:
    argv = ["export", tiny_bert, "--out", tmp_path / "out", "--recipe", "onnx:fp32", "--iterations", "20000"]
    expect_error(run_cli_process(argv, tmp_path), 2, "invalid --iterations", out=tmp_path / "out")


# ---- weights -------------------------------------------------------------------------------------


def _edit_weights(folder: Path, edit: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    if edit == "missing-layer":
        state = {k: v for k, v in state.items() if ".layer.1." not in k}
    elif edit == "unexpected":
        state["encoder.layer.9.extra.weight"] = torch.zeros(4)
    elif edit == "shape":
        state["pooler.dense.weight"] = torch.zeros(16, 32)
    elif edit == "int-dtype":
        state["pooler.dense.weight"] = state["pooler.dense.weight"].to(torch.int8)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        ("missing-layer", ("lack 16 tensor(s)", "encoder.layer.1.", "and 12 more")),
        ("unexpected", ("does not use", "encoder.layer.9.extra.weight")),
        ("shape", ("wrong shape", "pooler.dense.weight (16, 32) vs (32, 32)")),
        ("int-dtype", ("pooler.dense.weight", "I8", "float")),
    ],
)
def test_weights_that_do_not_fill_the_architecture(
    tmp_path: Path, tiny_bert: Path, edit: str, fragments: tuple[str, ...]
) -> None:
    model = _copy(tiny_bert, tmp_path / "model")
    _edit_weights(model, edit)
    run = run_cli_process(["export", model, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, *fragments, "(fix: ", out=tmp_path / "out")


def test_gguf_missing_a_tensor(tmp_path: Path) -> None:
    from gguf_files import write_tiny_llama_gguf

    gguf = write_tiny_llama_gguf(tmp_path / "m" / "tiny.gguf", drop_tensors=("blk.1.ffn_down.weight",))
    run = run_cli_process(["export", gguf, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "GGUF tensors", "model.layers.1.mlp.down_proj.weight", out=tmp_path / "out")


def test_pickle_refused_by_the_safe_loader(tmp_path: Path, tiny_bert: Path) -> None:
    """--allow-pickle still never unpickles arbitrary objects; torch's advice is not repeated."""
    import pickle

    class Payload:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    model = _copy(tiny_bert, tmp_path / "model")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    argv = ["export", model, "--allow-pickle", "--out", tmp_path / "out", *QUICK]
    run = run_cli_process(argv, tmp_path)
    expect_error(run, 2, "safe loader refuses", "convert it to safetensors", out=tmp_path / "out")
    assert "pwned" not in run.stdout + run.stderr


# ---- tokenizers ----------------------------------------------------------------------------------


def _wordlevel_without_unk(folder: Path) -> None:
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"] = {"type": "WordLevel", "vocab": {"hello": 0, "world": 1}, "unk_token": "[NOPE]"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("damage", ["truncated-json", "binary", "wordlevel-unk"])
def test_broken_tokenizer(tmp_path: Path, tiny_bert: Path, damage: str) -> None:
    model = _copy(tiny_bert, tmp_path / "model")
    tokenizer = model / "tokenizer.json"
    if damage == "truncated-json":
        tokenizer.write_text(tokenizer.read_text()[:500])
    elif damage == "binary":
        tokenizer.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    else:
        _wordlevel_without_unk(model)
    run = run_cli_process(["export", model, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "tokenizer", "restore the model's original tokenizer files", out=tmp_path / "out")
    assert "tokenizer.json" in run.stderr


def test_data_needs_a_tokenizer(tmp_path: Path, tiny_llama: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("first line of text\nsecond line of text\n")
    run = run_cli_process(["export", tiny_llama, "--data", data, "--out", tmp_path / "out", *QUICK], tmp_path)
    expect_error(run, 2, "has no tokenizer", "--data", out=tmp_path / "out")


def test_no_tokenizer_is_noted_in_result_and_table(tmp_path: Path, tiny_llama: Path) -> None:
    out = tmp_path / "out"
    run = run_cli_process(["export", tiny_llama, "--out", out, *QUICK], tmp_path)
    assert run.code == 0, run.stderr
    assert "no tokenizer" in run.stdout  # the table
    report = json.loads((out / "report.json").read_text())
    (result,) = report["results"]
    assert any("no tokenizer" in note and "synthetic token ids" in note for note in result["notes"])
    weights = report["model"]["weights"]
    assert weights["tensors"] == 20 and len(weights["sha256"]) == 64  # tied lm_head counted once


# ---- contradictions are warned, not resolved silently -------------------------------------------


def test_contradicting_options_are_warned(tmp_path: Path, tiny_bert: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("validation:\n  gates:\n    '*':\n      cosine_min: 1\n")  # an int threshold is fine
    argv = ["export", tiny_bert, "--config", config, "--no-validate", "--no-latency", "--iterations", "5",
            "--recipe", "onnx:fp32", "--quantize", "int8", "--out", tmp_path / "out"]  # fmt: skip
    run = run_cli_process(argv, tmp_path)
    assert run.code == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert any("--no-validate" in w and "gates" in w for w in warnings), run.stderr
    assert any("--no-latency" in w and "--iterations" in w for w in warnings), run.stderr
    assert any("--quantize int8 is ignored" in w for w in warnings), run.stderr


def test_int_where_a_float_option_is_expected(tmp_path: Path, tiny_bert: Path) -> None:
    from edge_export.targets.registry import get_recipe

    recipe = get_recipe("coreml:int8-w8a8").with_options({"outlier_ratio": 4})
    assert recipe.options["outlier_ratio"] == 4.0 and isinstance(recipe.options["outlier_ratio"], float)
    config = tmp_path / "c.yaml"
    config.write_text('recipe_options:\n  "onnx:int4-weight":\n    block_size: true\n')
    argv = [
        "export",
        tiny_bert,
        "--config",
        config,
        "--recipe",
        "onnx:int4-weight",
        "--out",
        tmp_path / "out",
    ]
    expect_error(run_cli_process(argv, tmp_path), 2, "block_size", "must be int", out=tmp_path / "out")
