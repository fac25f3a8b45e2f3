"""The ingest API of runs: a client outside the workers starts a run, streams metrics, finishes it.

Thin: experiments/runs/external.py decides. `POST /api/runs` answers a run token (signed,
experiments/runs/tokens.py) that may write to that run only, while it is live; the other
operations take it (or a user's token, or the session with CSRF). A worker's script run gets
the same kind of token as CRUCIBLE_TOKEN: its client may send metrics, heartbeats, params and
tags, but the worker ends the run (finish answers 409). Every metric batch and heartbeat answers
the run's control state `{"stop": bool, "reason": ...}`: how the client learns of a cancel or a
policy's early stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, NotRequired, TypeVar

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404, HttpRequest
from ninja import Field, Path, Router, Schema, Status
from ninja.errors import ValidationError
from pydantic import BaseModel, ConfigDict, StrictStr
from typing_extensions import TypedDict  # pydantic reads a TypedDict's fields from this one on Python < 3.12

from experiments.actors import Actor
from experiments.api.routes import field_errors
from experiments.api.schemas import MAX_ID, ErrorOut, ValidationErrorOut
from experiments.choices import Executor
from experiments.models import Experiment, Run
from experiments.permissions import requires_permission, token_run_id
from experiments.projects import default_project_for, visible_experiments
from experiments.recipes import ConfigError
from experiments.runs.external import (
    FINISH_STATUSES,
    MAX_METRIC_NAME,
    MAX_POINTS_PER_BATCH,
    MAX_STEP,
    STARTABLE_STATES,
    ControlState,
    ExternalRunRefused,
    PointsInvalid,
    external_metrics_ingest,
    external_run_finish,
    external_run_heartbeat,
    external_run_log_params,
    external_run_set_tags,
    external_run_start,
    run_control_state,
)
from experiments.runs.system import SYSTEM_PREFIX, is_system_metric
from experiments.runs.tokens import run_token_mint
from experiments.services import experiment_create

router = Router(tags=["runs"])

# Starting runs and writing to them is starting experiments: the Start button's permission.
START_PERMISSION = "experiments.queue_experiment"
CREATE_PERMISSION = "experiments.add_experiment"
_AUTH_ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut}
_RUN_ID = Path(..., ge=1, le=MAX_ID, description="The run's id.")
# An experiment by id or by name.
ExperimentRef = (
    Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
    | Annotated[str, Field(strict=True, min_length=1, max_length=200)]
)
# A scalar parameter or tag value, as MLflow and most trackers keep them.
Scalar = StrictStr | int | float | bool | None
MAX_KEYS = 1000


# --- shapes ------------------------------------------------------------------------------------


class RunStartIn(Schema):
    """Start a run of an external experiment, named by id or by name (created if no startable one has it)."""

    model_config = ConfigDict(extra="forbid")

    experiment: ExperimentRef = Field(
        ...,
        description="An experiment's id (an integer), or its name (a string): by name, the newest external "
        "experiment of that name that can take a run, or a new one.",
    )
    recipe: StrictStr = Field(
        "",
        max_length=64,
        description="For a new experiment: a recipe whose declared parameters check the config ('' : none).",
    )
    config: dict[str, Any] | None = Field(
        None, description="This run's config (hyper-parameters); checked when the recipe declares them."
    )
    description: StrictStr = Field("", max_length=2000)
    params: dict[str, Scalar] = Field(default_factory=dict, description="Parameters to record on the run.")
    tags: dict[str, StrictStr] = Field(default_factory=dict, description="Tags to set on the run.")


class RunOut(Schema):
    """An external run."""

    id: int
    experiment_id: int
    experiment_name: str
    attempt: int
    status: str
    config: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    last_step: int
    final_metrics: dict[str, Any]
    stop: bool
    reason: str | None


class RunStartedOut(RunOut):
    """A started run and its token: send it as `Authorization: Bearer <token>`; it writes to this run only."""

    token: str


class PointIn(TypedDict):
    """One metric value at one step. value null (or NaN) is stored as null; wall_time null means now."""

    # A TypedDict in a plain pydantic model, not ninja Schemas: a batch holds up to 10,000 points,
    # and a model instance per point (or Schema's validator, run twice with extra="forbid") cost
    # more than storing them.
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_METRIC_NAME)]
    step: Annotated[int, Field(ge=0, le=MAX_STEP)]  # lax: 614.0 is an integer in JSON
    value: float | None
    wall_time: NotRequired[
        Annotated[float | None, Field(allow_inf_nan=False, description="Unix seconds; null: now.")]
    ]


class MetricsIn(BaseModel):
    """A batch of points (at most 10,000); a point sent again (same name and step) is ignored."""

    model_config = ConfigDict(extra="forbid")

    points: list[PointIn]


def _reserved_names_refused(points: list[PointIn]) -> None:
    """Refuse (422 at the point's name) a batch with a name under the system prefix, checked once per name."""
    # The worker logs the run's own CPU, memory and GPU under sys/ at the run's step: a
    # client's point there would take the place of a sample (or a sample of it).
    reserved = {name for name in {p["name"] for p in points} if is_system_metric(name)}
    if reserved:
        message = f"names under {SYSTEM_PREFIX!r} are reserved for the system metrics the worker samples"
        raise ValidationError(
            [
                {
                    "loc": ["body", "points", i, "name"],
                    "msg": f"Value error, {message}",
                    "type": "value_error",
                }
                for i, p in enumerate(points)
                if p["name"] in reserved
            ]
        )


class ControlStateOut(Schema):
    """What the client should do: go on, or stop (a cancel, a policy's early stop, the run ended)."""

    stop: bool
    reason: str | None


class FinishIn(Schema):
    """How the run ended, and its final metrics."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["completed", "failed", "cancelled"] = "completed"
    final_metrics: dict[str, float | None] = Field(default_factory=dict)


class ParamsIn(Schema):
    """Parameters to record on the run (merged: a key sent again takes the new value)."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Scalar]


class TagsIn(Schema):
    """Tags to set on the run (merged: a key sent again takes the new value)."""

    model_config = ConfigDict(extra="forbid")

    tags: dict[str, StrictStr]


# --- lookups and checks ---------------------------------------------------------------------


def _state_out(state: ControlState) -> dict[str, Any]:
    return {"stop": state.stop, "reason": state.reason}


def _run_out(run: Run, **extra: Any) -> dict[str, Any]:
    state = run_control_state(run=run)
    return {
        "id": run.pk,
        "experiment_id": run.experiment_id,
        "experiment_name": run.experiment.name,
        "attempt": run.attempt,
        "status": run.status,
        "config": run.config,
        "params": run.params,
        "tags": run.tags,
        "last_step": run.last_step,
        "final_metrics": run.final_metrics,
        **_state_out(state),
        **extra,
    }


def _external_run(request: HttpRequest, run_id: int) -> Run:
    """Return the run the caller may write to, or refuse (403 another run's token, 404 none).

    An external run takes its run token, a user's token or a session; a worker's run takes its
    own run token only (the script's CRUCIBLE_TOKEN): to anyone else it is no run of this API.
    """
    caller = request.auth  # type: ignore[attr-defined]
    scoped = token_run_id(caller)
    if scoped is not None and scoped != run_id:
        raise PermissionDenied(f"This token may only write to run #{scoped}.")
    if scoped is not None and isinstance(getattr(caller, "run", None), Run):
        return caller.run  # type: ignore[no-any-return]  # read live, with its experiment, by the token check
    runs = Run.objects.select_related("experiment").filter(pk=run_id)
    if scoped is None:
        runs = runs.filter(
            experiment__executor=Executor.EXTERNAL,
            experiment__in=visible_experiments(request.auth),  # type: ignore[attr-defined]
        )
    run = runs.first()
    if run is None:
        raise Http404(f"No external run #{run_id}")
    return run


def _keys_checked(mapping: dict[str, Any], field: str) -> None:
    errors = []
    if len(mapping) > MAX_KEYS:
        errors.append({"loc": ["body", field], "msg": f"at most {MAX_KEYS} keys", "type": "value_error"})
    for key, value in mapping.items():
        if not key or len(key) > 250:
            errors.append(
                {"loc": ["body", field, key], "msg": "keys are 1-250 characters", "type": "value_error"}
            )
        elif isinstance(value, str) and len(value) > 5000:
            errors.append(
                {"loc": ["body", field, key], "msg": "at most 5000 characters", "type": "value_error"}
            )
    if errors:
        raise ValidationError(errors)


def _config_errors(exc: ConfigError) -> ValidationError:
    detail = []
    for key, msg in exc.errors.items():
        loc = ["body", key] if key in ("recipe", "config") else ["body", "config", key]
        detail.append({"loc": loc, "msg": msg, "type": "value_error"})
    return ValidationError(detail)


def _experiment_for(payload: RunStartIn, user: Any) -> Experiment:
    """Return the experiment the run joins: by id, or by name (a new external one when none can take it)."""
    if isinstance(payload.experiment, int):
        experiment = visible_experiments(user).filter(pk=payload.experiment).first()
        if experiment is None:
            raise Http404(f"No experiment #{payload.experiment}")
        return experiment
    name = payload.experiment
    existing = (
        visible_experiments(user)
        .filter(name=name, executor=Executor.EXTERNAL, state__in=STARTABLE_STATES)
        .order_by("-created_at", "-id")
        .first()
    )
    if existing is not None:
        return existing
    if not user.has_perm(CREATE_PERMISSION):
        raise PermissionDenied(
            f"No external experiment named {name!r} can take a run, and you may not create one."
        )
    try:
        return experiment_create(
            name=name,
            recipe=payload.recipe,
            config=payload.config or {},
            owner=user,
            description=payload.description,
            executor=Executor.EXTERNAL,
            project=default_project_for(user),
        )
    except DjangoValidationError as exc:
        errors = exc.message_dict
        keyed = dict(msg.split(": ", 1) for msg in errors.pop("config", []) if ": " in msg)
        if keyed:
            raise _config_errors(ConfigError(keyed)) from None
        raise field_errors(errors) from None


# --- operations --------------------------------------------------------------------------------


@router.post(
    "",
    response={
        201: RunStartedOut,
        400: ErrorOut,
        **_AUTH_ERRORS,
        404: ErrorOut,
        409: ErrorOut,
        422: ValidationErrorOut,
    },
    summary="Start an external run",
    description=f"Needs `{START_PERMISSION}` (and `{CREATE_PERMISSION}` when a new experiment is made). "
    "Names the experiment by id or by name (`experiment`): by name, the newest external "
    "experiment of that name that can take a run (pending, queued, failed or running), else a new one. "
    "The experiment is queued and started without a lease, audited; a running one's live run is "
    "interrupted (its client started again). The config is checked against the recipe's declared "
    "parameters when the experiment has a recipe (422 at `body.config.<key>`). Answers the run and a "
    "token that may write to this run only. 409: a worker experiment, or one that has finished.",
)
@requires_permission(START_PERMISSION, api=True)
def run_start_view(request: HttpRequest, payload: RunStartIn) -> Status[Any]:
    """Start a run of an external experiment and hand back its run token."""
    user = request.auth  # type: ignore[attr-defined]
    _keys_checked(payload.params, "params")
    _keys_checked(payload.tags, "tags")
    with transaction.atomic():
        experiment = _experiment_for(payload, user)
        try:
            run = external_run_start(experiment=experiment, actor=Actor.for_user(user), config=payload.config)
        except ConfigError as exc:
            raise _config_errors(exc) from None
        except ExternalRunRefused as exc:
            return Status(409, {"detail": exc.message})
        if payload.params:
            run = external_run_log_params(run=run, params=payload.params)
        if payload.tags:
            run = external_run_set_tags(run=run, tags=payload.tags)
    raw = run_token_mint(run_id=run.pk, experiment_id=run.experiment_id)
    run = Run.objects.select_related("experiment").get(pk=run.pk)
    return Status(201, _run_out(run, token=raw))


_View = TypeVar("_View", bound=Callable[..., Any])


def _run_operation(
    method: str, path: str, *, answers: dict[int, Any], summary: str, description: str
) -> Callable[[_View], _View]:
    """Declare an operation on one run, `/{run_id}<path>`: the Start permission, a run token accepted (its own run only).

    answers: the responses besides the refusals every such operation can give (401, 403, 404, 422).
    """

    def declare(view: _View) -> _View:
        guarded = requires_permission(START_PERMISSION, api=True, run_token=True)(view)
        route = router.api_operation(
            [method],
            f"/{{run_id}}{path}",
            response={**answers, **_AUTH_ERRORS, 404: ErrorOut, 422: ValidationErrorOut},
            summary=summary,
            description=description,
        )
        return route(guarded)  # type: ignore[no-any-return]

    return declare


def _merged_into_run(
    request: HttpRequest, run_id: int, field: str, values: dict[str, Any], merge: Callable[..., Run]
) -> dict[str, Any]:
    """Merge params or tags (`field`) into the run the caller may write to; return the run as it is now."""
    run = _external_run(request, run_id)
    _keys_checked(values, field)
    merge(run=run, **{field: values})
    return _run_out(Run.objects.select_related("experiment").get(pk=run.pk))


@_run_operation(
    "GET",
    "",
    answers={200: RunOut},
    summary="Read an external run",
    description=f"Needs `{START_PERMISSION}`; a run token reads its own run only (a worker's script run too).",
)
def run_detail_view(request: HttpRequest, run_id: int = _RUN_ID) -> dict[str, Any]:
    """Return the run with its control state."""
    return _run_out(_external_run(request, run_id))


@_run_operation(
    "POST",
    "/metrics",
    answers={200: ControlStateOut, 400: ErrorOut, 413: ErrorOut},
    summary="Log a batch of metric points",
    description=f"At most {MAX_POINTS_PER_BATCH} points (413 otherwise). A point already stored (same "
    "run, name and step) is ignored, so a batch may be sent again after a lost answer. The points "
    "reach the history, the live charts and the policies as a worker's do. Refreshes the run's "
    'heartbeat. Answers the control state `{"stop": bool, "reason": ...}`.',
)
def run_metrics_view(request: HttpRequest, payload: MetricsIn, run_id: int = _RUN_ID) -> Status[Any]:
    """Store a batch of points and answer the run's control state."""
    run = _external_run(request, run_id)
    if len(payload.points) > MAX_POINTS_PER_BATCH:
        return Status(
            413,
            {"detail": f"points: at most {MAX_POINTS_PER_BATCH} per batch, got {len(payload.points)}"},
        )
    _reserved_names_refused(payload.points)
    nan = float("nan")  # null: a value the training loop could not give (stored as null)
    points = [
        (p["name"], p["step"], nan if p["value"] is None else p["value"], p.get("wall_time"))
        for p in payload.points
    ]
    try:
        state = external_metrics_ingest(run=run, points=points)
    except PointsInvalid as exc:
        raise ValidationError(
            [
                {"loc": ["body", "points", i, field], "msg": msg, "type": "value_error"}
                for i, field, msg in exc.errors
            ]
        ) from None
    return Status(200, _state_out(state))


@_run_operation(
    "POST",
    "/heartbeat",
    answers={200: ControlStateOut},
    summary="Say the run is alive",
    description="A run with no metric batch or heartbeat for EXTERNAL_RUN_TIMEOUT (600 s) is marked "
    'lost. Answers the control state `{"stop": bool, "reason": ...}`.',
)
def run_heartbeat_view(request: HttpRequest, run_id: int = _RUN_ID) -> dict[str, Any]:
    """Refresh the heartbeat and answer the control state."""
    return _state_out(external_run_heartbeat(run=_external_run(request, run_id)))


@_run_operation(
    "POST",
    "/finish",
    answers={200: RunOut, 400: ErrorOut, 409: ErrorOut},
    summary="Finish the run",
    description=f"status: {', '.join(FINISH_STATUSES)}. completed moves the experiment on to evaluation "
    "(the policies decide as for a worker's run); failed spends an attempt (the next start retries); "
    "cancelled cancels the experiment. Sending it again with a user's token changes nothing; the "
    "run's own token ends with the run (401 afterwards). 409 for a worker's script run: its worker "
    "ends it when the script exits (exit code 0: completed).",
)
def run_finish_view(request: HttpRequest, payload: FinishIn, run_id: int = _RUN_ID) -> Status[Any]:
    """End the run as its client says (external runs only)."""
    run = _external_run(request, run_id)
    if run.experiment.executor != Executor.EXTERNAL:
        return Status(
            409,
            {
                "detail": f"Run #{run.pk} is a script run on a worker: the worker ends it when the "
                "script exits (exit code 0: completed, else failed). Exit the script instead of "
                "finishing the run."
            },
        )
    run = external_run_finish(run=run, status=payload.status, final_metrics=payload.final_metrics)
    return Status(200, _run_out(Run.objects.select_related("experiment").get(pk=run.pk)))


@_run_operation(
    "POST",
    "/params",
    answers={200: RunOut, 400: ErrorOut},
    summary="Record parameters",
    description="Scalars by name, merged into the run's (at most 1000 keys per call).",
)
def run_params_view(request: HttpRequest, payload: ParamsIn, run_id: int = _RUN_ID) -> dict[str, Any]:
    """Merge parameters into the run's."""
    return _merged_into_run(request, run_id, "params", payload.params, external_run_log_params)


@_run_operation(
    "POST",
    "/tags",
    answers={200: RunOut, 400: ErrorOut},
    summary="Set tags",
    description="Strings by name, merged into the run's (at most 1000 keys per call).",
)
def run_tags_view(request: HttpRequest, payload: TagsIn, run_id: int = _RUN_ID) -> dict[str, Any]:
    """Merge tags into the run's."""
    return _merged_into_run(request, run_id, "tags", payload.tags, external_run_set_tags)


__all__ = ["router"]
