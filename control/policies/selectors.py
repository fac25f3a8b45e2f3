"""Reads of the policy layer for pages: triggers with their policy, experiment and executions."""

from __future__ import annotations

from django.db.models import QuerySet

from control.policies.models import TriggerEvent, TriggerStatus

# Statuses a person can still act on, and what they may do there.
DECISIONS_BY_STATUS: dict[str, tuple[str, ...]] = {
    TriggerStatus.PENDING_APPROVAL: ("approve", "reject"),
    TriggerStatus.DRY_RUN: ("execute",),
    TriggerStatus.FAILED: ("execute",),
}


def trigger_list(
    *, experiment_id: int | None = None, status: str = "", policy: str = "", limit: int = 100
) -> QuerySet[TriggerEvent]:
    """Return the newest triggers, optionally of one experiment, status or policy name."""
    qs = TriggerEvent.objects.select_related("policy", "experiment", "decided_by").prefetch_related(
        "executions"
    )
    if experiment_id is not None:
        qs = qs.filter(experiment_id=experiment_id)
    if status:
        qs = qs.filter(status=status)
    if policy:
        qs = qs.filter(policy__name=policy)
    return qs.order_by("-created_at", "-id")[:limit]
