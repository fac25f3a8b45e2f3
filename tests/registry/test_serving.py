"""Serving: predictions from a really trained checkpoint, input checks, hash checks, counters, auth."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from sklearn.datasets import load_digits

from experiments.actors import Actor
from experiments.models import ModelStage, ModelVersion, ServedRequest, ServingStats
from experiments.registry.services import (
    RegistryError,
    model_rollback,
    model_version_promote,
    model_version_register,
)
from experiments.registry.serving import version_summary
from experiments.runs.execution import file_sha256
from tests.registry.conftest import MakeExperiment

ALICE = Actor.system("alice")


def production(make_experiment: MakeExperiment, **kwargs: Any) -> ModelVersion:
    """Register an experiment's checkpoint and put it in production."""
    version = model_version_register(experiment_id=make_experiment(**kwargs).pk)
    return model_version_promote(version_id=version.pk, actor=ALICE)


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, body, content_type="application/json")


@pytest.mark.django_db
def test_predict_with_a_trained_checkpoint_recognises_digits_and_names_the_version(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    production(make_experiment)
    digits = load_digits()
    images, labels = digits.data[:40].tolist(), digits.target[:40].tolist()

    single = post(token_client, "/serve/digits/predict", {"features": images[0]})
    batch = post(token_client, "/serve/digits/predict", {"instances": images})

    assert single.status_code == 200, single.content
    body = single.json()
    assert body["version"] == 1
    assert body["predictions"] == [labels[0]]
    assert len(body["probabilities"][0]) == 10
    assert abs(sum(body["probabilities"][0]) - 1.0) < 1e-3
    predictions = batch.json()["predictions"]
    assert all(0 <= p <= 9 for p in predictions)
    assert sum(p == y for p, y in zip(predictions, labels, strict=True)) >= 34  # ≥ 85% right


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"features": [1.0] * 63}, "features: must have 64 numbers, got 63"),
        ({"features": [1.0] * 63 + ["x"]}, "features[63]: must be a finite number"),
        ({"features": [True] * 64}, "features[0]: must be a finite number"),
        ({"features": [10**400] * 64}, "features[0]: must be a finite number"),
        ({"features": "0,1,2"}, "features: must be a list"),
        ({"instances": [[0.0] * 64, [0.0] * 3]}, "instances[1]: must have 64 numbers"),
        ({"instances": []}, "instances: must be a non-empty list"),
        ({"pixels": [0.0] * 64}, "features: required"),
        ([0.0] * 64, "body: must be a JSON object"),
    ],
)
def test_bad_input_is_answered_400_naming_the_field(
    make_experiment: MakeExperiment, token_client: Client, body: Any, field: str
) -> None:
    production(make_experiment)
    response = post(token_client, "/serve/digits/predict", body)
    assert response.status_code == 400
    assert field in response.json()["detail"]


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_answered_400(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    production(make_experiment)
    response = token_client.post("/serve/digits/predict", "features=1,2", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"] == "body: not valid JSON"


@pytest.mark.django_db
def test_a_body_nested_too_deeply_is_answered_400_not_a_server_error(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    production(make_experiment)
    deep = "[" * 100_000 + "]" * 100_000
    response = token_client.post("/serve/digits/predict", deep, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"] == "body: JSON nested too deeply"


@pytest.mark.django_db
def test_a_feedback_label_outside_the_models_classes_is_refused_and_not_counted(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    version = production(make_experiment)
    answer = post(token_client, "/serve/digits/predict", {"features": load_digits().data[0].tolist()}).json()

    for label in (10, 10**20, 1_000_000):
        refused = post(
            token_client, "/serve/digits/feedback", {"request_id": answer["request_id"], "label": label}
        )
        assert refused.status_code == 400
        assert refused.json()["detail"] == "label: must be a class of model 'digits', 0 to 9"
    assert version_summary(version)["feedback"] == 0
    assert ServedRequest.objects.get(request_id=answer["request_id"]).label is None


@pytest.mark.django_db
def test_an_unknown_model_is_404_and_a_model_without_production_is_503(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    assert post(token_client, "/serve/nosuch/predict", {"features": [0] * 64}).status_code == 404
    model_version_register(experiment_id=make_experiment().pk)  # registered, never promoted
    response = post(token_client, "/serve/digits/predict", {"features": [0] * 64})
    assert response.status_code == 503
    assert "no servable production version" in response.json()["detail"]


@pytest.mark.django_db
def test_a_checkpoint_that_does_not_match_its_hash_is_refused_and_never_routed_to(
    make_experiment: MakeExperiment,
    token_client: Client,
    tmp_path: Path,
    digits_checkpoint: tuple[Path, dict[str, float]],
) -> None:
    good, _ = digits_checkpoint
    tampered = tmp_path / "tampered.pt"
    shutil.copy(good, tampered)
    registered_sha = file_sha256(tampered)
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes
    tampered.write_bytes(bytes(data))
    version = production(make_experiment, checkpoint=tampered, sha256=registered_sha)

    first = post(token_client, "/serve/digits/predict", {"features": [0] * 64})
    assert first.status_code == 503
    assert "does not match its registered sha256" in first.json()["detail"]
    version.refresh_from_db()
    assert "sha256" in version.serve_error
    # From now on it is not routed to at all, and it cannot be promoted again.
    second = post(token_client, "/serve/digits/predict", {"features": [0] * 64})
    assert "no servable production version" in second.json()["detail"]
    # A good version takes over; rolling back to the broken one is refused.
    assert production(make_experiment, name="good").version == 2
    assert post(token_client, "/serve/digits/predict", {"features": [0] * 64}).json()["version"] == 2
    with pytest.raises(RegistryError, match="cannot be served"):
        model_rollback(model_name="digits", actor=ALICE)
    with pytest.raises(RegistryError, match="cannot be served"):
        model_version_promote(version_id=version.pk, actor=ALICE)


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_all_succeed_and_are_all_counted(
    make_experiment: MakeExperiment, token: str
) -> None:
    version = production(make_experiment)
    threads, per_thread = 6, 5
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        try:
            for _ in range(per_thread):
                response = post(client, "/serve/digits/predict", {"features": [3.0] * 64})
                with lock:
                    statuses.append(response.status_code)
        finally:
            connection.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)

    assert statuses == [200] * (threads * per_thread)
    stats = ServingStats.objects.get(version=version)
    assert (stats.request_count, stats.error_count) == (threads * per_thread, 0)
    summary = version_summary(version)
    assert summary["requests"] == threads * per_thread
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]


@pytest.mark.django_db
def test_feedback_labels_count_toward_the_versions_accuracy_once(
    make_experiment: MakeExperiment, token_client: Client
) -> None:
    version = production(make_experiment)
    digits = load_digits()
    answer = post(token_client, "/serve/digits/predict", {"features": digits.data[0].tolist()}).json()

    right = post(token_client, "/serve/digits/feedback", {"request_id": answer["request_id"], "label": 0})
    again = post(token_client, "/serve/digits/feedback", {"request_id": answer["request_id"], "label": 0})
    bad = post(token_client, "/serve/digits/feedback", {"request_id": answer["request_id"], "label": "zero"})
    unknown = post(token_client, "/serve/digits/feedback", {"request_id": "not-a-uuid", "label": 1})

    assert right.json()["counted"] is True and again.json()["counted"] is False
    assert bad.status_code == 400 and "label" in bad.json()["detail"]
    assert unknown.status_code == 400 and "request_id" in unknown.json()["detail"]
    summary = version_summary(version)
    assert (summary["feedback"], summary["accuracy"]) == (1, 1.0)


@pytest.mark.django_db
def test_serving_needs_a_token_or_a_session_with_csrf(
    make_experiment: MakeExperiment, viewer: Any, token_client: Client
) -> None:
    production(make_experiment)
    body = {"features": [0] * 64}
    assert post(Client(), "/serve/digits/predict", body).status_code == 401
    assert post(Client(HTTP_AUTHORIZATION="Bearer wrong"), "/serve/digits/predict", body).status_code == 401
    session = Client(enforce_csrf_checks=True)
    session.force_login(viewer)
    refused = post(session, "/serve/digits/predict", body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    session.get("/registry/")  # sets the csrftoken cookie
    with_csrf = session.post(
        "/serve/digits/predict",
        body,
        content_type="application/json",
        headers={"X-CSRFToken": session.cookies["csrftoken"].value},
    )
    assert with_csrf.status_code == 200
    # The token client enforces CSRF checks too, and needs no CSRF token.
    assert post(token_client, "/serve/digits/predict", body).status_code == 200
    assert token_client.get("/serve/digits/predict").status_code == 405
    assert ModelVersion.objects.get().stage == ModelStage.PRODUCTION
