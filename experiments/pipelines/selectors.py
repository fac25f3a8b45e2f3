"""Reads of pipelines: an experiment's edges both ways, for its page and the API."""

from __future__ import annotations

from typing import Any

from experiments.models import Experiment


def pipeline_summary(experiment: Experiment) -> dict[str, Any]:
    """Return the experiment's edges both ways, with the states and conditions (the page and the API)."""
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
        for e in experiment.upstream_edges.select_related("upstream")
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
        for e in experiment.downstream_edges.select_related("downstream", "upstream")
    ]
    return {"upstream": upstream, "downstream": downstream}
