"""Reads for the Fleet and Compare pages: active experiments with progress and a loss sparkline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Max, Min, Prefetch

from experiments.choices import State
from experiments.live.series import Series, metric_series
from experiments.models import Experiment, MetricPoint, Run
from experiments.projects import visible_experiments
from experiments.selectors import experiment_config_rows, lower_is_better

# The fleet shows what is moving or about to: waiting, training, being judged, rolling out.
FLEET_STATES = (State.QUEUED, State.RUNNING, State.EVALUATING, State.PROMOTING)
SPARKLINE_POINTS = 60
# The most experiments one Compare chart overlays: beyond that the lines cannot be told apart.
COMPARE_LIMIT = 10


@dataclass(frozen=True)
class FleetRow:
    """One active experiment on the Fleet page."""

    experiment: Experiment
    run: Run | None
    metric: str
    sparkline: Series

    @property
    def last_value(self) -> float | None:
        """Return the latest value of the sparkline's metric (None: nothing logged, or NaN)."""
        return self.sparkline.values[-1] if self.sparkline.values else None


def sparkline_metric(*, experiment_id: int) -> str:
    """Return the metric a sparkline shows: "loss" when logged, else the first *loss, else "loss"."""
    names = list(
        MetricPoint.objects.filter(experiment_id=experiment_id, name__endswith="loss")
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()[:20]
    )
    if "loss" in names or not names:
        return "loss"
    return names[0]


def _of(user: Any, queryset: Any) -> Any:
    """Return the experiments of queryset the user may see (all of them without a user)."""
    return queryset if user is None else visible_experiments(user, queryset)


def fleet_rows(*, limit: int = 200, user: Any = None) -> list[FleetRow]:
    """Return the active experiments (of the user's projects), most urgent state first, with run and sparkline."""
    latest_runs = Prefetch("runs", queryset=Run.objects.order_by("-attempt"), to_attr="runs_latest_first")
    experiments = list(
        _of(user, Experiment.objects.filter(state__in=FLEET_STATES))
        .select_related("owner")
        .prefetch_related(latest_runs)
        .order_by("-state_changed_at", "-id")[:limit]
    )
    rows = []
    for experiment in experiments:
        runs: list[Run] = getattr(experiment, "runs_latest_first", [])
        metric = sparkline_metric(experiment_id=experiment.pk)
        series = metric_series(
            experiment_id=experiment.pk, names=[metric], max_points=SPARKLINE_POINTS
        ).series[metric]
        rows.append(
            FleetRow(experiment=experiment, run=runs[0] if runs else None, metric=metric, sparkline=series)
        )
    # Running first, then evaluating, promoting, queued: what moves is on top.
    order = {State.RUNNING: 0, State.EVALUATING: 1, State.PROMOTING: 2, State.QUEUED: 3}
    rows.sort(key=lambda r: order.get(State(r.experiment.state), 9))
    return rows


def compare_candidates(*, limit: int = 50, user: Any = None) -> list[Experiment]:
    """Return recent experiments (of the user's projects) a person may pick for comparison."""
    return list(_of(user, Experiment.objects.all()).order_by("-created_at", "-id")[:limit])


def compare_metric_names(*, experiment_ids: Sequence[int]) -> list[str]:
    """Return the metric names logged by any of the experiments, sorted."""
    return list(
        MetricPoint.objects.filter(experiment_id__in=list(experiment_ids))
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()
    )


def config_diff(experiments: Sequence[Experiment]) -> list[dict[str, Any]]:
    """Return the parameters whose effective value (recipe defaults filled in) differs between the experiments.

    Each row: {"name", "values": [JSON text per experiment, "—" where it has none]}, recipe first.
    """
    if len(experiments) < 2:
        return []
    per_experiment = [
        {"recipe": e.recipe, **{row["name"]: row["value"] for row in experiment_config_rows(experiment=e)}}
        for e in experiments
    ]
    names: list[str] = []
    for config in per_experiment:
        names += [n for n in config if n not in names]
    rows = []
    for name in names:
        values = [json.dumps(c[name]) if name in c else "—" for c in per_experiment]
        if len(set(values)) > 1:
            rows.append({"name": name, "values": values})
    return rows


def parameter_coordinates(experiments: Sequence[Experiment], *, metric: str) -> dict[str, Any] | None:
    """Return the numeric parameters that differ, and each experiment's best value of the metric, as parallel axes.

    {"metric", "dimensions": [{"label", "values"}...], "names"}: the metric's axis last; None when
    fewer than two experiments, no numeric parameter differs, or none logged the metric.
    """
    if len(experiments) < 2:
        return None
    configs = [
        {row["name"]: row["value"] for row in experiment_config_rows(experiment=e)} for e in experiments
    ]
    dimensions: list[dict[str, Any]] = []
    for name in dict.fromkeys(n for c in configs for n in c):
        values = [c.get(name) for c in configs]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) > 1:
            dimensions.append({"label": name, "values": values})
    lower = lower_is_better(metric)
    best = {
        row["experiment_id"]: row["best"]
        for row in MetricPoint.objects.filter(
            experiment_id__in=[e.pk for e in experiments], name=metric, value__isnull=False
        )
        .values("experiment_id")
        .annotate(best=Min("value") if lower else Max("value"))
    }
    if not dimensions or not best:
        return None
    dimensions.append(
        {
            "label": f"{metric} ({'lowest' if lower else 'highest'})",
            "values": [best.get(e.pk) for e in experiments],
        }
    )
    return {"metric": metric, "dimensions": dimensions, "names": [f"#{e.pk} {e.name}" for e in experiments]}
