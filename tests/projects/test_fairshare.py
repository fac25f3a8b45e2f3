"""Fair share: a contended queue alternates between projects by share, inside each priority class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from control.scheduling.fairshare import interleave
from control.scheduling.scheduler import scheduler_plan
from experiments.models import Project
from tests.control.helpers import H100_MB, make_worker, queued


@dataclass(frozen=True)
class Row:
    pk: str
    gpus: int = 1
    priority_class: str = "batch"


def _order(rows: list[Row], *, shares: dict[int, int], held: dict[int, int] | None = None) -> list[str]:
    # The project is the name's first letter: a1 is project 1's first experiment.
    project_of = {r.pk: 1 if r.pk.startswith("a") else 2 for r in rows}
    return [r.pk for r in interleave(rows, project_of=project_of, shares=shares, held=held or {})]


def test_equal_shares_alternate_even_when_one_project_queued_first() -> None:
    rows = [Row("a1"), Row("a2"), Row("a3"), Row("b1"), Row("b2"), Row("b3")]
    assert _order(rows, shares={1: 1, 2: 1}) == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_what_a_project_holds_now_counts() -> None:
    rows = [Row("a1"), Row("a2"), Row("b1"), Row("b2"), Row("b3")]
    assert _order(rows, shares={1: 1, 2: 1}, held={1: 2}) == ["b1", "b2", "a1", "b3", "a2"]


def test_a_double_share_gets_two_places_for_each_of_the_other() -> None:
    rows = [Row(f"a{i}") for i in range(1, 5)] + [Row(f"b{i}") for i in range(1, 5)]
    assert _order(rows, shares={1: 2, 2: 1})[:6] == ["a1", "b1", "a2", "a3", "b2", "a4"]


def test_a_priority_class_keeps_its_places() -> None:
    rows = [Row("a1", priority_class="realtime"), Row("a2"), Row("a3"), Row("b1")]
    assert _order(rows, shares={1: 1, 2: 1}) == ["a1", "b1", "a2", "a3"]


def test_gpus_count_not_experiments() -> None:
    rows = [Row("a1", gpus=4), Row("a2"), Row("b1"), Row("b2"), Row("b3"), Row("b4"), Row("b5")]
    assert _order(rows, shares={1: 1, 2: 1}) == ["a1", "b1", "b2", "b3", "b4", "a2", "b5"]


@pytest.mark.django_db
def test_the_plan_splits_free_gpus_between_two_projects() -> None:
    make_worker("gpu-host", gpus=[("H100", H100_MB)] * 4)
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    for i in range(4):
        queued(f"vision-{i}", project=vision, gpus=1, waited_min=60 - i)  # all older than nlp's
    for i in range(4):
        queued(f"nlp-{i}", project=nlp, gpus=1, waited_min=10 - i)
    placed = [d.experiment.name for d in scheduler_plan().decisions if d.devices]
    assert sorted(placed) == ["nlp-0", "nlp-1", "vision-0", "vision-1"]
