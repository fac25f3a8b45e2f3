"""Runs trained outside the workers: a client starts them, streams metrics, heart-beats and finishes them.

An external experiment goes through the same lifecycle as any other (queue → start → complete,
audited, policies and all), but no device is leased: its client is the executor. Metric
batches take the worker reporter's path (`metrics_write`: one insert that ignores points
already stored, then the live pages and the policy engine after commit). Every batch and
heartbeat answers the run's control state, which is how a client learns of a cancel or of a
policy's early stop. A run whose client goes quiet for EXTERNAL_RUN_TIMEOUT is interrupted by
the watchdog (`external_runs_sweep`) like a run whose worker was lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from experiments.actors import Actor
from experiments.choices import Executor, Interruption, RunStatus, State
from experiments.events import MetricPointPayload
from experiments.models import Experiment, MetricPoint, Run, TransitionLog
from experiments.recipes import ConfigError, get_spec
from experiments.runs.reporting import finite_or_none, metrics_write
from experiments.runs.services import run_create, run_end, run_fail, run_interrupt, run_succeed
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)

# The worker label of an external run's attempt (the watchdog's worker checks never match it).
EXTERNAL_WORKER = "external"
MAX_POINTS_PER_BATCH = 10_000
MAX_METRIC_NAME = MetricPoint._meta.get_field("name").max_length or 64
MAX_STEP = 2**31 - 1  # PositiveIntegerField on every database we run on
FINISH_STATUSES = ("completed", "failed", "cancelled")
# The states from which a client's start can begin a new attempt.
STARTABLE_STATES = (State.PENDING, State.QUEUED, State.FAILED, State.RUNNING)

# Point as the client sends it: (name, step, value, wall_time or None for "now").
Point = tuple[str, int, float, float | None]


@dataclass(frozen=True)
class ControlState:
    """What the client should do now: go on, or stop (and why)."""

    stop: bool
    reason: str | None


class ExternalRunRefused(Exception):
    """The request cannot be carried out in the run's or experiment's current state (HTTP 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PointsInvalid(Exception):
    """Some points of a batch are malformed; nothing of the batch was written.

    errors: (index in the batch, field, message) for each refusal.
    """

    def __init__(self, errors: list[tuple[int, str, str]]) -> None:
        super().__init__("; ".join(f"points[{i}].{field}: {msg}" for i, field, msg in errors[:5]))
        self.errors = errors


def _live(run: Run) -> bool:
    return run.status == RunStatus.RUNNING


# What the control state is read from: the run's row and its experiment's state.
_STATE_FIELDS = (
    "status",
    "cancel_requested_at",
    "stop_requested_at",
    "stop_reason",
    "error",
    "experiment__state",
    # A worker's run is heart-beaten by its worker, not by the client inside its script.
    "experiment__executor",
)


def _control_state_of(run: Run, row: dict[str, Any] | None) -> ControlState:
    if row is None:
        return ControlState(stop=True, reason="the run no longer exists")
    if row["status"] != RunStatus.RUNNING:
        why = f": {row['error']}" if row["error"] else ""
        return ControlState(stop=True, reason=f"the run has ended ({row['status']}){why}"[:500])
    if row["stop_requested_at"] is not None:
        return ControlState(stop=True, reason=row["stop_reason"] or "stop requested")
    if row["cancel_requested_at"] is not None or row["experiment__state"] != State.RUNNING:
        # Say who moved the experiment on and why (a person's cancel, a policy's requeue).
        last = (
            TransitionLog.objects.filter(experiment_id=run.experiment_id)
            .order_by("-created_at", "-id")
            .first()
        )
        why = f": {last.event} by {last.actor}" + (f" ({last.reason})" if last.reason else "") if last else ""
        return ControlState(stop=True, reason=f"the experiment is {row['experiment__state']}{why}"[:500])
    return ControlState(stop=False, reason=None)


def run_control_state(*, run: Run) -> ControlState:
    """Return whether the run's client should stop, read afresh from the database."""
    return _control_state_of(run, Run.objects.filter(pk=run.pk).values(*_STATE_FIELDS).first())


def _clean_config(experiment: Experiment, config: dict[str, Any] | None) -> dict[str, Any]:
    """Return the attempt's config: the experiment's, or the one given, checked by the recipe if it has one."""
    if config is None:
        return dict(experiment.config)
    if not isinstance(config, dict):
        raise ConfigError({"config": "must be a JSON object"})
    if experiment.recipe:
        return dict(get_spec(experiment.recipe).clean(config))
    return dict(config)


def external_run_start(*, experiment: Experiment, actor: Actor, config: dict[str, Any] | None = None) -> Run:
    """Start a new attempt of an external experiment, driven by its client; return the run (running).

    Queues the experiment if it is pending (retries it if it failed) as the actor, then fires
    start without leasing anything, audited as system:external. A running experiment's live
    attempt is interrupted first (its client started again: the old one is gone). Raises
    ExternalRunRefused for a worker experiment or a state no attempt can start from,
    ConfigError for a config its recipe refuses, PermissionDenied when the person may not queue.
    """
    if experiment.executor != Executor.EXTERNAL:
        raise ExternalRunRefused(
            f"Experiment #{experiment.pk} is trained by Crucible's workers (executor worker): "
            "a client can start runs only of an experiment created with executor external."
        )
    run_config = _clean_config(experiment, config)
    with transaction.atomic():
        locked = Experiment.objects.select_for_update().get(pk=experiment.pk)
        if locked.state not in STARTABLE_STATES:
            raise ExternalRunRefused(
                f"Cannot start a run of {locked.name!r}: it is {locked.get_state_display().lower()}; "
                "create a new experiment (or retrain this one) for another run."
            )
        if locked.state == State.RUNNING:
            for old in Run.objects.filter(
                experiment=locked, status__in=(RunStatus.STARTING, RunStatus.RUNNING)
            ):
                run_interrupt(
                    run_id=old.pk,
                    cause=Interruption.CLIENT_LOST,
                    error="run lost: its client started a new run of the experiment",
                    component="external",
                    progress=old.progress,
                    last_step=old.last_step,
                )
            locked.refresh_from_db()
        if locked.state == State.PENDING:
            experiment_transition(
                experiment_id=locked.pk, event="queue", actor=actor, reason="started by its client"
            )
        elif locked.state == State.FAILED:
            experiment_transition(
                experiment_id=locked.pk, event="retry", actor=actor, reason="started again by its client"
            )
        locked.refresh_from_db()
        if locked.state != State.QUEUED:
            raise ExternalRunRefused(
                f"Cannot start a run of {locked.name!r}: it is {locked.get_state_display().lower()}."
            )
        run = run_create(experiment=locked, worker=EXTERNAL_WORKER, device="", task_id="")
        now = timezone.now()
        Run.objects.filter(pk=run.pk).update(
            status=RunStatus.RUNNING, config=run_config, started_at=now, heartbeat_at=now
        )
        experiment_transition(
            experiment_id=locked.pk,
            event="start",
            actor=Actor.system("external"),
            reason=f"attempt {run.attempt} started by {actor.label}'s client (external, no lease)",
        )
    run.refresh_from_db()
    return run


def _validate(points: Sequence[Point]) -> list[MetricPointPayload]:
    """Return the points as payloads, or raise PointsInvalid naming each bad field.

    Every logged point passes here, so the common shape (a str name, an int step, a finite
    float value) takes one tight loop; the first point outside it sends the whole batch
    through the field-by-field checks, which name what is wrong.
    """
    out: list[MetricPointPayload] = []
    append = out.append
    now = time.time()
    isfinite = math.isfinite
    try:
        for name, step, value, wall_time in points:
            if (
                type(name) is not str
                or not 0 < len(name) <= MAX_METRIC_NAME
                or type(step) is not int
                or not 0 <= step <= MAX_STEP
                or type(value) is not float
            ):
                raise TypeError
            if wall_time is None:
                wall_time = now
            elif type(wall_time) is not float or not isfinite(wall_time):
                raise TypeError
            append(
                {
                    "name": name,
                    "step": step,
                    "value": value if isfinite(value) else None,
                    "wall_time": wall_time,
                }
            )
    except (TypeError, ValueError):
        return _validate_each(points, now)
    return out


def _validate_each(points: Sequence[Point], now: float) -> list[MetricPointPayload]:
    errors: list[tuple[int, str, str]] = []
    out: list[MetricPointPayload] = []
    for i, point in enumerate(points):
        try:
            name, step, value, wall_time = point
        except (TypeError, ValueError):
            errors.append((i, "point", "must be (name, step, value, wall_time)"))
            continue
        if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME:
            errors.append((i, "name", f"must be a non-empty string of at most {MAX_METRIC_NAME} characters"))
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            errors.append((i, "step", f"must be an integer from 0 to {MAX_STEP}"))
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append((i, "value", "must be a number (NaN and infinities are stored as null)"))
        if wall_time is not None and (
            isinstance(wall_time, bool)
            or not isinstance(wall_time, int | float)
            or not math.isfinite(wall_time)
        ):
            errors.append((i, "wall_time", "must be a Unix time in seconds, or null for now"))
        if not errors or errors[-1][0] != i:
            out.append(
                {
                    "name": name,
                    "step": step,
                    "value": finite_or_none(value),
                    "wall_time": float(wall_time) if wall_time is not None else now,
                }
            )
    if errors:
        raise PointsInvalid(errors)
    return out


class _IngestSql:
    """The three statements every metric batch runs besides its insert, written once per database.

    Built from the models' own table and column names; raw, because the ORM spent longer
    compiling each of them than the database took to run it, on the path of every batch.
    """

    def __init__(self, connection: Any) -> None:
        quote = connection.ops.quote_name

        def column(model: type[models.Model], name: str) -> str:
            return str(quote(cast("models.Field[Any, Any]", model._meta.get_field(name)).column))

        def state_column(name: str) -> str:
            if name.startswith("experiment__"):
                return f"e.{column(Experiment, name.split('__', 1)[1])}"
            return f"r.{column(Run, name)}"

        runs = quote(Run._meta.db_table)
        # PostgreSQL locks the run's row; SQLite's IMMEDIATE transaction already holds the write lock.
        lock = " FOR UPDATE OF r" if connection.features.has_select_for_update_of else ""
        self.state = (
            f"SELECT {', '.join(state_column(name) for name in _STATE_FIELDS)} "
            f"FROM {runs} r JOIN {quote(Experiment._meta.db_table)} e "
            f"ON e.{column(Experiment, 'id')} = r.{column(Run, 'experiment')} "
            f"WHERE r.{column(Run, 'id')} = %s{lock}"
        )
        points = quote(MetricPoint._meta.db_table)
        self.stored = (
            f"SELECT name, step FROM {points} WHERE run_id = %s AND step >= %s AND step <= %s AND name IN "
        )
        greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
        last_step = column(Run, "last_step")
        self.heartbeat = (
            f"UPDATE {runs} SET {column(Run, 'heartbeat_at')} = %s, {last_step} = {greatest}({last_step}, %s) "
            f"WHERE {column(Run, 'id')} = %s AND {column(Run, 'status')} = %s"
        )

    _built: dict[str, _IngestSql] = {}

    @classmethod
    def of(cls, connection: Any) -> _IngestSql:
        built = cls._built.get(connection.vendor)
        if built is None:
            built = cls._built[connection.vendor] = cls(connection)
        return built


def _first_of_each(payloads: list[MetricPointPayload]) -> list[MetricPointPayload]:
    """Return the batch with each (name, step) once, its first occurrence kept, in order."""
    if len({(p["name"], p["step"]) for p in payloads}) == len(payloads):
        return payloads  # the usual case: no point twice in one batch
    unique: dict[tuple[str, int], MetricPointPayload] = {}
    for p in payloads:
        unique.setdefault((p["name"], p["step"]), p)
    return list(unique.values())


def _not_stored(
    cursor: Any, sql: _IngestSql, run_id: int, payloads: list[MetricPointPayload], steps: tuple[int, int]
) -> list[MetricPointPayload]:
    """Return the points not stored yet: a retried batch publishes nothing twice.

    The insert ignores duplicates anyway; this keeps the live pages and the policies from
    seeing a replayed point again. One look-up of the unique index over the batch's steps.
    """
    names = list({p["name"] for p in payloads})
    cursor.execute(sql.stored + "(" + ", ".join(["%s"] * len(names)) + ")", [run_id, *steps, *names])
    stored = set(cursor.fetchall())
    if not stored:  # the usual case: nothing of the batch was sent before
        return payloads
    return [p for p in payloads if (p["name"], p["step"]) not in stored]


def external_metrics_ingest(*, run: Run, points: Sequence[Point]) -> ControlState:
    """Store a batch of points (idempotent on run, name, step), publish the new ones, refresh the heartbeat.

    The batch feeds what a worker's flush feeds: the history, the live pages and the policy
    engine. It serves external runs and the client inside a worker's script run alike (the
    latter's heartbeat stays the worker's). Raises PointsInvalid (nothing written).
    """
    if len(points) > MAX_POINTS_PER_BATCH:
        raise PointsInvalid(
            [(MAX_POINTS_PER_BATCH, "points", f"at most {MAX_POINTS_PER_BATCH} points per batch")]
        )
    payloads = _first_of_each(_validate(points))
    steps = [p["step"] for p in payloads]
    first_step, last_step = (min(steps), max(steps)) if steps else (0, 0)
    with transaction.atomic(), connection.cursor() as cursor:
        sql = _IngestSql.of(connection)
        # One batch of a run at a time: a retry racing its own first attempt (whose answer was
        # lost) must not find the same points "not stored" and publish them twice. The locked
        # row is also the answer's control state: no query after commit. (The policies that
        # look at this batch after commit act through the control queue, never within this
        # request, so a later read could not have seen their stop either.)
        cursor.execute(sql.state, [run.pk])
        found = cursor.fetchone()
        row = dict(zip(_STATE_FIELDS, found, strict=True)) if found is not None else None
        fresh = _not_stored(cursor, sql, run.pk, payloads, (first_step, last_step)) if payloads else []
        if fresh:
            metrics_write(experiment_id=run.experiment_id, run_id=run.pk, points=fresh)
        if (
            row is not None
            and row["status"] == RunStatus.RUNNING
            and row["experiment__executor"] == Executor.EXTERNAL
        ):
            cursor.execute(
                sql.heartbeat,
                [
                    connection.ops.adapt_datetimefield_value(timezone.now()),
                    last_step,
                    run.pk,
                    RunStatus.RUNNING,
                ],
            )
    return _control_state_of(run, row)


def _client_driven(run: Run) -> bool:
    """Return whether the run's client is its executor (external), not a script under a worker.

    A worker's run is heart-beaten, stepped and ended by its worker: a batch or heartbeat from the
    client inside its script must not keep alive a run whose worker was lost.
    """
    executor = Experiment.objects.filter(pk=run.experiment_id).values_list("executor", flat=True).first()
    return executor == Executor.EXTERNAL


def external_run_heartbeat(*, run: Run) -> ControlState:
    """Record that the run's client is alive (external runs; a worker's run is beaten by its worker); return its control state."""
    if _client_driven(run):
        Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
    return run_control_state(run=run)


def external_run_log_params(*, run: Run, params: dict[str, Any]) -> Run:
    """Merge parameters into the run's (a key logged again takes the new value)."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        locked.params = {**locked.params, **params}
        locked.save(update_fields=["params"])
    return locked


def external_run_set_tags(*, run: Run, tags: dict[str, str]) -> Run:
    """Merge tags into the run's (a key set again takes the new value)."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        locked.tags = {**locked.tags, **tags}
        locked.save(update_fields=["tags"])
    return locked


def external_run_finish(*, run: Run, status: str, final_metrics: dict[str, Any] | None = None) -> Run:
    """End the run as its client reports: completed (the experiment goes on to evaluation), failed or cancelled.

    A finish repeated (a retry after a lost answer) changes nothing. A failure spends an
    attempt but is not retried by itself: the client's next start retries the experiment.
    """
    if status not in FINISH_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINISH_STATUSES)}")
    run = Run.objects.select_related("experiment").get(pk=run.pk)
    if status == "completed":
        run_succeed(
            run_id=run.pk, final_metrics=final_metrics or {}, last_step=run.last_step, component="external"
        )
    elif status == "failed":
        with transaction.atomic():
            if (
                run_fail(
                    run_id=run.pk,
                    error="its client reported the run failed",
                    component="external",
                    retry=False,
                )
                and final_metrics
            ):
                Run.objects.filter(pk=run.pk).update(final_metrics=_finite(final_metrics))
    else:
        with transaction.atomic():
            if run_end(
                run_id=run.pk,
                status=RunStatus.CANCELLED,
                error="its client cancelled the run",
                final_metrics=final_metrics,
            ):
                experiment = Experiment.objects.get(pk=run.experiment_id)
                current = not Run.objects.filter(
                    experiment_id=run.experiment_id, attempt__gt=run.attempt
                ).exists()
                if experiment.state == State.RUNNING and current:
                    try:
                        experiment_transition(
                            experiment_id=experiment.pk,
                            event="cancel",
                            actor=Actor.system("external"),
                            reason=f"attempt {run.attempt} cancelled by its client",
                        )
                    except TransitionRefused as exc:
                        logger.info("run %s cancelled but %s", run.pk, exc.message)
    run.refresh_from_db()
    return run


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {str(k): finite_or_none(v) for k, v in metrics.items()}


def external_run_request_stop(*, experiment_id: int, reason: str) -> list[Run]:
    """Ask the experiment's live external runs to stop (early stop); return the runs asked.

    The experiment stays running: its client stops at the next should_stop() and finishes
    the run as it sees fit (normally completed, with what it trained so far).
    """
    runs = list(
        Run.objects.filter(
            experiment_id=experiment_id,
            experiment__executor=Executor.EXTERNAL,
            status=RunStatus.RUNNING,
            stop_requested_at__isnull=True,
        )
    )
    Run.objects.filter(pk__in=[r.pk for r in runs], stop_requested_at__isnull=True).update(
        stop_requested_at=timezone.now(), stop_reason=reason[:500]
    )
    return runs


def external_runs_sweep(*, now: datetime | None = None) -> list[int]:
    """Interrupt external runs whose client sent nothing for EXTERNAL_RUN_TIMEOUT; return their ids.

    Like a lost worker, a lost client is not the training's fault: the experiment is requeued
    (waiting for its client's next start) without spending an attempt.
    """
    now = now or timezone.now()
    timeout = float(settings.EXTERNAL_RUN_TIMEOUT)
    cutoff = now - timedelta(seconds=timeout)
    quiet = Run.objects.filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff),
        status=RunStatus.RUNNING,
        experiment__executor=Executor.EXTERNAL,
    )
    lost = []
    for run in quiet:
        beat = run.heartbeat_at or run.started_at
        silent = (now - beat).total_seconds() if beat else timeout
        if run_interrupt(
            run_id=run.pk,
            cause=Interruption.CLIENT_LOST,
            error=(
                f"run lost: no metric batch or heartbeat from its client for {silent:.0f} s "
                f"(EXTERNAL_RUN_TIMEOUT {timeout:.0f} s)"
            ),
            component="watchdog",
            progress=run.progress,
            last_step=run.last_step,
        ):
            lost.append(run.pk)
    return lost
