"""Fair share between projects: a contended queue gives each project GPU time in proportion to its share.

Applied to the planned order (`fair_order`): within each priority class, the next place goes to
the project whose devices held now plus those it has already been given in this order are
smallest relative to its share; each project keeps its own experiments in their urgency order.
A priority class keeps exactly the places it had, so urgency across classes is untouched; a
queue of one project comes back as it was.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from django.db.models import Count

from control.scheduling.models import Device
from experiments.choices import LIVE_RUN_STATUSES
from experiments.models import Experiment, Project


class Queued(Protocol):
    """What fair share reads of a queued experiment."""

    @property
    def pk(self) -> Any: ...
    @property
    def gpus(self) -> int: ...
    @property
    def priority_class(self) -> str: ...


_Q = TypeVar("_Q", bound=Queued)


def _slots(experiment: Queued) -> int:
    """Return the devices one run holds (a CPU run holds one slot)."""
    return max(1, int(experiment.gpus))


def held_by_project() -> dict[int, int]:
    """Return the devices each project's live runs hold now, by project id."""
    rows = (
        Device.objects.filter(leased_run__status__in=LIVE_RUN_STATUSES)
        .values("leased_run__experiment__project_id")
        .annotate(n=Count("id"))
    )
    return {row["leased_run__experiment__project_id"]: row["n"] for row in rows}


def interleave(
    queued: Sequence[_Q], *, project_of: dict[Any, int], shares: dict[int, int], held: dict[int, int]
) -> list[_Q]:
    """Return the queue reordered by weighted fair share (pure: the inputs say everything)."""
    by_class: dict[str, list[int]] = defaultdict(list)  # class -> its places in the queue
    for place, experiment in enumerate(queued):
        by_class[experiment.priority_class].append(place)
    rank = {experiment.pk: place for place, experiment in enumerate(queued)}
    given: dict[int, int] = defaultdict(int, held)
    ordered: list[_Q | None] = [None] * len(queued)
    for places in by_class.values():
        lanes: dict[int, deque[_Q]] = defaultdict(deque)
        for place in places:
            experiment = queued[place]
            lanes[project_of[experiment.pk]].append(experiment)
        for place in places:
            # The least served project relative to its share; ties go to the one whose next
            # experiment came first in the urgency order.
            project = min(
                (pid for pid, lane in lanes.items() if lane),
                key=lambda pid: (given[pid] / max(1, shares.get(pid, 1)), rank[lanes[pid][0].pk]),
            )
            experiment = lanes[project].popleft()
            ordered[place] = experiment
            given[project] += _slots(experiment)
    return [e for e in ordered if e is not None]


def fair_order(queued: Sequence[_Q]) -> list[_Q]:
    """Return the queue in fair-share order between projects (unchanged when one project queues)."""
    if len(queued) < 2 or Project.objects.count() < 2:
        return list(queued)
    project_of = dict(
        Experiment.objects.filter(pk__in=[e.pk for e in queued]).values_list("pk", "project_id")
    )
    if len(set(project_of.values())) < 2:
        return list(queued)
    shares = dict(Project.objects.filter(pk__in=set(project_of.values())).values_list("pk", "share"))
    return interleave(queued, project_of=project_of, shares=shares, held=held_by_project())
