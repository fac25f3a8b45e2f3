"""Reads of the policy layer for pages: triggers with their policy, experiment and executions."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from control.policies.models import TriggerEvent, TriggerStatus
from experiments.projects import VIEW, project_ids_where

# Statuses a person can still act on, and what they may do there.
DECISIONS_BY_STATUS: dict[str, tuple[str, ...]] = {
    TriggerStatus.PENDING_APPROVAL: ("approve", "reject"),
    TriggerStatus.DRY_RUN: ("execute",),
    TriggerStatus.FAILED: ("execute",),
}


def triggers_visible(user: Any) -> QuerySet[TriggerEvent]:
    """Return the triggers the user may see: those of experiments in their projects, and those of none."""
    ids = project_ids_where(user, VIEW)
    qs = TriggerEvent.objects.all()
    return qs if ids is None else qs.filter(Q(experiment__isnull=True) | Q(experiment__project_id__in=ids))


def trigger_list(
    *,
    experiment_id: int | None = None,
    status: str = "",
    policy: str = "",
    limit: int = 100,
    user: Any = None,
) -> QuerySet[TriggerEvent]:
    """Return the newest triggers (of the user's projects), optionally of one experiment, status or policy."""
    qs = (
        (TriggerEvent.objects.all() if user is None else triggers_visible(user))
        .select_related("policy", "experiment", "decided_by")
        .prefetch_related("executions")
    )
    if experiment_id is not None:
        qs = qs.filter(experiment_id=experiment_id)
    if status:
        qs = qs.filter(status=status)
    if policy:
        qs = qs.filter(policy__name=policy)
    return qs.order_by("-created_at", "-id")[:limit]
