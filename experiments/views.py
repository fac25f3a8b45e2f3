"""Experiment pages: list, create, detail, and the action buttons (thin; services do the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csp.decorators import csp_update
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from experiments import selectors
from experiments.actors import Actor
from experiments.choices import State
from experiments.forms import ExperimentCreateForm, recipe_defaults
from experiments.live.initial import metric_tails
from experiments.models import (
    CONFIRM_EVENTS,
    EVENT_LABELS,
    EVENT_PERMISSIONS,
    After,
    Experiment,
    OnUpstreamFailure,
    RunArtifact,
    artifact_name_error,
)
from experiments.permissions import requires_permission
from experiments.pipelines.graph import render_pipeline_graph
from experiments.pipelines.selectors import pipeline_summary
from experiments.pipelines.services import dependencies_set, pipeline_start, pipeline_startable
from experiments.recipes import RECIPES
from experiments.runs.outputs import artifact_dir
from experiments.services import (
    OverrideRequired,
    TransitionRefused,
    experiment_create,
    experiment_retrain,
    experiment_serving_refusal,
    experiment_transition,
)

PAGE_SIZE = 25
# Buttons are for what people decide. Dispatch, complete, fail and requeue belong to the
# scheduler and workers (the "operate" permission); a button for them would let a
# person declare a run finished that never trained.
PERSON_EVENTS = frozenset(
    e for e, perm in EVENT_PERMISSIONS.items() if perm != "experiments.operate_experiment"
)


def _get_experiment(experiment_id: int, user: Any) -> Experiment:
    try:
        return selectors.experiment_detail(experiment_id=experiment_id, user=user)
    except Experiment.DoesNotExist:
        raise Http404("No such experiment.") from None


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# The step forward a person most likely wants, in this order of preference; it gets the
# prominent button. Buttons that stop or undo work (confirmation dialogs) come last. Not
# deploy: while promoting, the step forward is the canary's own, and Deploy skips its stages.
PRIMARY_EVENTS = ("queue", "retry", "promote", "retrain")


def _actions_context(request: HttpRequest, experiment: Experiment) -> dict[str, Any]:
    """Return what the actions block needs: the events this user may fire now, with labels."""
    events = [e for e in experiment.available_events(request.user) if e in PERSON_EVENTS]
    # Promoting what a policy held overrides it: the button shows the verdict and asks for a reason.
    hold = experiment.policy_hold() if "promote" in events else None
    confirm = CONFIRM_EVENTS | ({"promote"} if hold is not None else set())
    primary = next((e for e in PRIMARY_EVENTS if e in events), None)
    ordered = sorted(events, key=lambda e: (e != primary, e in confirm))  # stable sort
    # A recipe that cannot serve keeps its Promote button, disabled, saying why.
    refusals = {"promote": experiment_serving_refusal(experiment)} if "promote" in events else {}
    return {
        "experiment": experiment,
        "policy_hold": hold,
        # One press starts the pending experiments it depends on too (upstreams first).
        "pipeline_startable": "queue" in events and pipeline_startable(experiment),
        "model_name": selectors.experiment_model_name(experiment=experiment),
        "actions": [
            {
                "event": e,
                "label": EVENT_LABELS[e],
                "confirm": e in confirm,
                "primary": e == primary,
                "refusal": refusals.get(e, ""),
            }
            for e in ordered
        ],
    }


@requires_permission("experiments.view_experiment")
@login_required
@permission_required("experiments.view_experiment", raise_exception=True)
@require_GET
def experiment_list(request: HttpRequest) -> HttpResponse:
    """List experiments with state chips (counts), name search, sort and pages."""
    state = request.GET.get("state", "")
    q = request.GET.get("q", "").strip()
    # Metric columns: ?metrics=loss,accuracy (names as the runs log them).
    metrics_text = request.GET.get("metrics", "loss,accuracy")
    metrics = [m.strip()[:64] for m in metrics_text.split(",") if m.strip()][: selectors.MAX_LIST_METRICS]
    sorts = selectors.list_sorts(metrics)
    sort = request.GET.get("sort", selectors.DEFAULT_SORT)
    if sort not in dict(sorts):
        sort = selectors.DEFAULT_SORT
    queryset = selectors.experiment_list(state=state, q=q, sort=sort, metrics=metrics, user=request.user)
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "e": e,
            "metrics": [
                (getattr(e, f"metric_{i}_last"), getattr(e, f"metric_{i}_best")) for i in range(len(metrics))
            ],
        }
        for e in page.object_list
    ]
    counts = selectors.experiment_state_counts(q=q, user=request.user)
    context = {
        "page": page,
        "experiments": page.object_list,
        "rows": rows,
        "metrics": metrics,
        "metrics_text": ",".join(metrics),
        "state": state if state in State.values else "",
        "q": q,
        "sort": sort,
        "sorts": sorts,
        "state_counts": counts,
        "total": sum(c.count for c in counts),
        "can_create": request.user.has_perm("experiments.add_experiment"),
    }
    return render(request, "experiments/list.html", context)


@requires_permission("experiments.add_experiment")
@login_required
@permission_required("experiments.add_experiment", raise_exception=True)
def experiment_create_view(request: HttpRequest) -> HttpResponse:
    """Show the create form; on a valid POST create a pending experiment and open it."""
    if request.method == "POST":
        form = ExperimentCreateForm(request.POST, user=request.user)
        if form.is_valid():
            data = form.cleaned_data
            try:
                with transaction.atomic():
                    experiment = _create_with_dependencies(request, data)
            except ValidationError as exc:
                form.add_service_errors(exc)
            else:
                messages.success(request, f"Created “{experiment.name}”. Press Start to queue it.")
                return redirect(experiment)
    else:
        form = ExperimentCreateForm(user=request.user)
    context = {
        "form": form,
        "recipes": [
            {"name": name, "summary": spec.summary, "params": [p.describe() for p in spec.params]}
            for name, spec in RECIPES.items()
        ],
        "recipe_defaults": {name: recipe_defaults(name) for name in RECIPES},
        "recipe_resources": {name: spec.resources.describe() for name, spec in RECIPES.items()},
    }
    status = 400 if form.is_bound else 200
    return render(request, "experiments/create.html", context, status=status)


def _create_with_dependencies(request: HttpRequest, data: dict[str, Any]) -> Experiment:
    """Create the experiment and its dependency edges (call inside a transaction: all or none)."""
    experiment = experiment_create(
        name=data["name"],
        description=data["description"],
        recipe=data["recipe"],
        config=data["config"],
        owner=request.user,
        priority_class=data["priority_class"],
        priority=data["priority"],
        gpus=data["gpus"],
        gpu_type=data["gpu_type"],
        memory_gb=data["memory_gb"],
        cpu_cores=data["cpu_cores"],
        host_memory_gb=data["host_memory_gb"],
        max_attempts=data["max_attempts"],
        timeout_seconds=data["timeout_seconds"],
        tags=data["tags"],
        project=data["project"],
    )
    after = data["depends_after"] or After.SUCCEEDED
    on_failure = data["on_upstream_failure"] or OnUpstreamFailure.CANCEL
    dependencies_set(
        downstream=experiment,
        wanted=[(pk, after, on_failure) for pk in data["depends_on"]],
        user=request.user,
    )
    return experiment


def _detail_context(request: HttpRequest, experiment: Experiment) -> dict[str, Any]:
    history = list(selectors.experiment_history(experiment=experiment))
    evaluation, evaluation_rows = selectors.experiment_evaluation_rows(experiment=experiment)
    visited = (
        {State.PENDING.value} | {row.source_state for row in history} | {row.target_state for row in history}
    )
    pipeline = pipeline_summary(experiment, request.user)
    return {
        **_actions_context(request, experiment),
        "pipeline": pipeline,
        "pipeline_graph": render_pipeline_graph(
            experiment_id=experiment.pk, name=experiment.name, state=str(experiment.state), pipeline=pipeline
        )
        if pipeline["upstream"] or pipeline["downstream"]
        else "",
        "config_rows": selectors.experiment_config_rows(experiment=experiment),
        "children": selectors.experiment_children(experiment=experiment),
        "model_versions": selectors.experiment_model_versions(experiment=experiment),
        "history": history,
        "runs": selectors.experiment_runs(experiment=experiment).select_related("log"),
        "log_run": selectors.experiment_runs(experiment=experiment).select_related("log").last(),
        "visited_states": visited,
        "recipe_summary": RECIPES[experiment.recipe].summary if experiment.recipe in RECIPES else "",
        "stages": selectors.experiment_stage_checklist(experiment=experiment),
        "artifacts": selectors.experiment_artifacts(experiment=experiment),
        "evaluation": evaluation,
        "evaluation_rows": evaluation_rows,
        "recipe_has_evaluator": bool(RECIPES[experiment.recipe].evaluator)
        if experiment.recipe in RECIPES
        else False,
        # The charts' first points, drawn before the history request returns.
        "initial_series": metric_tails(experiment_id=experiment.pk),
    }


# plotly.js's WebGL traces (the live charts' scattergl) compile shaders with Function(): this
# page alone allows eval; every other page keeps scripts to files of this origin only.
# (django-csp types its decorators for views without URL arguments.)
@csp_update({"script-src": ["'unsafe-eval'"]})  # type: ignore[arg-type]
@requires_permission("experiments.view_experiment", hidden=True)
@login_required
@permission_required("experiments.view_experiment", raise_exception=True)
@require_GET
def experiment_detail(request: HttpRequest, experiment_id: int) -> HttpResponse:
    """Show one experiment: state, config, lineage, the buttons this user may press now, history."""
    experiment = _get_experiment(experiment_id, request.user)
    return render(request, "experiments/detail.html", _detail_context(request, experiment))


@requires_permission("experiments.view_experiment", hidden=True)
@login_required
@permission_required("experiments.view_experiment", raise_exception=True)
@require_GET
def experiment_actions_fragment(request: HttpRequest, experiment_id: int) -> HttpResponse:
    """Return only the actions block, so the live view can refresh buttons after a state change."""
    experiment = _get_experiment(experiment_id, request.user)
    return render(request, "experiments/_actions.html", _actions_context(request, experiment))


def _refused(request: HttpRequest, experiment_id: int, message: str, status: int) -> HttpResponse:
    """Answer a refused action: JSON for API-style clients, else the detail page with the message."""
    if _wants_json(request):
        return JsonResponse({"detail": message}, status=status)
    messages.error(request, message)
    experiment = _get_experiment(experiment_id, request.user)
    return render(request, "experiments/detail.html", _detail_context(request, experiment), status=status)


# Plus the event's own transition permission, which the service checks (403).
@requires_permission("experiments.view_experiment", hidden=True)
@login_required
@require_POST
def experiment_action(request: HttpRequest, experiment_id: int, event: str) -> HttpResponse:
    """Fire one event through the audited service; 409 when the state no longer allows it."""
    if event not in EVENT_PERMISSIONS:
        raise Http404("No such action.")
    # An experiment the user may not view answers like a missing one: 403 vs 404 would tell
    # which ids exist.
    if not request.user.has_perm("experiments.view_experiment"):
        raise Http404("No such experiment.")
    _get_experiment(experiment_id, request.user)
    actor = Actor.for_user(request.user)
    reason = request.POST.get("reason", "").strip()[:2000]
    override = request.POST.get("override") == "1"
    try:
        if event == "retrain":
            child = experiment_retrain(experiment_id=experiment_id, actor=actor, reason=reason)
            experiment, target = child, child
            message = f"Retraining as “{child.name}” (#{child.pk}); it is queued."
        else:
            experiment = experiment_transition(
                experiment_id=experiment_id, event=event, actor=actor, reason=reason, override=override
            )
            target = experiment
            message = (
                f"{EVENT_LABELS[event]}: “{experiment.name}” is now {experiment.get_state_display().lower()}."
            )
    except OverrideRequired as exc:
        if _wants_json(request):
            return JsonResponse(
                {
                    "detail": exc.message,
                    "override_required": True,
                    "held_by": {"policy": exc.policy, "verdict": exc.verdict},
                },
                status=409,
            )
        return _refused(request, experiment_id, exc.message, status=409)
    except TransitionRefused as exc:
        return _refused(request, experiment_id, exc.message, status=409)
    except PermissionDenied as exc:
        # The refusal page names no object: the message says what the person may not do.
        if _wants_json(request):
            return JsonResponse({"detail": str(exc) or "You may not do that."}, status=403)
        raise
    except ValidationError as exc:
        return _refused(request, experiment_id, "; ".join(exc.messages), status=400)
    if _wants_json(request):
        return JsonResponse(
            {
                "id": experiment.pk,
                "state": experiment.state,
                "event": event,
                "detail": message,
                "url": reverse("experiments:detail", args=[target.pk]),
            }
        )
    messages.success(request, message)
    return redirect(target)


@requires_permission("experiments.view_experiment", hidden=True)
@login_required
@permission_required("experiments.view_experiment", raise_exception=True)
@require_GET
def artifact_download(request: HttpRequest, experiment_id: int, run_id: int, name: str) -> FileResponse:
    """Download one artifact of a run; 404 for a bad name, another experiment's run, or a removed file."""
    _get_experiment(experiment_id, request.user)  # 404 outside the caller's projects
    if artifact_name_error(name):
        raise Http404("No such artifact.")
    artifact = RunArtifact.objects.filter(
        run_id=run_id, run__experiment_id=experiment_id, name=name, deleted_at__isnull=True
    ).first()
    if artifact is None:
        raise Http404("No such artifact.")
    path = Path(artifact.path).resolve()
    root = artifact_dir(experiment_id=experiment_id, run_id=run_id).resolve()
    # The stored path is ours, but a file outside the run's folder is never served.
    if path.parent != root or not path.is_file():
        raise Http404("No such artifact.")
    return FileResponse(path.open("rb"), as_attachment=True, filename=name)


@requires_permission("experiments.view_experiment", hidden=True)
@login_required
@require_POST
def experiment_pipeline_start(request: HttpRequest, experiment_id: int) -> HttpResponse:
    """Start the experiment and the pending experiments it depends on, each audited as the person's Start."""
    if not request.user.has_perm("experiments.view_experiment"):
        raise Http404("No such experiment.")
    experiment = _get_experiment(experiment_id, request.user)
    try:
        started = pipeline_start(experiment_id=experiment_id, actor=Actor.for_user(request.user))
    except TransitionRefused as exc:
        return _refused(request, experiment_id, exc.message, status=409)
    except PermissionDenied as exc:
        if _wants_json(request):
            return JsonResponse({"detail": str(exc) or "You may not do that."}, status=403)
        raise
    summary = ", ".join(f"“{e.name}” {e.get_state_display().lower()}" for e in started)
    message = f"Pipeline started: {summary}."
    if _wants_json(request):
        return JsonResponse({"id": experiment.pk, "started": [e.pk for e in started], "detail": message})
    messages.success(request, message)
    return redirect(experiment)
