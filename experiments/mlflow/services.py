"""Writes of the MLflow API: experiments (groups), runs (external Crucible experiments), metrics, params, tags.

Each MLflow run becomes one external Crucible experiment with one attempt, started through
the external-run services, so the lifecycle, the audit, the live pages and the policies
treat it like any client's run (docs/mlflow.md says why).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from experiments.actors import Actor
from experiments.choices import Executor
from experiments.mlflow.errors import MlflowError, invalid, missing
from experiments.mlflow.selectors import (
    DEFAULT_EXPERIMENT_ID,
    mlflow_experiment_get,
    mlflow_run_get,
)
from experiments.models import Experiment, MlflowExperiment, MlflowRun, Project, Run
from experiments.projects import VIEW, can, default_project_for
from experiments.recipes import ConfigError
from experiments.runs.external import (
    ControlState,
    ExternalRunRefused,
    Point,
    PointsInvalid,
    external_metrics_ingest,
    external_run_finish,
    external_run_log_params,
    external_run_set_tags,
    external_run_start,
)
from experiments.services import experiment_create

# MLflow's own limits (mlflow.utils.validation), which its client also keeps to.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
# Where the client may end a run: MLflow's status -> the external run's finish.
FINISH_OF_STATUS = {"FINISHED": "completed", "FAILED": "failed", "KILLED": "cancelled"}
RUN_NAME_TAG = "mlflow.runName"


def _text(
    body: dict[str, Any], field: str, *, required: bool = True, max_length: int = MAX_KEY_LENGTH
) -> str:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{field}'.")
        return ""
    if not isinstance(value, str):
        raise invalid(f"Invalid value {value!r} for parameter '{field}': expected a string.")
    if len(value) > max_length:
        raise invalid(f"Invalid value for parameter '{field}': at most {max_length} characters.")
    return value


def _millis(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid(
            f"Invalid value {value!r} for parameter '{field}': expected milliseconds since the epoch."
        ) from None
    if number < 0:
        raise invalid(f"Invalid value {value!r} for parameter '{field}': must not be negative.")
    return number


def _key_values(items: Any, field: str, *, max_value: int) -> dict[str, str]:
    """Return [{"key", "value"}, ...] as a dict, checking each entry; the message names its index."""
    if items is None:
        return {}
    if not isinstance(items, list):
        raise invalid(f"Invalid value for parameter '{field}': expected a list of {{key, value}}.")
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid(f"Invalid value for parameter '{field}[{i}]': expected {{key, value}}.")
        key = _text(item, "key", max_length=MAX_KEY_LENGTH)
        value = item.get("value", "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            value = str(value)
        if len(value) > max_value:
            raise invalid(
                f"Invalid value for parameter '{field}[{i}].value': at most {max_value} characters."
            )
        out[key] = value
    return out


def _require(user: Any, *perms: str, project_id: int | None = None) -> None:
    """Refuse unless the user holds perms in the project (anywhere, for the shared "Default" group)."""
    lacking = [p for p in perms if not (user.has_perm(p) if project_id is None else can(user, p, project_id))]
    if lacking:
        raise MlflowError(
            "PERMISSION_DENIED", f"Your account lacks the permission this needs: {', '.join(lacking)}."
        )


class _AttemptIds:
    """Run id -> (attempt id, experiment id, owner id, project id), remembered for a while by this process.

    Every metric batch names its run by MLflow's id; the ids behind it never change, and the
    owner only through the admin, so a lookup per batch would be a query spent on nothing.
    An owner changed in the admin takes effect here within OWNER_SECONDS.
    """

    OWNER_SECONDS = 30.0
    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, int | None, int, float]] = {}

    def get(self, run_id: str) -> tuple[int, int, int | None, int] | None:
        with self._lock:
            entry = self._entries.get(run_id)
        if entry is not None and entry[4] > time.monotonic():
            return entry[0], entry[1], entry[2], entry[3]
        row = (
            MlflowRun.objects.filter(run_uuid=run_id)
            .values_list("run_id", "experiment_id", "experiment__owner_id", "experiment__project_id")
            .first()
        )
        if row is None:
            return None
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[run_id] = (row[0], row[1], row[2], row[3], time.monotonic() + self.OWNER_SECONDS)
        return row[0], row[1], row[2], row[3]


attempt_ids = _AttemptIds()


class _WriteGrants:
    """(user id, run id) pairs found allowed to write, for GRANT_SECONDS.

    Reading a user's permissions costs two queries, and a script sends a batch every few
    milliseconds: the check is made again after GRANT_SECONDS, so a permission taken away
    stops a running script's writes within that time (a revoked token or a deactivated user
    stops them at once: the caller is authenticated on every request).
    """

    GRANT_SECONDS = 30.0
    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[tuple[int, str], float] = {}

    def allowed(self, user_id: int, run_id: str) -> bool:
        with self._lock:
            return self._until.get((user_id, run_id), 0.0) > time.monotonic()

    def grant(self, user_id: int, run_id: str) -> None:
        with self._lock:
            if len(self._until) >= self.MAX_ENTRIES:
                self._until.clear()
            self._until[(user_id, run_id)] = time.monotonic() + self.GRANT_SECONDS

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


write_grants = _WriteGrants()


def _writable_run(user: Any, run_id: str) -> Run:
    """Return the attempt of an MLflow run the caller may write to: their own, or any with change_experiment.

    Both are asked in the run's project; a run of a project the caller may not see answers as a
    missing one.

    Only the attempt's ids are loaded (every metric batch comes through here): the ingest and
    the run services read and lock what else they need themselves.
    """
    if not run_id:
        raise invalid("Missing value for required parameter 'run_id'.")
    ids = attempt_ids.get(run_id)
    if not write_grants.allowed(user.pk, run_id):
        if ids is None or not can(user, VIEW, ids[3]):
            raise missing(f"Run '{run_id}' not found")
        _require(user, "experiments.add_experiment", project_id=ids[3])
        if ids[2] != user.pk and not can(user, "experiments.change_experiment", ids[3]):
            raise MlflowError("PERMISSION_DENIED", f"Run '{run_id}' belongs to another user.")
        write_grants.grant(user.pk, run_id)
    if ids is None:
        raise missing(f"Run '{run_id}' not found")
    return Run(pk=ids[0], experiment_id=ids[1])


# --- experiments ---------------------------------------------------------------------------------


def mlflow_experiment_create(*, user: Any, body: dict[str, Any]) -> MlflowExperiment:
    """Create a named group of runs in the caller's default project; RESOURCE_ALREADY_EXISTS when the name is taken."""
    _require(user, "experiments.add_experiment")
    project = default_project_for(user)
    if project is None:
        raise MlflowError("PERMISSION_DENIED", "You may create experiments in no project.")
    name = _text(body, "name", max_length=MlflowExperiment._meta.get_field("name").max_length or 200)
    if body.get("artifact_location"):
        raise invalid("artifact_location: artifacts are not stored by Crucible; leave it out.")
    tags = _key_values(body.get("tags"), "tags", max_value=MAX_TAG_VALUE_LENGTH)
    if name == "Default" or MlflowExperiment.objects.filter(name=name).exists():
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists.")
    try:
        with transaction.atomic():
            return MlflowExperiment.objects.create(name=name, tags=tags, owner=user, project=project)
    except IntegrityError:
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists.") from None


def mlflow_experiment_set_tag(*, user: Any, body: dict[str, Any]) -> None:
    """Set one tag of an experiment (group)."""
    group = mlflow_experiment_get(_text(body, "experiment_id"), user=user)
    _require(user, "experiments.add_experiment", project_id=group.project_id)
    key = _text(body, "key")
    value = _text(body, "value", required=False, max_length=MAX_TAG_VALUE_LENGTH)
    with transaction.atomic():
        locked = MlflowExperiment.objects.select_for_update().get(pk=group.pk)
        locked.tags = {**locked.tags, key: value}
        locked.save(update_fields=["tags", "updated_at"])


# --- runs ----------------------------------------------------------------------------------------


def _crucible_experiment_create(
    *, group: MlflowExperiment, project: Project, run_name: str, user: Any, tags: dict[str, str]
) -> Experiment:
    """Create the external Crucible experiment that holds one MLflow run (pending; its start queues it)."""
    note = tags.get("mlflow.note.content", "")
    try:
        return experiment_create(
            name=f"{group.name} / {run_name}"[: Experiment._meta.get_field("name").max_length or 200],
            description=f"MLflow run of experiment {group.name!r}." + (f"\n\n{note}" if note else ""),
            recipe="",
            executor=Executor.EXTERNAL,
            owner=user,
            project=project,
            # Tags of the dashboard's list: find every run of one MLflow experiment.
            tags=["mlflow", f"mlflow:{group.name}"[:200]],
        )
    except ValidationError as exc:
        raise invalid(f"Cannot create the run: {'; '.join(exc.messages)}") from None


def _default_run_name() -> str:
    # MLflow names unnamed runs with two random words; a short random suffix serves the same end.
    return f"run-{uuid.uuid4().hex[:8]}"


def mlflow_run_create(*, user: Any, body: dict[str, Any]) -> MlflowRun:
    """Start an MLflow run: an external Crucible experiment, queued and started by the caller."""
    group = mlflow_experiment_get(str(body.get("experiment_id") or DEFAULT_EXPERIMENT_ID), user=user)
    # A run joins its group's project; a run of the shared "Default" joins the caller's default one.
    project = group.project if group.project_id is not None else default_project_for(user)
    if project is None:
        raise MlflowError("PERMISSION_DENIED", "You may create experiments in no project.")
    _require(user, "experiments.add_experiment", "experiments.queue_experiment", project_id=project.pk)
    tags = _key_values(body.get("tags"), "tags", max_value=MAX_TAG_VALUE_LENGTH)
    run_name = _text(body, "run_name", required=False) or tags.get(RUN_NAME_TAG) or _default_run_name()
    tags[RUN_NAME_TAG] = run_name
    start_time = _millis(body, "start_time") or int(time.time() * 1000)
    user_id = _text(body, "user_id", required=False) or user.get_username()
    try:
        with transaction.atomic():
            experiment = _crucible_experiment_create(
                group=group, project=project, run_name=run_name, user=user, tags=tags
            )
            run = external_run_start(experiment=experiment, actor=Actor.for_user(user), config={})
            mlflow_run = MlflowRun.objects.create(
                run_uuid=uuid.uuid4().hex,
                mlflow_experiment=group,
                experiment=experiment,
                run=run,
                run_name=run_name,
                user_id=user_id,
                start_time=start_time,
            )
            external_run_set_tags(run=run, tags=tags)
    except PermissionDenied as exc:
        raise MlflowError("PERMISSION_DENIED", str(exc) or "You may not start runs.") from None
    except (ExternalRunRefused, ConfigError) as exc:
        raise MlflowError("INVALID_STATE", str(exc)) from None
    return mlflow_run_get(mlflow_run.run_uuid, user=user)


def mlflow_run_update(*, user: Any, body: dict[str, Any]) -> MlflowRun:
    """Rename a run and/or end it (FINISHED, FAILED, KILLED); RUNNING changes nothing."""
    run_id = _text(body, "run_id", required=False) or _text(body, "run_uuid")
    attempt = _writable_run(user, run_id)
    status = body.get("status")
    if status not in (None, "", "RUNNING", "SCHEDULED", *FINISH_OF_STATUS):
        raise invalid(
            f"Invalid value {status!r} for parameter 'status': expected RUNNING, FINISHED, FAILED or KILLED."
        )
    run_name = _text(body, "run_name", required=False)
    end_time = _millis(body, "end_time")
    if run_name and MlflowRun.objects.filter(run_uuid=run_id).exclude(run_name=run_name).update(
        run_name=run_name
    ):
        external_run_set_tags(run=attempt, tags={RUN_NAME_TAG: run_name})
    if status in FINISH_OF_STATUS:
        ended = end_time or int(time.time() * 1000)
        MlflowRun.objects.filter(run_uuid=run_id, end_time__isnull=True).update(end_time=ended)
        external_run_finish(run=attempt, status=FINISH_OF_STATUS[status])
    return mlflow_run_get(run_id, user=user)


def _point(metric: Any, index: int, field: str) -> Point:
    """Return one MLflow metric ({key, value, timestamp, step}) as an external point (seconds, not ms)."""
    if not isinstance(metric, dict):
        raise invalid(
            f"Invalid value for parameter '{field}[{index}]': expected {{key, value, timestamp, step}}."
        )
    key = metric.get("key")
    if not isinstance(key, str) or not key:
        raise invalid(f"Missing value for required parameter '{field}[{index}].key'.")
    raw_value = metric.get("value")
    if isinstance(raw_value, str) and raw_value in ("NaN", "Infinity", "-Infinity"):
        value = float(raw_value.replace("Infinity", "inf"))
    elif isinstance(raw_value, int | float) and not isinstance(raw_value, bool):
        value = float(raw_value)
    else:
        raise invalid(
            f"Invalid value {raw_value!r} for parameter '{field}[{index}].value': expected a number."
        )
    step_raw = metric.get("step", 0)
    try:
        step = int(step_raw or 0)
    except (TypeError, ValueError):
        raise invalid(
            f"Invalid value {step_raw!r} for parameter '{field}[{index}].step': expected an integer."
        ) from None
    timestamp = metric.get("timestamp")
    wall_time: float | None = None
    if timestamp not in (None, ""):
        try:
            wall_time = int(timestamp) / 1000.0
        except (TypeError, ValueError):
            raise invalid(
                f"Invalid value {timestamp!r} for parameter '{field}[{index}].timestamp': expected milliseconds."
            ) from None
        if not math.isfinite(wall_time):
            wall_time = None
    return (key, step, value, wall_time)


def _points(metrics: list[Any], field: str) -> list[Point]:
    """Return a batch of MLflow metrics as external points.

    The common shape ({key: str, value: float, timestamp: int, step: int}) takes a tight loop:
    this runs for every logged point. Anything else goes through `_point`, whose message names
    the field; the ingest checks names, steps and values again either way.
    """
    out: list[Point] = []
    append = out.append
    try:
        for metric in metrics:
            value = metric["value"]
            timestamp = metric["timestamp"]
            if type(value) is not float or type(timestamp) is not int or type(metric["key"]) is not str:
                raise TypeError
            append((metric["key"], int(metric.get("step") or 0), value, timestamp / 1000.0))
    except (KeyError, TypeError, ValueError):
        return [_point(m, i, field) for i, m in enumerate(metrics)]
    return out


def _ingest(attempt: Run, points: list[Point], field: str) -> ControlState:
    try:
        return external_metrics_ingest(run=attempt, points=points)
    except PointsInvalid as exc:
        index, name, message = exc.errors[0]
        where = f"{field}[{index}].{name}" if name != "points" else field
        more = f" ({len(exc.errors) - 1} more refused)" if len(exc.errors) > 1 else ""
        raise invalid(
            f"Invalid value for parameter '{where}': {message}{more}. Nothing of the batch was stored."
        ) from None


def _params_check(attempt: Run, params: dict[str, str], run_id: str) -> dict[str, str]:
    """Return the params not logged yet; refuse a new value for a logged one (params are write-once in MLflow)."""
    logged = Run.objects.filter(pk=attempt.pk).values_list("params", flat=True).first() or {}
    fresh = {}
    for key, value in params.items():
        if key in logged:
            if str(logged[key]) != value:
                raise invalid(
                    f"Changing param values is not allowed. Param with key='{key}' was already logged with "
                    f"value='{logged[key]}' for run ID='{run_id}'. Attempted logging new value '{value}'."
                )
            continue
        fresh[key] = value
    return fresh


def mlflow_log_batch(*, user: Any, body: dict[str, Any]) -> ControlState:
    """Log metrics, params and tags of one run at once; the metrics take the external ingest path."""
    run_id = _text(body, "run_id", required=False) or _text(body, "run_uuid")
    attempt = _writable_run(user, run_id)
    metrics = body.get("metrics") or []
    if not isinstance(metrics, list):
        raise invalid("Invalid value for parameter 'metrics': expected a list.")
    params = _key_values(body.get("params"), "params", max_value=MAX_PARAM_VALUE_LENGTH)
    tags = _key_values(body.get("tags"), "tags", max_value=MAX_TAG_VALUE_LENGTH)
    points = _points(metrics, "metrics")
    fresh_params = _params_check(attempt, params, run_id) if params else {}
    state = _ingest(attempt, points, "metrics") if points else ControlState(stop=False, reason=None)
    if fresh_params:
        external_run_log_params(run=attempt, params=fresh_params)
    if tags:
        external_run_set_tags(run=attempt, tags=tags)
    return state


def mlflow_log_metric(*, user: Any, body: dict[str, Any]) -> ControlState:
    """Log one metric point."""
    run_id = _text(body, "run_id", required=False) or _text(body, "run_uuid")
    attempt = _writable_run(user, run_id)
    point = _point(body, 0, "metric")
    return _ingest(attempt, [point], "metric")


def mlflow_log_param(*, user: Any, body: dict[str, Any]) -> None:
    """Log one parameter (write-once)."""
    run_id = _text(body, "run_id", required=False) or _text(body, "run_uuid")
    attempt = _writable_run(user, run_id)
    params = _key_values(
        [{"key": body.get("key"), "value": body.get("value")}], "param", max_value=MAX_PARAM_VALUE_LENGTH
    )
    fresh = _params_check(attempt, params, run_id)
    if fresh:
        external_run_log_params(run=attempt, params=fresh)


def mlflow_set_tag(*, user: Any, body: dict[str, Any]) -> None:
    """Set one tag of a run (a later value replaces the earlier)."""
    run_id = _text(body, "run_id", required=False) or _text(body, "run_uuid")
    attempt = _writable_run(user, run_id)
    tags = _key_values(
        [{"key": body.get("key"), "value": body.get("value")}], "tag", max_value=MAX_TAG_VALUE_LENGTH
    )
    external_run_set_tags(run=attempt, tags=tags)
    if tags.get(RUN_NAME_TAG):
        MlflowRun.objects.filter(run_uuid=run_id).update(run_name=tags[RUN_NAME_TAG][:250])
