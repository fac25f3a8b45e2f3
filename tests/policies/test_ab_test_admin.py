"""Starting an A/B test in the admin: real trained versions, ab_test_start's refusals as field errors, permissions.

The form posts as a browser does (CSRF enforced); a started test is audited (the admin user on
the test, on the arms' stage change and in the admin's history); a refused one changes nothing.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

import experiments.registry.serving as serving
from control.canary.ab import ab_test_start
from control.canary.models import ABTest, ABTestStatus, CanaryRollout, RolloutStatus
from control.policies.authoring import policy_create
from control.policies.models import Policy
from experiments.models import ModelStage, ModelVersion
from experiments.registry.services import model_version_register
from experiments.services import experiment_transition
from tests.digits_models import (
    SYSTEM,
    canary_policy_create,
    evaluating_digits_experiment,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_model_cache")]
ADD = "/admin/control/abtest/add/"


@pytest.fixture
def digits(digits_versions: tuple[ModelVersion, ...]) -> tuple[ModelVersion, ...]:
    """digits v1 in production, v2 and v3 registered and not serving."""
    return digits_versions


@pytest.fixture
def ab_policy(db: Any) -> Policy:
    return policy_create(name="digits-ab", kind="ab_test", ab_metric="accuracy", canary_min_requests=20)


def _staff(username: str, *codenames: str) -> Client:
    """A CSRF-enforcing admin session of a staff member holding exactly these control permissions."""
    user = User.objects.create_user(username, password=f"pw-{username}-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="control", codename__in=codenames)
    )
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def starter() -> Client:
    """A staff member who may start (add) and see A/B tests, and nothing else."""
    return _staff("alex", "add_abtest", "view_abtest")


def _post(client: Client, data: dict[str, Any]) -> Any:
    """Submit the start form as the browser does: the CSRF token comes from the page."""
    page = client.get(ADD)
    assert page.status_code == 200
    return client.post(ADD, {**data, "csrfmiddlewaretoken": page.context["csrf_token"]})


def _serving_state() -> list[tuple[int, str, float]]:
    return list(ModelVersion.objects.order_by("pk").values_list("pk", "stage", "traffic_pct"))


def test_the_form_offers_the_models_versions_and_the_ab_policies_only(
    starter: Client, digits: tuple[ModelVersion, ...], ab_policy: Policy
) -> None:
    policy_create(name="a-canary", kind="canary")
    page = starter.get(f"{ADD}?model_name=digits")
    assert page.status_code == 200
    form = page.context["form"]
    offered = {pk for _group, choices in form.fields["version_ids"].choices for pk, _label in choices}
    assert offered == {v.pk for v in digits}
    assert list(form.fields["policy"].queryset) == [ab_policy]
    text = page.content.decode()
    assert f"{ab_policy.name} (mode {ab_policy.mode}; compares accuracy)" in text
    assert f"v{digits[0].version} (production)" in text and f"v{digits[2].version} (none)" in text


def test_a_person_starts_an_ab_test_and_the_start_is_audited(
    starter: Client, digits: tuple[ModelVersion, ...], ab_policy: Policy
) -> None:
    _v1, v2, v3 = digits
    response = _post(starter, {"model_name": "digits", "version_ids": [v2.pk, v3.pk], "policy": ab_policy.pk})

    test = ABTest.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "admin:control_abtest_change", args=[test.pk]
    )
    assert (test.model_name, test.arms, test.policy, test.metric) == (
        "digits",
        [v2.pk, v3.pk],
        ab_policy,
        "accuracy",
    )
    assert test.status == ABTestStatus.RUNNING and test.started_by == "user:alex"
    # The arms serve: half the requests each, production none while the test runs.
    assert serving.route("digits", draw=10.0).pk == v2.pk
    assert serving.route("digits", draw=60.0).pk == v3.pk
    for arm in (v2, v3):
        arm.refresh_from_db()
        assert (arm.stage, arm.traffic_pct, arm.promoted_by) == (ModelStage.CANARY, 50.0, "user:alex")
    entry = LogEntry.objects.get(object_id=str(test.pk))
    assert entry.action_flag == ADDITION and entry.user.username == "alex"

    page = starter.get(response["Location"])
    assert page.status_code == 200
    text = page.content.decode()
    assert f"v{v2.version}, v{v3.version}" in text
    assert "50.0% of requests, 0 served, 0 judged" in text
    # Read only: the decisions are the sweep's, so the page offers no save.
    assert 'name="_save"' not in text


@pytest.mark.parametrize(
    ("case", "field", "says"),
    [
        ("one version", "version_ids", "two or more different versions"),
        ("another model's version", "version_ids", "of model 'digits'"),
        ("not an A/B policy", "policy", "not an A/B test"),
        ("one already running", "model_name", "already has an A/B test running"),
        ("a canary under way", "model_name", "has a canary rollout under way"),
        ("a checkpoint that does not load", "version_ids", "checkpoint failed to load"),
    ],
)
def test_each_refusal_is_a_field_error_and_starts_nothing(
    starter: Client,
    ab_checkpoint: Path,
    digits: tuple[ModelVersion, ...],
    ab_policy: Policy,
    django_capture_on_commit_callbacks: Any,
    case: str,
    field: str,
    says: str,
) -> None:
    _v1, v2, v3 = digits
    data: dict[str, Any] = {"model_name": "digits", "version_ids": [v2.pk, v3.pk], "policy": ab_policy.pk}
    if case == "one version":
        data["version_ids"] = [v2.pk]
    elif case == "another model's version":
        other = model_version_register(
            experiment_id=evaluating_digits_experiment("other", ab_checkpoint).pk, model_name="digits-b"
        )
        data["version_ids"] = [v2.pk, other.pk]
    elif case == "not an A/B policy":
        data["policy"] = policy_create(name="a-canary", kind="canary").pk
    elif case == "one already running":
        ab_test_start(model_name="digits", version_ids=[v2.pk, v3.pk], policy=ab_policy, actor=SYSTEM)
    elif case == "a canary under way":
        canary_policy_create()
        with django_capture_on_commit_callbacks(execute=True):
            experiment_transition(
                experiment_id=evaluating_digits_experiment("v4", ab_checkpoint).pk,
                event="promote",
                actor=SYSTEM,
            )
        assert CanaryRollout.objects.filter(status=RolloutStatus.RUNNING).exists()
    else:
        # Its recorded checksum is not the file's: serving refuses to load it.
        broken = evaluating_digits_experiment("broken", ab_checkpoint, sha256="0" * 64)
        data["version_ids"] = [v2.pk, model_version_register(experiment_id=broken.pk).pk]
    tests_before, serving_before = ABTest.objects.count(), _serving_state()

    response = _post(starter, data)

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field] and says in errors[field][0]
    assert says in html.unescape(response.content.decode())
    assert ABTest.objects.count() == tests_before
    assert _serving_state() == serving_before
    assert not LogEntry.objects.exists()


def test_missing_fields_are_named_and_start_nothing(
    starter: Client, digits: tuple[ModelVersion, ...]
) -> None:
    response = _post(starter, {"model_name": "digits"})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"version_ids", "policy"}
    assert not ABTest.objects.exists()


def test_without_the_add_permission_the_form_is_refused(
    digits: tuple[ModelVersion, ...], ab_policy: Policy
) -> None:
    _v1, v2, v3 = digits
    viewer = _staff("vera", "view_abtest")
    assert viewer.get(ADD).status_code == 403
    data = {"model_name": "digits", "version_ids": [v2.pk, v3.pk], "policy": ab_policy.pk}
    # Even with a valid token (from a page the viewer may see), the start itself is refused.
    token = viewer.get("/admin/control/abtest/").context["csrf_token"]
    assert viewer.post(ADD, {**data, "csrfmiddlewaretoken": token}).status_code == 403
    assert not ABTest.objects.exists()
    assert ModelVersion.objects.filter(stage=ModelStage.CANARY).count() == 0


def test_a_post_without_its_csrf_token_is_refused(
    starter: Client, digits: tuple[ModelVersion, ...], ab_policy: Policy
) -> None:
    _v1, v2, v3 = digits
    response = starter.post(
        ADD, {"model_name": "digits", "version_ids": [v2.pk, v3.pk], "policy": ab_policy.pk}
    )
    assert response.status_code == 403
    assert not ABTest.objects.exists()


def test_someone_not_staff_is_sent_to_the_admin_login(digits: tuple[ModelVersion, ...]) -> None:
    user = User.objects.create_user("pat", password="pw-pat-123")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_abtest", "view_abtest"]))
    client = Client()
    client.force_login(user)
    response = client.get(ADD)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
