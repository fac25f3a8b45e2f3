"""Held-out evaluation metrics of a classifier, from its class probabilities (numpy; no Django).

The numbers an evaluation job stores and policies read as `eval/<name>`: accuracy, macro-F1,
recall per class, one-vs-rest ROC AUC and the expected calibration error.
"""

from __future__ import annotations

import json
import math

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, recall_score, roc_auc_score

CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "auc_ovr", "ece")
ECE_BINS = 15


def classification_metric_names(n_classes: int) -> tuple[str, ...]:
    """Return every metric name classification_metrics returns for n_classes classes."""
    return (*CLASSIFICATION_METRICS, *(f"recall_class_{c}" for c in range(n_classes)))


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Return the ECE: the gap between confidence and accuracy, averaged over equal-width bins.

    Each prediction falls in the bin of its confidence (the top probability); a bin's gap
    |accuracy - mean confidence| weighs by its share of the predictions. Bins are (lo, hi],
    the first one [0, hi].
    """
    if len(y) == 0:
        return 0.0
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            total += count / len(y) * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return total


def auc_one_vs_rest(proba: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Return the macro average of each class's ROC AUC against the rest; NaN if no class has both."""
    scores = []
    for c in range(n_classes):
        positive = y == c
        if positive.all() or not positive.any():
            continue  # AUC needs examples of both sides
        scores.append(float(roc_auc_score(positive, proba[:, c])))
    return float(np.mean(scores)) if scores else math.nan


def classification_metrics(proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Return accuracy, macro_f1, auc_ovr, ece and recall_class_<c> of class probabilities against labels."""
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    recalls = recall_score(y, pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auc_ovr": auc_one_vs_rest(proba, y, n_classes),
        "ece": expected_calibration_error(proba, y),
    }
    metrics.update({f"recall_class_{c}": float(r) for c, r in zip(labels, recalls, strict=True)})
    return metrics


def confusion_matrix_csv(proba: np.ndarray, y: np.ndarray, n_classes: int) -> str:
    """Return the confusion matrix as CSV: one row per true class, one column per predicted class."""
    matrix = sk_confusion_matrix(y, proba.argmax(axis=1), labels=list(range(n_classes)))
    header = "true\\predicted," + ",".join(str(c) for c in range(n_classes))
    rows = [f"{c}," + ",".join(str(int(v)) for v in matrix[c]) for c in range(n_classes)]
    return "\n".join([header, *rows]) + "\n"


def evaluation_report_json(*, eval_set: str, metrics: dict[str, float], examples: int, note: str = "") -> str:
    """Return the evaluation report stored next to the metrics: what was measured, on what, and the numbers."""
    return json.dumps(
        {
            "eval_set": eval_set,
            "examples": examples,
            "note": note,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
        },
        indent=2,
        sort_keys=True,
    )
