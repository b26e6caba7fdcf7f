"""Metric functions on hand-made arrays with known answers."""

from __future__ import annotations

import math

import numpy as np

from edge_export.validation import metrics as m


def test_identical_outputs() -> None:
    ref = np.random.default_rng(0).normal(size=(2, 5, 8))
    assert m.max_abs_error(ref, ref) == 0.0
    assert math.isinf(m.sqnr_db(ref, ref))
    assert np.allclose(m.row_cosines(ref, ref), 1.0)
    assert m.top1_agreement(ref, ref) == 1.0


def test_sqnr_of_known_noise() -> None:
    ref = np.ones((4, 10))
    cand = ref + 0.1  # noise power 0.01 per element, signal 1
    assert abs(m.sqnr_db(ref, cand) - 20.0) < 1e-9


def test_padding_positions_do_not_count() -> None:
    ref = np.zeros((1, 3, 2))
    cand = ref.copy()
    cand[0, 2] = 100.0  # garbage at a padded position
    valid = np.array([[True, True, False]])
    assert m.max_abs_error(ref, cand, valid) == 0.0
    assert m.max_abs_error(ref, cand) == 100.0


def test_cosine_and_top1_detect_changes() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert np.allclose(m.row_cosines(ref, cand), [1.0, 0.0])
    assert m.top1_agreement(ref, cand) == 0.5


def test_mean_pool_and_prefix() -> None:
    hidden = np.array([[[1.0], [3.0], [100.0]]])
    assert m.mean_pool(hidden, np.array([[1, 1, 0]]))[0, 0] == 2.0
    assert m.matching_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
