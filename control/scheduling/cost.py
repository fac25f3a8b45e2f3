"""Cost-aware scheduling: what today's runs cost, what a queued one would, and whether it may start.

Prices are GpuPrice records (USD per GPU-hour by GPU type, "cpu" for a CPU slot): the rules
without a project price every project, and a project's own rule for a GPU type wins for its
experiments (`price_tables`). Limits
come from enabled cost policies (daily budget, max concurrent runs). The scheduler asks
`admission_reason` before leasing, so the queue page can say why an experiment waits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.db.models import Avg, F, Q
from django.utils import timezone

from control.policies.models import GpuPrice, Policy, PolicyKind
from experiments.choices import RunStatus
from experiments.models import Run


class CostSubject(Protocol):
    """What a cost estimate reads of an experiment (a model instance or the scheduler's light row)."""

    @property
    def recipe(self) -> str: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def gpus(self) -> int: ...
    @property
    def gpu_type(self) -> str: ...
    @property
    def timeout_seconds(self) -> int: ...


PriceTable = dict[str, Decimal]


def price_tables() -> dict[int | None, PriceTable]:
    """Return the prices by project id: None holds the defaults, a project its own over the defaults."""
    defaults: PriceTable = {}
    own: dict[int, PriceTable] = {}
    for gpu_type, usd, project_id in GpuPrice.objects.values_list("gpu_type", "usd_per_hour", "project_id"):
        if project_id is None:
            defaults[gpu_type] = usd
        else:
            own.setdefault(project_id, {})[gpu_type] = usd
    tables: dict[int | None, PriceTable] = {None: defaults}
    for project_id, prices in own.items():
        tables[project_id] = {**defaults, **prices}
    return tables


def prices_for(project_id: int | None, tables: dict[int | None, PriceTable] | None = None) -> PriceTable:
    """Return the price table of a project's experiments (the defaults where it set none of its own)."""
    tables = tables if tables is not None else price_tables()
    return tables.get(project_id, tables[None])


def price_per_hour(
    *, gpus: int, gpu_type: str, prices: PriceTable | None = None, project_id: int | None = None
) -> Decimal:
    """Return the USD per hour of a run holding these devices (unknown GPU types take the dearest).

    Without `prices`, the project's table is read (the installation's defaults for None).
    """
    prices = prices if prices is not None else prices_for(project_id)
    if gpus <= 0:
        return prices.get("cpu", Decimal("0"))
    gpu_prices = {k.lower(): v for k, v in prices.items() if k.lower() != "cpu"}
    unit = gpu_prices.get(gpu_type.lower()) if gpu_type else None
    if unit is None:
        unit = max(gpu_prices.values(), default=Decimal("0"))
    return unit * gpus


def _start_of_day(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def spend_today(*, now: datetime | None = None, project_id: int | None = None) -> Decimal:
    """Return what runs cost since midnight UTC (finished ones in full, live ones so far).

    Each run is priced at its own project's prices; with `project_id`, only that project's runs count.
    """
    now = now or timezone.now()
    day = _start_of_day(now)
    tables = price_tables()
    runs = Run.objects.filter(started_at__isnull=False).filter(
        Q(finished_at__isnull=True) | Q(finished_at__gte=day)
    )
    if project_id is not None:
        runs = runs.filter(experiment__project_id=project_id)
    total = Decimal("0")
    for run in runs.select_related("experiment"):
        assert run.started_at is not None
        start = max(run.started_at, day)
        end = run.finished_at or now
        hours = Decimal(str(max(0.0, (end - start).total_seconds()) / 3600))
        total += hours * price_per_hour(
            gpus=run.experiment.gpus,
            gpu_type=run.experiment.gpu_type,
            prices=prices_for(run.experiment.project_id, tables),
        )
    return total.quantize(Decimal("0.0001"))


def expected_hours(experiment: CostSubject) -> float:
    """Return how long a run of this experiment likely takes: the recipe's past mean, else its timeout."""
    past = (
        Run.objects.filter(
            experiment__recipe=experiment.recipe,
            status=RunStatus.SUCCEEDED,
            started_at__isnull=False,
            finished_at__isnull=False,
        )
        .annotate(seconds=F("finished_at") - F("started_at"))
        .aggregate(mean=Avg("seconds"))["mean"]
    )
    if isinstance(past, timedelta):
        return past.total_seconds() / 3600
    return experiment.timeout_seconds / 3600


def estimate_key(experiment: CostSubject) -> str:
    """Return the cache key of one run's estimate: what it depends on, its project's prices included."""
    return (
        f"estimate:{getattr(experiment, 'project_id', None)}:{experiment.recipe}:{experiment.gpus}:"
        f"{experiment.gpu_type}:{experiment.timeout_seconds}"
    )


def estimated_cost(experiment: CostSubject) -> Decimal:
    """Return the expected USD cost of one run of the experiment, at its project's prices."""
    hours = Decimal(str(expected_hours(experiment)))
    # Model instances and the scheduler's light rows both carry project_id; a bare subject has none.
    project_id = getattr(experiment, "project_id", None)
    unit = price_per_hour(gpus=experiment.gpus, gpu_type=experiment.gpu_type, project_id=project_id)
    return (hours * unit).quantize(Decimal("0.0001"))


def cost_policies(cache: dict[str, Any] | None = None) -> list[Policy]:
    """Return the enabled cost-aware scheduling policies (read once per scheduling pass given its cache)."""
    if cache is not None and "all_cost_policies" in cache:
        policies: list[Policy] = cache["all_cost_policies"]
        return policies
    policies = list(Policy.objects.filter(enabled=True, kind=PolicyKind.COST))
    if cache is not None:
        cache["all_cost_policies"] = policies
    return policies


def concurrency_cap(cache: dict[str, Any] | None = None) -> int | None:
    """Return the smallest max-concurrent-runs of the enabled cost policies (None: no cap)."""
    caps = [p.max_concurrent_runs for p in cost_policies(cache) if p.max_concurrent_runs is not None]
    return min(caps) if caps else None


def admission_reason(
    experiment: CostSubject, *, now: datetime | None = None, cache: dict[str, Any] | None = None
) -> str:
    """Return why the experiment may not start now under the cost policies, or "" when it may.

    `cache` (one scheduling pass) keeps the policies, today's spend and per-recipe
    estimates, so a pass over a long queue costs a few queries, not a few per experiment.
    """
    cache = {} if cache is None else cache
    if "cost_policies" not in cache:
        cache["cost_policies"] = [p for p in cost_policies(cache) if p.daily_budget_usd is not None]
    budgets = [
        (p.name, p.daily_budget_usd)
        for p in cache["cost_policies"]
        if p.applies_to(recipe=experiment.recipe, tags=list(experiment.tags or []))
    ]
    if not budgets:
        return ""
    if "spent" not in cache:
        cache["spent"] = spend_today(now=now)
    spent: Decimal = cache["spent"]
    key = estimate_key(experiment)
    if key not in cache:
        cache[key] = estimated_cost(experiment)
    estimate: Decimal = cache[key]
    name, budget = min(budgets, key=lambda b: b[1])
    if spent + estimate > budget:
        return (
            f"daily budget of {name}: ${spent:.2f} spent today + ${estimate:.2f} estimated "
            f"would pass ${budget:.2f}; waits until tomorrow (UTC) or a larger budget"
        )
    return ""
