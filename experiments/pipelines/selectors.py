"""Reads of pipelines: an experiment's edges both ways, for its page and the API."""

from __future__ import annotations

from typing import Any

from experiments.models import Experiment
from experiments.projects import visible_experiments


def pipeline_summary(experiment: Experiment, user: Any = None) -> dict[str, Any]:
    """Return the experiment's edges both ways, with the states and conditions (the page and the API).

    With a user, only the neighbours they may see: the graph never names another project's experiment.
    """
    upstream_edges = experiment.upstream_edges.select_related("upstream")
    downstream_edges = experiment.downstream_edges.select_related("downstream", "upstream")
    if user is not None:
        upstream_edges = upstream_edges.filter(upstream__in=visible_experiments(user))
        downstream_edges = downstream_edges.filter(downstream__in=visible_experiments(user))
    upstream = [
        {
            "edge_id": e.pk,
            "experiment_id": e.upstream_id,
            "name": e.upstream.name,
            "state": str(e.upstream.state),
            "after": e.after,
            "on_upstream_failure": e.on_upstream_failure,
            "met": e.is_met(),
        }
        for e in upstream_edges
    ]
    downstream = [
        {
            "edge_id": e.pk,
            "experiment_id": e.downstream_id,
            "name": e.downstream.name,
            "state": str(e.downstream.state),
            "after": e.after,
            "on_upstream_failure": e.on_upstream_failure,
            "met": e.is_met(),
        }
        for e in downstream_edges
    ]
    return {"upstream": upstream, "downstream": downstream}
