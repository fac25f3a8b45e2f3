"""Serving under property-based fuzzing: any body to predict or feedback is answered, never with a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import experiments.registry.serving as serving
from experiments.actors import Actor
from experiments.api.tokens import api_token_create
from experiments.registry.services import model_version_promote, model_version_register
from tests.digits_models import evaluating_digits_experiment, train_digits

# What a caller may be answered: a prediction or label (200), or a refusal that names the
# problem (400 bad field, 404 unknown request id, 413 too big, 415 not JSON). Never 5xx.
ANSWERS = {200, 400, 404, 413, 415}
FUZZ = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Edges: the input bound, past float32's range (3.4e38), near float64's, past 2**53.
edges = st.sampled_from([1e39, -1.7e308, 2**53 + 1, 1e7, 1e6, -1e6])
numbers = st.one_of(
    edges,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)
# A JSON integer that no float holds, kept out of `numbers`: a row with one is refused early.
wild_numbers = st.one_of(numbers, st.just(10**400))
scalars = st.one_of(st.none(), st.booleans(), wild_numbers, st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)
pixels = st.one_of(st.floats(min_value=0, max_value=16), st.integers(min_value=0, max_value=16))
image = st.lists(pixels, min_size=64, max_size=64)
# A real-looking image with one value replaced by any number: where range bugs hide.
edged_image = st.tuples(image, st.integers(min_value=0, max_value=63), edges | numbers).map(
    lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]
)
rows = st.one_of(edged_image, image, st.lists(numbers, max_size=70), json_values)
predict_bodies = st.one_of(
    st.fixed_dictionaries({"features": rows}),
    st.fixed_dictionaries({"instances": st.lists(rows, min_size=1, max_size=4)}),
    json_values,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A small digits model, really trained once for this module."""
    return train_digits(tmp_path_factory.mktemp("fuzz-digits"), epochs=2, hidden=16, seed=0)


@pytest.fixture
def client(db: Any, checkpoint: tuple[Path, dict[str, float]]) -> Iterator[Client]:
    """A client with a trusted labeller's token, and digits in production."""
    path, metrics = checkpoint
    experiment = evaluating_digits_experiment(
        "fuzzed", path, metrics=metrics, config={"epochs": 2, "hidden": 16}
    )
    version = model_version_register(experiment_id=experiment.pk)
    model_version_promote(version_id=version.pk, actor=Actor.system("fuzz"))
    user = User.objects.create_superuser("fuzz", email="")
    serving.clear_cache()  # row ids are reused after a test's rollback
    yield Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user, name='fuzz')[1]}")
    serving.clear_cache()


def strict_json(response: Any) -> Any:
    """Return the response's JSON, refusing NaN and Infinity (which no JSON parser has to accept)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    assert response["Content-Type"].split(";")[0] == "application/json"
    return json.loads(response.content, parse_constant=refuse)


def answered(response: Any) -> Any:
    assert response.status_code in ANSWERS, (response.status_code, response.content[:300])
    body = strict_json(response)
    if response.status_code != 200:
        assert isinstance(body["detail"], str) and body["detail"]
    return body


def send(client: Client, endpoint: str, body: Any, content_type: str = "application/json") -> Any:
    # allow_nan=False is not what a client must do: Python's dumps writes 1e400 as Infinity.
    raw = json.dumps(body) if not isinstance(body, bytes) else body
    return client.post(f"/serve/digits/{endpoint}", raw, content_type=content_type)


def test_predict_answers_any_body_without_a_server_error(client: Client) -> None:
    @FUZZ
    @given(body=predict_bodies)
    def check(body: Any) -> None:
        answered(send(client, "predict", body))

    check()


def test_predict_answers_any_bytes_and_content_type_without_a_server_error(client: Client) -> None:
    @FUZZ
    @given(
        raw=st.binary(max_size=200),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
        ),
    )
    def check(raw: bytes, content_type: str) -> None:
        answered(send(client, "predict", raw, content_type))

    check()


def test_feedback_answers_any_body_without_a_server_error(client: Client) -> None:
    served = [
        answered(send(client, "predict", {"features": [float(i % 17)] * 64}))["request_id"] for i in range(3)
    ]
    batch = answered(send(client, "predict", {"instances": [[0.0] * 64] * 2}))["request_id"]
    request_ids = st.one_of(st.sampled_from([*served, batch]), st.uuids().map(str), json_values)
    labels = st.one_of(st.integers(min_value=-5, max_value=12), json_values)

    @FUZZ
    @given(
        body=st.one_of(
            st.fixed_dictionaries({"request_id": request_ids, "label": labels}),
            st.fixed_dictionaries({"request_id": request_ids}),
            json_values,
        )
    )
    def check(body: Any) -> None:
        answer = answered(send(client, "feedback", body))
        if "counted" in answer:
            assert isinstance(body["label"], int) and 0 <= body["label"] <= 9

    check()
