"""Latency statistics."""

from __future__ import annotations

from edge_export.validation.latency import decode_rate, summarize


def test_percentiles_and_noise_flag() -> None:
    stats = summarize([10.0] * 18 + [10.0, 30.0])
    assert stats["iterations"] == 20 and stats["p50_ms"] == 10.0
    assert stats["p99_ms"] > stats["p90_ms"] >= stats["p50_ms"]
    assert stats["noisy"] is True
    assert summarize([5.0, 5.0, 5.0])["noisy"] is False


def test_decode_rate_uses_median_step() -> None:
    assert decode_rate([10.0, 10.0, 500.0]) == 100.0
    assert summarize([])["iterations"] == 0
