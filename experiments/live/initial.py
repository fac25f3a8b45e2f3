"""The newest points of each metric, rendered into the experiment page so its charts draw before any request.

The page still fetches the (downsampled) full history at once; this tail only lets the
first points show as soon as plotly.js has loaded, without waiting for that round trip.
Each read walks the (experiment, name, step) index backwards: its cost does not grow
with the length of the run.
"""

from __future__ import annotations

from typing import Any

from experiments.live.series import metric_names
from experiments.models import MetricPoint

# Per metric: enough for a readable curve, small enough for the page (~20 bytes a point).
TAIL_POINTS = 200


def metric_tails(*, experiment_id: int, points: int = TAIL_POINTS) -> dict[str, Any]:
    """Return {"series": {name: {"steps": [...], "values": [...]}}, "last_step"} of the newest points."""
    series: dict[str, dict[str, list[Any]]] = {}
    last_step: int | None = None
    for name in metric_names(experiment_id=experiment_id):
        rows = (
            MetricPoint.objects.filter(experiment_id=experiment_id, name=name)
            .order_by("-step", "-run_id")
            .values_list("step", "value")[: points * 2]
        )
        # A resumed attempt logs some steps again: the newest attempt's point wins.
        by_step: dict[int, float | None] = {}
        for step, value in rows:
            by_step.setdefault(step, value)
        steps = sorted(by_step)[-points:]
        series[name] = {"steps": steps, "values": [by_step[s] for s in steps]}
        if steps:
            last_step = steps[-1] if last_step is None else max(last_step, steps[-1])
    return {"series": series, "last_step": last_step}
