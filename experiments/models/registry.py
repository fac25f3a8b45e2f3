"""The model registry: versions of a trained model, their serving stage and their served traffic."""

from __future__ import annotations

import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from experiments.models.project import default_project_id


class ModelStage(models.TextChoices):
    """Where a model version stands in its rollout."""

    NONE = "none", "None"
    STAGING = "staging", "Staging"
    CANARY = "canary", "Canary"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"


class ModelVersion(models.Model):
    """One registered version of a model: a run's checkpoint, frozen with its hash and metrics."""

    model_name = models.CharField(max_length=64, db_index=True, help_text="e.g. digits (the recipe).")
    version = models.PositiveIntegerField(help_text="1, 2, ... per model name.")
    recipe = models.CharField(max_length=64, help_text="Recipe that trained it: decides how it is served.")
    experiment = models.ForeignKey(
        "experiments.Experiment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="model_versions",
    )
    run = models.ForeignKey(
        "experiments.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    checkpoint_path = models.CharField(max_length=500)
    checkpoint_sha256 = models.CharField(max_length=64)
    checkpoint_size = models.PositiveBigIntegerField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="The run's final metrics.")
    stage = models.CharField(
        max_length=16, choices=ModelStage.choices, default=ModelStage.NONE, db_index=True
    )
    promoted_by = models.CharField(max_length=150, blank=True, help_text="Actor label of the last promotion.")
    promoted_at = models.DateTimeField(null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="successors",
        help_text="The production version this one replaced.",
    )
    traffic_pct = models.FloatField(
        default=0.0,
        help_text="Canary only: the share of requests (0-100) routed to it; the rest goes to production.",
    )
    dataset_version = models.ForeignKey(
        "experiments.DatasetVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="model_versions",
        help_text="Curated data it was trained on besides the recipe's own.",
    )
    project = models.ForeignKey(
        "experiments.Project",
        on_delete=models.PROTECT,
        default=default_project_id,
        related_name="model_versions",
        help_text="Its experiment's project: that project's members see, serve and deploy the model.",
    )
    serve_error = models.TextField(
        blank=True, help_text="Why the checkpoint could not be served; such a version gets no traffic."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model_name", "version"], name="modelversion_unique_number"),
            # At most one production version per model: routing must never have to choose.
            models.UniqueConstraint(
                fields=["model_name"],
                condition=Q(stage="production"),
                name="modelversion_one_production",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} v{self.version} ({self.stage})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, in its experiment's project (a model name belongs to the project that trains it)."""
        if self.experiment is not None and self._state.adding:
            self.project_id = self.experiment.project_id
        super().save(*args, **kwargs)

    @cached_property
    def latest_evaluation(self) -> VersionEvaluation | None:
        """Return its newest held-out evaluation (prefetch "evaluations" to read many without a query each)."""
        evaluations = sorted(self.evaluations.all(), key=lambda e: (e.created_at, e.pk), reverse=True)
        return evaluations[0] if evaluations else None


class VersionEvaluationStatus(models.TextChoices):
    """How an evaluation job ended."""

    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class VersionEvaluation(models.Model):
    """One version evaluated on its recipe's held-out set by the recipe's own evaluation code.

    Every promotion decision compares a candidate with the production version on the same set,
    so the two numbers come from the same data and the same code, whatever their runs logged.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    eval_set = models.CharField(max_length=200, help_text="The recipe's held-out set, by name.")
    status = models.CharField(max_length=16, choices=VersionEvaluationStatus.choices)
    metrics = models.JSONField(default=dict, blank=True)
    note = models.CharField(
        max_length=300, blank=True, help_text="What to know when comparing, e.g. trained on another split."
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One evaluation per version and set: a second job finds the first one's result.
            models.UniqueConstraint(fields=["version", "eval_set"], name="versionevaluation_unique_set")
        ]

    def __str__(self) -> str:
        return f"evaluation of {self.version_id} on {self.eval_set} ({self.status})"


class ServingStats(models.Model):
    """Counters of one version's served traffic, bumped with F() so that requests never race."""

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="stats")
    request_count = models.PositiveBigIntegerField(default=0)
    error_count = models.PositiveBigIntegerField(default=0)
    # Trusted feedback only: what accuracy, canary judging and curation rest on.
    feedback_count = models.PositiveBigIntegerField(default=0)
    feedback_correct = models.PositiveBigIntegerField(default=0)
    feedback_untrusted = models.PositiveBigIntegerField(
        default=0, help_text="Labels from callers without trusted feedback: kept apart, counted for nothing."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"stats of {self.version_id}: {self.request_count} requests"


class ServedRequest(models.Model):
    """One served prediction (a bounded recent window per version): latency, answer, later its label."""

    request_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="served")
    ok = models.BooleanField(default=True)
    latency_ms = models.FloatField()
    instances = models.PositiveIntegerField(default=1)
    predictions = models.JSONField(default=list, blank=True)
    confidence = models.FloatField(null=True, blank=True, help_text="Lowest top-class probability.")
    inputs = models.JSONField(default=list, blank=True, help_text="The features served (for drift checks).")
    label = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Feedback label, when sent.")
    correct = models.BooleanField(null=True, blank=True, help_text="Prediction matched the feedback label.")
    label_source = models.CharField(
        max_length=200, blank=True, help_text="Who sent the label: 'session:<user>' or 'token:<user>'."
    )
    label_trusted = models.BooleanField(
        default=False,
        help_text="The label's sender may give trusted feedback: only such labels count anywhere.",
    )
    cold = models.BooleanField(
        default=False, help_text="It waited for its process to load the model: latency checks leave it out."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["version", "created_at"], name="served_version_time_idx")]
        permissions = [
            ("give_feedback", "Can send feedback labels on served predictions"),
            ("give_trusted_feedback", "Can send feedback that counts toward canaries and curated datasets"),
        ]

    def __str__(self) -> str:
        return f"request {self.request_id} → v{self.version_id}"


class DatasetVersion(models.Model):
    """A curated set of served examples (hard ones), frozen in a file with its hash: training data."""

    model_name = models.CharField(max_length=64, db_index=True)
    version = models.PositiveIntegerField()
    strategy = models.CharField(max_length=32, help_text="How the rows were chosen, e.g. hard_examples.")
    source_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="curated_datasets",
        help_text="The served model whose traffic the rows came from.",
    )
    path = models.CharField(
        max_length=500, help_text=".npz with x (inputs) and y (labels), relative to DATASETS_ROOT."
    )
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    row_count = models.PositiveIntegerField()
    summary = models.JSONField(default=dict, blank=True, help_text="Why rows were picked, counts by reason.")
    created_by = models.CharField(max_length=150, help_text="Actor label, e.g. policy:drift_retrain.")
    project = models.ForeignKey(
        "experiments.Project",
        on_delete=models.PROTECT,
        default=default_project_id,
        related_name="dataset_versions",
        help_text="The project of the model whose traffic it was curated from.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model_name", "version"], name="datasetversion_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.model_name} dataset v{self.version} ({self.row_count} rows)"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, in the project of the served version it was curated from."""
        if self.source_version is not None and self._state.adding:
            self.project_id = self.source_version.project_id
        super().save(*args, **kwargs)

    def file_path(self) -> Path:
        """Return the dataset's file, which must lie under DATASETS_ROOT; raise DatasetFileError if not.

        `path` is relative to DATASETS_ROOT. An absolute path, `..`, or a symlink that leads out of
        the folder is refused: training data comes from curated files only, never from anywhere
        on the server a config names.
        """
        root = Path(settings.DATASETS_ROOT).resolve()
        relative = Path(self.path)
        if not self.path or relative.is_absolute() or ".." in relative.parts:
            raise DatasetFileError(f"dataset #{self.pk}: its path must be relative to the data folder")
        resolved = (root / relative).resolve()
        if not resolved.is_relative_to(root):
            raise DatasetFileError(f"dataset #{self.pk}: its file leads out of the data folder")
        if not resolved.is_file():
            raise DatasetFileError(f"dataset #{self.pk}: its file {self.path} is missing")
        return resolved


class DatasetFileError(ValueError):
    """A dataset version whose file cannot be used (outside the data folder, or missing)."""


class DriftCheck(models.Model):
    """One drift measurement of a served version: its inputs against its training data."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="drift_checks")
    score = models.FloatField(null=True, blank=True, help_text="Mean PSI over features; None: too few rows.")
    max_feature_psi = models.FloatField(null=True, blank=True)
    window_rows = models.PositiveIntegerField(help_text="Served input rows compared.")
    top_features = models.JSONField(default=list, blank=True, help_text="[[feature, psi], ...] worst first.")
    detail = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-checked_at", "-id"]

    def __str__(self) -> str:
        return f"drift of {self.version_id}: {self.score}"
