"""Policies belong to a project: the engine applies them to its experiments only; pages and admin list its own."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission

from control.canary.rollouts import canary_policy_for
from control.policies.engine import engine_on_complete
from control.policies.models import ActionRole, Policy, PolicyKind, TriggerEvent
from experiments.choices import State
from experiments.models import Experiment, Role
from tests.policies.helpers import experiment_through, make_policy, record_run, run_pending_actions
from tests.projects.conftest import Side, member

pytestmark = pytest.mark.django_db


def _auto_promote(name: str, side: Side) -> Policy:
    return make_policy(
        name,
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        project=side.project,
    )


def _trained(side: Side) -> Experiment:
    experiment = experiment_through(
        "queue", "start", "complete", name=f"{side.project.slug}-run", project=side.project
    )
    record_run(experiment, {"accuracy": [0.5, 0.97]})
    return experiment


def test_a_policy_of_one_project_never_acts_on_anothers_experiment(vision: Side, nlp: Side) -> None:
    _auto_promote("vision_promote", vision)
    theirs = _trained(nlp)
    assert engine_on_complete(experiment_id=theirs.pk) == []
    run_pending_actions()
    assert Experiment.objects.get(pk=theirs.pk).state == State.EVALUATING
    assert not TriggerEvent.objects.filter(experiment=theirs).exists()
    # The same policy acts on its own project's experiment.
    ours = _trained(vision)
    [trigger] = engine_on_complete(experiment_id=ours.pk)
    assert trigger.policy.name == "vision_promote" and trigger.conditions_passed


def test_a_canary_policy_rolls_out_its_own_projects_models_only(vision: Side, nlp: Side) -> None:
    canary = Policy.objects.create(name="vision_canary", kind=PolicyKind.CANARY, project=vision.project)
    assert canary_policy_for(nlp.experiment) is None
    assert canary_policy_for(vision.experiment) == canary


def _policy_admin(side: Side, username: str) -> Any:
    """Return a client of a project admin (who is also staff, for the Django admin)."""
    user = member(username, side.project, Role.ADMIN)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    side.user = user
    return side.client()


def test_the_policy_page_and_admin_list_only_the_callers_projects_policies(vision: Side, nlp: Side) -> None:
    Policy.objects.create(name="vision_watch", kind=PolicyKind.CUSTOM, project=vision.project)
    hidden = Policy.objects.create(name="nlp_watch", kind=PolicyKind.CUSTOM, project=nlp.project)
    client = _policy_admin(vision, "vicky")
    for path in ("/policies/", "/admin/control/policy/"):
        page = client.get(path).content.decode()
        assert "vision_watch" in page and "nlp_watch" not in page, path
    assert client.get(f"/policies/{hidden.pk}/edit").status_code == 404
    assert client.get(f"/admin/control/policy/{hidden.pk}/change/").status_code in (302, 404)
    assert client.post(f"/policies/{hidden.pk}/edit", {"name": "taken"}).status_code == 404
    assert Policy.objects.get(pk=hidden.pk).name == "nlp_watch"


def test_editing_a_policy_needs_the_admin_role_in_its_project(vision: Side) -> None:
    policy = Policy.objects.create(name="vision_watch", kind=PolicyKind.CUSTOM, project=vision.project)
    # A researcher holding the page's global permissions is still no admin of the project: its
    # policies read as missing to them.
    codenames = ["view_policy", "change_policy", "add_policy"]
    vision.user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    assert vision.client().get(f"/policies/{policy.pk}/edit").status_code == 404
    assert "vision_watch" not in vision.client().get("/policies/").content.decode()
    # Global permissions count in the default project only: a new policy of theirs joins it.
    assert vision.client().get("/policies/new").context["policy"].project.slug == "default"
    admin = _policy_admin(vision, "vicky")
    assert admin.get(f"/policies/{policy.pk}/edit").status_code == 200


def test_a_new_policy_joins_the_admins_project(vision: Side) -> None:
    client = _policy_admin(vision, "vicky")
    page = client.get("/policies/new")
    assert page.status_code == 200
    assert page.context["policy"].project_id == vision.project.pk
