"""The Fleet and Compare pages of the live view (thin: selectors read, templates and JS draw)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from experiments.live.fleet import (
    COMPARE_LIMIT,
    compare_candidates,
    compare_metric_names,
    config_diff,
    fleet_rows,
    parameter_coordinates,
)
from experiments.models import Run
from experiments.permissions import requires_permission
from experiments.projects import visible_experiments
from experiments.runs.logs import TAIL_LINES, run_log_chunks, run_log_path, run_log_tail

VIEW_PERMISSION = "experiments.view_experiment"
# Charts on one Compare page (each follows every chosen experiment).
MAX_COMPARE_METRICS = 6


@requires_permission(VIEW_PERMISSION)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def fleet(request: HttpRequest) -> HttpResponse:
    """Show every active experiment with its state, progress and a live loss sparkline."""
    return render(request, "live/fleet.html", {"rows": fleet_rows(user=request.user)})


@requires_permission(VIEW_PERMISSION)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def fleet_rows_fragment(request: HttpRequest) -> HttpResponse:
    """Return only the fleet table's rows, for the page to refresh when experiments come and go."""
    return render(request, "live/_fleet_rows.html", {"rows": fleet_rows(user=request.user)})


def _parse_ids(raw: str) -> tuple[list[int], str]:
    """Return (ids, error) from "1,2,3"; the error is empty when the ids are fine."""
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            return [], f"ids must be experiment numbers separated by commas, e.g. 1,2 (got {part[:20]!r})"
        if int(part) not in ids:
            ids.append(int(part))
    if len(ids) > COMPARE_LIMIT:
        return [], f"compare at most {COMPARE_LIMIT} experiments at once (got {len(ids)})"
    return ids, ""


@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def compare(request: HttpRequest) -> HttpResponse:
    """Overlay one metric of several experiments: /compare/?ids=1,2&metric=loss."""
    errors: dict[str, str] = {}
    # The form's multi-select sends ids=1&ids=2; a shared link sends ids=1,2. Both work.
    ids, ids_error = _parse_ids(",".join(request.GET.getlist("ids")))
    if ids_error:
        errors["ids"] = ids_error
    # Several metrics, one chart each: metric=loss,accuracy or metric=loss&metric=accuracy.
    metrics = [m.strip() for text in request.GET.getlist("metric") for m in text.split(",") if m.strip()]
    metrics = list(dict.fromkeys(metrics)) or ["loss"]
    if any(len(m) > 64 for m in metrics):
        errors["metric"] = "metric names are at most 64 characters"
        metrics = ["loss"]
    elif len(metrics) > MAX_COMPARE_METRICS:
        errors["metric"] = f"at most {MAX_COMPARE_METRICS} metrics at once"
        metrics = metrics[:MAX_COMPARE_METRICS]
    metric = metrics[0]
    found = {e.pk: e for e in visible_experiments(request.user).filter(pk__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        errors["ids"] = "no experiment " + ", ".join(f"#{i}" for i in missing)
    chosen = [found[i] for i in ids if i in found]
    logged = compare_metric_names(experiment_ids=[e.pk for e in chosen]) if chosen else []
    context: dict[str, Any] = {
        "metrics": metrics,
        "metrics_text": ", ".join(metrics),
        # A metric none of them logged gets a sentence, not empty axes.
        "unlogged": [m for m in metrics if chosen and m not in logged],
        "config_diff": config_diff(chosen),
        # Read by compare.js: the parameters that differ against the first metric, as parallel axes.
        "coordinates": parameter_coordinates(chosen, metric=metric) if not errors else None,
        "chosen": chosen,
        "chosen_ids": {e.pk for e in chosen},
        "candidates": compare_candidates(user=request.user),
        "metric": metric,
        "metric_names": logged,
        "errors": errors,
        # Read by compare.js through json_script.
        "series_config": [{"id": e.pk, "name": e.name, "state": e.state} for e in chosen]
        if not errors
        else [],
    }
    return render(request, "live/compare.html", context, status=400 if errors else 200)


@requires_permission(VIEW_PERMISSION, hidden=True)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_GET
def run_log(request: HttpRequest, experiment_id: int, run_id: int) -> HttpResponse | StreamingHttpResponse:
    """Download one run's stdout/stderr (every rotated file, oldest first); ?tail=N: only the last N lines."""
    run = Run.objects.filter(
        pk=run_id, experiment_id=experiment_id, experiment__in=visible_experiments(request.user)
    ).first()
    if run is None:
        raise Http404("No such run.")
    path = run_log_path(experiment_id=experiment_id, run_id=run_id)
    raw_tail = request.GET.get("tail", "")
    if raw_tail:
        try:
            count = max(1, min(TAIL_LINES * 5, int(raw_tail)))
        except ValueError:
            return HttpResponse(
                "tail: must be a whole number of lines", status=400, content_type="text/plain"
            )
        lines = run_log_tail(path, lines=count)
        return HttpResponse("".join(line + "\n" for line in lines), content_type="text/plain; charset=utf-8")
    response = StreamingHttpResponse(run_log_chunks(path), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="experiment-{experiment_id}-run-{run.attempt}.log"'
    )
    return response
