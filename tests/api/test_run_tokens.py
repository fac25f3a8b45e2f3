"""Run tokens: one signed token per run, for an external client and a worker's script alike; live runs only."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint, Run
from experiments.runs.tokens import run_token_mint, run_token_verify
from experiments.services import experiment_create
from tests.api.conftest import TokenFor


def _post(url: str, body: Any, token: str) -> Any:
    return Client().post(
        url, json.dumps(body), content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


def _worker_run(name: str = "script on a worker") -> tuple[Run, str]:
    """Return a running attempt of a worker experiment and the token its worker hands the script."""
    experiment = experiment_create(name=name, recipe="digits")  # executor worker
    Experiment.objects.filter(pk=experiment.pk).update(state=State.RUNNING)
    beat = timezone.now()
    run = Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.RUNNING,
        worker="w1",
        started_at=beat,
        heartbeat_at=beat,
    )
    return run, run_token_mint(run_id=run.pk, experiment_id=experiment.pk)


def test_a_run_token_names_its_run_and_cannot_be_altered() -> None:
    token = run_token_mint(run_id=12, experiment_id=3)

    claims = run_token_verify(token)

    assert claims is not None and (claims.run_id, claims.experiment_id) == (12, 3)
    assert run_token_verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None
    assert run_token_verify("cru_" + token[4:]) is None


def test_a_worker_runs_script_sends_metrics_with_its_token_once_each(db: Any) -> None:
    run, token = _worker_run()
    batch = {"points": [{"name": "loss", "step": s, "value": 1.0 / (s + 1)} for s in range(5)]}
    url = f"/api/runs/{run.pk}/metrics"

    first = _post(url, batch, token)
    again = _post(url, batch, token)  # a retry after a lost answer

    assert first.status_code == again.status_code == 200
    assert first.json() == {"stop": False, "reason": None}
    stored = list(MetricPoint.objects.filter(run=run).order_by("step").values_list("step", "value"))
    assert stored == [(s, 1.0 / (s + 1)) for s in range(5)]


def test_the_client_does_not_keep_a_worker_run_alive_nor_finish_it(db: Any) -> None:
    run, token = _worker_run()
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    before = Run.objects.get(pk=run.pk).heartbeat_at

    beat = _post(f"/api/runs/{run.pk}/heartbeat", {}, token)
    finish = _post(f"/api/runs/{run.pk}/finish", {"status": "completed"}, token)

    assert beat.status_code == 200 and beat.json()["stop"] is False
    assert finish.status_code == 409 and "the worker ends it" in finish.json()["detail"]
    after = Run.objects.get(pk=run.pk)
    assert after.heartbeat_at == before and after.status == RunStatus.RUNNING


def test_a_cancel_reaches_the_script_through_the_answer(db: Any) -> None:
    run, token = _worker_run()
    Run.objects.filter(pk=run.pk).update(cancel_requested_at=timezone.now())

    answer = _post(
        f"/api/runs/{run.pk}/metrics", {"points": [{"name": "loss", "step": 0, "value": 1}]}, token
    )

    assert answer.status_code == 200 and answer.json()["stop"] is True


def test_a_worker_runs_token_speaks_for_that_run_only_and_only_while_it_runs(
    operator: User, token_for: TokenFor
) -> None:
    run, token = _worker_run()
    other, _ = _worker_run("another script")
    point = {"points": [{"name": "loss", "step": 0, "value": 1.0}]}

    elsewhere = _post(f"/api/runs/{other.pk}/metrics", point, token)
    listing = Client().get("/api/experiments", headers={"Authorization": f"Bearer {token}"})
    new_run = _post("/api/runs", {"experiment": "sneaky"}, token)
    # A person's token does not write into a worker's run: only the script the worker runs does.
    person = _post(f"/api/runs/{run.pk}/metrics", point, token_for(operator))
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    ended = _post(f"/api/runs/{run.pk}/metrics", point, token)

    assert elsewhere.status_code == listing.status_code == new_run.status_code == 403
    assert person.status_code == 404
    assert ended.status_code == 401
    assert not MetricPoint.objects.exists()


def test_an_ended_runs_token_is_refused_without_locking_its_host_out(db: Any) -> None:
    run, token = _worker_run()
    Run.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)
    point = {"points": [{"name": "loss", "step": 0, "value": 1.0}]}

    # Far more late requests than the lockout allows wrong tokens: each is a plain 401.
    answers = [_post(f"/api/runs/{run.pk}/metrics", point, token).status_code for _ in range(12)]
    forged = _post(f"/api/runs/{run.pk}/metrics", point, token[:-3] + "xyz").status_code

    assert answers == [401] * 12 and forged == 401
    assert not MetricPoint.objects.exists()
