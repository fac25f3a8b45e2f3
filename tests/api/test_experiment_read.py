"""GET /api/experiments and /api/experiments/{id}: filters, counts, paging, history, lineage."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.services import experiment_create, experiment_transition
from tests.api.conftest import ClientFor, MakeExperiment

URL = "/api/experiments"


def _params(**params: str | int) -> dict[str, Any]:
    return params


def test_the_list_filters_by_state_and_counts_every_state(
    api: Client, make_experiment: MakeExperiment
) -> None:
    make_experiment(name="a", state="queued")
    make_experiment(name="b", state="queued")
    make_experiment(name="c", state="running")
    make_experiment(name="d")
    data = api.get(URL, {"state": "queued"}).json()
    assert sorted(item["name"] for item in data["items"]) == ["a", "b"]
    assert data["count"] == 2
    assert data["counts"]["queued"] == 2 and data["counts"]["running"] == 1 and data["counts"]["pending"] == 1
    assert data["counts"]["deployed"] == 0  # every state is listed, even empty ones

    both = api.get(f"{URL}?state=queued&state=running").json()
    assert both["count"] == 3


def test_the_list_searches_names_and_filters_by_recipe(api: Client, make_experiment: MakeExperiment) -> None:
    make_experiment(name="Digits wide")
    make_experiment(name="digits narrow")
    make_experiment(name="other")
    data = api.get(URL, {"q": "DIGITS"}).json()
    assert sorted(item["name"] for item in data["items"]) == ["Digits wide", "digits narrow"]
    assert data["counts"]["pending"] == 2  # counts follow the search
    assert api.get(URL, {"recipe": "charlm"}).json()["count"] == 0


def test_the_list_orders_and_pages(api: Client, make_experiment: MakeExperiment) -> None:
    for name in ("b", "c", "a"):
        make_experiment(name=name)
    page = api.get(URL, _params(ordering="name", limit=2)).json()
    assert [item["name"] for item in page["items"]] == ["a", "b"]
    assert (page["count"], page["limit"], page["offset"]) == (3, 2, 0)
    rest = api.get(URL, _params(ordering="name", limit=2, offset=2)).json()
    assert [item["name"] for item in rest["items"]] == ["c"]
    newest_first = api.get(URL).json()
    assert [item["name"] for item in newest_first["items"]] == ["a", "c", "b"]


def test_bad_list_parameters_are_422_with_their_query_path(api: Client) -> None:
    response = api.get(URL, _params(state="sleeping", ordering="colour", limit=1000))
    assert response.status_code == 422
    locs = {tuple(error["loc"]) for error in response.json()["detail"]}
    assert locs == {("query", "state", 0), ("query", "ordering"), ("query", "limit")}


def test_the_list_costs_a_fixed_number_of_queries(
    api: Client, make_experiment: MakeExperiment, operator: User
) -> None:
    for i in range(3):
        make_experiment(name=f"e{i}", owner=operator)
    api.get(URL)  # warm the session and permission caches
    with CaptureQueriesContext(connection) as few:
        api.get(URL)
    for i in range(3, 12):
        make_experiment(name=f"e{i}", owner=operator)
    with CaptureQueriesContext(connection) as many:
        assert len(api.get(URL).json()["items"]) == 12
    assert len(many) == len(few)


def test_the_detail_shows_history_lineage_and_the_events_this_user_may_fire(
    api: Client,
    make_experiment: MakeExperiment,
    operator: User,
    viewer: User,
    client_for: ClientFor,
) -> None:
    experiment = make_experiment(name="parent", owner=operator)
    experiment_transition(
        experiment_id=experiment.pk, event="queue", actor=Actor.for_user(operator), reason="go"
    )
    child = make_experiment(name="child", parent=experiment)

    data = api.get(f"{URL}/{experiment.pk}").json()
    assert data["state"] == "queued" and data["owner"] == "olga"
    assert data["children_ids"] == [child.pk] and data["parent_id"] is None
    assert [
        (t["event"], t["source_state"], t["target_state"], t["actor"], t["reason"])
        for t in data["transitions"]
    ] == [("queue", "pending", "queued", "user:olga", "go")]
    assert set(data["available_events"]) == {"start", "cancel"}
    assert api.get(f"{URL}/{child.pk}").json()["parent_id"] == experiment.pk

    # Someone without permissions sees the same experiment but may fire nothing.
    assert client_for(viewer).get(f"{URL}/{experiment.pk}").json()["available_events"] == []


def test_an_unknown_experiment_is_a_404_json_answer(api: Client) -> None:
    response = api.get(f"{URL}/424242")
    assert response.status_code == 404
    assert "424242" in response.json()["detail"]
    assert not Experiment.objects.exists()


def test_a_non_numeric_id_is_a_json_error_not_an_html_page(api: Client) -> None:
    response = api.get(f"{URL}/abc")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "experiment_id"]


def test_reading_needs_the_view_permission(
    stranger: User, client_for: ClientFor, make_experiment: MakeExperiment
) -> None:
    experiment = make_experiment()
    client = client_for(stranger)
    response = client.get(URL)
    assert response.status_code == 403
    assert "view" in response.json()["detail"]
    # One experiment answers as a missing one would: its existence is not theirs to learn.
    assert client.get(f"{URL}/{experiment.pk}").json() == client.get(f"{URL}/{experiment.pk + 1000}").json()
    assert client.get(f"{URL}/{experiment.pk}").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "experiments?offset=9223372036854775808",
        "experiments?offset=-1",
        "experiments/{id}/metrics?since_step=99999999999999999999",
        "experiments/{id}/metrics?start_step=2147483648",
    ],
)
def test_out_of_range_numbers_are_a_json_client_error_naming_the_field_never_a_500(
    admin_client: Any, query: str
) -> None:
    experiment = experiment_create(name="bounds", recipe="digits")

    response = admin_client.get("/api/" + query.format(id=experiment.pk))

    assert response.status_code in (400, 422), response.content
    assert response["Content-Type"].startswith("application/json")
    assert query.split("?")[1].split("=")[0] in response.content.decode()
