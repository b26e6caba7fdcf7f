"""Resolving MODEL (folder, hub id from the HF cache, .gguf file) and checking weight files."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from edge_export.errors import InputError
from edge_export.exporter.source import ModelSource, check_safetensors, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _with_header(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


# ---- local folders -----------------------------------------------------------------------------


def test_folder_resolves_with_its_safetensors(tiny_bert: Path) -> None:
    source = resolve(str(tiny_bert))
    assert source.kind == "folder"
    assert source.given == str(tiny_bert)
    assert source.folder == tiny_bert
    assert source.weight_files == (tiny_bert / "model.safetensors",)
    assert source.uses_pickle is False and source.gguf_file is None


def test_sha256_is_stable_and_covers_config(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _copy(tiny_bert, tmp_path / "m")
    first = resolve(str(folder)).sha256()
    assert first == resolve(str(folder)).sha256()
    assert len(first) == 64
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    assert resolve(str(folder)).sha256() != first
    assert resolve(str(tiny_bert)).sha256() == first  # same weights and config as the original


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist") as info:
        resolve(str(tmp_path / "nope"))
    assert info.value.hint


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no config\.json"):
        resolve(str(tmp_path))


def test_folder_without_weights(tmp_path: Path, tiny_bert: Path) -> None:
    shutil.copy(tiny_bert / "config.json", tmp_path / "config.json")
    with pytest.raises(InputError, match="no weight files"):
        resolve(str(tmp_path))


def _pickle_folder(tmp_path: Path, tiny_bert: Path, name: str = "pytorch_model.bin") -> Path:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_bert / "config.json", folder / "config.json")
    (folder / name).write_bytes(b"\x80\x04pickle bytes, never loaded here")
    return folder


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only_refused(tmp_path: Path, tiny_bert: Path, name: str) -> None:
    folder = _pickle_folder(tmp_path, tiny_bert, name)
    with pytest.raises(InputError, match="pickle") as info:
        resolve(str(folder))
    assert name in info.value.message
    assert "--allow-pickle" in (info.value.hint or "")


def test_pickle_allowed_when_asked(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _pickle_folder(tmp_path, tiny_bert)
    source = resolve(str(folder), allow_pickle=True)
    assert source.uses_pickle is True
    assert source.weight_files == (folder / "pytorch_model.bin",)


def test_safetensors_preferred_over_pickle(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _copy(tiny_bert, tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    source = resolve(str(folder))  # no allow_pickle needed: the pickle is never loaded
    assert source.uses_pickle is False
    assert source.weight_files == (folder / "model.safetensors",)


def test_every_safetensors_shard_is_checked(tmp_path: Path, tiny_bert: Path) -> None:
    folder = _copy(tiny_bert, tmp_path / "sharded")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(InputError, match=r"model-00002-of-00002\.safetensors"):
        resolve(str(folder))


# ---- single files ------------------------------------------------------------------------------


def test_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "Model.Q4.GGUF"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    source = resolve(str(path))
    assert source.kind == "gguf"
    assert source.gguf_file == path and source.folder == tmp_path
    assert source.weight_files == (path,)
    assert len(source.sha256()) == 64


@pytest.mark.parametrize("content", [b"", b"GGU", b"<html>Not Found</html>"])
def test_gguf_name_with_wrong_magic(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a GGUF file"):
        resolve(str(path))


def test_other_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    with pytest.raises(InputError, match=r"not a \.gguf model"):
        resolve(str(path))


# ---- check_safetensors -------------------------------------------------------------------------


def test_valid_safetensors_passes(tiny_bert: Path) -> None:
    check_safetensors(tiny_bert / "model.safetensors")


def test_metadata_only_safetensors_passes(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(_with_header(b'{"__metadata__": {"format": "pt"}}'))
    check_safetensors(path)


def test_exact_size_passes_and_one_byte_less_fails(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    path = tmp_path / "w.safetensors"
    path.write_bytes(_with_header(header, b"\x00" * 8))
    check_safetensors(path)
    path.write_bytes(_with_header(header, b"\x00" * 7))
    with pytest.raises(InputError, match="truncated"):
        check_safetensors(path)


def test_truncated_real_weights(tmp_path: Path, tiny_bert: Path) -> None:
    data = (tiny_bert / "model.safetensors").read_bytes()
    path = tmp_path / "model.safetensors"
    path.write_bytes(data[: len(data) - 1])
    with pytest.raises(InputError, match="truncated") as info:
        check_safetensors(path)
    assert str(path) in info.value.message
    assert info.value.hint and "re-download" in info.value.hint


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x02\x03", id="shorter-than-length-prefix"),
        pytest.param(b"\xff" * 64, id="huge-header-length"),
        pytest.param(_with_header(b"not json at all"), id="header-not-json"),
        pytest.param(_with_header(b"\xff\xfe{}"), id="header-not-utf8"),
        pytest.param(_with_header(b'{"w": 1}'), id="entry-not-an-object"),
        pytest.param(_with_header(b'{"w": {"dtype": "F32"}}'), id="no-data-offsets"),
        pytest.param(_with_header(b'{"w": {"data_offsets": [0, "x"]}}'), id="offset-not-int"),
        pytest.param(_with_header(b"[1, 2]"), id="header-is-a-list"),
        pytest.param(_with_header(b'"text"'), id="header-is-a-string"),
        pytest.param(_with_header(b'{"w": {"data_offsets": []}}'), id="empty-data-offsets"),
    ],
)
def test_corrupt_safetensors_is_an_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a valid safetensors file"):
        check_safetensors(path)


# ---- hub ids through the HF cache (offline) ----------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache under tmp_path, offline. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE into `huggingface_hub.constants` at import, so patch those attributes too."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # "org/tiny" must not exist as a relative local folder
    return cache


def _cache_snapshot(cache: Path, repo: str, commit: str, files_from: Path, ref: str = "main") -> Path:
    """Lay out models--org--name/{snapshots/<commit>/, refs/<ref>} as huggingface_hub does."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


def test_hub_id_resolves_from_cache_offline(hf_cache: Path, tiny_bert: Path) -> None:
    snapshot = _cache_snapshot(hf_cache, "org/tiny", COMMIT, tiny_bert)
    source = resolve("org/tiny")
    assert isinstance(source, ModelSource)
    assert source.kind == "hub"
    assert source.given == "org/tiny"
    assert source.folder.resolve() == snapshot.resolve()
    assert [p.name for p in source.weight_files] == ["model.safetensors"]
    assert source.sha256() == resolve(str(tiny_bert)).sha256()


def test_hub_revision_from_cache(hf_cache: Path, tiny_bert: Path) -> None:
    _cache_snapshot(hf_cache, "org/tiny", COMMIT, tiny_bert)
    tagged = _cache_snapshot(hf_cache, "org/tiny", OTHER_COMMIT, tiny_bert, ref="v1")
    assert resolve("org/tiny", revision="v1").folder.resolve() == tagged.resolve()
    by_hash = resolve("org/tiny", revision=OTHER_COMMIT).folder
    assert by_hash.resolve() == tagged.resolve()


def test_hub_snapshot_is_checked_like_a_folder(hf_cache: Path, tiny_bert: Path) -> None:
    snapshot = _cache_snapshot(hf_cache, "org/tiny", COMMIT, tiny_bert)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="not a valid safetensors"):
        resolve("org/tiny")


def test_uncached_hub_id_offline(hf_cache: Path) -> None:
    with pytest.raises(InputError, match="not in the Hugging Face cache") as info:
        resolve("org/not-cached")
    assert "org/not-cached" in info.value.message
    assert info.value.hint


def test_local_folder_wins_over_hub_id(hf_cache: Path, tiny_bert: Path) -> None:
    _copy(tiny_bert, Path("org") / "tiny")  # cwd is tmp_path (hf_cache chdir)
    source = resolve("org/tiny")
    assert source.kind == "folder"
    assert source.folder == Path("org/tiny")


@pytest.mark.parametrize("given", ["./org/tiny", "/no/such/org/tiny", "not-a-hub-id"])
def test_paths_that_look_local_are_not_looked_up_on_the_hub(hf_cache: Path, given: str) -> None:
    with pytest.raises(InputError, match="does not exist"):
        resolve(given)
