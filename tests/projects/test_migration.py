"""The migration to projects: existing experiments join the default project, today's users its members."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("experiments", "0018_experiment_resources")]
AFTER = [("experiments", "0020_project_of_models_and_datasets")]


@pytest.fixture
def executor(transactional_db: Any) -> Iterator[MigrationExecutor]:
    """Return an executor with the schema rolled back to before projects; migrate forward again after."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def _user(apps: Any, username: str, *codenames: str, superuser: bool = False, group: Any = None) -> Any:
    User = apps.get_model("auth", "User")
    Permission = apps.get_model("auth", "Permission")
    user = User.objects.create(username=username, is_superuser=superuser, is_staff=superuser)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="experiments", codename__in=codenames)
    )
    if group is not None:
        user.groups.add(group)
    return user


def test_existing_data_lands_in_the_default_project_with_roles_from_permissions(
    executor: MigrationExecutor,
) -> None:
    old = executor.loader.project_state(BEFORE).apps
    Group = old.get_model("auth", "Group")
    Permission = old.get_model("auth", "Permission")
    researchers = Group.objects.create(name="Old researchers")
    researchers.permissions.add(
        *Permission.objects.filter(codename__in=["view_experiment", "add_experiment", "queue_experiment"])
    )
    _user(old, "root", superuser=True)
    _user(old, "ops", "view_experiment", "promote_experiment")
    _user(old, "res", group=researchers)
    _user(old, "look", "view_experiment")
    _user(old, "nobody")
    Experiment = old.get_model("experiments", "Experiment")
    ModelVersion = old.get_model("experiments", "ModelVersion")
    experiment = Experiment.objects.create(name="before", recipe="digits")
    ModelVersion.objects.create(
        model_name="digits", version=1, recipe="digits", experiment=experiment, checkpoint_path="c.pt",
        checkpoint_sha256="1" * 64,
    )  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Project = new.get_model("experiments", "Project")
    Membership = new.get_model("experiments", "Membership")
    default = Project.objects.get(slug="default")
    assert new.get_model("experiments", "Experiment").objects.get(name="before").project_id == default.pk
    assert new.get_model("experiments", "ModelVersion").objects.get().project_id == default.pk
    roles = dict(Membership.objects.filter(project=default).values_list("user__username", "role"))
    assert roles == {"root": "admin", "ops": "operator", "res": "researcher", "look": "viewer"}
