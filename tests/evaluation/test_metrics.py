"""Held-out metrics on inputs small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments.recipes.evalmetrics import (
    auc_one_vs_rest,
    classification_metrics,
    confusion_matrix_csv,
    expected_calibration_error,
)


def _onehot_proba(pred: list[int], n_classes: int, confidence: float = 0.9) -> np.ndarray:
    rest = (1 - confidence) / (n_classes - 1)
    proba = np.full((len(pred), n_classes), rest)
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_macro_f1_averages_each_class_f1_without_weighting_by_support() -> None:
    # Class 0: tp=2, fp=1, fn=0 → P=2/3, R=1, F1=0.8. Class 1: tp=1, fp=0, fn=1 → P=1, R=1/2, F1=2/3.
    # Class 2: tp=1, fp=0, fn=0 → F1=1.
    y = np.array([0, 0, 1, 1, 2])
    proba = _onehot_proba([0, 0, 1, 0, 2], 3)
    metrics = classification_metrics(proba, y, 3)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1.0) / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["recall_class_0"] == pytest.approx(1.0)
    assert metrics["recall_class_1"] == pytest.approx(0.5)
    assert metrics["recall_class_2"] == pytest.approx(1.0)


def test_auc_one_vs_rest_averages_the_per_class_areas() -> None:
    y = np.array([0, 0, 1, 1])
    # Class 0's scores: positives 0.9, 0.4; negatives 0.6, 0.2. Pairs ranked right: (0.9>0.6),
    # (0.9>0.2), (0.4>0.2), wrong: (0.4<0.6) → 3/4. Class 1 is the complement: the same 3/4.
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    assert auc_one_vs_rest(proba, y, 2) == pytest.approx(0.75)


def test_auc_skips_a_class_absent_from_the_labels_and_is_undefined_without_any() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    # Class 2 never occurs: only classes 0 and 1 count, both ranked perfectly.
    assert auc_one_vs_rest(proba, np.array([0, 1]), 3) == pytest.approx(1.0)
    assert math.isnan(auc_one_vs_rest(proba[:1], np.array([0]), 3))


def test_expected_calibration_error_weighs_each_bins_gap_by_its_share() -> None:
    # Two predictions at confidence 0.9 (one right) and two at 0.6 (both right), 10 bins:
    # bin (0.8, 0.9]: |0.5 - 0.9| = 0.4; bin (0.5, 0.6]: |1.0 - 0.6| = 0.4; each half the data.
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(proba, y, bins=10) == pytest.approx(0.4)


def test_a_perfectly_calibrated_classifier_has_zero_ece() -> None:
    # Confidence 0.75 in one bin, three of four right.
    proba = np.array([[0.75, 0.25]] * 4)
    y = np.array([0, 0, 0, 1])
    assert expected_calibration_error(proba, y, bins=15) == pytest.approx(0.0)


def test_the_confusion_matrix_has_a_row_per_true_class() -> None:
    y = np.array([0, 1, 1])
    csv = confusion_matrix_csv(_onehot_proba([0, 0, 1], 2), y, 2)
    assert csv.splitlines() == ["true\\predicted,0,1", "0,1,0", "1,1,1"]
