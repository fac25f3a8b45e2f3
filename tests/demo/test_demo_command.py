"""`manage.py demo`: a working login and demo experiments reached by audited transitions, once."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from crucible_ui.launcher import DEMO_PASSWORD_DEFAULT, DEMO_USERNAME_DEFAULT
from crucible_ui.management.commands.demo import DEMO_EXPERIMENTS, SECOND_USER
from experiments.choices import State
from experiments.models import Experiment, Membership, MetricPoint, Role, Run, TransitionLog, default_project

pytestmark = pytest.mark.django_db


def _demo(*args: str) -> str:
    out = StringIO()
    call_command("demo", *args, stdout=out)
    return out.getvalue()


def _counts() -> tuple[int, int, int]:
    return Experiment.objects.count(), TransitionLog.objects.count(), get_user_model().objects.count()


def test_running_it_twice_creates_nothing_new() -> None:
    _demo()
    first = _counts()
    output = _demo()
    assert _counts() == first
    assert "nothing created" in output
    assert first[0] == len(DEMO_EXPERIMENTS) + 2  # one retrain child, the second project's experiment


def test_the_second_projects_user_sees_only_its_project() -> None:
    _demo()
    vision = get_user_model().objects.get(username=SECOND_USER)
    client = Client()
    client.force_login(vision)
    names = [item["name"] for item in client.get("/api/experiments").json()["items"]]
    assert names == ["vision · digits baseline"]
    demo_user = get_user_model().objects.get(username=DEMO_USERNAME_DEFAULT)
    assert Membership.objects.get(user=demo_user, project=default_project()).role == Role.ADMIN


def test_it_prints_a_login_that_works(client: Client) -> None:
    output = _demo("--user-only")
    assert repr(DEMO_USERNAME_DEFAULT) in output and repr(DEMO_PASSWORD_DEFAULT) in output
    assert client.login(username=DEMO_USERNAME_DEFAULT, password=DEMO_PASSWORD_DEFAULT)
    user = get_user_model().objects.get(username=DEMO_USERNAME_DEFAULT)
    assert user.is_superuser and user.is_staff
    assert user.groups.filter(name="Researchers").exists()


def test_demo_password_from_the_environment_replaces_the_old_one(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _demo("--user-only")
    monkeypatch.setenv("DEMO_PASSWORD", "another-secret-42")
    output = _demo("--user-only")
    assert "'another-secret-42'" in output
    assert not client.login(username=DEMO_USERNAME_DEFAULT, password=DEMO_PASSWORD_DEFAULT)
    assert client.login(username=DEMO_USERNAME_DEFAULT, password="another-secret-42")


def test_user_only_creates_no_experiments() -> None:
    _demo("--user-only")
    assert not Experiment.objects.exists()


def test_every_demo_state_was_reached_by_an_audited_system_transition() -> None:
    _demo()
    states = dict(Experiment.objects.values_list("name", "state"))
    assert states["digits · baseline"] == State.PENDING
    assert states["digits · higher learning rate"] == State.QUEUED
    assert states["digits · first draft"] == State.CANCELLED
    for experiment in Experiment.objects.exclude(state=State.PENDING):
        log = experiment.transitions.order_by("created_at", "id").last()
        assert log is not None and log.target_state == experiment.state
        assert log.actor == "system:demo"
    assert {e.recipe for e in Experiment.objects.all()} == {"digits", "charlm", "distill", "dpo", "grpo"}


def test_the_retrain_child_is_queued_with_lineage_and_no_invented_results() -> None:
    _demo()
    parent = Experiment.objects.get(name="digits · first draft")
    child = parent.children.get()
    assert child.state == State.QUEUED
    assert child.config["epochs"] == 10
    assert child.transitions.get().event == "queue"
    # Metrics and runs only ever come from a worker that trained.
    assert not Run.objects.exists()
    assert not MetricPoint.objects.exists()


def test_the_demo_pipeline_student_depends_on_its_teacher_and_takes_it_as_teacher() -> None:
    _demo()
    teacher = Experiment.objects.get(name="pipeline · digits teacher")
    student = Experiment.objects.get(name="pipeline · distilled student")
    [edge] = student.upstream_edges.all()
    assert (edge.upstream, edge.after) == (teacher, "succeeded")
    assert student.config["teacher_experiment"] == teacher.pk
    # Same seed and split: the teacher never saw the student's validation rows.
    assert (teacher.config["seed"], teacher.config["val_fraction"]) == (
        student.config["seed"],
        student.config["val_fraction"],
    )
    assert teacher.state == student.state == State.PENDING
