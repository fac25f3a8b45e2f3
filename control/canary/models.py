"""A canary rollout in progress or done: which version, which stage, what each stage saw."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q


class RolloutStatus(models.TextChoices):
    """Where a rollout stands."""

    QUEUED = "queued", "Queued (waits for the model's canary under way)"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused (rollback awaiting approval)"
    DEPLOYED = "deployed", "Deployed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    CANCELLED = "cancelled", "Cancelled"


LIVE_ROLLOUT_STATUSES = (RolloutStatus.RUNNING, RolloutStatus.PAUSED)
UNFINISHED_ROLLOUT_STATUSES = (RolloutStatus.QUEUED, *LIVE_ROLLOUT_STATUSES)


class CanaryRollout(models.Model):
    """One promoted version going through its canary policy's stages, judged on served traffic.

    The stages are copied from the policy when the rollout starts, so editing the policy never
    changes a rollout already under way.
    """

    model_name = models.CharField(max_length=64, db_index=True)
    policy = models.ForeignKey(
        "control.Policy", null=True, blank=True, on_delete=models.SET_NULL, related_name="rollouts"
    )
    experiment = models.ForeignKey(
        "experiments.Experiment", on_delete=models.CASCADE, related_name="rollouts"
    )
    candidate = models.ForeignKey(
        "experiments.ModelVersion", on_delete=models.CASCADE, related_name="rollouts"
    )
    baseline = models.ForeignKey(
        "experiments.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Production when the rollout started; it keeps the rest of the traffic.",
    )
    stages = models.JSONField(default=list, help_text='[{"name", "traffic_pct", "duration_seconds"}, ...]')
    min_requests = models.PositiveIntegerField(default=50)
    stage_index = models.PositiveIntegerField(default=0)
    stage_started_at = models.DateTimeField()
    stage_after_request = models.PositiveBigIntegerField(
        default=0,
        help_text="The stage's window: served requests with a larger id (no clock can skew it).",
    )
    status = models.CharField(
        max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING, db_index=True
    )
    outcome = models.TextField(blank=True, help_text="Why it ended as it did.")
    history = models.JSONField(default=list, blank=True, help_text="Each finished stage and its window.")
    trigger = models.ForeignKey(
        "control.TriggerEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    warmup_ms = models.FloatField(
        null=True, blank=True, help_text="Loading and one warm-up prediction, before any traffic."
    )
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # One canary at a time per model: two would split the same traffic between them.
            models.UniqueConstraint(
                fields=["model_name"],
                condition=Q(status__in=["running", "paused"]),
                name="canaryrollout_one_live_per_model",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} v{self.candidate.version} canary ({self.status})"

    @property
    def stage(self) -> dict[str, Any]:
        """Return the current stage."""
        return self.stages[min(self.stage_index, len(self.stages) - 1)]

    @property
    def is_live(self) -> bool:
        """Return True while the rollout still decides traffic."""
        return self.status in LIVE_ROLLOUT_STATUSES


class ABTestStatus(models.TextChoices):
    """Where an A/B test stands."""

    RUNNING = "running", "Running"
    # approve mode: the winner is known, its promotion waits for a person (the trigger).
    AWAITING_APPROVAL = "awaiting_approval", "Winner found: promotion awaiting approval"
    DECIDED = "decided", "Decided: the winner was promoted"
    NO_WINNER = "no_winner", "Ended with no winner: production kept"
    # dry_run mode: what it would have promoted is recorded; nothing changed.
    DRY_RUN = "dry_run", "Dry run: the winner was recorded, nothing promoted"
    CANCELLED = "cancelled", "Cancelled"


# The test still holds the model's traffic (its arms serve): one such test per model.
OPEN_AB_STATUSES = (ABTestStatus.RUNNING, ABTestStatus.AWAITING_APPROVAL)


class ABTest(models.Model):
    """Two or more candidate versions of a model sharing its traffic, compared by a sequential test.

    Each arm is a version in the canary stage with an equal share of the requests (production,
    when it is not an arm, serves none of them while the test runs). Arms are compared pairwise
    on the policy's served metric; a beaten arm is dropped (archived), the last one standing is
    promoted to production, and when the rest are shown equivalent the test ends with no winner.
    """

    model_name = models.CharField(max_length=64, db_index=True)
    policy = models.ForeignKey(
        "control.Policy", null=True, blank=True, on_delete=models.SET_NULL, related_name="ab_tests"
    )
    arms = models.JSONField(default=list, help_text="Version ids still in the test, in start order.")
    dropped = models.JSONField(default=list, blank=True, help_text="[{version, beaten_by, test}, ...]")
    metric = models.CharField(max_length=16, default="accuracy")
    after_request = models.PositiveBigIntegerField(
        default=0, help_text="The test's window: served requests with a larger id."
    )
    status = models.CharField(
        max_length=20, choices=ABTestStatus.choices, default=ABTestStatus.RUNNING, db_index=True
    )
    winner = models.ForeignKey(
        "experiments.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outcome = models.TextField(blank=True)
    trigger = models.ForeignKey(
        "control.TriggerEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stages_before = models.JSONField(
        default=dict,
        blank=True,
        help_text="{version id: stage} when the test started: where an arm goes back when nothing is decided.",
    )
    started_by = models.CharField(
        max_length=150, blank=True, help_text="Who started it: user:<username>, policy:<name> or system."
    )
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # Two tests of one model would split the same traffic between them.
            models.UniqueConstraint(
                fields=["model_name"],
                condition=Q(status__in=["running", "awaiting_approval"]),
                name="abtest_one_running_per_model",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} A/B test of {len(self.arms)} arms ({self.status})"

    @property
    def is_open(self) -> bool:
        """Return True while the test still holds traffic (running, or its winner awaits approval)."""
        return self.status in OPEN_AB_STATUSES
