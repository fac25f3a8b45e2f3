"""The Researchers group carries the permissions a person needs to drive experiments by hand."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from experiments.permissions import RESEARCHERS_GROUP, researcher_group_ensure


def test_researchers_may_create_and_drive_experiments_but_not_operate_runs(db: Any) -> None:
    user = User.objects.create_user("ana")
    user.groups.add(researcher_group_ensure())
    user = User.objects.get(pk=user.pk)  # fresh permission cache
    for perm in ("add_experiment", "queue_experiment", "cancel_experiment", "promote_experiment",
                 "rollback_experiment", "retrain_experiment", "retry_experiment"):  # fmt: skip
        assert user.has_perm(f"experiments.{perm}"), perm
    assert not user.has_perm("experiments.operate_experiment")
    assert not user.has_perm("experiments.delete_experiment")


def test_ensuring_the_group_twice_changes_nothing(db: Any) -> None:
    first = researcher_group_ensure()
    count = first.permissions.count()
    second = researcher_group_ensure()
    assert first.pk == second.pk and second.name == RESEARCHERS_GROUP
    assert second.permissions.count() == count == 10  # eight on experiments, two on feedback
