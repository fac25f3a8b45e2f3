"""Serving for plug-ins: one with load_predictor is promoted, canaried and rolled back like digits;
one without is trained and compared, and every way of promoting it says why it cannot be served."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

import experiments.registry.serving as serving
from control.canary.models import CanaryRollout, RolloutStatus
from control.policies.authoring import policy_create
from control.policies.engine import engine_on_complete
from control.policies.models import ExecutionStatus, PolicyKind
from experiments.actors import Actor
from experiments.choices import RunStatus, State
from experiments.models import Experiment, ModelStage, ModelVersion, Run, TransitionLog
from experiments.recipes import RECIPES, get_spec
from experiments.recipes.catalog import BUILTINS
from experiments.recipes.local import LocalRunContext
from experiments.registry.services import model_rollback, model_version_promote, model_version_register
from experiments.runs.execution import file_sha256
from experiments.services import TransitionRefused, experiment_create, experiment_transition
from tests.policies.helpers import experiment_through, make_policy, record_run, run_pending_actions

from .helpers import EXAMPLE_MODULE, write_entry_points, write_module, write_recipe

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("test")


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


@pytest.fixture
def spiral(plugin_dir: Path, example_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example plug-in, pip-installed, on sys.path and in the catalog."""
    monkeypatch.syspath_prepend(str(example_site))
    RECIPES.reload()
    assert get_spec("spiral").source == "entry point 'spiral' of crucible-spiral 0.1.0"
    return example_site


def _trained(recipe: str, folder: Path, name: str, **config: Any) -> Experiment:
    """Train the recipe for real, and return an evaluating experiment whose run left that checkpoint."""
    spec = get_spec(recipe)
    clean = spec.clean(config)
    result = spec.load().train(LocalRunContext(checkpoint_dir=folder, keep=1), clean)
    checkpoint = sorted(folder.glob("step-*.pt"))[-1]
    experiment = experiment_create(name=name, recipe=recipe, config=config)
    for event in ("queue", "start", "complete"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        checkpoint_path=str(checkpoint),
        checkpoint_sha256=file_sha256(checkpoint),
        checkpoint_size=checkpoint.stat().st_size,
        final_metrics=dict(result.final_metrics),
    )
    return Experiment.objects.get(pk=experiment.pk)


ARMS = {"instances": [[0.0, 0.1], [0.5, -0.5], [-0.7, 0.2]]}


def test_a_plugin_with_load_predictor_is_promoted_served_and_rolled_back(
    spiral: Path, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    first = _trained("spiral", tmp_path / "a", "spiral one", epochs=12)
    with django_capture_on_commit_callbacks(execute=True):
        for event in ("promote", "deploy"):
            experiment_transition(experiment_id=first.pk, event=event, actor=SYSTEM)
    v1 = ModelVersion.objects.get(model_name="spiral")
    assert v1.recipe == "spiral" and v1.stage == ModelStage.PRODUCTION

    answer = serving.predict(model_name="spiral", payload=ARMS)
    assert answer["version"] == 1
    assert all(p in (0, 1, 2) for p in answer["predictions"])
    assert all(len(row) == 3 and abs(sum(row) - 1) < 1e-3 for row in answer["probabilities"])
    # Warm-up is what a canary does before its first request; drift reads the reference.
    assert serving.version_warm(v1) >= 0
    assert serving.load_version(v1).reference is not None

    second = _trained("spiral", tmp_path / "b", "spiral two", epochs=3, seed=1)
    with django_capture_on_commit_callbacks(execute=True):
        for event in ("promote", "deploy"):
            experiment_transition(experiment_id=second.pk, event=event, actor=SYSTEM)
    assert serving.predict(model_name="spiral", payload=ARMS)["version"] == 2

    with django_capture_on_commit_callbacks(execute=True):
        restored = model_rollback(model_name="spiral", actor=SYSTEM)
    assert restored.version == 1
    assert serving.predict(model_name="spiral", payload=ARMS)["version"] == 1


def test_a_predictor_answering_garbage_is_a_clear_serving_error(plugin_dir: Path, tmp_path: Path) -> None:
    write_module(
        plugin_dir,
        "garbage",
        """
        import numpy as np
        import torch
        from experiments.recipes import Param, Predictor, RecipeResult

        class Recipe:
            name = "garbage"
            summary = "serves rows that are not probabilities"
            params = (Param("seed", int, 0),)

            def train(self, ctx, config):
                ctx.save_checkpoint(1, {"recipe": "garbage", "w": torch.zeros(1)})
                return RecipeResult(final_metrics={}, steps=1)

            def load_predictor(self, state):
                return Predictor(n_features=2, n_classes=3, predict_proba=lambda x: np.ones((len(x), 2)))

        RECIPE = Recipe()
        """,
    )
    RECIPES.configure("garbage:RECIPE")
    experiment = _trained("garbage", tmp_path, "garbage")
    experiment_transition(experiment_id=experiment.pk, event="promote", actor=SYSTEM)
    experiment_transition(experiment_id=experiment.pk, event="deploy", actor=SYSTEM)
    model_version_promote(version_id=model_version_register(experiment_id=experiment.pk).pk, actor=SYSTEM)

    with pytest.raises(serving.ServingError) as failed:
        serving.predict(model_name="garbage", payload={"instances": [[0.0, 0.0]]})
    assert failed.value.status == 503
    assert "predict_proba returned shape (1, 2), expected (1, 3)" in failed.value.message


def _evaluating(recipe: str, name: str) -> Experiment:
    experiment = experiment_create(name=name, recipe=recipe)
    for event in ("queue", "start", "complete"):
        experiment_transition(experiment_id=experiment.pk, event=event, actor=SYSTEM)
    return Experiment.objects.get(pk=experiment.pk)


def test_promoting_a_plugin_without_serving_is_refused_saying_why_and_changes_nothing(
    plugin_dir: Path,
) -> None:
    RECIPES.configure(write_recipe(plugin_dir, "trainonly", "trainonly"))
    experiment = _evaluating("trainonly", "compare only")

    with pytest.raises(TransitionRefused) as refused:
        experiment_transition(experiment_id=experiment.pk, event="promote", actor=Actor.system("policy"))

    assert refused.value.message == (
        "Cannot promote 'compare only': recipe 'trainonly' (CRUCIBLE_RECIPES) cannot serve its models: "
        "it implements no load_predictor (load a checkpoint, predict a batch with confidences); it can be "
        "trained and compared, not promoted."
    )
    experiment.refresh_from_db()
    assert experiment.state == State.EVALUATING
    assert not ModelVersion.objects.exists()
    assert not TransitionLog.objects.filter(event="promote").exists()


def test_the_promote_button_of_a_recipe_that_cannot_serve_is_disabled_with_the_reason(
    admin_client: Client,
) -> None:
    experiment = _evaluating("charlm", "language model")

    page = admin_client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()

    assert 'data-event="promote" disabled' in page
    assert "recipe &#x27;charlm&#x27; (built-in) cannot serve its models" in page
    digits = _evaluating("digits", "digits model")
    page = admin_client.get(reverse("experiments:detail", args=[digits.pk])).content.decode()
    assert "cannot serve its models" not in page


def test_the_api_refuses_to_promote_a_recipe_that_cannot_serve_with_409_and_the_reason(
    admin_client: Client,
) -> None:
    experiment = _evaluating("distill", "student")

    response = admin_client.post(
        f"/api/experiments/{experiment.pk}/actions/promote", content_type="application/json"
    )

    assert response.status_code == 409, response.content
    body = response.json()
    assert body["state"] == "evaluating"
    assert "recipe 'distill' (built-in) cannot serve its models" in body["detail"]


def test_refused_plugins_are_on_the_gpu_page_and_in_healthz_without_breaking_either(
    plugin_dir: Path, admin_client: Client
) -> None:
    write_module(plugin_dir, "crashes_on_import", "raise RuntimeError('no GPU driver here')\n")
    RECIPES.configure(f"crashes_on_import:RECIPE,{write_recipe(plugin_dir, 'works', 'works')}")

    page = admin_client.get(reverse("control:gpus"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="recipe-problems"' in html
    assert "import failed: RuntimeError: no GPU driver here" in html

    health = admin_client.get("/healthz").json()
    assert health["recipes"] == {
        "ok": False,
        "count": len(BUILTINS) + 1,
        "refused": ["crashes_on_import:RECIPE"],
    }


def test_a_version_whose_plugin_is_gone_cannot_be_served_and_says_so(
    plugin_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLE_MODULE, plugin_dir / "spiral_module.py")
    RECIPES.configure("spiral_module:RECIPE")
    experiment = _trained("spiral", tmp_path, "orphan", epochs=1)
    version = model_version_promote(
        version_id=model_version_register(experiment_id=experiment.pk).pk, actor=SYSTEM
    )
    RECIPES.configure([])  # uninstalled: the web process restarted without it

    with pytest.raises(serving.ServingError) as failed:
        serving.load_version(version)
    assert "recipe 'spiral' is not in the catalog" in failed.value.message
    version.refresh_from_db()
    assert "not in the catalog" in version.serve_error


def test_a_plugin_version_is_canaried_on_served_traffic_and_rolled_back(
    spiral: Path, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    import crucible_spiral  # the installed example: its own held-out points and labels

    _, _, x_val, y_val = crucible_spiral.split({"seed": 0, "points": 600, "noise": 0.15})
    first = _trained("spiral", tmp_path / "a", "spiral v1", epochs=12)
    with django_capture_on_commit_callbacks(execute=True):
        for event in ("promote", "deploy"):
            experiment_transition(experiment_id=first.pk, event=event, actor=SYSTEM)
    policy_create(
        name="canary",
        kind="canary",
        canary_min_requests=20,
        stages=[("canary_10pct", 10, 60), ("canary_50pct", 50, 60), ("full_rollout", 100, 0)],
        conditions=[
            {
                "kind": "metric",
                "metric": "error_rate",
                "operator": ">",
                "threshold": 0.05,
                "role": "rollback_on",
            }
        ],
    )
    second = _trained("spiral", tmp_path / "b", "spiral v2", epochs=12, seed=0, hidden=16)
    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=second.pk, event="promote", actor=SYSTEM)
    rollout = CanaryRollout.objects.get(experiment=second)
    assert rollout.candidate.recipe == "spiral"

    answered: Counter[int] = Counter()
    for i in range(300):
        j = i % len(y_val)
        answer = serving.predict(model_name="spiral", payload={"features": x_val[j].tolist()})
        serving.feedback(
            model_name="spiral", payload={"request_id": answer["request_id"], "label": int(y_val[j])}
        )
        answered[answer["version"]] += 1
    assert set(answered) == {1, 2} and answered[2] < answered[1]  # the canary gets its share

    with django_capture_on_commit_callbacks(execute=True):
        experiment_transition(experiment_id=second.pk, event="rollback", actor=SYSTEM)
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ROLLED_BACK
    assert {serving.predict(model_name="spiral", payload=ARMS)["version"] for _ in range(20)} == {1}


def test_a_policy_promoting_a_recipe_that_cannot_serve_records_why_and_changes_nothing(
    plugin_dir: Path,
) -> None:
    RECIPES.configure(write_recipe(plugin_dir, "trainonly", "trainonly"))
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "score", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}],
    )
    experiment = experiment_through(
        "queue", "start", "complete", name="good but unservable", recipe="trainonly"
    )
    record_run(experiment, {"score": [0.5, 0.95]})

    [trigger] = engine_on_complete(experiment_id=experiment.pk)
    [execution] = run_pending_actions()

    assert trigger.conditions_passed
    assert execution.status == ExecutionStatus.FAILED
    assert "recipe 'trainonly' (CRUCIBLE_RECIPES) cannot serve its models" in execution.error
    experiment.refresh_from_db()
    assert experiment.state == State.EVALUATING
    assert not ModelVersion.objects.exists()


def test_creating_an_experiment_of_a_refused_plugin_is_a_422_on_recipe_naming_the_reason(
    plugin_dir: Path, admin_client: Client
) -> None:
    write_entry_points(plugin_dir, "half-installed", {"half": "half_installed:RECIPE"})
    RECIPES.reload()

    response = admin_client.post(
        "/api/experiments", {"name": "x", "recipe": "half", "config": {}}, content_type="application/json"
    )

    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "recipe"
    assert error["msg"] == (
        "recipe 'half' is not available: entry point 'half' of half-installed 1.0 (half_installed:RECIPE): "
        "import failed: ModuleNotFoundError: No module named 'half_installed'"
    )
    assert not Experiment.objects.exists()
