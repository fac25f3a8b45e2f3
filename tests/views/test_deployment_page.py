"""The deployment page of a model: login and permissions, Promote / Roll back canary, live.json.

Checkpoints are really trained (the digits recipe) and predictions really served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.rollouts import canary_sweep
from control.canary.selectors import BUCKET_SECONDS, WINDOW_SECONDS, deployment_live
from control.policies.models import Policy
from experiments.choices import State
from experiments.models import DriftCheck, Experiment, ModelStage, ModelVersion, ServedRequest, TransitionLog
from experiments.services import experiment_create, experiment_transition
from tests.digits_models import FEATURES, SYSTEM, promote_to_production, serve_until
from tests.views.conftest import Finished, StartCanary

PAGE = "/registry/digits/"
LIVE = "/registry/digits/live.json"
PROMOTE = "/registry/digits/promote"
CANARY_ROLLBACK = "/registry/digits/canary/rollback"


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


def _promote(client: Client, experiment: Experiment, capture: Any, **extra: Any) -> Any:
    with capture(execute=True):
        return client.post(PROMOTE, {"experiment_id": experiment.pk, **extra})


# --- who may see it ----------------------------------------------------------------------


def test_the_page_and_its_live_feed_need_a_login(client: Client, in_production: ModelVersion) -> None:
    for url in (PAGE, LIVE):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


def test_the_page_and_its_live_feed_answer_404_to_someone_who_may_not_view_models(
    make_user: Callable[..., User], in_production: ModelVersion
) -> None:
    client = Client()
    client.force_login(make_user("nobody"))
    # As for a model that does not exist: whether one does is not theirs to learn.
    assert client.get(PAGE).status_code == 404
    assert client.get(LIVE).status_code == 404


def test_an_unknown_model_is_not_found(viewer: User) -> None:
    client = Client()
    client.force_login(viewer)
    assert client.get("/registry/no-such-model/").status_code == 404
    response = client.get("/registry/no-such-model/live.json")
    assert response.status_code == 404
    assert "no-such-model" in response.json()["detail"]


def test_a_recipe_with_no_version_yet_has_a_page_to_promote_its_first_from(
    operator_client: Client, finished: Finished
) -> None:
    first = finished("first")
    html = operator_client.get(PAGE).content.decode()
    assert f'<tr data-experiment-id="{first.pk}">' in html
    assert "nothing in production" in html
    payload = operator_client.get(LIVE).json()
    assert (payload["production"], payload["rollout"]) == (None, None)
    assert payload["split"] == {"production": None, "canary": None}
    assert payload["traffic"]["versions"] == [] and payload["drift"] == []


def test_the_registry_links_each_model_to_its_deployment_page(
    viewer: User, in_production: ModelVersion
) -> None:
    client = Client()
    client.force_login(viewer)
    assert f'href="{PAGE}"' in client.get("/registry/").content.decode()


# --- what it shows -----------------------------------------------------------------------


def test_it_shows_production_the_live_canary_its_stages_and_the_split(
    operator_client: Client, live_canary: CanaryRollout
) -> None:
    rollout = live_canary

    response = operator_client.get(PAGE)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'production v<span data-field="production">1</span>' in html
    assert 'id="split-production" data-pct="90"' in html
    assert 'id="split-canary" data-pct="10"' in html
    assert 'data-stage="c10" aria-current="step"' in html
    assert f'<input type="hidden" name="rollout_id" value="{rollout.pk}"' in html
    assert "Roll back canary…" in html
    assert f'<tr data-rollout-id="{rollout.pk}" data-status="running">' in html
    assert rollout.experiment.get_absolute_url() in html
    # plotly.js is served from this site, never a CDN; the page script polls live.json.
    assert "/static/vendor/plotly.min.js" in html and "/static/js/deployment.js" in html
    assert f'data-live-url="{LIVE}"' in html
    assert 'id="deployment-live"' in html  # the first drawing needs no round trip


def test_a_viewer_sees_no_buttons(viewer: User, live_canary: CanaryRollout, finished: Finished) -> None:
    finished("next candidate")
    client = Client()
    client.force_login(viewer)

    html = client.get(PAGE).content.decode()

    assert "next candidate" in html
    assert "needs the promote permission" in html
    assert ">Promote</button>" not in html
    assert "Roll back canary" not in html
    assert "confirm-rollback-digits" not in html


# --- Promote -----------------------------------------------------------------------------


# Transactional: the promote hooks run at commit, as in production, before the message is written.
@pytest.mark.django_db(transaction=True)
def test_promote_starts_a_canary_when_an_enabled_canary_policy_applies(
    operator_client: Client,
    in_production: ModelVersion,
    canary_policy: Policy,
    finished: Finished,
    django_capture_on_commit_callbacks: Any,
) -> None:
    candidate = finished("candidate")
    assert ">Promote</button>" in operator_client.get(PAGE).content.decode()

    response = _promote(operator_client, candidate, django_capture_on_commit_callbacks)

    assert response.status_code == 302
    assert response["Location"] == PAGE
    rollout = CanaryRollout.objects.get(experiment=candidate)
    assert (rollout.status, rollout.stage["name"], rollout.baseline_id) == (
        RolloutStatus.RUNNING,
        "c10",
        in_production.pk,
    )
    version = rollout.candidate
    assert (version.stage, version.traffic_pct) == (ModelStage.CANARY, 10.0)
    candidate.refresh_from_db()
    assert candidate.state == State.PROMOTING
    assert TransitionLog.objects.get(experiment=candidate, event="promote").actor == "user:olga"
    page = operator_client.get(PAGE).content.decode()
    assert "v2 is the canary, 10% of requests in stage c10." in page


# Transactional: the promote hooks run at commit, as in production, before the message is written.
@pytest.mark.django_db(transaction=True)
def test_promote_without_a_canary_policy_registers_a_canary_that_gets_no_traffic(
    operator_client: Client,
    in_production: ModelVersion,
    finished: Finished,
    django_capture_on_commit_callbacks: Any,
) -> None:
    candidate = finished("candidate")

    response = _promote(operator_client, candidate, django_capture_on_commit_callbacks)

    assert response.status_code == 302
    assert not CanaryRollout.objects.exists()
    assert ModelVersion.objects.get(experiment=candidate).traffic_pct == 0.0
    assert "no enabled canary policy applies" in operator_client.get(PAGE).content.decode()


def test_a_refused_promote_shows_why_and_changes_nothing(
    operator_client: Client, live_canary: CanaryRollout, django_capture_on_commit_callbacks: Any
) -> None:
    rollout = live_canary

    response = _promote(operator_client, rollout.experiment, django_capture_on_commit_callbacks)

    assert response.status_code == 302
    page = operator_client.get(PAGE).content.decode()
    assert "Cannot promote &#x27;candidate&#x27;: it is already promoting." in page
    assert CanaryRollout.objects.get().pk == rollout.pk


def test_promote_of_an_experiment_of_another_model_is_refused(
    operator_client: Client, in_production: ModelVersion
) -> None:
    other = experiment_create(name="char model", recipe="charlm")
    response = operator_client.post(PROMOTE, {"experiment_id": other.pk}, follow=True)
    assert "no experiment of model &#x27;digits&#x27; with that number" in response.content.decode()
    other.refresh_from_db()
    assert other.state == State.PENDING


# --- Roll back canary --------------------------------------------------------------------


def test_roll_back_canary_ends_the_rollout_and_production_keeps_serving(
    operator_client: Client, live_canary: CanaryRollout, django_capture_on_commit_callbacks: Any
) -> None:
    rollout = live_canary

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            CANARY_ROLLBACK, {"rollout_id": rollout.pk, "reason": "latency looks off"}
        )

    assert response.status_code == 302 and response["Location"] == PAGE
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ROLLED_BACK
    candidate = ModelVersion.objects.get(pk=rollout.candidate_id)
    assert (candidate.stage, candidate.traffic_pct) == (ModelStage.ARCHIVED, 0.0)
    rollout.experiment.refresh_from_db()
    assert rollout.experiment.state == State.ROLLED_BACK
    log = TransitionLog.objects.get(experiment=rollout.experiment, event="rollback")
    assert (log.actor, log.reason) == ("user:olga", "latency looks off")
    assert {serving.predict(model_name="digits", payload=FEATURES)["version"] for _ in range(20)} == {1}
    page = operator_client.get(PAGE).content.decode()
    assert "Canary v2 of digits rolled back: v1 serves every request." in page
    assert f'<tr data-rollout-id="{rollout.pk}" data-status="rolled_back">' in page


def test_roll_back_canary_of_a_rollout_that_already_ended_does_nothing(
    operator_client: Client,
    live_canary: CanaryRollout,
    finished: Finished,
    django_capture_on_commit_callbacks: Any,
) -> None:
    old = live_canary
    # While the person looked at it, the canary ended and the next promotion's canary started.
    newer = finished("newer")
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=newer.pk, event="promote", actor=SYSTEM)
        experiment_transition(experiment_id=old.experiment_id, event="rollback", actor=SYSTEM)
    canary_sweep()

    response = operator_client.post(CANARY_ROLLBACK, {"rollout_id": old.pk}, follow=True)

    assert "No canary of digits is under way any more" in response.content.decode()
    assert CanaryRollout.objects.get(experiment=newer).status == RolloutStatus.RUNNING
    newer.refresh_from_db()
    assert newer.state == State.PROMOTING


def test_the_production_rollback_dialog_comes_back_to_the_deployment_page(
    operator_client: Client,
    in_production: ModelVersion,
    finished: Finished,
    django_capture_on_commit_callbacks: Any,
) -> None:
    second = finished("second")
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(second)
    assert 'data-dialog-open="confirm-rollback-digits"' in operator_client.get(PAGE).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/registry/digits/rollback", {"return_to": "model"})

    assert response["Location"] == PAGE
    assert ModelVersion.objects.get(stage=ModelStage.PRODUCTION).pk == in_production.pk


# --- permissions and CSRF on the buttons -------------------------------------------------


def test_the_buttons_need_their_permissions(
    viewer: User, live_canary: CanaryRollout, finished: Finished
) -> None:
    rollout = live_canary
    waiting = finished("waiting")
    client = Client()
    client.force_login(viewer)

    assert client.post(PROMOTE, {"experiment_id": waiting.pk}).status_code == 403
    assert client.post(CANARY_ROLLBACK, {"rollout_id": rollout.pk}).status_code == 403

    waiting.refresh_from_db()
    rollout.refresh_from_db()
    assert waiting.state == State.EVALUATING
    assert rollout.status == RolloutStatus.RUNNING


def test_the_buttons_refuse_a_post_without_the_csrf_token(
    operator: User, canary_policy: Policy, finished: Finished, django_capture_on_commit_callbacks: Any
) -> None:
    candidate = finished("candidate")
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.post(PROMOTE, {"experiment_id": candidate.pk}).status_code == 403
    assert not CanaryRollout.objects.exists()
    assert client.post(CANARY_ROLLBACK).status_code == 403

    # The page's own form carries the token: the same POST with it goes through.
    client.get(PAGE)
    token = client.cookies["csrftoken"].value
    response = _promote(client, candidate, django_capture_on_commit_callbacks, csrfmiddlewaretoken=token)
    assert response.status_code == 302
    rollout = CanaryRollout.objects.get(experiment=candidate)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(CANARY_ROLLBACK, {"rollout_id": rollout.pk, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ROLLED_BACK


# --- live.json ---------------------------------------------------------------------------


def _served_in_window(payload: dict[str, Any]) -> dict[int, int]:
    return {v["version"]: sum(v["requests"]) for v in payload["traffic"]["versions"]}


def test_live_json_follows_the_split_and_the_served_traffic_as_the_canary_advances(
    operator_client: Client,
    in_production: ModelVersion,
    start_canary: StartCanary,
    django_capture_on_commit_callbacks: Any,
) -> None:
    rollout = start_canary(("c10", 10, 60), ("c50", 50, 60), ("full", 100, 0), min_requests=5)
    candidate = rollout.candidate
    served = serve_until(candidate, 5)
    DriftCheck.objects.create(version=in_production, score=0.02, window_rows=200)
    DriftCheck.objects.create(version=in_production, score=0.07, window_rows=200)

    payload = operator_client.get(LIVE).json()

    assert payload["type"] == "deployment.live" and payload["production"] == 1
    assert payload["split"] == {
        "production": {"version": 1, "pct": 90.0},
        "canary": {"version": 2, "pct": 10.0},
    }
    state = payload["rollout"]
    assert (state["live"], state["status"], state["stage"], state["candidate"]) == (True, "running", "c10", 2)
    assert (state["stage_requests"], state["min_requests"], state["duration_seconds"]) == (5, 5, 60)
    assert [s["current"] for s in state["stages"]] == [True, False, False]
    assert _served_in_window(payload) == {1: served[1], 2: served[2]}
    traffic = payload["traffic"]
    assert len(traffic["t"]) == WINDOW_SECONDS // BUCKET_SECONDS
    for series in traffic["versions"]:
        assert len(series["requests"]) == len(traffic["t"])
        assert {r for r in series["error_rate"] if r is not None} == {0.0}
        assert any(p is not None and p > 0 for p in series["p99_ms"])
    assert [(d["version"], d["score"]) for d in payload["drift"]] == [(1, [0.02, 0.07])]

    # The stage has lasted its minute (as the beat would find it) with enough requests: on to c50.
    with django_capture_on_commit_callbacks(execute=True):
        outcome = canary_sweep(now=rollout.stage_started_at + timedelta(seconds=61))
    assert outcome == {str(rollout.pk): "advanced"}

    payload = operator_client.get(LIVE).json()
    assert payload["split"]["canary"] == {"version": 2, "pct": 50.0}
    assert payload["split"]["production"] == {"version": 1, "pct": 50.0}
    assert payload["rollout"]["stage"] == "c50"
    assert [s["result"] for s in payload["rollout"]["stages"]] == ["passed", "current", ""]


def test_live_json_shows_a_finished_rollout_once_the_canary_is_deployed(
    operator_client: Client, start_canary: StartCanary, django_capture_on_commit_callbacks: Any
) -> None:
    rollout = start_canary(min_requests=3)
    serve_until(rollout.candidate, 3)

    with django_capture_on_commit_callbacks(execute=True):
        canary_sweep(now=rollout.stage_started_at + timedelta(seconds=61))

    payload = operator_client.get(LIVE).json()
    assert payload["production"] == 2
    assert payload["split"] == {"production": {"version": 2, "pct": 100.0}, "canary": None}
    assert (payload["rollout"]["live"], payload["rollout"]["status"]) == (False, "deployed")


def test_the_chart_buckets_count_errors_and_latency_where_the_requests_fell(
    in_production: ModelVersion,
) -> None:
    now = timezone.now()
    rows = [
        (timedelta(seconds=30), True, 4.0),
        (timedelta(seconds=30), False, 900.0),
        (timedelta(seconds=30), True, 8.0),
        (timedelta(minutes=5), True, 2.0),
        (timedelta(minutes=20), True, 1.0),  # before the window: not counted
    ]
    for age, ok, latency in rows:
        served = ServedRequest.objects.create(version=in_production, ok=ok, latency_ms=latency)
        ServedRequest.objects.filter(pk=served.pk).update(created_at=now - age)

    traffic = deployment_live(model_name="digits", now=now)["traffic"]

    (series,) = traffic["versions"]
    assert sum(series["requests"]) == 4
    busy = [i for i, n in enumerate(series["requests"]) if n == 3]
    assert len(busy) == 1
    assert series["error_rate"][busy[0]] == pytest.approx(1 / 3, abs=1e-4)
    # p99 of the answered requests only (4 and 8 ms): the failed one's 900 ms is not latency.
    p99 = series["p99_ms"][busy[0]]
    assert p99 is not None and 7.9 < p99 <= 8.0
    quiet = [i for i, n in enumerate(series["requests"]) if n == 0]
    assert all(series["error_rate"][i] is None and series["p99_ms"][i] is None for i in quiet)


def test_a_stage_with_its_requests_and_time_says_which_test_it_still_waits_on(
    operator_client: Client, in_production: ModelVersion, start_canary: StartCanary
) -> None:
    rollout = start_canary(("c10", 10, 60), ("full", 100, 0), min_requests=5)
    # A narrow margin: five clean answers do not yet show the error rate is under 5%.
    Policy.objects.filter(name="digits-canary").update(canary_margin=0.05)
    serve_until(rollout.candidate, 5)
    payload = operator_client.get(LIVE).json()
    assert payload["rollout"]["waiting_for_evidence"] == ""  # its minute has not passed yet

    CanaryRollout.objects.filter(pk=rollout.pk).update(
        stage_started_at=timezone.now() - timedelta(seconds=120)
    )
    payload = operator_client.get(LIVE).json()
    assert payload["rollout"]["waiting_for_traffic"] is False
    assert payload["rollout"]["waiting_for_evidence"] == "error_rate above 0.05: 0 of 5 (0.000)"
    page = operator_client.get(PAGE).content.decode()
    assert "Judging." in page and "0 of 5" in page
    assert canary_sweep() == {str(rollout.pk): "waiting"}

    # Enough clean answers settle the test: nothing left to wait on, and the sweep deploys it.
    serve_until(rollout.candidate, 100)
    assert operator_client.get(LIVE).json()["rollout"]["waiting_for_evidence"] == ""
    assert canary_sweep() == {str(rollout.pk): "deployed"}
