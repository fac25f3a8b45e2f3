"""A recipe from outside the repository, trained end to end by real Celery workers.

One installed with pip (entry point) is charted live, promoted by the auto-promote policy and
served; one named in CRUCIBLE_RECIPES is stopped by the early-stop policy and completes from its
last good checkpoint. The workers find the plug-in on their own PYTHONPATH, as a GPU host would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import experiments.registry.serving as serving
from control.policies.models import ActionRole, PolicyKind
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import (
    Experiment,
    MetricPoint,
    ModelStage,
    ModelVersion,
    Run,
    RunEvaluation,
    RunStage,
    TransitionLog,
)
from experiments.recipes import RECIPES, get_spec
from experiments.services import experiment_create, experiment_transition
from tests.conftest import WorkerHandle, wait_for
from tests.policies.helpers import make_policy

from .helpers import EXAMPLE_MODULE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker, pytest.mark.slow]
SYSTEM = Actor.system("test")


def _state(experiment: Experiment) -> str:
    experiment.refresh_from_db()
    return str(experiment.state)


def _pythonpath(folder: Path) -> str:
    return os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)


def test_an_installed_plugin_trains_live_is_promoted_by_a_policy_and_serves(
    plugin_dir: Path,
    example_site: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_celery_worker: Callable[..., WorkerHandle],
) -> None:
    monkeypatch.syspath_prepend(str(example_site))
    RECIPES.reload()
    assert get_spec("spiral").source == "entry point 'spiral' of crucible-spiral 0.1.0"
    workers = [start_celery_worker(PYTHONPATH=_pythonpath(example_site)) for _ in range(2)]
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "regression", "metric": "val_loss", "threshold": 0.05},
        ],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
    )
    experiment = experiment_create(
        name="spiral arms", recipe="spiral", config={"epochs": 15, "step_delay_ms": 15}
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=SYSTEM)

    def charted_while_running() -> bool:
        points = MetricPoint.objects.filter(experiment=experiment, name="loss").exists()
        return points and _state(experiment) == State.RUNNING

    wait_for(charted_while_running, timeout=90, what="loss points while the run is still running")
    wait_for(
        lambda: _state(experiment) == State.DEPLOYED,
        timeout=120,
        what=f"deployed by the policy; logs: {[w.logs()[-3000:] for w in workers]}",
    )

    actors = dict(TransitionLog.objects.filter(experiment=experiment).values_list("event", "actor"))
    assert actors["promote"] == actors["deploy"] == "policy:auto_promote"
    run = Run.objects.get(experiment=experiment)
    assert run.status == RunStatus.SUCCEEDED and run.final_metrics["accuracy"] > 0.9
    # A plug-in that records no stages: the worker marked its loop as the train stage; without an
    # evaluator it gets no evaluation job and the policy decided at once, as it always did.
    assert list(RunStage.objects.filter(run=run).values_list("name", flat=True)) == ["train"]
    assert not RunEvaluation.objects.filter(run=run).exists()
    steps = list(
        MetricPoint.objects.filter(experiment=experiment, name="accuracy").values_list("step", flat=True)
    )
    assert len(steps) == 15  # one validation point per epoch, each stored once
    # The registry serves the version in the deploy's after-commit effects, just after the state.
    version = wait_for(
        lambda: ModelVersion.objects.filter(model_name="spiral", stage=ModelStage.PRODUCTION).first(),
        timeout=30,
        what="the deployed version in production",
    )
    assert version.recipe == "spiral" and version.experiment_id == experiment.pk
    serving.clear_cache()
    answer = serving.predict(model_name="spiral", payload={"instances": [[0.0, 0.3], [0.4, -0.6]]})
    assert answer["version"] == 1 and all(p in (0, 1, 2) for p in answer["predictions"])
    serving.clear_cache()


def test_a_crucible_recipes_plugin_is_early_stopped_requeued_and_completes_from_its_checkpoint(
    plugin_dir: Path, start_celery_worker: Callable[..., WorkerHandle]
) -> None:
    # Not packaged: the bare module on the path, named by CRUCIBLE_RECIPES (no entry point).
    shutil.copy(EXAMPLE_MODULE, plugin_dir / "team_spiral.py")
    RECIPES.configure("team_spiral:RECIPE")
    assert get_spec("spiral").source == "CRUCIBLE_RECIPES"
    env = {"PYTHONPATH": _pythonpath(plugin_dir), "CRUCIBLE_RECIPES": "team_spiral:RECIPE"}
    workers = [start_celery_worker(**env) for _ in range(2)]
    make_policy(
        "early_stop",
        PolicyKind.EARLY_STOP,
        [{"kind": "not_finite", "metric": "loss"}],
        [{"kind": "requeue", "params": {"lr_factor": 0.5, "config_overrides": {"inject_nan_at_step": -1}}}],
        cooldown_seconds=60,
    )
    # 9 steps per epoch: good checkpoints at steps 9 and 18, NaN from step 21 on.
    experiment = experiment_create(
        name="diverging spiral",
        recipe="spiral",
        config={"epochs": 4, "lr": 0.02, "inject_nan_at_step": 20, "step_delay_ms": 30},
    )
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=SYSTEM)

    wait_for(
        lambda: _state(experiment) == State.EVALUATING,
        timeout=150,
        what=f"the requeued attempt to complete; logs: {[w.logs()[-3000:] for w in workers]}",
    )

    first, second = Run.objects.filter(experiment=experiment).order_by("attempt")
    assert first.status != RunStatus.SUCCEEDED
    assert first.checkpoint_step == 18  # the weights went NaN after it: no later checkpoint
    assert second.status == RunStatus.SUCCEEDED
    assert second.resumed_from_step == 18
    assert second.config["lr"] == pytest.approx(0.01)
    assert second.config["inject_nan_at_step"] == -1
    requeue = TransitionLog.objects.get(experiment=experiment, event="requeue")
    assert requeue.actor == "policy:early_stop"
    assert "loss is NaN or infinite" in requeue.reason
    assert second.final_metrics["accuracy"] > 0.5
