"""State, event and priority vocabularies of the experiment domain."""

from __future__ import annotations

from django.db import models


class State(models.TextChoices):
    """Where an experiment is in its lifecycle."""

    PENDING = "pending", "Pending"
    # Started, but an experiment it depends on has not got where the dependency asks yet.
    WAITING = "waiting", "Waiting (on dependencies)"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    EVALUATING = "evaluating", "Evaluating"
    COMPLETED = "completed", "Completed (held for review)"
    PROMOTING = "promoting", "Promoting (canary)"
    DEPLOYED = "deployed", "Deployed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    ROLLED_BACK = "rolled_back", "Rolled back"
    # A newer version of the same model replaced this one in production: it serves no more.
    RETIRED = "retired", "Retired (replaced in production)"


# Work is waiting for or holding capacity in these states.
ACTIVE_STATES = (State.QUEUED, State.RUNNING)
# Nothing happens to the experiment by itself any more; only retrain (a child) moves on.
TERMINAL_STATES = (State.DEPLOYED, State.FAILED, State.CANCELLED, State.ROLLED_BACK, State.RETIRED)
CANCELLABLE_STATES = (
    State.PENDING,
    State.WAITING,
    State.QUEUED,
    State.RUNNING,
    State.EVALUATING,
    State.COMPLETED,
    State.PROMOTING,
)
# An experiment whose registered version the registry may make production by itself (an A/B
# test's winner): it moves to deployed ("adopt", by system:registry) so that the lifecycle says
# what serves. Promoting goes by its own deploy; an experiment that failed or has an attempt
# under way (pending, queued, running) cannot be an A/B test's arm.
ADOPTABLE_STATES = (
    State.EVALUATING,
    State.COMPLETED,
    State.RETIRED,
    State.ROLLED_BACK,
    State.CANCELLED,
)
RETRAINABLE_STATES = (
    State.COMPLETED,
    State.DEPLOYED,
    State.ROLLED_BACK,
    State.FAILED,
    State.CANCELLED,
    State.RETIRED,
)


class PriorityClass(models.TextChoices):
    """Scheduling class, most urgent first; the 0-10 priority orders within a class."""

    REALTIME = "realtime", "Realtime"
    INTERACTIVE = "interactive", "Interactive"
    BATCH = "batch", "Batch"
    OFFLINE = "offline", "Offline"


# Lower rank is scheduled first.
PRIORITY_CLASS_RANK = {
    PriorityClass.REALTIME: 0,
    PriorityClass.INTERACTIVE: 1,
    PriorityClass.BATCH: 2,
    PriorityClass.OFFLINE: 3,
}


class RunStatus(models.TextChoices):
    """Status of one attempt at training an experiment."""

    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    # Ended by the platform, not by its training: requeued without spending an attempt.
    INTERRUPTED = "interrupted", "Interrupted"


LIVE_RUN_STATUSES = (RunStatus.STARTING, RunStatus.RUNNING)


class Interruption(models.TextChoices):
    """Why the platform ended an attempt that its training did not end (no attempt is spent)."""

    SHUTDOWN = "shutdown", "worker shut down"  # asked to stop: checkpointed at its step
    WORKER_LOST = "worker_lost", "worker lost"  # killed or unreachable: no heartbeat
    NOT_STARTED = "not_started", "lease expired"  # dispatched, but no worker took it in time
    OUTAGE = "outage", "service outage"  # the database or the broker could not be reached
    # An external run's client sent no metric batch or heartbeat within EXTERNAL_RUN_TIMEOUT,
    # or a new run of the same experiment took its place.
    CLIENT_LOST = "client_lost", "client lost"


class Executor(models.TextChoices):
    """Who trains an experiment's runs."""

    # The scheduler leases a device and a Celery worker trains the recipe.
    WORKER = "worker", "Crucible worker"
    # Training code outside Crucible (a notebook, a Slurm job) starts runs and streams metrics
    # over the API; the scheduler never leases a device for it.
    EXTERNAL = "external", "External client"
