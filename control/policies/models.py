"""Policies as records edited in the admin: conditions, actions, canary stages, cost limits.

And what the engine makes of them: TriggerEvent (a policy fired for an experiment) and
ActionExecution (one action carried out for one trigger, at most once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from control.policies.actions import ACTION_KINDS, validate_action_params
from control.policies.conditions import (
    AGGREGATES,
    BETTER,
    OPERATORS,
    ConditionKind,
    ConditionSpec,
    validate_condition,
    validate_metric_declared,
    validate_serving_condition,
)
from experiments.models.project import default_project_id
from experiments.recipes import RECIPES
from experiments.runs.system import SYSTEM_METRICS


def declared_metrics(scope_recipes: list[str]) -> dict[str, tuple[str, ...]]:
    """Return the metric names each recipe in the scope declares (every recipe: an empty scope)."""
    names = scope_recipes or list(RECIPES)
    # A recipe with an evaluator also declares its held-out numbers, stored as "eval/<metric>".
    return {
        name: (*RECIPES[name].metrics, *RECIPES[name].eval_metric_names())
        for name in names
        if name in RECIPES
    }


class PolicyKind(models.TextChoices):
    """When a policy is consulted, and on what."""

    EARLY_STOP = "early_stop", "Early stop (every metric batch of a running experiment)"
    AUTO_PROMOTE = "auto_promote", "Auto-promote (when training completes)"
    DRIFT_RETRAIN = "drift_retrain", "Drift → retrain (drift sweep of deployed models)"
    CANARY = "canary", "Canary rollout (stages and rollback conditions)"
    COST = "cost", "Cost-aware scheduling (admission to the queue)"
    CUSTOM = "custom", "Custom (every metric batch and every transition)"
    AB_TEST = "ab_test", "A/B test (split traffic between candidates, promote the winner)"


class PolicyMode(models.TextChoices):
    """What happens when a policy fires."""

    AUTO = "auto", "Act on its own"
    APPROVE = "approve", "Ask a person to approve (expires after the approval timeout)"
    DRY_RUN = "dry_run", "Dry-run: record what it would do, do nothing"


class Policy(models.Model):
    """A rule the control engine applies on its own: when its conditions hold, run its actions."""

    name = models.SlugField(
        max_length=80, unique=True, help_text="Short name, e.g. auto_promote; audit rows say policy:<name>."
    )
    kind = models.CharField(max_length=24, choices=PolicyKind.choices)
    project = models.ForeignKey(
        "experiments.Project",
        on_delete=models.PROTECT,
        default=default_project_id,
        related_name="policies",
        help_text="The engine applies it to this project's experiments only; its admins edit it.",
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    mode = models.CharField(max_length=16, choices=PolicyMode.choices, default=PolicyMode.AUTO)
    order = models.PositiveIntegerField(
        default=100, help_text="Lower runs first when several policies apply."
    )
    scope_recipes = models.JSONField(
        default=list, blank=True, help_text='Recipes it applies to, e.g. ["digits"]; empty: all recipes.'
    )
    scope_tags = models.JSONField(
        default=list,
        blank=True,
        help_text='Only experiments with one of these tags, e.g. ["prod"]; empty: all.',
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=300,
        help_text="After firing for an experiment it stays quiet this long, and re-arms only once its conditions cleared.",
    )
    max_fires_per_hour = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Rate limit across all experiments."
    )
    approval_timeout_seconds = models.PositiveIntegerField(
        default=3600, help_text="Approval mode: a pending trigger expires after this long."
    )
    # Cost-aware scheduling (kind=cost).
    daily_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Admission stops when today's spend would pass it.",
    )
    max_concurrent_runs = models.PositiveIntegerField(null=True, blank=True)
    priority_by = models.CharField(
        max_length=24,
        blank=True,
        choices=[
            ("improvement_per_dollar", "Expected improvement per dollar (desc)"),
            ("expected_improvement", "Expected improvement (desc), then estimated cost (asc)"),
            ("estimated_cost", "Estimated cost (asc)"),
        ],
        help_text="Ordering of the queue within a priority class (control/scheduling/ordering.py); "
        "blank keeps priority, then age.",
    )
    # Canary rollout (kind=canary).
    canary_min_requests = models.PositiveIntegerField(
        default=50,
        validators=[MinValueValidator(1)],
        help_text="Canary: requests the new version must serve in a stage before it is judged or moves on.",
    )
    # The sequential tests' stated error rates (control/canary/sequential.py).
    canary_alpha = models.FloatField(
        default=0.01,
        help_text="Canary: the chance that a version as good as a rollback condition's threshold is "
        "rolled back anyway, over the whole rollout (split between its judged stages and rate "
        "conditions). A/B: the chance of declaring a winner between equal versions. 0-0.5.",
    )
    canary_beta = models.FloatField(
        default=0.01,
        help_text="Canary: the chance that a version worse than a threshold by the margin or more "
        "passes a stage (and so is deployed). 0-0.5.",
    )
    canary_margin = models.FloatField(
        default=0.05,
        help_text="Rates (error_rate, accuracy): how much worse than the threshold a version must be "
        "to count as surely bad (0.05 = 5 points); a stage passes once the version is shown to be "
        "better than threshold + margin. A/B: a difference smaller than this is no difference.",
    )
    ab_metric = models.CharField(
        max_length=16,
        blank=True,
        default="accuracy",
        choices=[("accuracy", "accuracy (feedback labels)"), ("error_rate", "error rate (failed requests)")],
        help_text="A/B: the served metric the arms are compared on.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "name"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Refuse scopes that are not lists of names, and cost fields on other kinds."""
        for field in ("scope_recipes", "scope_tags"):
            value = getattr(self, field)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValidationError({field: 'must be a JSON list of names, e.g. ["digits"]'})
        if (
            self.kind == PolicyKind.COST
            and self.daily_budget_usd is None
            and self.max_concurrent_runs is None
            and not self.priority_by
        ):
            raise ValidationError(
                {"daily_budget_usd": "a cost policy needs a daily budget, a concurrency limit or an ordering"}
            )
        errors = {}
        for field in ("canary_alpha", "canary_beta"):
            value = getattr(self, field)
            if value is None or not 0 < value < 0.5:
                errors[field] = "an error rate between 0 and 0.5 (exclusive), e.g. 0.01 for 1%"
        if self.canary_margin is None or not 0 < self.canary_margin < 1:
            errors["canary_margin"] = "a difference of rates between 0 and 1 (exclusive), e.g. 0.05"
        if errors:
            raise ValidationError(errors)

    def summary(self) -> str:
        """Say what the policy does, generated from its rows and settings so that it cannot go stale."""
        return policy_summary(list(self.conditions.all()), list(self.actions.all()), self.settings_summary())

    def settings_summary(self) -> list[str]:
        """Return the kind's own settings in words (canary stages, cost limits); empty for other kinds."""
        describe = _SETTINGS_SUMMARIES.get(self.kind)
        return describe(self) if describe else []

    def applies_to(self, *, recipe: str, tags: list[str]) -> bool:
        """Return True when an experiment with this recipe and tags is in scope."""
        if self.scope_recipes and recipe not in self.scope_recipes:
            return False
        return not (self.scope_tags and not set(self.scope_tags) & set(tags))


class ConditionRole(models.TextChoices):
    """What a condition row is for."""

    WHEN = "when", "Fire when all of these hold"
    ROLLBACK_ON = "rollback_on", "Canary: roll back when any of these holds"


class PolicyCondition(models.Model):
    """One condition of a policy, checked by control.policies.conditions (no eval)."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="conditions")
    role = models.CharField(max_length=16, choices=ConditionRole.choices, default=ConditionRole.WHEN)
    order = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=ConditionKind.CHOICES)
    metric = models.CharField(
        max_length=64, blank=True, help_text="e.g. accuracy, f1, loss, val_loss, error_rate, latency_p99_ms."
    )
    aggregate = models.CharField(
        max_length=8,
        blank=True,
        default="latest",
        choices=[(a, a) for a in AGGREGATES],
        help_text="Metric kind: latest, best or mean.",
    )
    window = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Mean: last k points. Divergence: moving-average points. Plateau: patience in steps.",
    )
    operator = models.CharField(max_length=2, blank=True, choices=[(o, o) for o in OPERATORS])
    threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Metric/drift: the value. Regression: allowed relative regression (0.05 = 5%). Divergence: factor. Plateau: min improvement. Older than: hours.",
    )
    better = models.CharField(
        max_length=8,
        blank=True,
        choices=[(b, b) for b in BETTER],
        help_text="Direction of improvement; blank guesses from the name (loss → lower).",
    )

    class Meta:
        ordering = ["policy_id", "role", "order", "id"]

    def __str__(self) -> str:
        # A rollback_on row is read as what rolls the canary back (a regression: when broken).
        spec = self.spec()
        return spec.describe_as_rollback() if self.role == ConditionRole.ROLLBACK_ON else spec.describe()

    def spec(self) -> ConditionSpec:
        """Return the evaluator's view of this row."""
        return ConditionSpec(
            kind=self.kind,
            metric=self.metric.strip(),
            aggregate=self.aggregate or "latest",
            window=self.window,
            operator=self.operator,
            threshold=self.threshold,
            better=self.better,
        )

    def clean(self) -> None:
        """Refuse an invalid condition with a message on the offending field."""
        errors = validate_condition(self.spec())
        if not errors and self.role == ConditionRole.ROLLBACK_ON:
            errors = validate_serving_condition(self.spec())
        elif not errors and self.spec().metric not in SYSTEM_METRICS:
            # A metric no recipe in scope logs could never make the condition hold. Every worker
            # run logs the sys/ metrics (experiments.runs.system) whatever its recipe.
            try:
                scope = self.policy.scope_recipes
            except ObjectDoesNotExist:
                scope = []
            errors = validate_metric_declared(
                self.spec(), declared_metrics(scope if isinstance(scope, list) else [])
            )
        if errors:
            raise ValidationError(errors)


class ActionRole(models.TextChoices):
    """When an action row runs."""

    THEN = "then", "When the conditions hold"
    FALLBACK = "fallback", "When they do not (e.g. hold for review)"


class PolicyAction(models.Model):
    """One action a policy takes, with its parameters (validated per kind)."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="actions")
    role = models.CharField(max_length=16, choices=ActionRole.choices, default=ActionRole.THEN)
    order = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=24, choices=[(k, spec.label) for k, spec in ACTION_KINDS.items()])
    params = models.JSONField(
        default=dict, blank=True, help_text='See the help of each action kind, e.g. {"lr_factor": 0.5}.'
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["policy_id", "role", "order", "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.params}" if self.params else self.kind

    def clean(self) -> None:
        """Refuse unknown parameters and wrong types, keyed by field."""
        errors = validate_action_params(self.kind, self.params)
        if errors:
            raise ValidationError({"params": [f"{k}: {m}" for k, m in errors.items()]})


class CanaryStage(models.Model):
    """One stage of a canary rollout: this share of traffic for this long."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="stages")
    order = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=40, help_text="e.g. canary_1pct")
    traffic_pct = models.FloatField(help_text="Share of requests routed to the new version, 0-100.")
    duration_seconds = models.PositiveIntegerField(
        default=0, help_text="0 for the last (full rollout) stage."
    )

    class Meta:
        ordering = ["policy_id", "order", "id"]

    def __str__(self) -> str:
        return f"{self.name}: {self.traffic_pct:g}% for {self.duration_seconds}s"

    def clean(self) -> None:
        """Refuse a traffic share outside 0-100."""
        if not 0 < self.traffic_pct <= 100:
            raise ValidationError({"traffic_pct": "must be above 0 and at most 100"})


def _canary_settings(policy: Policy) -> list[str]:
    """Return the stages in order and the requests each needs before it is judged."""
    stages = list(policy.stages.all()) if policy.pk else []
    if not stages:
        return ["no stages: a promoted version goes straight to production"]
    steps = " → ".join(
        f"{s.name} {s.traffic_pct:g}%" + (f" for {s.duration_seconds} s" if s.duration_seconds else "")
        for s in stages
    )
    return [f"stages {steps}, each judged once it served {policy.canary_min_requests} requests"]


def _cost_settings(policy: Policy) -> list[str]:
    """Return the budget, the concurrency cap and the queue order the policy sets."""
    parts = []
    if policy.daily_budget_usd is not None:
        parts.append(f"daily budget ${policy.daily_budget_usd:,.2f}")
    if policy.max_concurrent_runs is not None:
        parts.append(f"at most {policy.max_concurrent_runs} concurrent runs")
    if policy.priority_by:
        parts.append(f"queue within a class ordered by {policy.get_priority_by_display().lower()}")
    return [", ".join(parts)] if parts else []


# Kinds whose settings live on the policy itself (not in condition rows) and so belong in its summary.
_SETTINGS_SUMMARIES: dict[str, Callable[[Policy], list[str]]] = {
    PolicyKind.CANARY: _canary_settings,
    PolicyKind.COST: _cost_settings,
}


def policy_summary(
    conditions: list[PolicyCondition], actions: list[PolicyAction], kind_settings: list[str] | None = None
) -> str:
    """Say what a policy with these rows does (saved or not), from the conditions' own descriptions.

    The free-text description may lag behind an edited threshold; this cannot. `kind_settings` are the
    kind's own settings in words (Policy.settings_summary), said first.
    """
    when = [str(c) for c in conditions if c.role == ConditionRole.WHEN]
    rollback = [str(c) for c in conditions if c.role == ConditionRole.ROLLBACK_ON]
    then = [str(a) for a in actions if a.role == ActionRole.THEN and a.enabled]
    fallback = [str(a) for a in actions if a.role == ActionRole.FALLBACK and a.enabled]
    parts = list(kind_settings or [])
    if when or then:
        head = f"when {' and '.join(when)}" if when else "always"
        parts.append(f"{head}: {', '.join(then) or 'no action'}")
    if fallback:
        parts.append(f"otherwise: {', '.join(fallback)}")
    if rollback:
        parts.append(f"roll back when {' or '.join(rollback)}")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] if text else "No conditions or actions."


class GpuPrice(models.Model):
    """Price of one GPU-hour by GPU type (cost-aware scheduling); "cpu" prices a CPU slot.

    A rule without a project is the installation's price for every project; a project's own rule
    for a GPU type wins for that project's experiments (control/scheduling/cost.py `price_tables`).
    """

    gpu_type = models.CharField(max_length=64, help_text='e.g. "H100", or "cpu".')
    usd_per_hour = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(0)])
    project = models.ForeignKey(
        "experiments.Project",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Blank: the default price for every project; set: this project's own price.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["gpu_type"],
                condition=models.Q(project__isnull=True),
                name="gpu_price_default_unique",
                violation_error_message="A default price for this GPU type exists already.",
            ),
            models.UniqueConstraint(
                fields=["gpu_type", "project"],
                name="gpu_price_project_unique",
                violation_error_message="This project has a price for this GPU type already.",
            ),
        ]

    def __str__(self) -> str:
        where = f" ({self.project})" if self.project_id else ""
        return f"{self.gpu_type}: ${self.usd_per_hour}/h{where}"


class TriggerStatus(models.TextChoices):
    """Where a fired policy stands."""

    FIRED = "fired", "Fired"
    PENDING_APPROVAL = "pending_approval", "Pending approval"
    ACTED = "acted", "Acted"
    FAILED = "failed", "Action failed"
    DISMISSED = "dismissed", "Dismissed"
    EXPIRED = "expired", "Expired"
    DRY_RUN = "dry_run", "Dry-run (nothing done)"


class TriggerEvent(models.Model):
    """A policy fired for an experiment: the metric snapshot that did it, and what came of it."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="triggers")
    experiment = models.ForeignKey(
        "experiments.Experiment", null=True, blank=True, on_delete=models.CASCADE, related_name="triggers"
    )
    kind = models.CharField(
        max_length=24, help_text="What fired: metrics, transition:<event>, drift, canary, sweep."
    )
    conditions_passed = models.BooleanField(help_text="False when the fallback actions ran.")
    snapshot = models.JSONField(default=dict, help_text="Each condition's value and pass/fail when it fired.")
    status = models.CharField(
        max_length=20, choices=TriggerStatus.choices, default=TriggerStatus.FIRED, db_index=True
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.policy.name} → #{self.experiment_id} ({self.status})"

    def reason(self) -> str:
        """Return the conditions as one sentence for the audit log."""
        parts = [f"{c['condition']} ({c['detail']})" for c in self.snapshot.get("conditions", [])]
        return "; ".join(parts) or self.kind


class ExecutionStatus(models.TextChoices):
    """Where one action execution stands."""

    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ActionExecution(models.Model):
    """One action carried out for one trigger; the idempotency key makes it happen at most once."""

    trigger = models.ForeignKey(TriggerEvent, on_delete=models.CASCADE, related_name="executions")
    action = models.ForeignKey(PolicyAction, null=True, on_delete=models.SET_NULL, related_name="executions")
    kind = models.CharField(max_length=24)
    params = models.JSONField(default=dict)
    idempotency_key = models.CharField(max_length=100, unique=True)
    actor = models.CharField(max_length=150)
    status = models.CharField(max_length=12, choices=ExecutionStatus.choices, default=ExecutionStatus.PENDING)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.FloatField(
        null=True, blank=True, help_text="From the trigger firing to this action done."
    )

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind} for trigger {self.trigger_id} ({self.status})"

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-able summary for pages and websocket frames."""
        return {
            "id": self.pk,
            "kind": self.kind,
            "status": self.status,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }


class PolicyArm(models.Model):
    """Per policy and experiment: whether it may fire again (hysteresis against flapping)."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="arms")
    experiment = models.ForeignKey("experiments.Experiment", on_delete=models.CASCADE, related_name="+")
    armed = models.BooleanField(default=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["policy", "experiment"], name="policyarm_unique")]

    def __str__(self) -> str:
        return f"{self.policy_id}/{self.experiment_id}: {'armed' if self.armed else 'disarmed'}"
