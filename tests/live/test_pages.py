"""The Fleet and Compare pages: who may see them and what they show."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.services import experiment_create, experiment_transition
from tests.live.helpers import log_points, run_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.live.urls_pages")]

SYSTEM = Actor.system("test")


@pytest.fixture
def client(viewer: User) -> Client:
    """Return a client logged in as a person who may view experiments."""
    client = Client()
    client.force_login(viewer)
    return client


def in_state(name: str, events: list[str]) -> Experiment:
    """Return a digits experiment moved through the given events."""
    experiment = experiment_create(name=name, recipe="digits")
    for event in events:
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return experiment


def test_the_fleet_needs_a_login() -> None:
    response = Client().get("/fleet/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_fleet_needs_the_view_permission(stranger: User) -> None:
    client = Client()
    client.force_login(stranger)
    assert client.get("/fleet/").status_code == 403
    # Compare shows chosen experiments: answered as if there were none to show.
    assert client.get("/compare/").status_code == 404


def test_the_fleet_lists_active_experiments_with_state_progress_and_sparkline(client: Client) -> None:
    running = in_state("training", ["queue", "start"])
    run = run_for(running)
    run.progress = 0.4
    run.eta_seconds = 12.0
    run.save()
    log_points(run, "loss", [(s, 1.0 / (s + 1)) for s in range(500)])
    queued = in_state("waiting", ["queue"])
    done = in_state("finished", ["cancel"])

    response = client.get("/fleet/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="fleet-row-{running.pk}"' in html
    assert f'id="fleet-row-{queued.pk}"' in html
    assert f'id="fleet-row-{done.pk}"' not in html
    assert 'data-ws-path="/ws/fleet/"' in html
    row = response.context["rows"][0]
    # What trains is on top; its sparkline is downsampled but spans the run.
    assert row.experiment == running
    assert row.run == run
    assert row.sparkline.downsampled
    assert row.sparkline.steps[0] == 0 and row.sparkline.steps[-1] == 499
    assert len(row.sparkline.steps) <= 60
    assert 'data-steps="0,' in html


def test_the_fleet_rows_fragment_is_the_table_body_only(client: Client) -> None:
    running = in_state("training", ["queue", "start"])
    response = client.get("/fleet/rows/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="fleet-row-{running.pk}"' in html
    assert "<html" not in html


def test_an_empty_fleet_says_so(client: Client) -> None:
    assert "Nothing is queued or training right now." in client.get("/fleet/").content.decode()


def test_compare_overlays_the_chosen_experiments(client: Client) -> None:
    first = in_state("a", [])
    second = in_state("b", [])
    log_points(run_for(first), "val_loss", [(1, 0.5)])
    response = client.get("/compare/", {"ids": f"{first.pk},{second.pk}", "metric": "val_loss"})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="compare-chart"' in html
    assert 'data-metric="val_loss"' in html
    config = json.loads(html.split('id="compare-series" type="application/json">')[1].split("</script>")[0])
    assert [c["id"] for c in config] == [first.pk, second.pk]
    assert response.context["metric_names"] == ["val_loss"]


def test_compare_accepts_the_forms_repeated_ids(client: Client) -> None:
    first = in_state("a", [])
    second = in_state("b", [])
    response = client.get(f"/compare/?ids={first.pk}&ids={second.pk}")
    assert response.status_code == 200
    assert [e.pk for e in response.context["chosen"]] == [first.pk, second.pk]


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        ("1,x", "experiment numbers"),
        ("999998,999999", "no experiment #999998, #999999"),
        (",".join(str(i) for i in range(1, 13)), "at most 10"),
    ],
)
def test_compare_explains_bad_ids(client: Client, ids: str, says: str) -> None:
    response = client.get("/compare/", {"ids": ids})
    assert response.status_code == 400
    assert says in response.content.decode()
    assert 'id="compare-chart"' not in response.content.decode()


def test_compare_without_a_choice_shows_the_form(client: Client) -> None:
    in_state("a", [])
    response = client.get("/compare/")
    assert response.status_code == 200
    assert 'id="compare-form"' in response.content.decode()
