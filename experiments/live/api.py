"""Metric history over HTTP: GET /api/experiments/{id}/metrics.

Mounted at /experiments in crucible_ui/api.py; authentication is the API's own (the
browser session or a bearer token).
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import Path, Router

from experiments.live.downsample import MIN_POINTS
from experiments.live.series import Series, metric_series
from experiments.live.step_times import step_times
from experiments.permissions import requires_permission
from experiments.projects import may_see_experiment

router = Router(tags=["metrics"])

# A whole long run in one response is fine; more than this is a mistake, not a chart.
MAX_POINTS_LIMIT = 1_000_000
VIEW_PERMISSION = "experiments.view_experiment"


class BadParameter(Exception):
    """A query parameter a person can fix; the message names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# Steps are stored as PositiveIntegerField: a larger bound would overflow the database query.
MAX_STEP = 2_147_483_647


def _int_param(request: HttpRequest, field: str, *, minimum: int, maximum: int | None = None) -> int | None:
    """Return the integer query parameter `field`, None when absent or blank."""
    raw = request.GET.get(field)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParameter(field, f"{field} must be an integer, not {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise BadParameter(field, f"{field} must be {bounds}, not {value}")
    return value


def _names_param(request: HttpRequest) -> list[str] | None:
    """Return the comma-separated metric names, None when the parameter is absent (all metrics)."""
    if "names" not in request.GET:
        return None
    names = [n.strip() for n in request.GET.get("names", "").split(",") if n.strip()]
    if not names:
        raise BadParameter("names", "names must list at least one metric name, e.g. names=loss,val_loss")
    too_long = [n for n in names if len(n) > 64]
    if too_long:
        raise BadParameter("names", f"metric names are at most 64 characters: {too_long[0][:80]!r}")
    return names


def _error(status: int, message: str, field: str | None = None) -> JsonResponse:
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    return JsonResponse(body, status=status)


@router.get(
    "/{experiment_id}/metrics",
    summary="Metric history of an experiment, downsampled to a point budget",
    response={200: Any, 400: Any, 401: Any, 403: Any, 404: Any, 422: Any},
)
@requires_permission(VIEW_PERMISSION, hidden=True)
def experiment_metrics(
    request: HttpRequest,
    # Bounded in the schema: a database integer (a larger id would overflow the query).
    experiment_id: int = Path(..., ge=1, le=MAX_STEP),
    names: str | None = None,
    max_points: str | None = None,
    since_step: str | None = None,
    start_step: str | None = None,
    end_step: str | None = None,
) -> HttpResponse:
    """Return {"experiment_id", "series": {name: {steps, values, downsampled, total_points}}, "last_step"}.

    names: comma-separated metrics (all when absent); max_points: budget per series,
    kept with a min/max-preserving method; since_step: only steps after it (a page
    catching up after a reconnect); start_step/end_step: a zoomed range, inclusive.
    Values are null where the run logged NaN or infinity.
    """
    # The parameters are declared for the docs only and parsed here, so that a bad one is
    # a 400 naming it (ninja's own validation would answer 422).
    user: Any = request.user
    if not user.has_perm(VIEW_PERMISSION):
        return _error(403, "You may not view experiments.")
    try:
        names_list = _names_param(request)
        budget = _int_param(request, "max_points", minimum=MIN_POINTS, maximum=MAX_POINTS_LIMIT)
        since = _int_param(request, "since_step", minimum=0, maximum=MAX_STEP)
        start = _int_param(request, "start_step", minimum=0, maximum=MAX_STEP)
        end = _int_param(request, "end_step", minimum=0, maximum=MAX_STEP)
        if start is not None and end is not None and end < start:
            raise BadParameter("end_step", f"end_step ({end}) must not be before start_step ({start})")
    except BadParameter as exc:
        return _error(400, exc.message, exc.field)
    if not may_see_experiment(user, experiment_id):
        return _error(404, f"No experiment #{experiment_id}.")

    result = metric_series(
        experiment_id=experiment_id,
        names=names_list,
        since_step=since,
        start_step=start,
        end_step=end,
        max_points=budget,
        encoded=True,
    )
    # Serialised here, not by ninja's schema layer: a 100k-point history is two flat lists,
    # and validating each number would cost more than reading them. orjson writes them in C
    # (json.dumps spent longer on float reprs than the database on reading the rows);
    # values are finite or None, stored that way.
    parts = [orjson.dumps(name) + b":" + _series_json(s) for name, s in result.series.items()]
    body = b"".join(
        [
            b'{"experiment_id":',
            orjson.dumps(experiment_id),
            b',"series":{',
            b",".join(parts),
            b'},"last_step":',
            orjson.dumps(result.last_step),
            b"}",
        ]
    )
    return HttpResponse(body, content_type="application/json")


def _series_json(series: Series) -> bytes:
    """Return one series as a JSON object, splicing in arrays the database already wrote."""
    if series.encoded is None:
        return orjson.dumps(
            {
                "steps": series.steps,
                "values": series.values,
                "downsampled": series.downsampled,
                "total_points": series.total_points,
            }
        )
    steps, values, _end = series.encoded
    tail = orjson.dumps({"downsampled": series.downsampled, "total_points": series.total_points})
    return b"".join([b'{"steps":', steps.encode(), b',"values":', values.encode(), b",", tail[1:]])


@router.get(
    "/{experiment_id}/step-times",
    summary="When each step of an experiment was logged (for a time axis)",
    response={200: Any, 401: Any, 403: Any, 404: Any, 422: Any},
)
@requires_permission(VIEW_PERMISSION, hidden=True)
def experiment_step_times(
    request: HttpRequest,
    experiment_id: int = Path(..., ge=1, le=MAX_STEP),
    name: str | None = None,
) -> HttpResponse:
    """Return {"experiment_id", "name", "steps", "wall_times"}: a metric's steps and their Unix times, thinned.

    name: the metric (default: the first by name). The live page labels its step axis with
    wall-clock or relative time from these.
    """
    user: Any = request.user
    if not user.has_perm(VIEW_PERMISSION):
        return _error(403, "You may not view experiments.")
    if not may_see_experiment(user, experiment_id):
        return _error(404, f"No experiment #{experiment_id}.")
    times = step_times(experiment_id=experiment_id, name=(name or "").strip()[:64] or None)
    body = {
        "experiment_id": experiment_id,
        "name": times.name,
        "steps": times.steps,
        "wall_times": times.wall_times,
    }
    return JsonResponse(body)
