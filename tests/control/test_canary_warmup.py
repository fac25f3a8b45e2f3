"""A canary is loaded and warmed before it gets traffic; latency is judged on warm requests only.

Real checkpoints: one whose load is slow (the checkpoint rehearses it with serving.load_delay_ms,
as a big model on a cold disk would), one whose every prediction is slow (serve_delay_ms).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.canary.rollouts import rollout_evaluate
from control.policies.authoring import policy_create
from experiments.models import ModelStage, ModelVersion, ServedRequest
from experiments.services import experiment_transition
from tests.digits_models import (
    FEATURES,
    SYSTEM,
    evaluating_digits_experiment,
    promote_to_production,
    serve_until,
    train_digits,
)

pytestmark = pytest.mark.django_db
LOAD_DELAY_MS = 3000.0
# Far above a warm answer (a few ms) even on a busy machine, far below a load.
LATENCY_LIMIT_MS = 1000


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A normal digits checkpoint, the same model slow to load, and one slow on every prediction."""
    folder = tmp_path_factory.mktemp("warmup-ckpt")
    normal, _ = train_digits(folder / "normal", epochs=2, hidden=16)
    slow_load = folder / "slow-load.pt"
    state = torch.load(normal, map_location="cpu", weights_only=True)
    state["serving"] = {**(state.get("serving") or {}), "load_delay_ms": LOAD_DELAY_MS}
    torch.save(state, slow_load)
    slow_predict, _ = train_digits(folder / "slow-predict", epochs=2, hidden=16, serve_delay_ms=150.0)
    return {"normal": normal, "slow_load": slow_load, "slow_predict": slow_predict}


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


def start(checkpoints: dict[str, Path], candidate: str, capture: Any, *, latency_ms: float) -> CanaryRollout:
    """digits v1 in production, a 50% canary policy judged on p99 latency, and v2 promoted under it."""
    with capture(execute=True):
        promote_to_production(evaluating_digits_experiment("v1", checkpoints["normal"]))
    policy_create(
        name="latency-canary",
        kind="canary",
        stages=[("c50", 50, 60), ("full", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "latency_p99_ms",
                "operator": ">",
                "threshold": latency_ms,
                "role": "rollback_on",
            }
        ],
        canary_min_requests=20,
    )
    experiment = evaluating_digits_experiment("v2", checkpoints[candidate])
    with capture(execute=True):
        experiment_transition(experiment_id=experiment.pk, event="promote", actor=SYSTEM)
    return CanaryRollout.objects.get(experiment=experiment)


def test_a_canary_slow_to_load_is_warmed_before_traffic_and_not_rolled_back_for_latency(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    rollout = start(checkpoints, "slow_load", django_capture_on_commit_callbacks, latency_ms=LATENCY_LIMIT_MS)
    # The load (and one prediction) happened when the rollout started, before any request.
    assert rollout.status == RolloutStatus.RUNNING
    assert rollout.warmup_ms is not None and rollout.warmup_ms >= LOAD_DELAY_MS
    assert not ServedRequest.objects.filter(version_id=rollout.candidate_id).exists()

    serve_until(rollout.candidate, 20)
    latencies = list(
        ServedRequest.objects.filter(version_id=rollout.candidate_id).values_list("latency_ms", "cold")
    )
    assert rollout_evaluate(rollout_id=rollout.pk) == "waiting", (latencies, rollout.outcome)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING
    window = serving.window_stats(rollout.candidate, after_request=rollout.stage_after_request)
    assert window["latency_p99_ms"] is not None and window["latency_p99_ms"] < LATENCY_LIMIT_MS
    assert window["cold_requests"] == 0


def test_a_request_that_waited_for_a_load_is_marked_cold_and_left_out_of_latency(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    rollout = start(checkpoints, "slow_load", django_capture_on_commit_callbacks, latency_ms=LATENCY_LIMIT_MS)
    # A process that never loaded it (another web worker, a restart) answers its first request cold.
    serving.clear_cache()
    serve_until(rollout.candidate, 20)

    served = ServedRequest.objects.filter(version_id=rollout.candidate_id).order_by("id")
    first, *rest = served
    assert first.cold and first.latency_ms >= LOAD_DELAY_MS
    assert not any(r.cold for r in rest)
    window = serving.window_stats(rollout.candidate, after_request=rollout.stage_after_request)
    assert window["cold_requests"] == 1 and window["requests"] == len(rest) + 1
    assert window["latency_p99_ms"] is not None and window["latency_p99_ms"] < LATENCY_LIMIT_MS
    assert rollout_evaluate(rollout_id=rollout.pk) == "waiting"


def test_a_canary_slow_on_every_request_is_still_rolled_back_for_latency(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    rollout = start(checkpoints, "slow_predict", django_capture_on_commit_callbacks, latency_ms=100)
    serve_until(rollout.candidate, 20)
    assert rollout_evaluate(rollout_id=rollout.pk) == "rolled_back"
    rollout.refresh_from_db()
    assert "latency_p99_ms" in rollout.outcome
    assert ModelVersion.objects.get(pk=rollout.candidate_id).traffic_pct == 0.0


def test_warm_up_answers_without_recording_a_served_request(
    checkpoints: dict[str, Path], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        promote_to_production(evaluating_digits_experiment("v1", checkpoints["normal"]))
    version = ModelVersion.objects.get(stage=ModelStage.PRODUCTION)
    assert serving.version_warm(version) >= 0
    assert not ServedRequest.objects.exists()
    # Warm now: the next request does not wait for a load.
    serving.predict(model_name="digits", payload=FEATURES)
    assert not ServedRequest.objects.get().cold
