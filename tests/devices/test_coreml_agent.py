"""The device agent's Core ML adapter up to the point where macOS is required."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_export.devices.agent import coreml_model
from edge_export.devices.agent.runtimes import NotRunnableHere, load_bundle


def test_enumerated_packages_get_feeds_padded_to_the_smallest_length_that_fits() -> None:
    feeds = {
        "input_ids": np.array([[101, 7, 102]], dtype=np.int64),
        "attention_mask": np.ones((1, 3), np.int64),
    }
    padded = coreml_model.padded_feeds(feeds, ["input_ids", "attention_mask"], [16, 64])
    assert padded["input_ids"].dtype == np.int32 and padded["input_ids"].shape == (1, 16)
    assert padded["input_ids"][0, :3].tolist() == [101, 7, 102] and not padded["input_ids"][0, 3:].any()
    assert padded["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13  # padding is masked out
    unchanged = coreml_model.padded_feeds(feeds, ["input_ids"], [])  # a range-shaped package
    assert unchanged["input_ids"].shape == (1, 3) and unchanged["input_ids"].dtype == np.int32
    with pytest.raises(ValueError, match="exceed the largest enumerated length"):
        coreml_model.padded_feeds({"input_ids": np.zeros((1, 65), np.int64)}, ["input_ids"], [16, 64])


def test_compute_units_come_from_the_manifest_and_are_checked() -> None:
    assert (
        coreml_model.compute_units({"recipe": {"options": {"compute_units": "CPU_AND_NE"}}}) == "CPU_AND_NE"
    )
    assert coreml_model.compute_units({}) == "ALL"
    with pytest.raises(ValueError, match="unknown compute units 'NPU'"):
        coreml_model.compute_units({"recipe": {"options": {"compute_units": "NPU"}}})


def test_off_macos_a_coreml_bundle_is_not_run_before_coremltools_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = {"target": "coreml", "artifact": "model.mlpackage", "io": {"inputs": [], "outputs": []}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    def slow_import() -> str:
        raise AssertionError("coremltools imported before the platform check")

    monkeypatch.setattr(coreml_model, "runtime_version", slow_import)
    monkeypatch.setattr(coreml_model.platform, "system", lambda: "Linux")  # the answer on any non-Mac
    with pytest.raises(NotRunnableHere, match="needs macOS"):
        load_bundle(tmp_path)
