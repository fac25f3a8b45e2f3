"""A member of one project never sees another project's experiments, runs or models: 404 as if missing."""

from __future__ import annotations

import json

from django.contrib.auth.models import Permission, User

from experiments.models import Experiment, Membership, Project, Role, default_project
from experiments.services import experiment_create
from tests.projects.conftest import Side, member


def test_the_list_page_shows_only_the_members_projects(vision: Side, nlp: Side) -> None:
    page = vision.client().get("/").content.decode()
    assert vision.experiment.name in page
    assert nlp.experiment.name not in page


def test_another_projects_experiment_answers_404_like_a_missing_one(vision: Side, nlp: Side) -> None:
    client = vision.client()
    missing = Experiment.objects.order_by("-pk").first().pk + 100  # type: ignore[union-attr]
    for experiment_id in (nlp.experiment.pk, missing):
        assert client.get(f"/experiments/{experiment_id}/").status_code == 404
        assert client.get(f"/experiments/{experiment_id}/actions/").status_code == 404
        assert client.post(f"/experiments/{experiment_id}/actions/queue/").status_code == 404
        assert client.get(f"/api/experiments/{experiment_id}").status_code == 404
        assert (
            client.post(
                f"/api/experiments/{experiment_id}/actions/queue", "{}", content_type="application/json"
            ).status_code
            == 404
        )
        assert client.get(f"/api/experiments/{experiment_id}/metrics").status_code == 404
        assert client.get(f"/api/experiments/{experiment_id}/step-times").status_code == 404
    nlp.experiment.refresh_from_db()
    assert nlp.experiment.state == "pending"
    assert client.get(f"/experiments/{vision.experiment.pk}/").status_code == 200


def test_the_api_list_and_its_counts_hold_only_the_members_experiments(vision: Side, nlp: Side) -> None:
    body = vision.client().get("/api/experiments").json()
    assert [item["id"] for item in body["items"]] == [vision.experiment.pk]
    assert body["items"][0]["project"] == "vision"
    assert sum(body["counts"].values()) == 1


def test_fleet_compare_and_run_logs_keep_to_the_members_projects(vision: Side, nlp: Side) -> None:
    client = vision.client()
    from experiments.choices import State

    Experiment.objects.filter(pk__in=[vision.experiment.pk, nlp.experiment.pk]).update(state=State.RUNNING)
    fleet = client.get("/fleet/").content.decode()
    assert vision.experiment.name in fleet and nlp.experiment.name not in fleet
    compare = client.get(f"/compare/?ids={vision.experiment.pk},{nlp.experiment.pk}")
    assert compare.status_code == 400
    assert f"no experiment #{nlp.experiment.pk}" in compare.content.decode()
    assert client.get(f"/experiments/{nlp.experiment.pk}/runs/{nlp.run.pk}/log/").status_code == 404


def test_the_registry_and_serving_hide_another_projects_model(vision: Side, nlp: Side) -> None:
    # An operator: the rollback routes' own permission is met, so only the project can refuse.
    Membership.objects.filter(user=vision.user).update(role=Role.OPERATOR)
    client = vision.client()
    registry = client.get("/registry/").content.decode()
    assert vision.model_name in registry and nlp.model_name not in registry
    assert client.get(f"/registry/{nlp.model_name}/").status_code == 404
    assert client.get(f"/registry/{nlp.model_name}/live.json").status_code == 404
    assert client.post(f"/registry/{nlp.model_name}/rollback").status_code == 404
    assert client.post(f"/registry/{nlp.model_name}/canary/rollback").status_code == 404
    hidden = client.post(f"/serve/{nlp.model_name}/predict", json.dumps({"features": [0] * 64}),
                         content_type="application/json")  # fmt: skip
    unknown = client.post("/serve/nosuchmodel/predict", json.dumps({"features": [0] * 64}),
                          content_type="application/json")  # fmt: skip
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert hidden.json()["detail"] == f"Unknown model {nlp.model_name!r}."


def test_create_offers_only_projects_where_the_user_may_create(vision: Side, nlp: Side) -> None:
    client = vision.client()
    form = client.get("/experiments/new/").content.decode()
    assert ">Vision<" in form and ">Nlp<" not in form
    refused = client.post(
        "/api/experiments", json.dumps({"name": "x", "recipe": "digits", "project": "nlp"}),
        content_type="application/json",
    )  # fmt: skip
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "project"]
    assert not Experiment.objects.filter(name="x").exists()
    created = client.post(
        "/api/experiments", json.dumps({"name": "y", "recipe": "digits"}), content_type="application/json"
    )
    assert created.status_code == 201
    assert Experiment.objects.get(name="y").project == vision.project
    page = client.post("/experiments/new/", {"name": "z", "recipe": "digits", "project": nlp.project.pk,
                       "priority_class": "batch", "priority": 5, "gpus": 0, "memory_gb": 0,
                       "max_attempts": 3, "timeout_seconds": 60})  # fmt: skip
    assert page.status_code == 400
    assert not Experiment.objects.filter(name="z").exists()


def test_a_viewer_may_not_create_even_with_a_project_named(vision: Side) -> None:
    viewer = member("vera", vision.project, Role.VIEWER)
    client = vision.client()
    client.force_login(viewer)
    assert client.get("/experiments/new/").status_code == 403
    response = client.post(
        "/api/experiments", json.dumps({"name": "v", "recipe": "digits", "project": "vision"}),
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 403


def test_global_permissions_count_in_the_default_project_only(vision: Side) -> None:
    old_hand = User.objects.create_user("old", password="pw-old-123")
    old_hand.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_experiment", "queue_experiment"])
    )
    in_default = experiment_create(name="legacy", recipe="digits")
    assert in_default.project == default_project()
    client = vision.client()
    client.force_login(old_hand)
    assert client.get(f"/api/experiments/{in_default.pk}").status_code == 200
    assert client.get(f"/api/experiments/{vision.experiment.pk}").status_code == 404
    assert (
        client.post(
            f"/api/experiments/{in_default.pk}/actions/queue", "{}", content_type="application/json"
        ).status_code
        == 200
    )


def test_a_superuser_sees_every_project(vision: Side, nlp: Side) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    client = vision.client()
    client.force_login(root)
    ids = {item["id"] for item in client.get("/api/experiments").json()["items"]}
    assert {vision.experiment.pk, nlp.experiment.pk} <= ids


def test_a_member_of_two_projects_sees_both(vision: Side, nlp: Side) -> None:
    Membership.objects.create(user=vision.user, project=nlp.project, role=Role.VIEWER)
    ids = {item["id"] for item in vision.client().get("/api/experiments").json()["items"]}
    assert ids == {vision.experiment.pk, nlp.experiment.pk}
    assert Project.objects.filter(members=vision.user).count() == 2


def test_the_queue_and_the_triggers_list_only_the_members_experiments(vision: Side, nlp: Side) -> None:
    from control.models import Policy, TriggerEvent

    Permission_ = Permission.objects.filter(codename__in=["view_device", "view_triggerevent"])
    vision.user.user_permissions.add(*Permission_)
    for side in (vision, nlp):
        experiment_transition_queue(side.experiment)
    queue = vision.client().get("/api/scheduler/queue").json()
    assert [q["experiment_id"] for q in queue["queued"]] == [vision.experiment.pk]
    policy = Policy.objects.create(name="watch", kind="early_stop")
    hidden = TriggerEvent.objects.create(
        policy=policy, experiment=nlp.experiment, kind="early_stop", conditions_passed=True
    )
    shown = TriggerEvent.objects.create(
        policy=policy, experiment=vision.experiment, kind="early_stop", conditions_passed=True
    )
    page = vision.client().get("/triggers/rows/").content.decode()
    assert vision.experiment.name in page
    assert nlp.experiment.name not in page
    # Deciding on another project's trigger answers as for a missing one.
    Permission_ = Permission.objects.filter(codename="change_triggerevent")
    vision.user.user_permissions.add(*Permission_)
    assert vision.client().post(f"/triggers/{hidden.pk}/reject/").status_code == 404
    assert shown.pk != hidden.pk


def experiment_transition_queue(experiment: Experiment) -> None:
    from experiments.actors import Actor
    from experiments.services import experiment_transition

    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
