"""A/B test policies end to end: real checkpoints, real requests through /serve/, the sweep decides.

Two candidates of digits share all traffic; labelled answers come back through /feedback; the
canary sweep runs the paired sequential test, drops the less accurate arm and promotes the
other, and the "ab_test" trigger records effect size, interval and requests.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ValidationError
from django.test import Client

import experiments.registry.serving as serving
from control.canary.ab import ABTestError, ab_test_start
from control.canary.models import ABTest, ABTestStatus
from control.canary.rollouts import canary_sweep
from control.policies.authoring import policy_create
from control.policies.models import Policy, TriggerEvent
from experiments.models import ModelStage, ModelVersion
from experiments.recipes.classify import raw_split
from experiments.registry.services import model_version_register
from tests.digits_models import SYSTEM, evaluating_digits_experiment, promote_to_production, train_digits

pytestmark = pytest.mark.django_db
X_VAL, Y_VAL = raw_split(0, 0.2)[2:]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good digits model and a clearly weaker one (one short epoch), trained by the recipe."""
    folder = tmp_path_factory.mktemp("ab-ckpt")
    good, _ = train_digits(folder / "good", epochs=4, hidden=32, seed=0)
    weak, metrics = train_digits(folder / "weak", epochs=1, hidden=8, seed=0, lr=0.0005)
    assert metrics["accuracy"] < 0.8
    return {"good": good, "weak": weak}


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    serving.clear_cache()
    yield
    serving.clear_cache()


@pytest.fixture
def user_client(db: Any) -> Client:
    """A session of a person who may use served models and whose labels count (CSRF enforced, as in a browser)."""
    user = User.objects.create_user("sam", password="pw-sam-123")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="experiments",
            codename__in=["view_experiment", "give_feedback", "give_trusted_feedback"],
        )
    )
    client = Client()
    client.force_login(user)
    return client


def versions(checkpoints: dict[str, Path], capture: Any) -> tuple[ModelVersion, ModelVersion, ModelVersion]:
    """digits v1 in production (good), v2 (good) and v3 (weak) registered, not yet serving."""
    with capture(execute=True):
        promote_to_production(evaluating_digits_experiment("v1", checkpoints["good"]))
    v2 = model_version_register(experiment_id=evaluating_digits_experiment("v2", checkpoints["good"]).pk)
    v3 = model_version_register(experiment_id=evaluating_digits_experiment("v3", checkpoints["weak"]).pk)
    return ModelVersion.objects.get(stage=ModelStage.PRODUCTION), v2, v3


def ab_policy(**fields: Any) -> Policy:
    return policy_create(
        name="ab",
        kind="ab_test",
        ab_metric="accuracy",
        canary_min_requests=20,
        canary_alpha=0.05,
        canary_margin=0.05,
        **fields,
    )


def serve(client: Client, n: int, start: int = 0) -> Counter[int]:
    """Send n labelled requests through the serving endpoints; count answers per version."""
    answered: Counter[int] = Counter()
    for i in range(start, start + n):
        j = i % len(X_VAL)
        response = client.post(
            "/serve/digits/predict",
            json.dumps({"features": X_VAL[j].tolist()}),
            content_type="application/json",
        )
        assert response.status_code == 200, response.content
        answer = response.json()
        answered[answer["version"]] += 1
        feedback = client.post(
            "/serve/digits/feedback",
            json.dumps({"request_id": answer["request_id"], "label": int(Y_VAL[j])}),
            content_type="application/json",
        )
        assert feedback.status_code == 200, feedback.content
    return answered


def test_the_more_accurate_arm_wins_is_promoted_and_the_trigger_says_by_how_much(
    checkpoints: dict[str, Path], user_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    v1, v2, v3 = versions(checkpoints, django_capture_on_commit_callbacks)
    test = ab_test_start(model_name="digits", version_ids=[v2.pk, v3.pk], policy=ab_policy(), actor=SYSTEM)
    # Serving splits the traffic between the two arms; production serves none of it meanwhile.
    first = serve(user_client, 100)
    assert set(first) == {v2.version, v3.version} and min(first.values()) > 20

    outcome = "waiting"
    sent = 100
    while outcome in ("waiting", "dropped") and sent < 4000:
        with django_capture_on_commit_callbacks(execute=True):
            outcome = canary_sweep()[f"ab:{test.pk}"]
        if outcome in ("waiting", "dropped"):
            serve(user_client, 50, start=sent)
            sent += 50
    assert outcome == ABTestStatus.DECIDED

    test.refresh_from_db()
    assert test.winner_id == v2.pk and test.arms == [v2.pk]
    assert [d["version"] for d in test.dropped] == [f"v{v3.version}"]
    v1.refresh_from_db()
    v2.refresh_from_db()
    v3.refresh_from_db()
    assert (v2.stage, v3.stage, v1.stage) == (ModelStage.PRODUCTION, ModelStage.ARCHIVED, ModelStage.ARCHIVED)
    assert (v2.traffic_pct, v3.traffic_pct) == (0.0, 0.0)

    trigger = TriggerEvent.objects.get(kind="ab_test")
    assert trigger.pk == test.trigger_id and trigger.snapshot["decision"] == "winner"
    (pair,) = trigger.snapshot["tests"]
    # v2 minus v3 in accuracy: positive, with an interval that excludes 0, over real requests.
    assert pair["decision"] == "a_better"
    assert 0 < pair["low"] <= pair["effect"] <= pair["high"]
    assert pair["pairs"] >= 20 and pair["requests"] >= 2 * pair["pairs"]
    assert set(serve(user_client, 20, start=sent)) == {v2.version}

    # The admin shows the decision as the trigger recorded it.
    admin = Client()
    admin.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    page = admin.get(f"/admin/control/abtest/{test.pk}/change/").content.decode()
    effect = f"{pair['effect']:+.4f} in [{pair['low']:+.4f}, {pair['high']:+.4f}] over {pair['pairs']} pairs"
    assert f"v{v2.version} - v{v3.version}: {effect} (a better)" in page


def test_routing_splits_the_traffic_equally_between_the_arms(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    v1, v2, v3 = versions(checkpoints, django_capture_on_commit_callbacks)
    ab_test_start(model_name="digits", version_ids=[v2.pk, v3.pk, v1.pk], policy=ab_policy(), actor=SYSTEM)
    # Three arms, production one of them: a third each (production takes what the others leave).
    assert serving.route("digits", draw=10.0).pk == v2.pk
    assert serving.route("digits", draw=40.0).pk == v3.pk
    assert serving.route("digits", draw=70.0).pk == v1.pk


@pytest.mark.parametrize(
    ("case", "field"),
    [("one version", "version_ids"), ("not an A/B policy", "policy"), ("twice", "model_name")],
)
def test_a_test_that_cannot_run_is_refused_and_changes_nothing(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any, case: str, field: str
) -> None:
    _v1, v2, v3 = versions(checkpoints, django_capture_on_commit_callbacks)
    policy = ab_policy()
    ids = [v2.pk, v3.pk]
    if case == "one version":
        ids = [v2.pk, v2.pk]
    elif case == "not an A/B policy":
        policy = policy_create(name="canary", kind="canary")
    else:
        ab_test_start(model_name="digits", version_ids=ids, policy=policy, actor=SYSTEM)
    before = list(ModelVersion.objects.order_by("pk").values_list("stage", "traffic_pct"))
    with pytest.raises(ABTestError) as info:
        ab_test_start(model_name="digits", version_ids=ids, policy=policy, actor=SYSTEM)
    assert info.value.field == field
    assert list(ModelVersion.objects.order_by("pk").values_list("stage", "traffic_pct")) == before
    assert ABTest.objects.count() == (1 if case == "twice" else 0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"canary_alpha": 0.0}, "canary_alpha"),
        ({"canary_alpha": 0.5}, "canary_alpha"),
        ({"canary_beta": -0.1}, "canary_beta"),
        ({"canary_margin": 1.5}, "canary_margin"),
    ],
)
def test_error_rates_and_margin_outside_their_range_are_refused_by_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        policy_create(name="bad", kind="canary", **fields)
    assert field in info.value.message_dict
    assert not Policy.objects.exists()
