"""The experiment domain: Experiment (a django-fsm state machine), its audit log, runs and metrics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django_fsm import RETURN_VALUE, ConcurrentTransitionMixin, FSMField, transition

from experiments.choices import (
    ADOPTABLE_STATES,
    CANCELLABLE_STATES,
    RETRAINABLE_STATES,
    Executor,
    Interruption,
    PriorityClass,
    RunStatus,
    State,
)
from experiments.models.project import default_project_id, user_may
from experiments.models.registry import DatasetVersion
from experiments.recipes import ConfigError, get_spec
from experiments.recipes.script import SCRIPT_RECIPE, resolve_workdir

# Events a person can fire from the UI or API, with the permission each needs.
# start/complete/fail/requeue belong to the scheduler and workers ("operate").
EVENT_PERMISSIONS: dict[str, str] = {
    "queue": "experiments.queue_experiment",
    # A person's Start on an experiment with unmet dependencies becomes wait (the queue permission
    # is checked first); release and block belong to the pipeline ("operate").
    "wait": "experiments.operate_experiment",
    "release": "experiments.operate_experiment",
    "block": "experiments.operate_experiment",
    "start": "experiments.operate_experiment",
    "complete": "experiments.operate_experiment",
    "fail": "experiments.operate_experiment",
    "requeue": "experiments.operate_experiment",
    "retry": "experiments.retry_experiment",
    "hold": "experiments.promote_experiment",
    "promote": "experiments.promote_experiment",
    "deploy": "experiments.promote_experiment",
    "rollback": "experiments.rollback_experiment",
    "cancel": "experiments.cancel_experiment",
    "retrain": "experiments.retrain_experiment",
    # The registry and the promotion gate fire these; no person presses them.
    "withdraw": "experiments.operate_experiment",
    "retire": "experiments.operate_experiment",
    "reinstate": "experiments.operate_experiment",
    "adopt": "experiments.operate_experiment",
}

# Words for the buttons and the "already ..." answer to a lost race.
EVENT_LABELS: dict[str, str] = {
    "queue": "Start",
    "wait": "Wait for dependencies",
    "release": "Release",
    "block": "Hold (upstream failed)",
    "start": "Dispatch",
    "complete": "Complete",
    "fail": "Mark failed",
    "requeue": "Requeue",
    "retry": "Retry",
    "hold": "Hold for review",
    "promote": "Promote",
    "deploy": "Deploy",
    "rollback": "Roll back",
    "cancel": "Cancel",
    "retrain": "Retrain",
    "withdraw": "Withdraw",
    "retire": "Retire",
    "reinstate": "Reinstate",
    "adopt": "Adopt into production",
}

# These ask for a confirmation dialog in the UI: they stop work or undo a deployment.
CONFIRM_EVENTS = frozenset({"cancel", "rollback"})


def _may(event: str) -> Callable[[models.Model, Any], bool]:
    """Return the transition permission of an event: its permission, held in the experiment's project."""
    perm = EVENT_PERMISSIONS[event]

    def check(instance: models.Model, user: Any) -> bool:
        return user_may(user, perm, getattr(instance, "project_id", None))

    check.__name__ = f"may_{event}"
    return check


def _default_tags() -> list[str]:
    return []


class Experiment(ConcurrentTransitionMixin, models.Model):
    """A training experiment and its lifecycle; `state` changes only through transitions."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    recipe = models.CharField(
        max_length=64,
        blank=True,
        help_text="Training recipe, e.g. digits, charlm, distill; an external experiment may leave it blank.",
    )
    executor = models.CharField(
        max_length=16,
        choices=Executor.choices,
        default=Executor.WORKER,
        help_text="Who trains its runs: a Crucible worker, or an external client through the API.",
    )
    config = models.JSONField(default=dict, blank=True, help_text="Recipe hyper-parameters.")
    priority_class = models.CharField(
        max_length=16, choices=PriorityClass.choices, default=PriorityClass.BATCH
    )
    priority = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(0), MaxValueValidator(10)],
        help_text="0-10 within the priority class; higher runs first.",
    )
    gpus = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(8)],
        help_text="GPUs wanted (0 runs on a CPU slot).",
    )
    gpu_type = models.CharField(max_length=64, blank=True, help_text="e.g. H100; blank takes any.")
    memory_gb = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0)], help_text="GPU memory needed, in GiB."
    )
    cpu_cores = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1024)],
        help_text="CPU cores a run needs on its worker (the recipe's default unless set).",
    )
    host_memory_gb = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(65536.0)],
        help_text="Host memory a run needs on its worker, in GiB (the recipe's default unless set).",
    )
    max_attempts = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(20)]
    )
    timeout_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(1), MaxValueValidator(7 * 24 * 3600)],
        help_text="A run taking longer is stopped and failed.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    project = models.ForeignKey(
        "experiments.Project",
        on_delete=models.PROTECT,
        default=default_project_id,
        related_name="experiments",
        help_text="The project whose members see and drive it, and whose limits it runs under.",
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    tags = models.JSONField(default=_default_tags, blank=True)
    dataset_version = models.ForeignKey(
        "experiments.DatasetVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="experiments",
        help_text="Curated data added to the recipe's training data (a drift retrain).",
    )
    state = FSMField(default=State.PENDING, choices=State.choices, protected=True, db_index=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When it last entered the queue.")
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="Retry backoff: the scheduler waits until then."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "priority_class", "priority"], name="exp_queue_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(priority__lte=10), name="exp_priority_range"),
        ]
        permissions = [
            ("queue_experiment", "Can start (queue) an experiment"),
            ("cancel_experiment", "Can cancel an experiment"),
            ("promote_experiment", "Can promote, hold or deploy an experiment"),
            ("rollback_experiment", "Can roll back a deployment"),
            ("retrain_experiment", "Can retrain an experiment"),
            ("retry_experiment", "Can retry a failed experiment"),
            ("operate_experiment", "Can drive runs (scheduler and workers)"),
            # Separate from add/queue: a script runs arbitrary code on the workers.
            ("run_script", "Can run scripts on the workers (the script recipe)"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self) -> str:
        return reverse("experiments:detail", args=[self.pk])

    def full_clean(
        self, exclude: Any = None, validate_unique: bool = True, validate_constraints: bool = True
    ) -> None:
        """Validate every field but the protected state, which only transitions may set."""
        super().full_clean(
            exclude={*(exclude or ()), "state"},
            validate_unique=validate_unique,
            validate_constraints=validate_constraints,
        )

    def clean(self) -> None:
        """Validate recipe and config against the recipe's declared parameters, keyed by field."""
        if self.executor == Executor.EXTERNAL and not self.recipe:
            # External training code declares no parameters here: its config is what it says.
            if not isinstance(self.config, dict):
                raise ValidationError({"config": "must be a JSON object"})
            self._check_tags()
            return
        try:
            spec = get_spec(self.recipe)
            self.config = spec.clean(self.config or {})
        except ConfigError as exc:
            field_errors: dict[str, list[str]] = {}
            for key, msg in exc.errors.items():
                if key in ("recipe", "config"):
                    field_errors.setdefault(key, []).append(msg)
                else:
                    field_errors.setdefault("config", []).append(f"{key}: {msg}")
            raise ValidationError(field_errors) from None
        self._clean_script()
        self._clean_dataset()
        self._clean_run_inputs()
        self._check_tags()

    @property
    def is_external(self) -> bool:
        """Return True when an external client, not a worker, trains its runs."""
        return self.executor == Executor.EXTERNAL

    def _check_tags(self) -> None:
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise ValidationError({"tags": "must be a list of strings"})

    def _clean_script(self) -> None:
        """Refuse a script run whose folder is not under SCRIPT_ROOTS (or when script runs are off)."""
        if self.recipe != SCRIPT_RECIPE:
            return
        try:
            resolve_workdir(str(self.config.get("workdir", "")), settings.SCRIPT_ROOTS)
        except ConfigError as exc:
            raise ValidationError({"config": [f"{k}: {m}" for k, m in exc.errors.items()]}) from None

    def _clean_dataset(self) -> None:
        """Check that a config's dataset id (extra_data) names a curated dataset, and record it."""
        dataset_id = self.config.get("extra_data")
        if not isinstance(dataset_id, int) or isinstance(dataset_id, bool) or dataset_id <= 0:
            return
        if not DatasetVersion.objects.filter(pk=dataset_id).exists():
            raise ValidationError({"config": [f"extra_data: no curated dataset #{dataset_id}"]})
        # The lineage link follows the config: pages show which curated data an experiment used.
        self.dataset_version_id = dataset_id

    def _clean_run_inputs(self) -> None:
        """Refuse a config naming a run (a model to start from) outside this experiment's project."""
        errors = []
        for param in RUN_INPUTS.get(self.recipe, ()):
            run_id = self.config.get(param)
            if not isinstance(run_id, int) or isinstance(run_id, bool) or run_id <= 0:
                continue
            # The pages and the API create only in projects where the creator may create (and so
            # see): a run of another project answers exactly as one that does not exist.
            if not Run.objects.filter(pk=run_id, experiment__project_id=self.project_id or 0).exists():
                errors.append(f"{param}: no run #{run_id} you can see")
        if errors:
            raise ValidationError({"config": errors})

    # --- transitions: local bookkeeping only; services add audit and side effects ---

    def _touch(self) -> None:
        self.state_changed_at = timezone.now()

    @transition(field=state, source=State.PENDING, target=State.QUEUED, permission=_may("queue"))
    def queue(self) -> None:
        """Put the experiment in the queue."""
        self._touch()
        self.queued_at = self.state_changed_at

    @transition(field=state, source=State.PENDING, target=State.WAITING, permission=_may("wait"))
    def wait(self) -> None:
        """Started while an experiment it depends on is not there yet: it waits, outside the queue."""
        self._touch()

    @transition(field=state, source=State.WAITING, target=State.QUEUED, permission=_may("release"))
    def release(self) -> None:
        """Every dependency is met: queue it."""
        self._touch()
        self.queued_at = self.state_changed_at

    @transition(field=state, source=State.WAITING, target=State.WAITING, permission=_may("block"))
    def block(self) -> None:
        """An upstream failed and its edge holds dependents: it keeps waiting (audited) for a retry or a person."""
        self._touch()

    @transition(field=state, source=State.QUEUED, target=State.RUNNING, permission=_may("start"))
    def start(self) -> None:
        """A worker slot is leased and the run is dispatched."""
        self._touch()

    @transition(field=state, source=State.RUNNING, target=State.EVALUATING, permission=_may("complete"))
    def complete(self) -> None:
        """Training finished; the result awaits evaluation."""
        self._touch()

    @transition(
        field=state,
        source=[State.RUNNING, State.EVALUATING],
        target=State.FAILED,
        permission=_may("fail"),
    )
    def fail(self) -> None:
        """The run failed (exception, lost heartbeat, timeout)."""
        self._touch()

    @transition(field=state, source=State.FAILED, target=State.QUEUED, permission=_may("retry"))
    def retry(self) -> None:
        """Queue a failed experiment again; it resumes from its last checkpoint."""
        self._touch()
        self.queued_at = self.state_changed_at

    @transition(field=state, source=State.RUNNING, target=State.QUEUED, permission=_may("requeue"))
    def requeue(self) -> None:
        """Stop the running attempt and queue it again (early stop with changed hyper-parameters)."""
        self._touch()
        self.queued_at = self.state_changed_at

    @transition(field=state, source=State.EVALUATING, target=State.COMPLETED, permission=_may("hold"))
    def hold(self) -> None:
        """Hold the result for a person to review."""
        self._touch()

    @transition(
        field=state,
        source=[State.EVALUATING, State.COMPLETED],
        target=State.PROMOTING,
        permission=_may("promote"),
    )
    def promote(self) -> None:
        """Start rolling the model out (canary)."""
        self._touch()

    @transition(field=state, source=State.PROMOTING, target=State.DEPLOYED, permission=_may("deploy"))
    def deploy(self) -> None:
        """The rollout finished: this model serves all traffic."""
        self._touch()

    @transition(field=state, source=State.PROMOTING, target=State.COMPLETED, permission=_may("withdraw"))
    def withdraw(self) -> None:
        """A queued promotion lost to the version now in production: held for review instead."""
        self._touch()

    @transition(field=state, source=State.DEPLOYED, target=State.RETIRED, permission=_may("retire"))
    def retire(self) -> None:
        """A newer version replaced this experiment's model in production."""
        self._touch()

    @transition(field=state, source=State.RETIRED, target=State.DEPLOYED, permission=_may("reinstate"))
    def reinstate(self) -> None:
        """A rollback restored this experiment's model to production."""
        self._touch()

    @transition(
        field=state,
        source=list(ADOPTABLE_STATES),
        target=State.DEPLOYED,
        permission=_may("adopt"),
    )
    def adopt(self) -> None:
        """The registry made this experiment's version production outside a canary (an A/B test's winner)."""
        self._touch()

    @transition(
        field=state,
        source=[State.PROMOTING, State.DEPLOYED],
        target=State.ROLLED_BACK,
        permission=_may("rollback"),
    )
    def rollback(self) -> None:
        """Take the model out of serving and restore the previous production version."""
        self._touch()

    @transition(
        field=state,
        source=list(CANCELLABLE_STATES),
        target=State.CANCELLED,
        permission=_may("cancel"),
    )
    def cancel(self) -> None:
        """Stop the experiment for good."""
        self._touch()

    @transition(
        field=state,
        source=list(RETRAINABLE_STATES),
        target=RETURN_VALUE(*RETRAINABLE_STATES),
        permission=_may("retrain"),
    )
    def retrain(self) -> str:
        """Leave this experiment as it is; the service creates and queues a child."""
        return str(self.state)

    def attempts_spent(self) -> int:
        """Return how many attempts failed in their training (interruptions spend none)."""
        return self.runs.filter(status=RunStatus.FAILED).count()

    def interruptions_last_hour(self) -> int:
        """Return how many attempts the platform interrupted in the last hour (the runaway cap counts these)."""
        since = timezone.now() - timedelta(hours=1)
        return self.runs.filter(status=RunStatus.INTERRUPTED, finished_at__gte=since).count()

    @property
    def interruption_cap(self) -> int:
        """Return how many interruptions an hour are requeued; one more fails the experiment."""
        return int(settings.INTERRUPTIONS_PER_HOUR_MAX)

    def policy_hold(self) -> TransitionLog | None:
        """Return the audit row of a policy's decision that holds this experiment, if one does.

        A held experiment (completed) got there by a hold or a withdrawn promotion; when a policy
        fired it, promoting it by hand overrides that policy and needs a confirmed reason.
        """
        if self.state != State.COMPLETED:
            return None
        last = self.transitions.filter(target_state=State.COMPLETED).order_by("-created_at", "-id").first()
        if last is None or not last.actor.startswith("policy:"):
            return None
        return last

    def available_events(self, user: Any) -> list[str]:
        """Return the events this user may fire now, in lifecycle order."""
        names = {t.name for t in self.get_available_user_state_transitions(user)}  # type: ignore[attr-defined]
        return [event for event in EVENT_PERMISSIONS if event in names]


class TransitionLog(models.Model):
    """One audited state transition: who fired which event, from where to where, and why."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="transitions")
    event = models.CharField(max_length=32)
    source_state = models.CharField(max_length=16, choices=State.choices)
    target_state = models.CharField(max_length=16, choices=State.choices)
    actor = models.CharField(
        max_length=150, help_text="user:<username>, policy:<name> or system[:<component>]"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.experiment_id}: {self.event} {self.source_state}→{self.target_state} by {self.actor}"

    @property
    def policy_name(self) -> str:
        """Return the policy that fired it ("" for a person or the system)."""
        return self.actor.removeprefix("policy:") if self.actor.startswith("policy:") else ""


# Per recipe, the config parameters that name another run by id: the model it starts from.
RUN_INPUTS: dict[str, tuple[str, ...]] = {"dpo": ("base_run",)}


class Run(models.Model):
    """One attempt at training an experiment on one worker device."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    attempt = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.STARTING)
    config = models.JSONField(default=dict, help_text="The config this attempt trains with.")
    worker = models.CharField(max_length=255, blank=True)
    device = models.CharField(max_length=64, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    last_step = models.PositiveIntegerField(default=0)
    resumed_from_step = models.PositiveIntegerField(
        null=True, blank=True, help_text="Checkpoint step this attempt resumed from."
    )
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    interruption = models.CharField(
        max_length=16,
        choices=Interruption.choices,
        blank=True,
        help_text="Why the platform ended this attempt (status interrupted); blank otherwise.",
    )
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    checkpoint_path = models.CharField(max_length=500, blank=True)
    checkpoint_sha256 = models.CharField(max_length=64, blank=True)
    checkpoint_size = models.PositiveBigIntegerField(null=True, blank=True)
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    final_metrics = models.JSONField(default=dict, blank=True)
    # What an external client records about its run (a worker's run has its config instead).
    params = models.JSONField(default=dict, blank=True, help_text="Parameters the client logged.")
    tags = models.JSONField(default=dict, blank=True, help_text="Tags the client set (key → value).")
    # A policy's early stop: the run should end at its next step (the client reads it in the
    # answer to every metric batch or heartbeat). Unlike a cancel, the experiment stays running.
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stop_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["experiment_id", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "attempt"], name="run_unique_attempt"),
        ]
        # The watchdog scans live runs by status on every sweep.
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_idx")]

    def __str__(self) -> str:
        return f"run {self.experiment_id}#{self.attempt} ({self.status})"


class MetricPoint(models.Model):
    """One logged value of one metric at one step of a run."""

    # No index of their own (db_index=False): the unique (run, name, step) and the series
    # index (experiment, name, step) start with these columns and serve every lookup by them,
    # while two more indexes to maintain made each insert of a metric batch twice as slow.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="points", db_index=False)
    # Denormalised so that a chart reads one index, not a join over runs.
    experiment = models.ForeignKey(
        Experiment, on_delete=models.CASCADE, related_name="points", db_index=False
    )
    name = models.CharField(max_length=64)
    step = models.PositiveIntegerField()
    value = models.FloatField(null=True, help_text="NULL stands for NaN/inf (JSON has no NaN).")
    wall_time = models.FloatField(help_text="Unix time when the training loop logged it.")

    class Meta:
        constraints = [
            # A replayed batch (retry after a lost ack) is harmless: ON CONFLICT DO NOTHING.
            models.UniqueConstraint(fields=["run", "name", "step"], name="metric_unique_point"),
        ]
        indexes = [models.Index(fields=["experiment", "name", "step"], name="metric_series_idx")]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value}"


class ApiToken(models.Model):
    """A person's bearer token for the JSON API; only its SHA-256 is stored (runs get run tokens, not rows)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'CI pipeline'.")
    token_sha256 = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to recognise the token.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
