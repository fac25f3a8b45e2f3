"""The MLflow tracking endpoints: authenticate, parse, call one service or selector, answer MLflow's JSON.

Plain Django views, not the ninja API: MLflow's clients expect its request and error shapes
(`{"error_code", "message"}`), and log-batch is the hot path of every logged metric.
The routes skip CSRF because they act only for a bearer token or HTTP basic credentials,
never for a browser cookie (experiments/mlflow/auth.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from experiments.mlflow import selectors, services
from experiments.mlflow.auth import mlflow_caller
from experiments.mlflow.errors import MlflowError, invalid

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "experiments.view_experiment"
Handler = Callable[[Any, dict[str, Any]], dict[str, Any]]


def _json(body: dict[str, Any], status: int = 200) -> HttpResponse:
    # The selectors write NaN as the string "NaN", as MLflow's JSON does, so no float NaN is left.
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def _error(exc: MlflowError) -> HttpResponse:
    response = _json(exc.body(), exc.status)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Basic realm="mlflow", Bearer realm="mlflow"'
    return response


def _request_body(request: HttpRequest) -> dict[str, Any]:
    """Return the request's fields: the query string of a GET, the JSON object of a POST."""
    if request.method == "GET":
        out: dict[str, Any] = {}
        for key in request.GET:
            values = request.GET.getlist(key)
            out[key] = values if len(values) > 1 or key in ("experiment_ids", "order_by") else values[0]
        return out
    if not request.body:
        return {}
    try:
        # orjson parses log-batch, every logged point, several times faster. What it refuses and
        # the standard parser takes (bare NaN, integers beyond 64 bits) goes to the latter.
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = _json_loads_std(request.body)
    if not isinstance(body, dict):
        raise MlflowError("BAD_REQUEST", "The request body must be a JSON object.")
    return body


def _json_loads_std(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MlflowError("BAD_REQUEST", "The request body is not valid JSON.") from None


def mlflow_endpoint(
    method: str, *, permission: str = VIEW_PERMISSION
) -> Callable[[Handler], Callable[..., HttpResponse]]:
    """Make a handler an endpoint: the method it takes, the caller's authentication, MLflow's error shape.

    `permission` is checked here for reads; writes check theirs in the service (which also
    knows whose run it is).
    """

    def wrap(handler: Handler) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @wraps(handler)
        def view(request: HttpRequest) -> HttpResponse:
            try:
                if request.method != method:
                    raise MlflowError(
                        "ENDPOINT_NOT_FOUND", f"{request.path} takes {method}, not {request.method}."
                    )
                user = mlflow_caller(request)
                if permission and not user.has_perm(permission):
                    raise MlflowError(
                        "PERMISSION_DENIED", f"Your account lacks the permission this needs: {permission}."
                    )
                return _json(handler(user, _request_body(request)))
            except MlflowError as exc:
                return _error(exc)
            except RequestDataTooBig:
                limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
                return _error(invalid(f"The request body is over {limit} bytes: send smaller batches."))
            except Exception:
                logger.exception("MLflow API error on %s %s", request.method, request.path)
                return _error(MlflowError("INTERNAL_ERROR", "Internal server error: it has been logged."))

        return view

    return wrap


def mlflow_write(service: Callable[..., Any], doc: str) -> Callable[..., HttpResponse]:
    """Return the POST endpoint of a write service answering MLflow's empty object; the service checks the caller."""

    def handler(user: Any, body: dict[str, Any]) -> dict[str, Any]:
        service(user=user, body=body)
        return {}

    handler.__name__ = handler.__qualname__ = service.__name__
    handler.__doc__ = doc
    return mlflow_endpoint("POST", permission="")(handler)


def mlflow_read(
    selector: Callable[[Any, dict[str, Any]], dict[str, Any]], doc: str, *, method: str = "POST"
) -> Callable[..., HttpResponse]:
    """Return the endpoint of a read that one selector answers for the caller from the request's fields (VIEW_PERMISSION)."""

    def handler(user: Any, body: dict[str, Any]) -> dict[str, Any]:
        return selector(user, body)

    handler.__name__ = handler.__qualname__ = selector.__name__
    handler.__doc__ = doc
    return mlflow_endpoint(method)(handler)


# --- experiments ---------------------------------------------------------------------------------


@mlflow_endpoint("POST", permission="")
def experiments_create(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST experiments/create {name, tags?} -> {experiment_id}."""
    return {"experiment_id": str(services.mlflow_experiment_create(user=user, body=body).pk)}


@mlflow_endpoint("GET")
def experiments_get(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """GET experiments/get?experiment_id= -> {experiment}."""
    experiment_id = body.get("experiment_id")
    if not experiment_id:
        raise invalid("Missing value for required parameter 'experiment_id'.")
    return {
        "experiment": selectors.experiment_json(
            selectors.mlflow_experiment_get(str(experiment_id), user=user)
        )
    }


@mlflow_endpoint("GET")
def experiments_get_by_name(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """GET experiments/get-by-name?experiment_name= -> {experiment}."""
    name = body.get("experiment_name")
    if not name:
        raise invalid("Missing value for required parameter 'experiment_name'.")
    return {
        "experiment": selectors.experiment_json(selectors.mlflow_experiment_by_name(str(name), user=user))
    }


experiments_search = mlflow_read(
    selectors.mlflow_experiments_search,
    "POST experiments/search {filter?, order_by?, max_results?, page_token?, view_type?}.",
)
experiments_set_tag = mlflow_write(
    services.mlflow_experiment_set_tag, "POST experiments/set-experiment-tag {experiment_id, key, value}."
)


# --- runs ----------------------------------------------------------------------------------------


@mlflow_endpoint("POST", permission="")
def runs_create(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST runs/create {experiment_id, run_name?, start_time?, tags?, user_id?} -> {run}."""
    return {"run": selectors.run_json(services.mlflow_run_create(user=user, body=body), {})}


@mlflow_endpoint("GET")
def runs_get(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """GET runs/get?run_id= -> {run}."""
    return {
        "run": selectors.run_json(
            selectors.mlflow_run_get(str(body.get("run_id") or body.get("run_uuid") or ""), user=user)
        )
    }


@mlflow_endpoint("POST", permission="")
def runs_update(user: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST runs/update {run_id, status?, end_time?, run_name?} -> {run_info}."""
    return {"run_info": selectors.run_info_json(services.mlflow_run_update(user=user, body=body))}


runs_search = mlflow_read(
    selectors.mlflow_runs_search,
    "POST runs/search {experiment_ids, filter?, order_by?, max_results?, page_token?, run_view_type?}.",
)
runs_log_metric = mlflow_write(
    services.mlflow_log_metric, "POST runs/log-metric {run_id, key, value, timestamp, step?}."
)
runs_log_batch = mlflow_write(
    services.mlflow_log_batch, "POST runs/log-batch {run_id, metrics?, params?, tags?}."
)
runs_log_parameter = mlflow_write(services.mlflow_log_param, "POST runs/log-parameter {run_id, key, value}.")
runs_set_tag = mlflow_write(services.mlflow_set_tag, "POST runs/set-tag {run_id, key, value}.")
metrics_get_history = mlflow_read(
    selectors.mlflow_metric_history,
    "GET metrics/get-history?run_id=&metric_key=&max_results?&page_token? -> {metrics}.",
    method="GET",
)


# --- what is not offered -------------------------------------------------------------------------

ARTIFACTS_MESSAGE = (
    "Artifacts are not stored by Crucible's MLflow API: it tracks runs, params, tags and metrics. "
    "Keep artifacts in your own store (or register models through Crucible's registry)."
)


@csrf_exempt
def artifacts(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any artifact call (mlflow-artifacts, artifacts/list): a clear NOT_IMPLEMENTED, after authentication."""
    try:
        mlflow_caller(request)
    except MlflowError as exc:
        return _error(exc)
    return _error(MlflowError("NOT_IMPLEMENTED", ARTIFACTS_MESSAGE))


@csrf_exempt
def not_offered(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other MLflow endpoint: ENDPOINT_NOT_FOUND, naming what is offered."""
    try:
        mlflow_caller(request)
    except MlflowError as exc:
        return _error(exc)
    return _error(
        MlflowError(
            "ENDPOINT_NOT_FOUND",
            f"{request.path} is not offered by Crucible's MLflow API (tracking only: experiments create, get, "
            "get-by-name, search, set-experiment-tag; runs create, get, update, search, log-metric, log-batch, "
            "log-parameter, set-tag; metrics get-history). See docs/mlflow.md.",
        )
    )
