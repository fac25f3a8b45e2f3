"""Reads of the MLflow API, in MLflow's JSON shapes (mlflow/protos/service.proto, as JSON)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, Q, QuerySet

from experiments.choices import RunStatus
from experiments.mlflow.errors import invalid, missing
from experiments.mlflow.search import (
    EXPERIMENT_ATTRIBUTES,
    RUN_ATTRIBUTES,
    filter_parse,
    order_by_parse,
    row_matches,
    rows_sort,
)
from experiments.models import MetricPoint, MlflowExperiment, MlflowLifecycle, MlflowRun, MlflowRunStatus
from experiments.projects import VIEW, project_ids_where

# MLflow's experiment 0, which a script that never calls set_experiment logs into.
DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
# MLflow's own bounds on a page (mlflow.utils.search_utils / the server's handlers).
MAX_RESULTS_DEFAULT = 1000
MAX_RESULTS_LIMIT = 50_000
# A run's own tag pointing at its page in the dashboard.
CRUCIBLE_EXPERIMENT_TAG = "crucible.experiment_id"
STOP_REQUESTED_TAG = "crucible.stop_requested"

STATUS_OF_RUN = {
    RunStatus.STARTING: MlflowRunStatus.RUNNING,
    RunStatus.RUNNING: MlflowRunStatus.RUNNING,
    RunStatus.SUCCEEDED: MlflowRunStatus.FINISHED,
    RunStatus.FAILED: MlflowRunStatus.FAILED,
    RunStatus.CANCELLED: MlflowRunStatus.KILLED,
    # Ended by the platform (its client went quiet): over, without a result.
    RunStatus.INTERRUPTED: MlflowRunStatus.FAILED,
}


def _millis(moment: Any) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def _number(value: float | None) -> float | str:
    """Return a metric value for JSON: NULL rows were NaN or infinite; MLflow's JSON spells it "NaN"."""
    if value is None or not math.isfinite(value):
        return "NaN"
    return value


# --- experiments ---------------------------------------------------------------------------------


def _default_experiment() -> MlflowExperiment:
    found = MlflowExperiment.objects.filter(pk=0).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return MlflowExperiment.objects.create(pk=0, name=DEFAULT_EXPERIMENT_NAME)
    except IntegrityError:  # made meanwhile by a concurrent first call
        return MlflowExperiment.objects.get(pk=0)


def visible_groups(user: Any) -> QuerySet[MlflowExperiment]:
    """Return the experiments (groups) the user may see: their projects' and the shared "Default"."""
    ids = project_ids_where(user, VIEW)
    groups = MlflowExperiment.objects.all()
    return groups if ids is None else groups.filter(Q(project__isnull=True) | Q(project__in=ids))


def visible_runs(user: Any) -> QuerySet[MlflowRun]:
    """Return the MLflow runs the user may see: those whose Crucible experiment is in their projects."""
    ids = project_ids_where(user, VIEW)
    runs = MlflowRun.objects.select_related("mlflow_experiment", "experiment", "run")
    return runs if ids is None else runs.filter(experiment__project__in=ids)


def mlflow_experiment_get(experiment_id: str, *, user: Any) -> MlflowExperiment:
    """Return the experiment (group) with this id the user may see; RESOURCE_DOES_NOT_EXIST otherwise."""
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return _default_experiment()
    try:
        pk = int(str(experiment_id))
    except ValueError:
        raise invalid(
            f"Invalid value {experiment_id!r} for parameter 'experiment_id': expected an id."
        ) from None
    # Another project's experiment answers exactly as a missing one.
    found = visible_groups(user).filter(pk=pk).first() if 0 < pk < 2**31 else None
    if found is None:
        raise missing(f"No Experiment with id={experiment_id} exists")
    return found


def mlflow_experiment_by_name(name: str, *, user: Any) -> MlflowExperiment:
    """Return the experiment (group) with this name the user may see; RESOURCE_DOES_NOT_EXIST otherwise."""
    if name == DEFAULT_EXPERIMENT_NAME:
        return _default_experiment()
    found = visible_groups(user).filter(name=name).first()
    if found is None:
        raise missing(f"Could not find experiment with name '{name}'")
    return found


def experiment_json(group: MlflowExperiment) -> dict[str, Any]:
    """Return an experiment in MLflow's shape."""
    return {
        "experiment_id": str(group.pk),
        "name": group.name,
        # Nothing is stored here: an artifact call answers NOT_IMPLEMENTED saying so.
        "artifact_location": f"mlflow-artifacts:/{group.pk}",
        "lifecycle_stage": group.lifecycle_stage,
        "creation_time": _millis(group.created_at),
        "last_update_time": _millis(group.updated_at),
        "tags": [{"key": k, "value": v} for k, v in sorted(group.tags.items())],
    }


def _page(token: Any) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(str(token).encode()).decode())["offset"])
    except (ValueError, KeyError, TypeError):
        raise invalid(f"Invalid page token {str(token)[:40]!r}.") from None
    if offset < 0:
        raise invalid("Invalid page token: negative offset.")
    return offset


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _max_results(raw: Any) -> int:
    if raw in (None, ""):
        return MAX_RESULTS_DEFAULT
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid(f"Invalid value {raw!r} for parameter 'max_results': expected an integer.") from None
    if not 0 < value <= MAX_RESULTS_LIMIT:
        raise invalid(f"Invalid value {value} for parameter 'max_results': from 1 to {MAX_RESULTS_LIMIT}.")
    return value


def _order_list(raw: Any) -> list[str]:
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        return [str(r) for r in raw]
    raise invalid("Invalid value for parameter 'order_by': expected a list of strings.")


def _paged(items: list[Any], offset: int, limit: int) -> tuple[list[Any], str | None]:
    window = items[offset : offset + limit]
    return window, (_token(offset + limit) if offset + limit < len(items) else None)


def mlflow_experiments_search(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Return {"experiments": [...], "next_page_token"?} for a SearchExperiments request."""
    _default_experiment()  # MLflow lists Default even before anything logged into it
    clauses = filter_parse(body.get("filter"), attributes=EXPERIMENT_ATTRIBUTES)
    order = order_by_parse(_order_list(body.get("order_by")), attributes=EXPERIMENT_ATTRIBUTES)
    limit = _max_results(body.get("max_results"))
    offset = _page(body.get("page_token"))
    view = str(body.get("view_type") or "ACTIVE_ONLY")
    groups = list(visible_groups(user))
    if view == "DELETED_ONLY":
        groups = [g for g in groups if g.lifecycle_stage == MlflowLifecycle.DELETED]
    elif view != "ALL":
        groups = [g for g in groups if g.lifecycle_stage == MlflowLifecycle.ACTIVE]

    def row(group: MlflowExperiment) -> dict[str, dict[str, Any]]:
        return {
            "attributes": {
                "name": group.name,
                "experiment_id": str(group.pk),
                "creation_time": _millis(group.created_at),
                "last_update_time": _millis(group.updated_at),
            },
            "tags": dict(group.tags),
        }

    rows = {g.pk: row(g) for g in groups}
    matching = [g for g in groups if row_matches(rows[g.pk], clauses)]
    # MLflow's default order: newest first, then by id.
    matching.sort(key=lambda g: (-(_millis(g.created_at) or 0), -g.pk))
    matching = rows_sort(matching, order, lambda g: rows[g.pk])
    window, token = _paged(matching, offset, limit)
    out: dict[str, Any] = {"experiments": [experiment_json(g) for g in window]}
    if token:
        out["next_page_token"] = token
    return out


# --- runs ----------------------------------------------------------------------------------------


def mlflow_run_get(run_id: str, *, user: Any) -> MlflowRun:
    """Return the MLflow run with this id the user may see (with its experiment, attempt and group); 404 otherwise."""
    if not isinstance(run_id, str) or not run_id:
        raise invalid("Missing value for required parameter 'run_id'.")
    found = visible_runs(user).filter(run_uuid=run_id).first()
    if found is None:
        raise missing(f"Run '{run_id}' not found")
    return found


@dataclass(frozen=True)
class LatestMetric:
    """A run's newest point of one metric (the highest step): what MLflow lists in run.data.metrics."""

    key: str
    value: float | None
    timestamp: int
    step: int


def latest_metrics(run_ids: Iterable[int]) -> dict[int, dict[str, LatestMetric]]:
    """Return {Crucible run id: {metric: newest point}} in two queries, whatever the number of runs."""
    ids = list(run_ids)
    if not ids:
        return {}
    tops = MetricPoint.objects.filter(run_id__in=ids).values("run_id", "name").annotate(top=Max("step"))
    wanted = {(t["run_id"], t["name"], t["top"]) for t in tops}
    if not wanted:
        return {}
    out: dict[int, dict[str, LatestMetric]] = {}
    steps = {t[2] for t in wanted}
    rows = MetricPoint.objects.filter(run_id__in=ids, step__in=steps).values_list(
        "run_id", "name", "step", "value", "wall_time"
    )
    for run_id, name, step, value, wall_time in rows:
        if (run_id, name, step) in wanted:
            out.setdefault(run_id, {})[name] = LatestMetric(name, value, int(wall_time * 1000), step)
    return out


def run_status(mlflow_run: MlflowRun) -> str:
    """Return the run's MLflow status, from its attempt's."""
    return str(STATUS_OF_RUN.get(RunStatus(mlflow_run.run.status), MlflowRunStatus.RUNNING))


def _end_time(mlflow_run: MlflowRun) -> int | None:
    if mlflow_run.end_time is not None:
        return mlflow_run.end_time
    if run_status(mlflow_run) != MlflowRunStatus.RUNNING:
        return _millis(mlflow_run.run.finished_at)
    return None


def run_info_json(mlflow_run: MlflowRun) -> dict[str, Any]:
    """Return a run's info in MLflow's shape."""
    info: dict[str, Any] = {
        "run_id": mlflow_run.run_uuid,
        "run_uuid": mlflow_run.run_uuid,
        "run_name": mlflow_run.run_name,
        "experiment_id": str(mlflow_run.mlflow_experiment_id),
        "user_id": mlflow_run.user_id,
        "status": run_status(mlflow_run),
        "start_time": mlflow_run.start_time,
        "artifact_uri": f"mlflow-artifacts:/{mlflow_run.mlflow_experiment_id}/{mlflow_run.run_uuid}/artifacts",
        "lifecycle_stage": mlflow_run.lifecycle_stage,
    }
    end = _end_time(mlflow_run)
    if end is not None:
        info["end_time"] = end
    return info


def _tags(mlflow_run: MlflowRun) -> dict[str, str]:
    tags = {str(k): str(v) for k, v in (mlflow_run.run.tags or {}).items()}
    tags[CRUCIBLE_EXPERIMENT_TAG] = str(mlflow_run.experiment_id)
    # An MLflow client cannot be told to stop; a script (or a person) can read it here.
    if mlflow_run.run.stop_requested_at is not None:
        tags[STOP_REQUESTED_TAG] = mlflow_run.run.stop_reason or "stop requested"
    return tags


def run_json(mlflow_run: MlflowRun, metrics: dict[str, LatestMetric] | None = None) -> dict[str, Any]:
    """Return a run ({info, data}) in MLflow's shape; metrics are read when not given."""
    if metrics is None:
        metrics = latest_metrics([mlflow_run.run_id]).get(mlflow_run.run_id, {})
    return {
        "info": run_info_json(mlflow_run),
        "data": {
            "metrics": [
                {"key": m.key, "value": _number(m.value), "timestamp": m.timestamp, "step": m.step}
                for m in sorted(metrics.values(), key=lambda m: m.key)
            ],
            "params": [{"key": k, "value": str(v)} for k, v in sorted((mlflow_run.run.params or {}).items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(_tags(mlflow_run).items())],
        },
    }


def _experiment_ids(raw: Any) -> list[str]:
    if raw in (None, ""):
        raise invalid("Missing value for required parameter 'experiment_ids'.")
    ids = raw if isinstance(raw, list) else [raw]
    return [str(i) for i in ids]


def mlflow_runs_search(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Return {"runs": [...], "next_page_token"?} for a SearchRuns request (the user's projects' runs)."""
    ids = _experiment_ids(body.get("experiment_ids"))
    groups = [mlflow_experiment_get(i, user=user) for i in ids]
    clauses = filter_parse(body.get("filter"), attributes=RUN_ATTRIBUTES)
    order = order_by_parse(_order_list(body.get("order_by")), attributes=RUN_ATTRIBUTES)
    limit = _max_results(body.get("max_results"))
    offset = _page(body.get("page_token"))
    view = str(body.get("run_view_type") or "ACTIVE_ONLY")
    runs = list(visible_runs(user).filter(mlflow_experiment__in=[g.pk for g in groups]))
    if view == "DELETED_ONLY":
        runs = [r for r in runs if r.lifecycle_stage == MlflowLifecycle.DELETED]
    elif view != "ALL":
        runs = [r for r in runs if r.lifecycle_stage == MlflowLifecycle.ACTIVE]
    metrics = latest_metrics(r.run_id for r in runs)

    def row(r: MlflowRun) -> dict[str, dict[str, Any]]:
        return {
            "attributes": {
                "status": run_status(r),
                "run_name": r.run_name,
                "run_id": r.run_uuid,
                "user_id": r.user_id,
                "artifact_uri": run_info_json(r)["artifact_uri"],
                "lifecycle_stage": r.lifecycle_stage,
                "start_time": r.start_time,
                "end_time": _end_time(r),
                "created": r.start_time,
            },
            "metrics": {
                k: (m.value if m.value is not None else math.nan)
                for k, m in metrics.get(r.run_id, {}).items()
            },
            "params": {str(k): str(v) for k, v in (r.run.params or {}).items()},
            "tags": _tags(r),
        }

    rows = {r.pk: row(r) for r in runs}
    matching = [r for r in runs if row_matches(rows[r.pk], clauses)]
    # MLflow's default order: newest start first, then by run id.
    matching.sort(key=lambda r: (-r.start_time, r.run_uuid))
    matching = rows_sort(matching, order, lambda r: rows[r.pk])
    window, token = _paged(matching, offset, limit)
    out: dict[str, Any] = {"runs": [run_json(r, metrics.get(r.run_id, {})) for r in window]}
    if token:
        out["next_page_token"] = token
    return out


def mlflow_metric_history(user: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Return {"metrics": [{key, value, timestamp, step}], "next_page_token"?}, in step order."""
    run_id = params.get("run_id") or params.get("run_uuid")
    key = params.get("metric_key")
    if not key:
        raise invalid("Missing value for required parameter 'metric_key'.")
    mlflow_run = mlflow_run_get(str(run_id or ""), user=user)
    raw_limit = params.get("max_results")
    limit = _max_results(raw_limit) if raw_limit not in (None, "") else None
    offset = _page(params.get("page_token"))
    points = MetricPoint.objects.filter(run_id=mlflow_run.run_id, name=str(key)).order_by("step")
    if limit is not None:
        points = points[offset : offset + limit + 1]
    rows: Sequence[tuple[int, float | None, float]] = list(points.values_list("step", "value", "wall_time"))
    token = None
    if limit is not None and len(rows) > limit:
        rows = rows[:limit]
        token = _token(offset + limit)
    out: dict[str, Any] = {
        "metrics": [
            {"key": key, "value": _number(value), "timestamp": int(wall_time * 1000), "step": step}
            for step, value, wall_time in rows
        ]
    }
    if token:
        out["next_page_token"] = token
    return out
