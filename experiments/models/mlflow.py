"""What the MLflow tracking API needs beyond the lifecycle: experiment groups and run identities.

An MLflow experiment is a named group of runs (`MlflowExperiment`); each MLflow run is one
external Crucible experiment with its one attempt (`MlflowRun` links them and keeps what
MLflow calls a run's identity: its 32-hex id, name and times). Its status, params and tags are
the attempt's own (`Run.status`, `Run.params`, `Run.tags`), so the dashboard shows them.
Metric points are the lifecycle's own `MetricPoint` rows, so charts, policies and the
history API see them like any worker's.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from experiments.models.experiment import Experiment, Run


def _empty_dict() -> dict[str, str]:
    return {}


class MlflowLifecycle(models.TextChoices):
    """MLflow's lifecycle stage of an experiment or a run (deletion is not offered: always active)."""

    ACTIVE = "active", "Active"
    DELETED = "deleted", "Deleted"


class MlflowRunStatus(models.TextChoices):
    """A run's status as MLflow names it (derived from the attempt's status)."""

    RUNNING = "RUNNING", "Running"
    SCHEDULED = "SCHEDULED", "Scheduled"
    FINISHED = "FINISHED", "Finished"
    FAILED = "FAILED", "Failed"
    KILLED = "KILLED", "Killed"


class MlflowExperiment(models.Model):
    """A named group of MLflow runs; id 0 is MLflow's "Default", made on first use."""

    name = models.CharField(max_length=200, unique=True)
    lifecycle_stage = models.CharField(
        max_length=16, choices=MlflowLifecycle.choices, default=MlflowLifecycle.ACTIVE
    )
    tags = models.JSONField(default=_empty_dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Null only for "Default" (id 0), which every project's scripts share: its runs still keep
    # to their own projects, each being a Crucible experiment.
    project = models.ForeignKey(
        "experiments.Project",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The project whose members see it and log runs into it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} (MLflow #{self.pk})"


class MlflowRun(models.Model):
    """One MLflow run: its external Crucible experiment and attempt, with what only MLflow names."""

    run_uuid = models.CharField(max_length=32, unique=True)
    mlflow_experiment = models.ForeignKey(MlflowExperiment, on_delete=models.CASCADE, related_name="runs")
    experiment = models.OneToOneField(Experiment, on_delete=models.CASCADE, related_name="mlflow_run")
    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="mlflow_run")
    run_name = models.CharField(max_length=250, blank=True)
    user_id = models.CharField(max_length=150, blank=True)
    start_time = models.BigIntegerField(help_text="Unix time in milliseconds, as the client sent it.")
    end_time = models.BigIntegerField(null=True, blank=True)
    lifecycle_stage = models.CharField(
        max_length=16, choices=MlflowLifecycle.choices, default=MlflowLifecycle.ACTIVE
    )

    class Meta:
        ordering = ["-start_time", "-id"]
        indexes = [models.Index(fields=["mlflow_experiment", "start_time"], name="mlflow_run_exp_idx")]

    def __str__(self) -> str:
        return f"MLflow run {self.run_uuid}"
