"""What a run leaves besides metrics: its completed stages, its artifacts and its held-out evaluation."""

from __future__ import annotations

from django.db import models

from experiments.recipes.outputs import artifact_name_error as artifact_name_error


class RunStage(models.Model):
    """One stage of a run that completed (load_data, train, evaluate, export …) and how long it took.

    A resumed attempt reads the stages its experiment's earlier attempts completed and skips them.
    """

    run = models.ForeignKey("experiments.Run", on_delete=models.CASCADE, related_name="stages")
    name = models.CharField(max_length=40)
    seconds = models.FloatField(help_text="Wall-clock duration of the stage.")
    completed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "completed_at", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="runstage_unique_name")]

    def __str__(self) -> str:
        return f"stage {self.name} of run {self.run_id} ({self.seconds:.2f} s)"


class ArtifactKind(models.TextChoices):
    """What an artifact holds (how the page describes it; the bytes are served as they are)."""

    FILE = "file", "File"
    REPORT = "report", "Report"
    TABLE = "table", "Table"
    SAMPLES = "samples", "Samples"
    MODEL = "model", "Model"


class RunArtifact(models.Model):
    """A file a run saved besides its checkpoints (a confusion matrix, samples, a report), by name.

    It lies under ARTIFACTS_ROOT/artifacts/experiment-<id>/run-<id>/<name> and is removed with the
    run's checkpoint by the same retention rule.
    """

    run = models.ForeignKey("experiments.Run", on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices, default=ArtifactKind.FILE)
    path = models.CharField(max_length=500)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="Set when retention removed the file.")

    class Meta:
        ordering = ["run_id", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="runartifact_unique_name")]

    def __str__(self) -> str:
        return f"artifact {self.name} of run {self.run_id}"


class EvaluationStatus(models.TextChoices):
    """Where a run's evaluation job stands."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


EVALUATION_PENDING = (EvaluationStatus.QUEUED, EvaluationStatus.RUNNING)


class RunEvaluation(models.Model):
    """The evaluation job of a trained run: its final checkpoint measured on the recipe's held-out set.

    It runs on a worker after training (the experiment sits in evaluating meanwhile); policies
    that decide on the experiment wait for it, and the registry reuses its numbers for the
    version registered from the same checkpoint instead of evaluating again.
    """

    experiment = models.ForeignKey(
        "experiments.Experiment", on_delete=models.CASCADE, related_name="run_evaluations"
    )
    run = models.OneToOneField("experiments.Run", on_delete=models.CASCADE, related_name="evaluation")
    status = models.CharField(
        max_length=16, choices=EvaluationStatus.choices, default=EvaluationStatus.QUEUED, db_index=True
    )
    checkpoint_sha256 = models.CharField(max_length=64, help_text="The checkpoint evaluated.")
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=64, blank=True)
    eval_set = models.CharField(max_length=200, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"evaluation of run {self.run_id} ({self.status})"

    @property
    def pending(self) -> bool:
        """Return True while the job has not ended."""
        return self.status in EVALUATION_PENDING

    def seconds(self) -> float | None:
        """Return how long the job ran, once it ended."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
