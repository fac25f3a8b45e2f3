"""Script experiments in the web process: who may create and start them, where they may run, the audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client, override_settings

from experiments.actors import Actor
from experiments.models import Experiment, TransitionLog
from experiments.permissions import RESEARCHER_PERMISSIONS, researcher_group_ensure
from experiments.services import experiment_create, experiment_transition

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "project").mkdir()
    with override_settings(SCRIPT_ROOTS=[str(tmp_path / "project")]):
        yield tmp_path / "project"


def _person(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="experiments", codename__in=codenames)
    )
    return User.objects.get(pk=user.pk)  # a fresh object: permissions are cached per instance


def _config(workdir: Path | str, **extra: Any) -> dict[str, Any]:
    return {"argv": ["python", "train.py", "--lr", "0.01"], "workdir": str(workdir), **extra}


def test_running_scripts_is_not_a_researcher_permission() -> None:
    assert "run_script" not in RESEARCHER_PERMISSIONS
    group = researcher_group_ensure()
    assert not group.permissions.filter(codename="run_script").exists()


def test_creating_a_script_experiment_needs_the_run_script_permission(root: Path) -> None:
    researcher = _person("rita", "add_experiment", "queue_experiment")
    with pytest.raises(ValidationError) as err:
        experiment_create(name="s", recipe="script", config=_config(root), owner=researcher)
    assert err.value.message_dict["recipe"] == [
        "You may not run scripts: it needs the permission 'Can run scripts on the workers' "
        "(experiments.run_script), which an administrator grants."
    ]
    assert not Experiment.objects.exists()

    allowed = _person("sid", "add_experiment", "queue_experiment", "run_script")
    experiment = experiment_create(name="s", recipe="script", config=_config(root), owner=allowed)
    assert experiment.config["argv"] == ["python", "train.py", "--lr", "0.01"]


def test_starting_a_script_needs_the_permission_and_the_audit_names_the_argv(root: Path) -> None:
    experiment = experiment_create(
        name="s", recipe="script", config=_config(root, env={"OMP_NUM_THREADS": "1"})
    )
    researcher = _person("rita", "queue_experiment")
    with pytest.raises(PermissionDenied, match="You may not run scripts"):
        experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.for_user(researcher))
    assert not TransitionLog.objects.filter(experiment=experiment).exists()

    allowed = _person("sid", "queue_experiment", "run_script")
    experiment_transition(
        experiment_id=experiment.pk, event="queue", actor=Actor.for_user(allowed), reason="first try"
    )
    row = TransitionLog.objects.get(experiment=experiment, event="queue")
    assert row.reason == (
        f'first try; script argv=["python", "train.py", "--lr", "0.01"] in {str(root)!r} env=OMP_NUM_THREADS'
    )
    assert row.user == allowed


@override_settings(SCRIPT_ROOTS=[])
def test_script_runs_are_refused_while_no_root_is_configured(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        experiment_create(name="s", recipe="script", config=_config(tmp_path))
    [message] = err.value.message_dict["config"]
    assert message.startswith("workdir: script runs are off: an administrator must list the folders")


def test_the_api_names_the_field_of_a_refused_script(root: Path, tmp_path: Path) -> None:
    user = _person("sid", "add_experiment", "view_experiment", "run_script")
    client = Client()
    client.force_login(user)

    def create(config: dict[str, Any]) -> Any:
        body = {"name": "s", "recipe": "script", "config": config}
        return client.post("/api/experiments", data=json.dumps(body), content_type="application/json")

    outside = create(_config(tmp_path))
    assert outside.status_code == 422
    [error] = outside.json()["detail"]
    assert error["loc"] == ["body", "config", "workdir"]
    assert error["msg"] == f"{tmp_path} is outside the allowed roots ({root})"

    shell = create({"argv": "python train.py --lr 0.01", "workdir": str(root)})
    assert shell.status_code == 422
    assert shell.json()["detail"][0]["loc"] == ["body", "config", "argv"]

    assert create(_config(root)).status_code == 201
    assert Experiment.objects.count() == 1


def test_the_form_shows_the_refusal_on_the_config_field(root: Path, tmp_path: Path) -> None:
    user = _person("sid", "add_experiment", "view_experiment", "run_script")
    client = Client()
    client.force_login(user)
    response = client.post(
        "/experiments/new/",
        {
            "name": "s",
            "recipe": "script",
            "config": json.dumps(_config(tmp_path / "elsewhere")),
            "priority_class": "batch",
            "priority": 5,
            "gpus": 0,
            "memory_gb": 0,
            "max_attempts": 1,
            "timeout_seconds": 600,
        },
    )
    assert response.status_code == 400
    assert "is outside the allowed roots" in response.context["form"].errors["config"][0]
    assert not Experiment.objects.exists()
