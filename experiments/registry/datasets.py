"""Curated datasets: hard examples picked from served traffic, frozen into a versioned file."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q

from experiments.models import DatasetVersion, ModelVersion, ServedRequest
from experiments.runs.execution import file_sha256

STRATEGIES = ("hard_examples",)


class CurationError(Exception):
    """Nothing could be curated; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _hard_examples(model_name: str, count: int, max_confidence: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return the newest trusted-labelled served rows the model got wrong or was unsure of, up to count.

    Only rows with a trusted feedback label are trained on: one untrusted sender must not be able
    to write a retraining set. Unsure rows still waiting for a (trusted) label are counted in the
    summary, so people see what more labelling would add.
    """
    hard = Q(correct=False) | Q(confidence__lt=max_confidence)
    served = ServedRequest.objects.filter(hard, version__model_name=model_name, instances=1)
    labelled = list(
        served.filter(label__isnull=False, label_trusted=True)
        .order_by("-created_at", "-id")
        .values_list("inputs", "label", "correct")[:count]
    )
    unlabelled = served.filter(label__isnull=True).count()
    untrusted = served.filter(label__isnull=False, label_trusted=False).count()
    xs = [inputs[0] for inputs, _, _ in labelled if inputs]
    ys = [label for inputs, label, _ in labelled if inputs]
    summary = {
        "wrong": sum(1 for _, _, c in labelled if c is False),
        "unsure_but_right": sum(1 for _, _, c in labelled if c is True),
        "unlabelled_skipped": unlabelled,
        "untrusted_skipped": untrusted,
        "max_confidence": max_confidence,
    }
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.int64), summary


def dataset_curate(
    *,
    model_name: str,
    actor_label: str,
    strategy: str = "hard_examples",
    count: int = 1000,
    max_confidence: float = 0.6,
    source_version: ModelVersion | None = None,
) -> DatasetVersion:
    """Write the model's hard served examples to a new dataset version (.npz, sha256 recorded)."""
    if strategy not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    x, y, summary = _hard_examples(model_name, count, max_confidence)
    if len(y) == 0:
        raise CurationError(
            f"no labelled hard examples of {model_name!r} yet: nothing served was wrong or below "
            f"{max_confidence:g} confidence with a trusted feedback label"
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    root = Path(settings.DATASETS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    # A unique file name: a concurrent curation can never overwrite this file. The row keeps
    # the name relative to the data folder, the only place a dataset file may be read from.
    name = f"{model_name}-{uuid.uuid4().hex[:12]}.npz"
    path = root / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
    for _ in range(3):
        number = (
            DatasetVersion.objects.filter(model_name=model_name).aggregate(n=Max("version"))["n"] or 0
        ) + 1
        try:
            with transaction.atomic():
                return DatasetVersion.objects.create(
                    model_name=model_name,
                    version=number,
                    strategy=strategy,
                    source_version=source_version,
                    path=name,
                    sha256=file_sha256(path),
                    size=path.stat().st_size,
                    row_count=len(y),
                    summary=summary,
                    created_by=actor_label,
                )
        except IntegrityError:
            continue  # another curation took this number: count again
    path.unlink(missing_ok=True)
    raise CurationError(f"could not number a new dataset of {model_name!r}: too many at once")
