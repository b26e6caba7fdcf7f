"""Gates: direction, NaN handling, override precedence, one message listing every failure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_export.errors import ConfigError
from edge_export.validation.gates import check_override_keys, evaluate, failure_message, resolve_thresholds


def test_directions_and_failure_message() -> None:
    gates = evaluate(
        {"embedding_cosine_min": 0.95, "perplexity_delta_pct": 12.0, "sqnr_db": 40.0},
        {"embedding_cosine_min": 0.99, "perplexity_delta_pct": 5.0, "sqnr_db": 30.0, "top1_agreement": 0.9},
    )
    assert {g.metric: g.passed for g in gates} == {
        "embedding_cosine_min": False, "perplexity_delta_pct": False, "sqnr_db": True,
    }  # fmt: skip
    message = failure_message("onnx:int8-dynamic", gates)
    assert message is not None
    assert "embedding_cosine_min=0.95" in message and "perplexity_delta_pct=12" in message
    assert "sqnr_db" not in message


def test_nan_always_fails_and_all_pass_gives_no_message() -> None:
    assert not evaluate({"cosine_min": math.nan}, {"cosine_min": 0.0})[0].passed
    assert failure_message("x", evaluate({"cosine_min": 1.0}, {"cosine_min": 0.5})) is None


def test_override_precedence() -> None:
    overrides = {
        "*": {"cosine_min": 0.1},
        "int8": {"cosine_min": 0.2},
        "onnx:int8-dynamic": {"cosine_min": 0.3},
    }
    assert (
        resolve_thresholds("onnx:int8-dynamic", "int8", {"cosine_min": 0.9}, overrides)["cosine_min"] == 0.3
    )
    assert resolve_thresholds("onnx:int8-static", "int8", {"cosine_min": 0.9}, overrides)["cosine_min"] == 0.2
    assert resolve_thresholds("onnx:fp32", "fp32", {"cosine_min": 0.9}, overrides)["cosine_min"] == 0.1


def test_unknown_metric_in_overrides_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'cosine_min'"):
        check_override_keys({"*": {"cosin_min": 0.5}})


def test_perplexity_is_gated_on_both_sides() -> None:
    """A model that got "better" than its reference changed (issue 17): every precision gets a
    lower bound from PRECISION_GATES unless the recipe sets its own, and overrides still win."""
    fp32 = resolve_thresholds("onnx:fp32", "fp32", {"perplexity_delta_pct": 0.01}, {})
    assert fp32["perplexity_drop_pct"] == 0.01
    int4 = resolve_thresholds("x:int4", "int4", {}, {"x:int4": {"perplexity_drop_pct": 5.0}})
    assert int4["perplexity_drop_pct"] == 5.0
    scaled_cache = {"perplexity_delta_pct": -0.05, "perplexity_drop_pct": 0.05}
    failed = [g.metric for g in evaluate(scaled_cache, fp32) if not g.passed]
    assert failed == ["perplexity_drop_pct"]
    assert all(g.passed for g in evaluate({"perplexity_delta_pct": 0.0, "perplexity_drop_pct": 0.0}, fp32))


def test_scale_is_gated_beside_cosine() -> None:
    """An embedding x1.2 keeps cosine 1.0 (it passed int8 before, issue 17); its norm does not."""
    from edge_export.validation.metrics import norm_ratio_dev, row_cosines

    ref = np.random.default_rng(0).standard_normal((4, 16))
    assert row_cosines(ref, 1.2 * ref).min() > 0.999999
    int8 = resolve_thresholds("onnx:int8-dynamic", "int8", {}, {})
    int4 = resolve_thresholds("onnx:int4-weight", "int4", {}, {})
    assert [g.passed for g in evaluate({"norm_ratio_dev": norm_ratio_dev(ref, 1.2 * ref)}, int8)] == [False]
    assert [g.passed for g in evaluate({"norm_ratio_dev": norm_ratio_dev(ref, 1.5 * ref)}, int4)] == [False]
    assert norm_ratio_dev(ref, ref) == 0.0 and norm_ratio_dev(np.zeros(3), np.ones(3)) == float("inf")
