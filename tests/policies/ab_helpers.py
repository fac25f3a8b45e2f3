"""What the A/B test files share: trained digits checkpoints, arms in real lifecycle states, labelled traffic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from control.canary.models import ABTest
from control.canary.rollouts import canary_sweep
from control.policies.authoring import policy_create
from control.policies.models import Policy
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.recipes.classify import raw_split
from experiments.registry import serving
from experiments.registry.services import model_version_register
from experiments.services import experiment_transition
from tests.digits_models import SYSTEM, evaluating_digits_experiment, promote_to_production, train_digits

X_VAL, Y_VAL = raw_split(0, 0.2)[2:]


def train_good_and_weak(folder: Path) -> dict[str, Path]:
    """A good digits model and a clearly weaker one (one short epoch), trained by the recipe."""
    good, _ = train_digits(folder / "good", epochs=4, hidden=32, seed=0)
    weak, metrics = train_digits(folder / "weak", epochs=1, hidden=8, seed=0, lr=0.0005)
    assert metrics["accuracy"] < 0.8
    return {"good": good, "weak": weak}


def ab_policy(**fields: Any) -> Policy:
    """An A/B policy on trusted accuracy labels, deciding after 20 outcomes per arm."""
    return policy_create(
        name="ab",
        kind="ab_test",
        ab_metric="accuracy",
        canary_min_requests=20,
        canary_alpha=0.05,
        canary_margin=0.05,
        **fields,
    )


def deployed(name: str, checkpoint: Path) -> Experiment:
    """An experiment promoted and deployed as the system: its version is production."""
    experiment = evaluating_digits_experiment(name, checkpoint)
    promote_to_production(experiment)
    return Experiment.objects.get(pk=experiment.pk)


def held(name: str, checkpoint: Path) -> tuple[Experiment, ModelVersion]:
    """A finished experiment the gate registered and held for review (completed), as auto-promote leaves it."""
    experiment = evaluating_digits_experiment(name, checkpoint)
    version = model_version_register(experiment_id=experiment.pk)
    experiment_transition(experiment_id=experiment.pk, event="hold", actor=SYSTEM, reason="held for review")
    return Experiment.objects.get(pk=experiment.pk), version


def evaluating(name: str, checkpoint: Path) -> tuple[Experiment, ModelVersion]:
    """A finished experiment whose version the gate registered while its decision is still open."""
    experiment = evaluating_digits_experiment(name, checkpoint)
    return experiment, model_version_register(experiment_id=experiment.pk)


def version_of(experiment: Experiment) -> ModelVersion:
    return ModelVersion.objects.filter(experiment=experiment).order_by("-version").get()


def state(experiment: Experiment) -> str:
    return str(Experiment.objects.get(pk=experiment.pk).state)


def deployed_experiments(model_name: str = "digits") -> list[int]:
    """Return the ids of the model's experiments that read deployed."""
    return list(
        Experiment.objects.filter(recipe=model_name, state=State.DEPLOYED).values_list("pk", flat=True)
    )


def serve_labelled(n: int, start: int = 0) -> Counter[int]:
    """Serve n held-out digits and send each true label back (trusted); count answers per version."""
    answered: Counter[int] = Counter()
    for i in range(start, start + n):
        j = i % len(X_VAL)
        answer = serving.predict(model_name="digits", payload={"features": X_VAL[j].tolist()})
        serving.feedback(
            model_name="digits", payload={"request_id": answer["request_id"], "label": int(Y_VAL[j])}
        )
        answered[answer["version"]] += 1
    return answered


def sweep_until_decided(test: ABTest, capture: Any, *, limit: int = 4000) -> str:
    """Serve labelled traffic and run the canary sweep until the test leaves "waiting"/"dropped"; return its outcome."""
    sent = 0
    outcome = "waiting"
    while sent < limit:
        serve_labelled(50, start=sent)
        sent += 50
        with capture(execute=True):
            outcome = canary_sweep()[f"ab:{test.pk}"]
        if outcome not in ("waiting", "dropped"):
            return outcome
    return outcome


def stages(*versions: ModelVersion) -> list[tuple[str, float]]:
    """Return each version's stage and traffic share now."""
    out = []
    for v in versions:
        v.refresh_from_db()
        out.append((str(v.stage), float(v.traffic_pct)))
    return out


PRODUCTION, CANARY, ARCHIVED, NONE = (
    ModelStage.PRODUCTION,
    ModelStage.CANARY,
    ModelStage.ARCHIVED,
    ModelStage.NONE,
)
