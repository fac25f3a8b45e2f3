"""Each role fires exactly the transitions it grants, in its own project only (the buttons follow)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.actors import Actor
from experiments.models import Experiment, Project, Role
from experiments.projects import can, role_of, visible_experiments
from experiments.services import experiment_create, experiment_transition
from tests.projects.conftest import member

# event -> the state it is fired from, reached by the system first.
FROM_STATE: dict[str, tuple[str, ...]] = {
    "queue": (),
    "cancel": (),
    "promote": ("queue", "start", "complete"),
    "rollback": ("queue", "start", "complete", "promote"),
}
# Which roles may fire each event.
ALLOWED: dict[str, set[str]] = {
    "queue": {Role.RESEARCHER, Role.OPERATOR, Role.ADMIN},
    "cancel": {Role.RESEARCHER, Role.OPERATOR, Role.ADMIN},
    "promote": {Role.OPERATOR, Role.ADMIN},
    "rollback": {Role.OPERATOR, Role.ADMIN},
}


def _post(client: Client, experiment: Experiment, event: str) -> int:
    response = client.post(
        f"/api/experiments/{experiment.pk}/actions/{event}", json.dumps({}), content_type="application/json"
    )
    return response.status_code


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("event", list(FROM_STATE))
def test_a_role_fires_what_it_grants_and_nothing_more(db: None, role: str, event: str) -> None:
    project = Project.objects.create(name="Vision", slug="vision")
    user = member("m", project, role)
    experiment = experiment_create(name="e", recipe="digits", project=project)
    for step in FROM_STATE[event]:
        experiment_transition(experiment_id=experiment.pk, event=step, actor=Actor.system("test"))
    client = Client()
    client.force_login(user)
    before = Experiment.objects.get(pk=experiment.pk).state
    status = _post(client, experiment, event)
    after = Experiment.objects.get(pk=experiment.pk).state
    if role in ALLOWED[event]:
        assert status == 200 and after != before
    else:
        assert status == 403 and after == before
    # The page offers the button exactly when the role grants it.
    buttons = client.get(f"/experiments/{experiment.pk}/actions/").content.decode()
    assert (f"/actions/{event}/" in buttons) == (role in ALLOWED[event] and after == before)


def test_a_role_in_one_project_grants_nothing_in_another(db: None) -> None:
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    admin = member("a", vision, Role.ADMIN)
    other = experiment_create(name="o", recipe="digits", project=nlp)
    assert role_of(admin, vision) == Role.ADMIN and role_of(admin, nlp) is None
    assert can(admin, "experiments.promote_experiment", vision)
    assert not can(admin, "experiments.view_experiment", other)
    assert not visible_experiments(admin).filter(pk=other.pk).exists()


def test_operate_is_never_a_project_right(db: None) -> None:
    vision = Project.objects.create(name="Vision", slug="vision")
    admin = member("a", vision, Role.ADMIN)
    assert not can(admin, "experiments.operate_experiment", vision)
    assert not can(admin, "experiments.run_script", vision)
    root = User.objects.create_superuser("root", password="pw-root-123")
    assert can(root, "experiments.operate_experiment", vision)
