"""Pipelines: an experiment that waits for others (Dependency edges between experiments)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from experiments.choices import State

if TYPE_CHECKING:
    from experiments.models.experiment import Experiment


class After(models.TextChoices):
    """What the upstream must reach before its dependents may queue."""

    SUCCEEDED = "succeeded", "its training succeeded"
    DEPLOYED = "deployed", "it is deployed"
    FINISHED = "finished", "it finished (succeeded, failed or cancelled)"


class OnUpstreamFailure(models.TextChoices):
    """What an upstream that fails (or is cancelled) does to the dependents of this edge."""

    CANCEL = "cancel", "cancel the dependent"
    HOLD = "hold", "hold the dependent (it keeps waiting for a retry or a person)"


# Training finished well: the model exists (later states keep it).
TRAINED_STATES = frozenset(
    {State.EVALUATING, State.COMPLETED, State.PROMOTING, State.DEPLOYED, State.RETIRED, State.ROLLED_BACK}
)
ENDED_STATES = TRAINED_STATES | {State.FAILED, State.CANCELLED}

# Per condition: the upstream states that meet it, and those that can no longer meet it
# without a person (or a retry policy) acting on the upstream.
MET_STATES: dict[str, frozenset[str]] = {
    After.SUCCEEDED: TRAINED_STATES,
    After.DEPLOYED: frozenset({State.DEPLOYED, State.RETIRED}),
    After.FINISHED: ENDED_STATES,
}
BROKEN_STATES: dict[str, frozenset[str]] = {
    After.SUCCEEDED: frozenset({State.FAILED, State.CANCELLED}),
    After.DEPLOYED: frozenset({State.FAILED, State.CANCELLED, State.ROLLED_BACK}),
    After.FINISHED: frozenset(),
}


class Dependency(models.Model):
    """An edge of a pipeline: `downstream` queues only once `upstream` got where `after` says."""

    upstream = models.ForeignKey(
        "experiments.Experiment", on_delete=models.CASCADE, related_name="downstream_edges"
    )
    downstream = models.ForeignKey(
        "experiments.Experiment", on_delete=models.CASCADE, related_name="upstream_edges"
    )
    after = models.CharField(
        max_length=16,
        choices=After.choices,
        default=After.SUCCEEDED,
        help_text="What the upstream must reach before the downstream queues.",
    )
    on_upstream_failure = models.CharField(
        max_length=16,
        choices=OnUpstreamFailure.choices,
        default=OnUpstreamFailure.CANCEL,
        help_text="When the upstream fails or is cancelled: cancel the downstream, or hold it waiting.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["downstream_id", "upstream_id"]
        constraints = [
            models.UniqueConstraint(fields=["upstream", "downstream"], name="dependency_unique_edge"),
            models.CheckConstraint(
                condition=~models.Q(upstream=models.F("downstream")), name="dependency_not_self"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.downstream_id} after #{self.upstream_id} {self.after}"

    def clean(self) -> None:
        """Refuse an edge to itself, across projects, or one that closes a cycle, keyed by the upstream field."""
        if not self.upstream_id or not self.downstream_id:
            return
        if self.upstream.project_id != self.downstream.project_id:
            # A pipeline hands models downstream: another project's experiment answers as missing.
            raise ValidationError({"upstream": f"no experiment #{self.upstream_id}"})
        if self.downstream.state not in (State.PENDING, State.WAITING):
            raise ValidationError(
                {
                    "downstream": f"{self.downstream.name!r} is {self.downstream.state}: only a pending or "
                    "waiting experiment can get a new dependency."
                }
            )
        if self.upstream_id == self.downstream_id:
            raise ValidationError({"upstream": "An experiment cannot depend on itself."})
        path = dependency_path(start=self.upstream_id, goal=self.downstream_id, ignore=self.pk)
        if path:
            chain = " → ".join(f"#{pk}" for pk in [self.downstream_id, *path])
            raise ValidationError(
                {"upstream": f"This dependency would close a cycle: {chain} (each depends on the next)."}
            )

    def is_met(self) -> bool:
        """Return True when the upstream got where this edge asks."""
        return str(self.upstream.state) in MET_STATES[self.after]

    def is_broken(self) -> bool:
        """Return True when the upstream failed, was cancelled (or rolled back) short of this edge's condition."""
        return str(self.upstream.state) in BROKEN_STATES[self.after]

    def describe(self) -> str:
        """Return the edge in words, for audit reasons and the page ("#12 'teacher' succeeded")."""
        return f"#{self.upstream_id} {self.upstream.name!r} ({After(self.after).label})"


def dependency_path(*, start: int, goal: int, ignore: int | None = None) -> list[int]:
    """Return the upstream chain from experiment `start` to `goal` ([start, ..., goal]), or [] when none.

    Walks upstream edges breadth first; `ignore` leaves out one edge (the one being edited).
    """
    came_from: dict[int, int | None] = {start: None}
    frontier = deque([start])
    while frontier:
        current = frontier.popleft()
        if current == goal:
            chain = [current]
            while (prev := came_from[chain[-1]]) is not None:
                chain.append(prev)
            return list(reversed(chain))
        edges = Dependency.objects.filter(downstream_id=current)
        if ignore is not None:
            edges = edges.exclude(pk=ignore)
        for upstream_id in edges.values_list("upstream_id", flat=True):
            if upstream_id not in came_from:
                came_from[upstream_id] = current
                frontier.append(upstream_id)
    return []


def unmet_dependencies(experiment: Experiment) -> list[Dependency]:
    """Return the experiment's edges whose upstream has not got where the edge asks."""
    edges = experiment.upstream_edges.select_related("upstream")
    return [edge for edge in edges if not edge.is_met()]
