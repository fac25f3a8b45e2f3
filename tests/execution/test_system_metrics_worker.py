"""Through a real Celery worker: a digits run stores its system metrics beside its training curves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.actors import Actor
from experiments.choices import State
from experiments.models import MetricPoint, Run
from experiments.runs.system import CPU_PERCENT, GPU_MEM_MB, GPU_UTIL, RSS_MB
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_a_digits_run_stores_sys_points_at_its_steps_and_the_history_api_serves_them(
    start_celery_worker: Callable[..., WorkerHandle],
) -> None:
    start_celery_worker(SYSTEM_METRICS_SECONDS="0.3")
    # 46 steps of at least 40 ms: several samples, each at another step.
    experiment = experiment_create(
        name="digits sys", recipe="digits", config={"epochs": 2, "batch_size": 64, "step_delay_ms": 40}
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))

    def done() -> bool:
        experiment.refresh_from_db()
        return experiment.state not in (State.QUEUED, State.RUNNING)

    wait_for(done, timeout=90, what="the run to end")
    run = Run.objects.get(experiment=experiment)
    rss: list[Any] = list(MetricPoint.objects.filter(run=run, name=RSS_MB).values_list("step", "value"))
    cpu: list[Any] = list(MetricPoint.objects.filter(run=run, name=CPU_PERCENT).values_list("step", "value"))
    assert len(rss) >= 2 and len(cpu) == len(rss), (rss, cpu)
    # The run's own pool process: a trained torch model takes far more than 50 MB.
    assert all(value > 50 for _, value in rss), rss
    assert all(0 <= step <= run.last_step for step, _ in rss)
    assert max(value for _, value in cpu) > 0, cpu
    if not (run.device or "cpu").startswith("cuda"):
        assert not MetricPoint.objects.filter(run=run, name__in=[GPU_UTIL, GPU_MEM_MB]).exists()
    # Training went on as without them.
    assert MetricPoint.objects.filter(run=run, name="loss").count() == run.last_step

    user = User.objects.create_superuser("sysviewer", password="pw-sysviewer-1")
    client = Client()
    client.force_login(user)
    body = client.get(f"/api/experiments/{experiment.pk}/metrics").json()
    assert body["series"][RSS_MB]["steps"] == [step for step, _ in sorted(rss)]
