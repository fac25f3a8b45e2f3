"""Through a real Celery worker: grpo trains; dpo starts from a charlm run's checkpoint named by run id."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, MetricPoint, Run
from experiments.pipelines.services import dependency_add, pipeline_start
from experiments.recipes import get_spec
from experiments.services import experiment_create
from tests.conftest import WorkerHandle, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]

MODEL = {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}


def _trained(name: str, recipe: str, config: dict[str, Any], *, max_attempts: int = 1) -> Run:
    """Queue an experiment, wait until its worker run has ended, and return that run."""
    experiment = experiment_create(name=name, recipe=recipe, config=config, max_attempts=max_attempts)
    return _run_to_end(experiment)


def _run_to_end(experiment: Experiment) -> Run:
    """Start the experiment (and the pending ones it depends on); wait until its run has ended."""
    pipeline_start(experiment_id=experiment.pk, actor=Actor.system("test"))

    def ended() -> bool:
        experiment.refresh_from_db()
        return experiment.state in {State.EVALUATING, State.FAILED, State.CANCELLED}

    wait_for(ended, timeout=240, what=f"{experiment.name} to end")
    return Run.objects.get(experiment=experiment)


def _steps(run: Run, name: str) -> list[int]:
    return list(
        MetricPoint.objects.filter(run=run, name=name).order_by("step").values_list("step", flat=True)
    )


def test_grpo_trains_on_the_worker_and_its_checkpoint_is_evaluated(celery_worker: WorkerHandle) -> None:
    config = {"length": 2, "steps": 30, "prompts": 16, "group_size": 4, "lr": 0.003, "eval_every": 10}
    run = _trained("grpo on the worker", "grpo", {**config, "d_model": 32, "n_layers": 1, "n_heads": 2})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.worker == celery_worker.hostname
    for name in ("reward_mean", "reward_std", "kl", "entropy", "loss"):
        assert _steps(run, name) == list(range(1, 31))
    assert _steps(run, "mean_return") == [10, 20, 30]
    assert run.checkpoint_step == 30
    evaluation = get_spec("grpo").evaluate_checkpoint(run.checkpoint_path)
    assert evaluation.metrics["mean_return"] == run.final_metrics["mean_return"]


def test_dpo_starts_from_a_charlm_run_named_by_id_on_the_worker(celery_worker: WorkerHandle) -> None:
    charlm = _trained("charlm base", "charlm", {**MODEL, "steps": 20, "batch_size": 8, "eval_every": 10})
    assert charlm.status == RunStatus.SUCCEEDED, charlm.error

    dpo_config = {**MODEL, "completion": 4, "steps": 20, "batch_size": 8, "eval_every": 10, "eval_pairs": 32}
    run = _trained("dpo from charlm", "dpo", {**dpo_config, "base_run": charlm.pk, "lr": 0.003})
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _steps(run, "pretrain_loss") == []  # the base came from the charlm run
    assert _steps(run, "dpo_loss") == list(range(1, 21))
    assert run.final_metrics["reward_accuracy"] > 0.5
    evaluation = get_spec("dpo").evaluate_checkpoint(run.checkpoint_path)
    assert evaluation.metrics["preference_accuracy"] > 0.5 and evaluation.note == ""


def test_dpo_naming_a_run_without_a_checkpoint_fails_saying_so(celery_worker: WorkerHandle) -> None:
    missing = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000
    experiment = experiment_create(
        name="dpo from nothing", recipe="dpo", config={**MODEL, "completion": 4}, max_attempts=1
    )
    # Creation refuses a missing run; a run deleted afterwards leaves such a config behind.
    Experiment.objects.filter(pk=experiment.pk).update(config={**experiment.config, "base_run": missing})
    run = _run_to_end(experiment)
    assert run.status == RunStatus.FAILED
    assert f"run #{missing} does not exist" in run.error


def test_dpo_depending_on_a_charlm_experiment_starts_from_its_final_checkpoint(
    celery_worker: WorkerHandle,
) -> None:
    charlm = experiment_create(
        name="charlm upstream",
        recipe="charlm",
        config={**MODEL, "steps": 20, "batch_size": 8, "eval_every": 10},
    )
    dpo_config = {**MODEL, "completion": 4, "steps": 20, "batch_size": 8, "eval_every": 10, "eval_pairs": 32}
    dpo = experiment_create(name="dpo downstream", recipe="dpo", config={**dpo_config, "lr": 0.003})
    dependency_add(downstream=dpo, upstream=charlm)
    dpo.refresh_from_db()
    assert dpo.config["base_experiment"] == charlm.pk  # the edge named its base model

    run = _run_to_end(dpo)  # starts charlm first; dpo waits for it, then queues by itself
    upstream_run = Run.objects.get(experiment=charlm)
    assert upstream_run.status == RunStatus.SUCCEEDED, upstream_run.error
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert _steps(run, "pretrain_loss") == []  # no pre-training: the base came from charlm
    assert _steps(run, "dpo_loss") == list(range(1, 21))
    saved = torch.load(run.checkpoint_path, weights_only=True)
    base = torch.load(upstream_run.checkpoint_path, weights_only=True)
    assert saved["arch"]["base_experiment"] == charlm.pk
    # The frozen reference is the upstream's final model, weight for weight.
    assert all(torch.equal(saved["reference"][k], base["model"][k]) for k in base["model"])
