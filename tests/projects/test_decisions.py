"""Deciding on a trigger and cancelling an A/B test need the role in the object's project, not a global right."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from control.canary.ab import ab_test_may_cancel
from control.canary.models import ABTest
from control.policies.models import Policy, PolicyKind, TriggerEvent, TriggerStatus
from experiments.models import Membership, Role
from tests.projects.conftest import Side

pytestmark = pytest.mark.django_db


def _globally_allowed(side: Side) -> None:
    """Give the side's user the global rights to see and decide triggers and to cancel A/B tests."""
    codenames = ["view_triggerevent", "change_triggerevent", "change_abtest"]
    side.user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))


def _pending_trigger(side: Side) -> TriggerEvent:
    policy = Policy.objects.create(
        name=f"{side.project.slug}_watch", kind=PolicyKind.CUSTOM, project=side.project
    )
    return TriggerEvent.objects.create(
        policy=policy,
        experiment=side.experiment,
        kind="metrics",
        conditions_passed=True,
        status=TriggerStatus.PENDING_APPROVAL,
    )


def test_a_viewer_with_the_global_right_may_not_decide_another_projects_trigger(
    vision: Side, nlp: Side
) -> None:
    trigger = _pending_trigger(nlp)
    _globally_allowed(vision)
    Membership.objects.create(user=vision.user, project=nlp.project, role=Role.VIEWER)
    response = vision.client().post(f"/triggers/{trigger.pk}/reject/")
    assert response.status_code == 403
    assert TriggerEvent.objects.get(pk=trigger.pk).status == TriggerStatus.PENDING_APPROVAL


def test_an_operator_of_the_project_decides_its_trigger(nlp: Side) -> None:
    trigger = _pending_trigger(nlp)
    Membership.objects.filter(user=nlp.user, project=nlp.project).update(role=Role.OPERATOR)
    nlp.user.user_permissions.add(Permission.objects.get(codename="view_triggerevent"))
    response = nlp.client().post(f"/triggers/{trigger.pk}/reject/")
    assert response.status_code == 302, response.content
    assert TriggerEvent.objects.get(pk=trigger.pk).status == TriggerStatus.DISMISSED


def test_cancelling_an_ab_test_needs_the_operator_role_in_its_models_project(vision: Side, nlp: Side) -> None:
    test = ABTest(model_name=nlp.model_name)
    _globally_allowed(vision)
    assert not ab_test_may_cancel(vision.user, test)
    assert not ab_test_may_cancel(nlp.user, test)  # a researcher
    Membership.objects.filter(user=nlp.user, project=nlp.project).update(role=Role.OPERATOR)
    nlp.user = type(nlp.user).objects.get(pk=nlp.user.pk)  # roles are cached per user object
    assert ab_test_may_cancel(nlp.user, test)
