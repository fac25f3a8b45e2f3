"""The experiments JSON API: create, list, read, and fire lifecycle events (thin: services decide)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest
from ninja import Path, Query, Router, Status
from ninja.errors import ValidationError

from experiments.actors import Actor
from experiments.api.schemas import (
    MAX_ID,
    ActionIn,
    DependencyIn,
    ErrorOut,
    ExperimentDetail,
    ExperimentFilters,
    ExperimentIn,
    ExperimentList,
    OverrideRequiredOut,
    TransitionRefusedOut,
    UnknownEventOut,
    ValidationErrorOut,
)
from experiments.choices import State
from experiments.models import EVENT_PERMISSIONS, Experiment, Project
from experiments.permissions import requires_permission
from experiments.pipelines.selectors import pipeline_summary
from experiments.pipelines.services import dependencies_set, dependency_remove, pipeline_start
from experiments.projects import (
    creatable_projects,
    default_project_for,
    may_see_experiment,
    visible_experiments,
)
from experiments.recipes import ConfigError, get_spec
from experiments.services import (
    OverrideRequired,
    TransitionRefused,
    experiment_create,
    experiment_retrain,
    experiment_transition,
)

router = Router(tags=["experiments"])

_AUTH_ERRORS: dict[int, Any] = {401: ErrorOut, 403: ErrorOut}
_ID = Path(..., ge=1, le=MAX_ID, description="The experiment's id.")
# A string, not an enum: an unknown event answers the documented 400 that lists the known ones.
_EVENT = Path(..., description="A lifecycle event: " + ", ".join(EVENT_PERMISSIONS) + ".")
# Reading needs the same permission as the live view and the metric history.
VIEW_PERMISSION = "experiments.view_experiment"


def field_errors(errors: dict[str, list[str]], *, prefix: tuple[str, ...] = ("body",)) -> ValidationError:
    """Return the API's 422 error for Django-style errors keyed by model field."""
    detail: list[dict[str, Any]] = []
    for field, messages in errors.items():
        loc = list(prefix) if field == NON_FIELD_ERRORS else [*prefix, field]
        detail.extend({"loc": loc, "msg": msg, "type": "value_error"} for msg in messages)
    return ValidationError(detail)


def _config_errors(exc: ConfigError) -> ValidationError:
    """Return the 422 error for a refused config: each parameter at body.config.<key>."""
    detail: list[dict[str, Any]] = []
    for key, msg in exc.errors.items():
        loc = ["body", key] if key in ("recipe", "config") else ["body", "config", key]
        detail.append({"loc": loc, "msg": msg, "type": "value_error"})
    return ValidationError(detail)


def _require_perm(request: HttpRequest, perm: str, doing: str) -> Any:
    """Return the authenticated caller, or raise PermissionDenied (403) saying what they may not do."""
    user = request.auth  # type: ignore[attr-defined]
    if not user.has_perm(perm):
        raise PermissionDenied(f"You may not {doing}.")
    return user


def _detail(experiment_id: int, user: Any) -> Experiment:
    """Return the experiment, read afresh, with its lineage, history and the user's next events."""
    experiment = visible_experiments(user).select_related("owner", "project").filter(pk=experiment_id).first()
    if experiment is None:
        raise Http404(f"No experiment #{experiment_id}")
    # Attributes the ExperimentDetail schema reads; the model has no fields of these names.
    experiment.children_ids = list(  # type: ignore[attr-defined]
        experiment.children.order_by("id").values_list("id", flat=True)
    )
    experiment.available_events_now = experiment.available_events(user)  # type: ignore[attr-defined]
    experiment.pipeline = pipeline_summary(experiment, user)  # type: ignore[attr-defined]
    return experiment


def _dependencies_add(experiment: Experiment, wanted: list[dict[str, Any]], user: Any) -> None:
    """Add the edges a request asks for (all or none; errors on depends_on; hidden upstreams as missing)."""
    dependencies_set(
        downstream=experiment,
        wanted=[(int(d["experiment_id"]), d["after"], d["on_upstream_failure"]) for d in wanted],
        user=user,
    )


def _creatable_project(user: Any, slug: str | None) -> Project:
    """Return the project a new experiment joins: the named one, else the caller's first (422 if none)."""
    choices = creatable_projects(user)
    project = choices.filter(slug=slug).first() if slug else default_project_for(user)
    if project is None:
        message = (
            f"no project {slug!r} where you may create experiments"
            if slug
            else "you may not create experiments in any project"
        )
        raise field_errors({"project": [message]})
    return project


def _filtered(filters: ExperimentFilters, user: Any) -> QuerySet[Experiment]:
    """Return the user's experiments matching every filter but state (the per-state counts use it)."""
    qs = visible_experiments(user)
    if filters.recipe:
        qs = qs.filter(recipe=filters.recipe)
    if filters.q:
        qs = qs.filter(name__icontains=filters.q)
    return qs


@router.get(
    "",
    response={200: ExperimentList, **_AUTH_ERRORS, 422: ValidationErrorOut},
    summary="List experiments",
    description="Needs `experiments.view_experiment`. Filter by state (repeatable), recipe and name "
    "search; page with limit/offset. `counts` gives, per state, the experiments that match the other filters.",
)
@requires_permission(VIEW_PERMISSION)
def experiment_list(request: HttpRequest, filters: Query[ExperimentFilters]) -> dict[str, Any]:
    """Return one page of experiments and the counts per state."""
    user = _require_perm(request, VIEW_PERMISSION, "view experiments")
    base = _filtered(filters, user)
    counts = {state.value: 0 for state in State}
    for row in base.order_by().values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    qs = base.filter(state__in=filters.state) if filters.state else base
    tiebreak = "-id" if filters.ordering.startswith("-") else "id"
    page = qs.select_related("owner", "project").order_by(filters.ordering, tiebreak)
    return {
        "count": qs.count(),
        "limit": filters.limit,
        "offset": filters.offset,
        "counts": counts,
        "items": list(page[filters.offset : filters.offset + filters.limit]),
    }


@router.post(
    "",
    # 400: a body that is not JSON at all (ninja's parser refuses it before any field is read).
    response={201: ExperimentDetail, 400: ErrorOut, **_AUTH_ERRORS, 422: ValidationErrorOut},
    summary="Create an experiment",
    description="Needs `experiments.add_experiment`. The config is checked against the recipe's "
    'declared parameters: each refused key comes back at `["body", "config", <key>]` (422).',
)
@requires_permission("experiments.add_experiment")
def experiment_create_view(request: HttpRequest, payload: ExperimentIn) -> Status[Any]:
    """Create a pending experiment owned by the caller."""
    user = _require_perm(request, "experiments.add_experiment", "create experiments")
    data = payload.model_dump()
    data["project"] = _creatable_project(user, data.pop("project"))
    # Check the config first so that each parameter gets its own path; the model's own
    # clean() folds them into one "config" message for forms.
    try:
        data["config"] = get_spec(data["recipe"]).clean(data["config"])
    except ConfigError as exc:
        raise _config_errors(exc) from None
    depends_on = data.pop("depends_on")
    try:
        with transaction.atomic():
            experiment = experiment_create(owner=user, **data)
            _dependencies_add(experiment, depends_on, user)
    except DjangoValidationError as exc:
        errors = exc.message_dict
        # The model's own config checks (e.g. a dataset id that names no dataset) say
        # "<key>: <message>": each goes to its parameter's path like the checks above.
        keyed = dict(msg.split(": ", 1) for msg in errors.pop("config", []) if ": " in msg)
        if keyed:
            raise _config_errors(ConfigError(keyed)) from None
        raise field_errors(errors) from None
    return Status(201, _detail(experiment.pk, user))


@router.get(
    "/{experiment_id}",
    response={200: ExperimentDetail, **_AUTH_ERRORS, 404: ErrorOut, 422: ValidationErrorOut},
    summary="Read an experiment",
    description="Needs `experiments.view_experiment`. Includes `available_events`: the events the "
    "requesting user may fire now, the audited transitions and the lineage (parent, children).",
)
@requires_permission(VIEW_PERMISSION, hidden=True)
def experiment_detail(request: HttpRequest, experiment_id: int = _ID) -> Experiment:
    """Return one experiment with its history and lineage."""
    user = _require_perm(request, VIEW_PERMISSION, "view experiments")
    return _detail(experiment_id, user)


@router.post(
    "/{experiment_id}/actions/{event}",
    response={
        200: ExperimentDetail,
        201: ExperimentDetail,
        # A body that is not JSON at all is ninja's 400 {"detail"}; an unknown event also names
        # the known ones.
        400: UnknownEventOut | ErrorOut,
        **_AUTH_ERRORS,
        404: ErrorOut,
        # The fuller answer first: a refusal that names a policy's verdict keeps its fields.
        409: OverrideRequiredOut | TransitionRefusedOut,
        422: ValidationErrorOut,
    },
    summary="Fire a lifecycle event",
    description="Events: " + ", ".join(EVENT_PERMISSIONS) + ". Each needs its transition permission "
    '(403 otherwise). The optional body `{"reason": "..."}` goes into the audit log. Answers 200 with the experiment in its '
    "new state; `retrain` answers 201 with the queued child. 409 when the current state does not "
    "allow the event (e.g. another request fired it first), with the state it is in. Promoting what "
    'a policy held needs `{"override": true, "reason": "..."}`: without it 409 with `held_by` (the '
    "policy and its verdict); without a reason 422 on `reason`.",
)
# Plus the event's own transition permission, which the service checks (403).
@requires_permission(VIEW_PERMISSION, hidden=True)
def experiment_action(
    request: HttpRequest,
    experiment_id: int = _ID,
    event: str = _EVENT,
    payload: ActionIn | None = None,
) -> Status[Any]:
    """Fire one event on an experiment as the calling user (audited with the reason)."""
    if event not in EVENT_PERMISSIONS:
        known = list(EVENT_PERMISSIONS)
        return Status(
            400,
            {"detail": f"Unknown event {event!r}; known events: {', '.join(known)}", "known_events": known},
        )
    user = request.auth  # type: ignore[attr-defined]
    if not may_see_experiment(user, experiment_id):
        raise Http404(f"No experiment #{experiment_id}")
    actor = Actor.for_user(user)
    reason = payload.reason if payload else ""
    override = payload.override if payload else False
    try:
        if event == "retrain":
            child = experiment_retrain(experiment_id=experiment_id, actor=actor, reason=reason)
            return Status(201, _detail(child.pk, user))
        experiment = experiment_transition(
            experiment_id=experiment_id, event=event, actor=actor, reason=reason, override=override
        )
    except Experiment.DoesNotExist:
        raise Http404(f"No experiment #{experiment_id}") from None
    except OverrideRequired as exc:
        return Status(
            409,
            {
                "detail": exc.message,
                "state": str(exc.experiment.state),
                "override_required": True,
                "held_by": {"policy": exc.policy, "verdict": exc.verdict},
            },
        )
    except TransitionRefused as exc:
        return Status(409, {"detail": exc.message, "state": str(exc.experiment.state)})
    except DjangoValidationError as exc:
        raise field_errors(exc.message_dict) from None
    return Status(200, _detail(experiment.pk, user))


@router.post(
    "/{experiment_id}/dependencies",
    # 400: a body that is not JSON at all (ninja's parser refuses it before any field is read).
    response={201: ExperimentDetail, 400: ErrorOut, **_AUTH_ERRORS, 404: ErrorOut, 422: ValidationErrorOut},
    summary="Add a dependency",
    description="Needs `experiments.add_experiment`. The experiment (pending or waiting) waits for the "
    "given upstream. A cycle, or an experiment past waiting, is refused at body.depends_on (422).",
)
@requires_permission("experiments.add_experiment")
def dependency_add_view(request: HttpRequest, payload: DependencyIn, experiment_id: int = _ID) -> Status[Any]:
    """Make the experiment wait for one more upstream."""
    user = _require_perm(request, "experiments.add_experiment", "edit dependencies")
    # Another project's experiment answers as a missing one.
    experiment = visible_experiments(user).filter(pk=experiment_id).first()
    if experiment is None:
        raise Http404(f"No experiment #{experiment_id}")
    try:
        with transaction.atomic():
            _dependencies_add(experiment, [payload.model_dump()], user)
    except DjangoValidationError as exc:
        raise field_errors(exc.message_dict) from None
    return Status(201, _detail(experiment.pk, user))


@router.delete(
    "/{experiment_id}/dependencies/{edge_id}",
    response={200: ExperimentDetail, **_AUTH_ERRORS, 404: ErrorOut, 422: ValidationErrorOut},
    summary="Remove a dependency",
    description="Needs `experiments.add_experiment`. A waiting experiment whose remaining "
    "dependencies are all met queues by itself.",
)
@requires_permission("experiments.add_experiment")
def dependency_remove_view(
    request: HttpRequest, experiment_id: int = _ID, edge_id: int = Path(..., ge=1, le=MAX_ID)
) -> Status[Any]:
    """Stop the experiment waiting for one upstream."""
    user = _require_perm(request, "experiments.add_experiment", "edit dependencies")
    # Another project's experiment answers as a missing one.
    experiment = visible_experiments(user).filter(pk=experiment_id).first()
    if experiment is None or not experiment.upstream_edges.filter(pk=edge_id).exists():
        raise Http404(f"No dependency #{edge_id} of experiment #{experiment_id}")
    with transaction.atomic():
        dependency_remove(edge_id=edge_id)
    return Status(200, _detail(experiment.pk, user))


@router.post(
    "/{experiment_id}/pipeline/start",
    response={
        200: ExperimentDetail,
        **_AUTH_ERRORS,
        404: ErrorOut,
        409: TransitionRefusedOut,
        422: ValidationErrorOut,
    },
    summary="Start a pipeline",
    description="Starts the experiment and every pending experiment it depends on, upstreams first, each "
    "as the caller's own `queue` (its permission, its audit row). Those with unmet dependencies wait and "
    "queue by themselves once they are met. 409 when one of them cannot be started.",
)
@requires_permission(VIEW_PERMISSION, hidden=True)
def pipeline_start_view(request: HttpRequest, experiment_id: int = _ID) -> Status[Any]:
    """Start the pipeline that ends in this experiment."""
    user = request.auth  # type: ignore[attr-defined]
    if not visible_experiments(user).filter(pk=experiment_id).exists():
        raise Http404(f"No experiment #{experiment_id}")
    try:
        pipeline_start(experiment_id=experiment_id, actor=Actor.for_user(user))
    except TransitionRefused as exc:
        return Status(409, {"detail": exc.message, "state": str(exc.experiment.state)})
    return Status(200, _detail(experiment_id, user))


__all__ = ["field_errors", "router"]
