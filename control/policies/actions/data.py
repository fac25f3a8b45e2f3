"""Actions on data: curate the served examples a model got wrong into a dataset version."""

from __future__ import annotations

from typing import Any

from control.policies.actions.base import ActionContext, ActionFailed, ActionKind, action_kind_register
from experiments.models import ModelVersion
from experiments.recipes.schema import Param
from experiments.registry.datasets import CurationError, dataset_curate


@action_kind_register
class CurateDataset(ActionKind):
    """Collect hard served examples into a new dataset version (a later retrain trains on it)."""

    name = "curate_dataset"
    label = "Curate a dataset of hard examples"
    help = (
        "Collect served examples the model got wrong (by feedback) or answered with low confidence "
        "into a new dataset version; a retrain after it in the same policy trains on it. "
        '{"strategy": "hard_examples", "count": 1000, "max_confidence": 0.6}'
    )
    params = (
        Param("strategy", str, "hard_examples", "How rows are chosen.", choices=("hard_examples",)),
        Param("count", int, 1000, "At most this many rows, newest first.", 1, 100_000),
        Param("max_confidence", float, 0.6, "Below this top-class probability a row is hard.", 0.0, 1.0),
    )

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Curate the hard examples of the model the trigger's experiment serves."""
        experiment = ctx.require_experiment(self.name)
        version = ModelVersion.objects.filter(experiment=experiment).order_by("-version").first()
        model_name = version.model_name if version else experiment.recipe
        try:
            dataset = dataset_curate(
                model_name=model_name,
                actor_label=ctx.actor.label,
                strategy=str(ctx.params.get("strategy") or "hard_examples"),
                count=int(ctx.params.get("count", 1000)),
                max_confidence=float(ctx.params.get("max_confidence", 0.6)),
                source_version=version,
            )
        except CurationError as exc:
            raise ActionFailed(exc.message) from None
        return {"dataset_version_id": dataset.pk, "rows": dataset.row_count, "version": dataset.version}
