"""Per-project limits at admission: live runs, GPUs held, GPU-hours per day and dollars per day.

Each Project may cap its own work (experiments/models/project.py): the scheduler asks
`admission_reason` next to the global checks and, for what it places in the same pass,
`admission_record`, so that one pass never admits past a project's limit. The reason names the
project and its figures ("project vision: 4 of 4 GPUs in use"), as the queue page shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from django.db.models import Q
from django.utils import timezone

import control.scheduling.cost as cost
from experiments.choices import LIVE_RUN_STATUSES, Executor, State
from experiments.models import Experiment, Project, Run


class QuotaSubject(cost.CostSubject, Protocol):
    """What a quota check reads of a queued experiment (a model instance or the scheduler's light row)."""

    @property
    def pk(self) -> Any: ...


@dataclass
class ProjectUsage:
    """What a project's runs hold now and used today (UTC)."""

    runs: int = 0
    gpus: int = 0
    gpu_hours: Decimal = Decimal("0")
    spent_usd: Decimal = Decimal("0")


def _limited_projects(cache: dict[str, Any]) -> dict[int, Project]:
    """Return the projects that set any limit, by id (once per pass)."""
    if "quota_projects" not in cache:
        limited = Project.objects.filter(
            Q(max_concurrent_runs__isnull=False)
            | Q(max_gpus__isnull=False)
            | Q(gpu_hours_per_day__isnull=False)
            | Q(daily_budget_usd__isnull=False)
        )
        cache["quota_projects"] = {p.pk: p for p in limited}
    projects: dict[int, Project] = cache["quota_projects"]
    return projects


def _project_of(experiment: QuotaSubject, cache: dict[str, Any]) -> int | None:
    """Return the experiment's project id (the queue's are read in one query per pass)."""
    if isinstance(experiment, Experiment):
        return experiment.project_id
    if "quota_project_of" not in cache:
        cache["quota_project_of"] = dict(
            Experiment.objects.filter(state=State.QUEUED).values_list("pk", "project_id")
        )
    found: dict[int, int] = cache["quota_project_of"]
    if experiment.pk not in found:
        found[experiment.pk] = Experiment.objects.filter(pk=experiment.pk).values_list(
            "project_id", flat=True
        )[0]
    return found[experiment.pk]


def project_usage(*, project_ids: list[int], now: datetime | None = None) -> dict[int, ProjectUsage]:
    """Return each project's live runs, GPUs held, and GPU-hours and dollars used since midnight UTC."""
    now = now or timezone.now()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    usage = {pid: ProjectUsage() for pid in project_ids}
    # Each project's dollars at its own prices (its rules over the installation's defaults).
    tables = cost.price_tables()
    runs = (
        Run.objects.filter(experiment__project_id__in=project_ids, started_at__isnull=False)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=day))
        .values_list(
            "status",
            "started_at",
            "finished_at",
            "experiment__project_id",
            "experiment__gpus",
            "experiment__gpu_type",
            "experiment__executor",
        )
    )
    for status, started_at, finished_at, project_id, gpus, gpu_type, executor in runs:
        used = usage[project_id]
        # External runs train on their client's hardware: they hold nothing of ours.
        if executor == Executor.EXTERNAL:
            continue
        if status in LIVE_RUN_STATUSES and finished_at is None:
            used.runs += 1
            used.gpus += gpus
        assert started_at is not None  # filtered above
        hours = Decimal(str(max(0.0, ((finished_at or now) - max(started_at, day)).total_seconds()) / 3600))
        used.gpu_hours += hours * gpus
        prices = cost.prices_for(project_id, tables)
        used.spent_usd += hours * cost.price_per_hour(gpus=gpus, gpu_type=gpu_type, prices=prices)
    return usage


def _usage(cache: dict[str, Any], now: datetime) -> dict[int, ProjectUsage]:
    if "quota_usage" not in cache:
        cache["quota_usage"] = project_usage(project_ids=list(_limited_projects(cache)), now=now)
    usage: dict[int, ProjectUsage] = cache["quota_usage"]
    return usage


def _estimates(experiment: QuotaSubject, cache: dict[str, Any]) -> tuple[Decimal, Decimal]:
    """Return the (GPU-hours, USD) one run of the experiment is expected to use."""
    key = f"quota_{cost.estimate_key(experiment)}"
    if key not in cache:
        hours = Decimal(str(cost.expected_hours(experiment)))
        cache[key] = (hours * experiment.gpus, cost.estimated_cost(experiment))
    estimates: tuple[Decimal, Decimal] = cache[key]
    return estimates


def admission_reason(experiment: QuotaSubject, *, now: datetime | None = None, cache: dict[str, Any]) -> str:
    """Return why the experiment's project may not start it now, or "" when it may."""
    projects = _limited_projects(cache)
    if not projects:
        return ""
    project = projects.get(_project_of(experiment, cache) or 0)
    if project is None:
        return ""
    used = _usage(cache, now or timezone.now())[project.pk]
    name = f"project {project.slug}"
    if project.max_concurrent_runs is not None and used.runs >= project.max_concurrent_runs:
        return f"{name}: {used.runs} of {project.max_concurrent_runs} concurrent runs"
    if (
        project.max_gpus is not None
        and experiment.gpus > 0
        and used.gpus + experiment.gpus > project.max_gpus
    ):
        return f"{name}: {used.gpus} of {project.max_gpus} GPUs in use (this run wants {experiment.gpus})"
    if project.gpu_hours_per_day is None and project.daily_budget_usd is None:
        return ""
    gpu_hours, usd = _estimates(experiment, cache)
    if (
        project.gpu_hours_per_day is not None
        and experiment.gpus > 0
        and used.gpu_hours + gpu_hours > project.gpu_hours_per_day
    ):
        return (
            f"{name}: {used.gpu_hours:.1f} of {project.gpu_hours_per_day:.1f} GPU-hours used today "
            f"+ {gpu_hours:.1f} expected; waits until tomorrow (UTC) or a larger quota"
        )
    if project.daily_budget_usd is not None and used.spent_usd + usd > project.daily_budget_usd:
        return (
            f"{name}: ${used.spent_usd:.2f} spent today + ${usd:.2f} estimated would pass its daily "
            f"budget of ${project.daily_budget_usd:.2f}"
        )
    return ""


def admission_record(experiment: QuotaSubject, *, cache: dict[str, Any]) -> None:
    """Count an experiment placed in this pass against its project's limits (the next check sees it)."""
    projects = _limited_projects(cache)
    project = projects.get(_project_of(experiment, cache) or 0) if projects else None
    if project is None or "quota_usage" not in cache:
        return
    used: ProjectUsage = cache["quota_usage"][project.pk]
    used.runs += 1
    used.gpus += experiment.gpus
    if project.gpu_hours_per_day is not None or project.daily_budget_usd is not None:
        gpu_hours, usd = _estimates(experiment, cache)
        used.gpu_hours += gpu_hours
        used.spent_usd += usd
