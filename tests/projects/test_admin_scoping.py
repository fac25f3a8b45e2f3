"""Every admin of project-owned rows keeps staff to their projects: lists, search, filters, change pages."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.auth.models import Permission, User
from django.db.models import Model
from django.test import Client
from django.utils import timezone

from control.canary.models import ABTest, CanaryRollout
from control.policies.models import Policy, PolicyKind, TriggerEvent, TriggerStatus
from control.scheduling.models import Device
from experiments.admin import ProjectScoped
from experiments.models import (
    DatasetVersion,
    DriftCheck,
    Experiment,
    Membership,
    MetricPoint,
    ModelVersion,
    Project,
    Role,
    Run,
    RunArtifact,
    RunEvaluation,
    RunStage,
    TransitionLog,
)
from tests.projects.conftest import Side

# Registered models that reach a project but are not one project's data, and why.
SHARED = {
    Project: "the projects themselves: ProjectAdmin lists the caller's own (tests/projects/test_admin.py)",
    Device: "the fleet's hardware, shared by every project; its holder shows as a run id whose page is scoped",
}


def _path_to_project(model: type[Model], depth: int = 0) -> str | None:
    """Return a forward foreign-key path from model to Project ("" for Project), or None."""
    if model is Project:
        return ""
    if depth > 3:
        return None
    for field in model._meta.get_fields():
        if field.concrete and (field.many_to_one or field.one_to_one) and field.related_model:
            rest = _path_to_project(field.related_model, depth + 1)  # type: ignore[arg-type]
            if rest is not None:
                return f"{field.name}__{rest}" if rest else field.name
    return None


def test_every_admin_of_rows_with_a_project_is_scoped_to_projects() -> None:
    unscoped = []
    for model, model_admin in admin.site._registry.items():
        if model in SHARED or _path_to_project(model) is None:
            continue
        if not isinstance(model_admin, ProjectScoped):
            unscoped.append(model.__name__)
            continue
        # The declared path really ends at the project (a typo would scope nothing).
        assert get_fields_from_path(model, model_admin.project_field)[-1].related_model is Project
    assert not unscoped, f"admins of project data without ProjectScoped: {unscoped}"


def _rows(side: Side) -> dict[type[Model], Model]:
    """Create one row of every scoped model in the side's project; return them by model."""
    experiment = side.experiment
    version = ModelVersion.objects.get(model_name=side.model_name)
    policy = Policy.objects.create(
        name=f"{side.project.slug}-policy", kind=PolicyKind.CUSTOM, project=side.project
    )
    trigger = TriggerEvent.objects.create(
        policy=policy,
        experiment=experiment,
        kind="metrics",
        conditions_passed=True,
        status=TriggerStatus.FIRED,
    )
    point = MetricPoint.objects.create(
        run=side.run, experiment=experiment, name="loss", step=1, value=0.5, wall_time=0.0
    )
    dataset = DatasetVersion.objects.create(
        model_name=side.model_name, version=1, strategy="hard_examples", path="d.jsonl", sha256="2" * 64,
        size=1, row_count=1, created_by="test", project=side.project,
    )  # fmt: skip
    rollout = CanaryRollout.objects.create(
        model_name=side.model_name, experiment=experiment, candidate=version,
        stages=[{"name": "c10", "traffic_pct": 10, "duration_seconds": 60}], stage_started_at=timezone.now(),
    )  # fmt: skip
    return {
        Experiment: experiment,
        TransitionLog: TransitionLog.objects.create(
            experiment=experiment, event="hold", source_state="draft", target_state="draft", actor="test"
        ),
        Run: side.run,
        MetricPoint: point,
        ModelVersion: version,
        DatasetVersion: dataset,
        DriftCheck: DriftCheck.objects.create(version=version, score=0.1, window_rows=10),
        Policy: policy,
        TriggerEvent: trigger,
        CanaryRollout: rollout,
        ABTest: ABTest.objects.create(model_name=side.model_name, arms=[version.pk], policy=policy),
        RunStage: RunStage.objects.create(run=side.run, name="train", seconds=1.5),
        RunArtifact: RunArtifact.objects.create(
            run=side.run, name="model.pt", path="m.pt", size=1, sha256="3" * 64
        ),
        RunEvaluation: RunEvaluation.objects.create(
            experiment=experiment, run=side.run, checkpoint_sha256="4" * 64, eval_set="held-out"
        ),
    }


def _staff(side: Side) -> User:
    """Make the side's member staff, an admin of their project, with the view permissions the admin asks."""
    user = side.user
    User.objects.filter(pk=user.pk).update(is_staff=True)
    Membership.objects.filter(user=user).update(role=Role.ADMIN)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    return User.objects.get(pk=user.pk)


def _url(model: type[Model], suffix: str = "") -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/{suffix}"


def _markers(side: Side) -> tuple[str, ...]:
    return (side.experiment.name, side.model_name, f"{side.project.slug}-policy")


@pytest.mark.django_db
def test_two_staff_in_two_projects_each_see_only_their_own_rows(vision: Side, nlp: Side) -> None:
    vision_rows, nlp_rows = _rows(vision), _rows(nlp)
    alice, bob = _staff(vision), _staff(nlp)
    root = User.objects.create_superuser("root", password="pw-root-123")
    for model, own in vision_rows.items():
        for user, mine, theirs, their_side in (
            (alice, own, nlp_rows[model], nlp),
            (bob, nlp_rows[model], own, vision),
        ):
            client = Client()
            client.force_login(user)
            page = client.get(_url(model)).content.decode()
            assert not any(m in page for m in _markers(their_side)), (
                f"{model.__name__} lists another project's row"
            )
            assert client.get(_url(model, f"{mine.pk}/change/")).status_code == 200, model.__name__
            # Another project's row answers as a missing one: the admin redirects to its index.
            assert client.get(_url(model, f"{theirs.pk}/change/")).status_code == 302, model.__name__
            searched = client.get(_url(model), {"q": their_side.project.slug}).content.decode()
            assert not any(m in searched for m in _markers(their_side)), f"{model.__name__} search leaks"
        superuser = Client()
        superuser.force_login(root)
        assert superuser.get(_url(model, f"{nlp_rows[model].pk}/change/")).status_code == 200, model.__name__
        everything = superuser.get(_url(model)).content.decode()
        assert any(m in everything for m in _markers(nlp)), f"{model.__name__}: the superuser misses a row"


@pytest.mark.django_db
def test_the_project_column_and_filter_name_only_the_callers_projects(vision: Side, nlp: Side) -> None:
    _rows(vision)
    _rows(nlp)
    alice = _staff(vision)
    client = Client()
    client.force_login(alice)
    for model in (Run, TransitionLog, MetricPoint, DriftCheck, TriggerEvent, CanaryRollout, Policy):
        page = client.get(_url(model)).content.decode()
        assert "Vision" in page, f"{model.__name__} has no project column or filter"
        assert "Nlp" not in page, f"{model.__name__} names another project"
    field = ProjectScoped.project_field
    filtered = Client()
    filtered.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    page = filtered.get(_url(Run), {f"experiment__{field}__id__exact": nlp.project.pk}).content.decode()
    assert nlp.experiment.name in page and vision.experiment.name not in page


@pytest.mark.django_db
def test_the_ab_test_start_form_offers_and_accepts_only_the_callers_models_and_policies(
    vision: Side, nlp: Side
) -> None:
    for side in (vision, nlp):
        Policy.objects.create(name=f"{side.project.slug}-ab", kind=PolicyKind.AB_TEST, project=side.project)
        ModelVersion.objects.create(
            model_name=side.model_name, version=2, recipe="digits", experiment=side.experiment,
            checkpoint_path="c.pt", checkpoint_sha256="3" * 64,
        )  # fmt: skip
    alice = _staff(vision)
    alice.user_permissions.add(*Permission.objects.filter(codename="add_abtest"))
    client = Client()
    client.force_login(alice)
    form = client.get(_url(ABTest, "add/")).content.decode()
    assert vision.model_name in form and "vision-ab" in form
    assert nlp.model_name not in form and "nlp-ab" not in form
    their_versions = list(ModelVersion.objects.filter(model_name=nlp.model_name).values_list("pk", flat=True))
    refused = client.post(
        _url(ABTest, "add/"),
        {
            "model_name": nlp.model_name,
            "version_ids": their_versions,
            "policy": Policy.objects.get(name="nlp-ab").pk,
        },
    )
    assert refused.status_code == 200
    assert set(refused.context["form"].errors) == {"model_name", "version_ids", "policy"}
    assert not ABTest.objects.exists()


@pytest.mark.django_db
def test_an_experiments_admin_form_offers_and_accepts_only_the_callers_projects(
    vision: Side, nlp: Side
) -> None:
    alice = _staff(vision)
    alice.user_permissions.add(
        *Permission.objects.filter(codename__in=["change_experiment", "add_dependency", "change_dependency"])
    )
    client = Client()
    client.force_login(alice)
    change = _url(Experiment, f"{vision.experiment.pk}/change/")
    form = client.get(change).content.decode()
    assert ">Vision<" in form and ">Nlp<" not in form
    page = client.get(change)
    data = {
        key: json.dumps(value) if isinstance(value, (dict, list)) else value
        for key, value in page.context["adminform"].form.initial.items()
        if key in page.context["adminform"].form.fields and value is not None
    }
    refused = client.post(
        change,
        {
            **data,
            "project": vision.project.pk,
            "parent": nlp.experiment.pk,  # a typed id of another project's experiment
            "upstream_edges-TOTAL_FORMS": "1",
            "upstream_edges-INITIAL_FORMS": "0",
            "upstream_edges-0-upstream": nlp.experiment.pk,
            "transitions-TOTAL_FORMS": "0",
            "transitions-INITIAL_FORMS": "0",
        },
    )
    assert refused.status_code == 200
    assert set(refused.context["adminform"].form.errors) == {"parent"}
    edges = refused.context["inline_admin_formsets"][0].formset
    assert "upstream" in edges.forms[0].errors
    vision.experiment.refresh_from_db()
    assert vision.experiment.parent_id is None
    assert not vision.experiment.upstream_edges.exists()
