"""Reads of the experiment domain for pages: the filtered list with counts, the detail with history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When

from experiments.choices import PRIORITY_CLASS_RANK, State
from experiments.models import Experiment, ModelVersion, Run, TransitionLog
from experiments.recipes import RECIPES

# Sort keys offered on the list page, with the ordering each stands for.
SORTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "newest": ("Newest first", ("-created_at", "-id")),
    "oldest": ("Oldest first", ("created_at", "id")),
    "name": ("Name", ("name", "id")),
    # Scheduling order: the most urgent class first, then the highest priority within it.
    "priority": ("Priority", ("class_rank", "-priority", "created_at")),
    "state": ("State", ("state_rank", "-created_at")),
}
DEFAULT_SORT = "newest"


@dataclass(frozen=True)
class StateCount:
    """How many experiments (matching the search) are in one state."""

    state: str
    label: str
    count: int

    @property
    def short_label(self) -> str:
        """Return the state's name for a chip: "Rolled back", not the long display label."""
        return self.state.replace("_", " ").capitalize()


def _search(queryset: QuerySet[Experiment], q: str) -> QuerySet[Experiment]:
    q = q.strip()
    if not q:
        return queryset
    return queryset.filter(Q(name__icontains=q) | Q(description__icontains=q))


def experiment_list(*, state: str = "", q: str = "", sort: str = DEFAULT_SORT) -> QuerySet[Experiment]:
    """Return experiments filtered by state and name search, in the asked order (unknown values ignored)."""
    queryset = _search(Experiment.objects.select_related("owner"), q)
    if state in State.values:
        queryset = queryset.filter(state=state)
    ordering = SORTS.get(sort, SORTS[DEFAULT_SORT])[1]
    if "class_rank" in ordering:
        queryset = queryset.annotate(
            class_rank=Case(
                *(When(priority_class=cls, then=Value(rank)) for cls, rank in PRIORITY_CLASS_RANK.items()),
                default=Value(len(PRIORITY_CLASS_RANK)),
                output_field=IntegerField(),
            )
        )
    if "state_rank" in ordering:
        # Lifecycle order rather than the alphabet: pending, queued, running, ...
        queryset = queryset.annotate(
            state_rank=Case(
                *(When(state=value, then=Value(rank)) for rank, value in enumerate(State.values)),
                default=Value(len(State.values)),
                output_field=IntegerField(),
            )
        )
    return queryset.order_by(*ordering)


def experiment_state_counts(*, q: str = "") -> list[StateCount]:
    """Return the number of experiments in every state (zeros included), under the same search."""
    rows = _search(Experiment.objects.all(), q).values("state").annotate(n=Count("id")).order_by()
    counts = {row["state"]: row["n"] for row in rows}
    return [
        StateCount(state=value, label=label, count=counts.get(value, 0)) for value, label in State.choices
    ]


def experiment_detail(*, experiment_id: int) -> Experiment:
    """Return one experiment with its owner and parent loaded (raises Experiment.DoesNotExist)."""
    return Experiment.objects.select_related("owner", "parent").get(pk=experiment_id)


def experiment_history(*, experiment: Experiment) -> QuerySet[TransitionLog]:
    """Return the experiment's audited transitions, oldest first."""
    return experiment.transitions.select_related("user").order_by("created_at", "id")


def experiment_children(*, experiment: Experiment) -> QuerySet[Experiment]:
    """Return the experiments retrained from this one, oldest first."""
    return experiment.children.order_by("created_at", "id")


def experiment_model_versions(*, experiment: Experiment) -> QuerySet[ModelVersion]:
    """Return the model versions registered from this experiment, newest first."""
    return experiment.model_versions.order_by("-version")


def experiment_runs(*, experiment: Experiment) -> QuerySet[Run]:
    """Return the experiment's training attempts, first attempt first."""
    return experiment.runs.order_by("attempt")


def experiment_config_rows(*, experiment: Experiment) -> list[dict[str, Any]]:
    """Return the config as rows (name, value, default, help), declared parameters first."""
    spec = RECIPES.get(experiment.recipe)
    config = experiment.config or {}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    if spec is not None:
        for param in spec.params:
            value = config.get(param.name, param.default)
            rows.append(
                {
                    "name": param.name,
                    "value": value,
                    "default": param.default,
                    "changed": value != param.default,
                    "help": param.help,
                }
            )
            seen.add(param.name)
    for key, value in config.items():
        if key not in seen:
            rows.append({"name": key, "value": value, "default": None, "changed": False, "help": ""})
    return rows
