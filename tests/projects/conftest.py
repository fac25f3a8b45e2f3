"""Two projects with a member each, an experiment, a run and a registered model in each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.models import Experiment, Membership, ModelVersion, Project, Role, Run
from experiments.services import experiment_create


@dataclass
class Side:
    """One project with its member, an experiment, a run of it and a registered model."""

    project: Project
    user: User
    experiment: Experiment
    run: Run
    model_name: str

    def client(self) -> Client:
        client = Client()
        client.force_login(self.user)
        return client


def member(username: str, project: Project, role: str = Role.RESEARCHER) -> User:
    """Return a new user with this role in the project and no global permission."""
    user = User.objects.create_user(username, password=f"pw-{username}-123")
    Membership.objects.create(user=user, project=project, role=role)
    return user


def _side(slug: str, username: str, model_name: str) -> Side:
    project = Project.objects.create(name=slug.capitalize(), slug=slug)
    user = member(username, project)
    experiment = experiment_create(name=f"{slug}-secret-experiment", recipe="digits", project=project)
    run = Run.objects.create(experiment=experiment, attempt=1, worker="w", device="cpu", task_id=f"t-{slug}")
    ModelVersion.objects.create(
        model_name=model_name, version=1, recipe="digits", experiment=experiment,
        checkpoint_path="c.pt", checkpoint_sha256="1" * 64,
    )  # fmt: skip
    return Side(project=project, user=user, experiment=experiment, run=run, model_name=model_name)


@pytest.fixture
def vision(db: Any) -> Side:
    """Return the vision project and its researcher alice."""
    return _side("vision", "alice", "visionnet")


@pytest.fixture
def nlp(db: Any) -> Side:
    """Return the nlp project and its researcher bob."""
    return _side("nlp", "bob", "nlpnet")
