"""Feedback: its own permission, a recorded sender, and only trusted labels steer anything."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from sklearn.datasets import load_digits

from experiments.actors import Actor
from experiments.api.tokens import api_token_create
from experiments.models import ModelVersion, ServedRequest
from experiments.permissions import RESEARCHERS_GROUP, researcher_group_ensure
from experiments.registry.datasets import CurationError, dataset_curate
from experiments.registry.services import model_version_promote, model_version_register
from experiments.registry.serving import last_request_id, version_summary, window_stats
from tests.registry.conftest import MakeExperiment

DIGITS = load_digits()


def production(make_experiment: MakeExperiment) -> ModelVersion:
    version = model_version_register(experiment_id=make_experiment().pk)
    return model_version_promote(version_id=version.pk, actor=Actor.system("alice"))


def bearer(user: User) -> Client:
    return Client(
        enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user, name='t')[1]}"
    )


def person(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="experiments", codename__in=codenames)
    )
    return user


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, body, content_type="application/json")


def served_wrongly(client: Client) -> tuple[str, int]:
    """Predict one digit and return its request id with a label that is not the prediction."""
    answer = post(client, "/serve/digits/predict", {"features": DIGITS.data[0].tolist()}).json()
    return answer["request_id"], (answer["predictions"][0] + 1) % 10


@pytest.mark.django_db
def test_a_viewer_may_predict_but_not_send_feedback(make_experiment: MakeExperiment, viewer: User) -> None:
    version = production(make_experiment)
    client = bearer(viewer)
    request_id, label = served_wrongly(client)

    refused = post(client, "/serve/digits/feedback", {"request_id": request_id, "label": label})

    assert refused.status_code == 403
    assert refused.json() == {
        "detail": "Your account lacks the permission this needs: experiments.give_feedback."
    }
    assert ServedRequest.objects.get(request_id=request_id).label is None
    assert version_summary(version)["feedback_untrusted"] == 0


@pytest.mark.django_db
def test_untrusted_labels_are_recorded_with_their_sender_but_count_for_nothing(
    make_experiment: MakeExperiment, admin_client: Client
) -> None:
    version = production(make_experiment)
    after = last_request_id()
    uma = person("uma", "view_experiment", "give_feedback")
    client = bearer(uma)
    request_id, wrong = served_wrongly(client)

    answer = post(client, "/serve/digits/feedback", {"request_id": request_id, "label": wrong})

    assert answer.status_code == 200, answer.content
    assert (answer.json()["counted"], answer.json()["trusted"]) == (False, False)
    row = ServedRequest.objects.get(request_id=request_id)
    assert (row.label, row.label_source, row.label_trusted) == (wrong, "token:uma", False)
    summary = version_summary(version)
    assert (summary["feedback"], summary["accuracy"], summary["feedback_untrusted"]) == (0, None, 1)
    window = window_stats(version, after_request=after)
    assert (window["feedback"], window["accuracy"], window["feedback_untrusted"]) == (0.0, None, 1.0)
    # Shown where people judge the model: the registry page.
    assert "1 untrusted, not counted" in admin_client.get("/registry/").content.decode()
    # Nor can such labels build a retraining set.
    with pytest.raises(CurationError, match="trusted feedback label"):
        dataset_curate(model_name="digits", actor_label="test", max_confidence=0.0)


@pytest.mark.django_db
def test_a_trusted_label_replaces_an_untrusted_one_and_is_final(
    make_experiment: MakeExperiment, labeller: User
) -> None:
    version = production(make_experiment)
    untrusted = bearer(person("uma", "view_experiment", "give_feedback"))
    trusted = Client()
    trusted.force_login(labeller)
    request_id, wrong = served_wrongly(untrusted)
    right = (wrong + 9) % 10  # the prediction itself

    post(untrusted, "/serve/digits/feedback", {"request_id": request_id, "label": wrong})
    # A session caller must send the CSRF token; this client does not enforce it.
    counted = post(trusted, "/serve/digits/feedback", {"request_id": request_id, "label": right})
    overwrite = post(untrusted, "/serve/digits/feedback", {"request_id": request_id, "label": wrong})

    assert counted.json()["counted"] is True
    assert overwrite.json()["counted"] is False
    row = ServedRequest.objects.get(request_id=request_id)
    assert (row.label, row.label_source, row.label_trusted, row.correct) == (
        right,
        "session:lara",
        True,
        True,
    )
    summary = version_summary(version)
    assert (summary["feedback"], summary["accuracy"], summary["feedback_untrusted"]) == (1, 1.0, 0)
    dataset = dataset_curate(model_name="digits", actor_label="test", max_confidence=1.01)
    assert dataset.row_count == 1 and dataset.summary["untrusted_skipped"] == 0


@pytest.mark.django_db
def test_researchers_may_give_trusted_feedback() -> None:
    researcher_group_ensure()
    codenames = set(Group.objects.get(name=RESEARCHERS_GROUP).permissions.values_list("codename", flat=True))
    assert {"give_feedback", "give_trusted_feedback"} <= codenames


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ["predict", "feedback"])
def test_serving_takes_json_only_and_bounded_bodies(
    make_experiment: MakeExperiment, token_client: Client, endpoint: str
) -> None:
    production(make_experiment)
    path = f"/serve/digits/{endpoint}"

    form = token_client.post(path, "features=1", content_type="application/x-www-form-urlencoded")
    plain = token_client.post(path, '{"features": []}', content_type="text/plain")
    huge = token_client.post(path, b"[" + b"0," * (3 << 20) + b"0]", content_type="application/json")

    for response, status in ((form, 415), (plain, 415), (huge, 413)):
        assert response.status_code == status
        assert response["Content-Type"] == "application/json"
    assert "application/json" in plain.json()["detail"]
    assert huge.json()["detail"].startswith("body: at most")


@pytest.mark.django_db
def test_a_feature_beyond_the_input_range_is_refused_naming_it(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    production(make_experiment)
    response = post(token_client, "/serve/digits/predict", {"features": [0.0] * 10 + [1e30] + [0.0] * 53})
    assert response.status_code == 400
    assert response.json()["detail"] == "features[10]: must be between -1e+06 and 1e+06"
