"""Reads of the experiment domain for pages: the filtered list with counts, the detail with history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Now

from experiments.choices import PRIORITY_CLASS_RANK, State
from experiments.models import (
    Experiment,
    MetricPoint,
    ModelVersion,
    Run,
    RunArtifact,
    RunEvaluation,
    RunStage,
    TransitionLog,
)
from experiments.projects import visible_experiments
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
# Sorts on the list's run and metric columns: "progress", "duration", "last:<metric>", "best:<metric>".
RUN_SORTS = {"progress": "Progress", "duration": "Duration"}
# At most this many metric columns on the list (each is two subqueries).
MAX_LIST_METRICS = 4


def lower_is_better(metric: str) -> bool:
    """Return True for losses and error rates, whose best value is the smallest."""
    name = metric.lower()
    return "loss" in name or "error" in name or "perplexity" in name


def list_sorts(metrics: list[str]) -> list[tuple[str, str]]:
    """Return every sort the list offers with these metric columns, as (key, label)."""
    keys = [(key, label) for key, (label, _) in SORTS.items()]
    keys += list(RUN_SORTS.items())
    for m in metrics:
        keys += [(f"last:{m}", f"{m} (last)"), (f"best:{m}", f"{m} (best)")]
    return keys


def _with_run_and_metrics(queryset: QuerySet[Experiment], metrics: list[str]) -> QuerySet[Experiment]:
    """Annotate the latest attempt's progress and duration, and each metric's last and best value."""
    latest = Run.objects.filter(experiment=OuterRef("pk")).order_by("-attempt", "-id")
    queryset = queryset.annotate(
        run_progress=Subquery(latest.values("progress")[:1]),
        run_started_at=Subquery(latest.values("started_at")[:1]),
        run_finished_at=Subquery(latest.values("finished_at")[:1]),
    ).annotate(
        # A run under way counts until now.
        run_duration=ExpressionWrapper(
            Coalesce(F("run_finished_at"), Now()) - F("run_started_at"), output_field=DurationField()
        )
    )
    for i, m in enumerate(metrics):
        points = MetricPoint.objects.filter(experiment=OuterRef("pk"), name=m, value__isnull=False)
        best = Min("value") if lower_is_better(m) else Max("value")
        queryset = queryset.annotate(
            **{
                f"metric_{i}_last": Subquery(points.order_by("-step", "-wall_time").values("value")[:1]),
                f"metric_{i}_best": Subquery(
                    points.values("experiment").annotate(best=best).values("best")[:1]
                ),
            }
        )
    return queryset


def _column_order(sort: str, metrics: list[str]) -> tuple[Any, ...] | None:
    """Return the ordering of a run or metric sort key (empty values last), or None for another key."""
    if sort == "progress":
        return (F("run_progress").desc(nulls_last=True), "-created_at")
    if sort == "duration":
        return (F("run_duration").desc(nulls_last=True), "-created_at")
    kind, _, metric = sort.partition(":")
    if kind in ("last", "best") and metric in metrics:
        column = F(f"metric_{metrics.index(metric)}_{kind}")
        # Best first: the smallest loss, the highest accuracy.
        ordered = column.asc(nulls_last=True) if lower_is_better(metric) else column.desc(nulls_last=True)
        return (ordered, "-created_at")
    return None


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


def _of(user: Any, queryset: QuerySet[Experiment]) -> QuerySet[Experiment]:
    """Return the experiments of queryset in the user's projects (all of them without a user)."""
    return queryset if user is None else visible_experiments(user, queryset)


def _search(queryset: QuerySet[Experiment], q: str) -> QuerySet[Experiment]:
    q = q.strip()
    if not q:
        return queryset
    return queryset.filter(Q(name__icontains=q) | Q(description__icontains=q))


def experiment_list(
    *,
    state: str = "",
    q: str = "",
    sort: str = DEFAULT_SORT,
    metrics: list[str] | None = None,
    user: Any = None,
) -> QuerySet[Experiment]:
    """Return experiments filtered by state and name search, in the asked order (unknown values ignored).

    Each row carries its latest attempt's progress and duration, and each metric's last and best value.
    Given a user, only the experiments of their projects.
    """
    metrics = list(metrics or [])
    queryset = _search(_of(user, Experiment.objects.select_related("owner", "project")), q)
    queryset = _with_run_and_metrics(queryset, metrics)
    if state in State.values:
        queryset = queryset.filter(state=state)
    column_order = _column_order(sort, metrics)
    if column_order is not None:
        return queryset.order_by(*column_order)
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


def experiment_state_counts(*, q: str = "", user: Any = None) -> list[StateCount]:
    """Return the number of experiments in every state (zeros included), under the same search."""
    rows = _search(_of(user, Experiment.objects.all()), q).values("state").annotate(n=Count("id")).order_by()
    counts = {row["state"]: row["n"] for row in rows}
    return [
        StateCount(state=value, label=label, count=counts.get(value, 0)) for value, label in State.choices
    ]


def experiment_detail(*, experiment_id: int, user: Any = None) -> Experiment:
    """Return one experiment with its owner and parent loaded (raises Experiment.DoesNotExist).

    Given a user, one outside their projects is missing too.
    """
    return _of(user, Experiment.objects.select_related("owner", "parent", "project")).get(pk=experiment_id)


def experiment_history(*, experiment: Experiment) -> QuerySet[TransitionLog]:
    """Return the experiment's audited transitions, oldest first."""
    return experiment.transitions.select_related("user").order_by("created_at", "id")


def experiment_children(*, experiment: Experiment) -> QuerySet[Experiment]:
    """Return the experiments retrained from this one, oldest first."""
    return experiment.children.order_by("created_at", "id")


def experiment_model_versions(*, experiment: Experiment) -> QuerySet[ModelVersion]:
    """Return the model versions registered from this experiment, newest first."""
    return experiment.model_versions.order_by("-version")


def experiment_model_name(*, experiment: Experiment) -> str:
    """Return the model this experiment's checkpoints serve as: its newest version's, else its recipe's."""
    newest = experiment_model_versions(experiment=experiment).values_list("model_name", flat=True).first()
    return newest or experiment.recipe


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


@dataclass(frozen=True)
class StageRow:
    """One line of the stage checklist: a declared (or recorded) stage, done or not, and how long it took."""

    name: str
    done: bool
    seconds: float | None
    attempt: int | None


def experiment_stage_checklist(*, experiment: Experiment) -> list[StageRow]:
    """Return the recipe's stages in order, each with the attempt that completed it and its duration.

    Stages a run recorded without declaring them follow the declared ones; a stage completed by
    several attempts shows the newest.
    """
    spec = RECIPES.get(experiment.recipe)
    declared = list(spec.declared_stages()) if spec is not None else ["train"]
    recorded: dict[str, tuple[float, int]] = {}
    for name, seconds, attempt in (
        RunStage.objects.filter(run__experiment=experiment)
        .order_by("run__attempt", "completed_at")
        .values_list("name", "seconds", "run__attempt")
    ):
        recorded[name] = (seconds, attempt)
    names = declared + [n for n in recorded if n not in declared]
    return [
        StageRow(
            name=name,
            done=name in recorded,
            seconds=recorded[name][0] if name in recorded else None,
            attempt=recorded[name][1] if name in recorded else None,
        )
        for name in names
    ]


def experiment_artifacts(*, experiment: Experiment) -> QuerySet[RunArtifact]:
    """Return the artifacts of every attempt whose files still exist, by attempt then name."""
    return (
        RunArtifact.objects.filter(run__experiment=experiment, deleted_at__isnull=True)
        .select_related("run")
        .order_by("run__attempt", "name")
    )


def experiment_evaluation_rows(
    *, experiment: Experiment
) -> tuple[RunEvaluation | None, list[tuple[str, Any]]]:
    """Return the newest attempt's evaluation job and its metrics as (name, value) rows, declared ones first."""
    evaluation = (
        RunEvaluation.objects.filter(experiment=experiment)
        .select_related("run")
        .order_by("-run__attempt")
        .first()
    )
    if evaluation is None:
        return None, []
    spec = RECIPES.get(experiment.recipe)
    order = {name: i for i, name in enumerate(spec.eval_metrics if spec is not None else ())}
    metrics = evaluation.metrics or {}
    names = sorted(metrics, key=lambda n: (order.get(n, len(order)), n))
    return evaluation, [(name, metrics[name]) for name in names]
