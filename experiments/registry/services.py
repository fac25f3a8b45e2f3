"""Writes of the model registry: register a run's checkpoint, promote, roll back; FSM hooks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from experiments.actors import Actor
from experiments.choices import ADOPTABLE_STATES, RunStatus, State
from experiments.effects import Transitioned
from experiments.models import Experiment, ModelStage, ModelVersion, Run, ServingStats
from experiments.services import TransitionRefused, experiment_transition

logger = logging.getLogger(__name__)

# Who moves an experiment's lifecycle when the registry changes what serves.
REGISTRY = Actor.system("registry")


class RegistryError(Exception):
    """A registry action that cannot be done, with a message for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _last_checkpointed_run(experiment: Experiment) -> Run | None:
    return (
        experiment.runs.filter(status=RunStatus.SUCCEEDED)
        .exclude(checkpoint_path="")
        .exclude(checkpoint_sha256="")
        .order_by("-attempt")
        .first()
    )


def model_version_register(
    *, experiment_id: int, model_name: str = "", stage: str = ModelStage.NONE
) -> ModelVersion:
    """Register the checkpoint of the experiment's last succeeded run as the model's next version.

    Registering the same run again returns its existing version (hooks may fire twice).
    """
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None:
        raise RegistryError(f"No experiment #{experiment_id}.")
    run = _last_checkpointed_run(experiment)
    if run is None:
        raise RegistryError(
            f"Experiment {experiment.name!r} has no succeeded run with a checkpoint to register."
        )
    name = model_name or experiment.recipe
    for _ in range(3):
        try:
            with transaction.atomic():
                existing = ModelVersion.objects.filter(model_name=name, run=run).first()
                if existing is not None:
                    return existing
                last = ModelVersion.objects.filter(model_name=name).aggregate(n=Max("version"))["n"] or 0
                version = ModelVersion.objects.create(
                    model_name=name,
                    version=last + 1,
                    recipe=experiment.recipe,
                    experiment=experiment,
                    run=run,
                    checkpoint_path=run.checkpoint_path,
                    checkpoint_sha256=run.checkpoint_sha256,
                    checkpoint_size=run.checkpoint_size,
                    metrics=dict(run.final_metrics or {}),
                    stage=stage,
                    dataset_version_id=experiment.dataset_version_id,
                )
                ServingStats.objects.create(version=version)
                return version
        except IntegrityError:
            # Another registration took this number first: count again.
            continue
    raise RegistryError(f"Could not number a new version of {name!r}: too many concurrent registrations.")


def model_version_set_stage(*, version_id: int, stage: str, actor: Actor) -> ModelVersion:
    """Move a version to a non-production stage (staging, canary, archived, none)."""
    if stage == ModelStage.PRODUCTION:
        return model_version_promote(version_id=version_id, actor=actor)
    if stage not in ModelStage.values:
        raise RegistryError(f"Unknown stage {stage!r}.")
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version_id)
        version.stage = stage
        version.promoted_by = actor.label
        version.promoted_at = timezone.now()
        version.save(update_fields=["stage", "promoted_by", "promoted_at"])
    return version


@contextmanager
def _production_change() -> Iterator[None]:
    """Turn a lost race for the one production slot (the unique constraint) into a clear refusal."""
    try:
        yield
    except IntegrityError:
        raise RegistryError(
            "Another promotion or rollback of this model happened at the same moment; try again."
        ) from None


def model_version_promote(*, version_id: int, actor: Actor, adopt_experiment: bool = False) -> ModelVersion:
    """Make the version production; the previous production is archived and becomes its parent.

    adopt_experiment: the promotion comes from outside the experiment's own lifecycle (an A/B
    test's winner), so its experiment is moved into deployed too. A deploy's own effect leaves it
    out: the experiment is deployed already, or a person rolled it back meanwhile and that stands.
    """
    with _production_change(), transaction.atomic():
        version = ModelVersion.objects.select_for_update().filter(pk=version_id).first()
        if version is None:
            raise RegistryError(f"No model version #{version_id}.")
        if version.serve_error:
            raise RegistryError(
                f"{version.model_name} v{version.version} cannot be served: {version.serve_error}"
            )
        if version.stage == ModelStage.PRODUCTION:
            return version
        current = (
            ModelVersion.objects.select_for_update()
            .filter(model_name=version.model_name, stage=ModelStage.PRODUCTION)
            .first()
        )
        if current is not None:
            # Archive first: the one-production constraint is checked row by row.
            current.stage = ModelStage.ARCHIVED
            current.save(update_fields=["stage"])
            version.parent = current
        version.stage = ModelStage.PRODUCTION
        version.promoted_by = actor.label
        version.promoted_at = timezone.now()
        version.save(update_fields=["stage", "parent", "promoted_by", "promoted_at"])
        replaced = f" replaced v{current.version}" if current is not None else ""
        if current is not None and current.experiment_id != version.experiment_id:
            _lifecycle_follow(
                current.experiment_id,
                State.DEPLOYED,
                "retire",
                f"{version.model_name} v{version.version}{replaced} in production",
            )
        if adopt_experiment:
            _lifecycle_follow_production(
                version, f"{version.model_name} v{version.version}{replaced} in production"
            )
    logger.info("%s v%s promoted to production by %s", version.model_name, version.version, actor.label)
    return version


def _lifecycle_follow(experiment_id: int | None, state: str, event: str, reason: str) -> None:
    """Move the experiment whose version left (or came back to) production, audited as the registry.

    Exactly one experiment per model reads deployed: the one whose version serves.
    """
    if experiment_id is None or not Experiment.objects.filter(pk=experiment_id, state=state).exists():
        return
    try:
        experiment_transition(experiment_id=experiment_id, event=event, actor=REGISTRY, reason=reason)
    except TransitionRefused as exc:
        # Someone moved it at the same moment (e.g. rolled it back): their transition stands.
        logger.info("%s of experiment %s skipped: %s", event, experiment_id, exc.message)


def _lifecycle_follow_production(version: ModelVersion, reason: str) -> None:
    """Move the experiment of a version the registry made production into deployed, if it is not there.

    A version made production at registry level (an A/B test's winner) brings its experiment
    along: a promoting one by its deploy, a finished one by adopt, both audited as the registry.
    """
    experiment = Experiment.objects.filter(pk=version.experiment_id).values_list("state", flat=True).first()
    if experiment is None or experiment == State.DEPLOYED:
        return
    if experiment == State.PROMOTING:
        _lifecycle_follow(version.experiment_id, State.PROMOTING, "deploy", reason)
    elif experiment in ADOPTABLE_STATES:
        _lifecycle_follow(version.experiment_id, str(experiment), "adopt", reason)
    else:
        logger.warning(
            "%s v%s serves but its experiment #%s is %s: its lifecycle cannot follow",
            version.model_name,
            version.version,
            version.experiment_id,
            experiment,
        )


def model_rollback(*, model_name: str, actor: Actor) -> ModelVersion:
    """Restore the version the current production replaced; the current one is archived."""
    with _production_change(), transaction.atomic():
        current = (
            ModelVersion.objects.select_for_update()
            .filter(model_name=model_name, stage=ModelStage.PRODUCTION)
            .first()
        )
        if current is None:
            raise RegistryError(f"Model {model_name!r} has no production version to roll back.")
        previous = current.parent
        if previous is None:
            raise RegistryError(
                f"{model_name} v{current.version} replaced no earlier version: there is nothing to restore."
            )
        if previous.serve_error:
            raise RegistryError(
                f"The previous version v{previous.version} cannot be served: {previous.serve_error}"
            )
        current.stage = ModelStage.ARCHIVED
        current.save(update_fields=["stage"])
        previous.stage = ModelStage.PRODUCTION
        previous.promoted_by = actor.label
        previous.promoted_at = timezone.now()
        previous.save(update_fields=["stage", "promoted_by", "promoted_at"])
        _lifecycle_follow(
            previous.experiment_id,
            State.RETIRED,
            "reinstate",
            f"{model_name} rolled back from v{current.version} to v{previous.version} by {actor.label}",
        )
    logger.info(
        "%s rolled back from v%s to v%s by %s", model_name, current.version, previous.version, actor.label
    )
    return previous


def registry_rollback(*, model_name: str, actor: Actor, reason: str = "") -> ModelVersion:
    """Roll the model back (the registry page's button) and, when its experiment is live, audit it.

    The experiment's rollback transition is fired in the same transaction, so the history shows
    who rolled back; its hook then finds the version already archived and does nothing.
    """
    if actor.is_person and not actor.user.has_perm("experiments.rollback_experiment"):
        raise PermissionDenied("You may not roll back deployments.")
    with transaction.atomic():
        current = ModelVersion.objects.filter(model_name=model_name, stage=ModelStage.PRODUCTION).first()
        restored = model_rollback(model_name=model_name, actor=actor)
        assert current is not None
        experiment = current.experiment
        if experiment is not None and experiment.state in (State.DEPLOYED, State.PROMOTING):
            experiment_transition(
                experiment_id=experiment.pk,
                event="rollback",
                actor=actor,
                reason=reason or f"{model_name} rolled back to v{restored.version} from the registry",
            )
    return restored


def _experiment_version(experiment: Experiment) -> ModelVersion | None:
    return ModelVersion.objects.filter(experiment=experiment).order_by("-version").first()


# --- effects of lifecycle events on the registry (listed in control/lifecycle.py, run after commit) ---


def version_register_on_promote(done: Transitioned) -> None:
    """A promoted experiment's checkpoint becomes the model's canary version."""
    experiment, actor = done.experiment, done.actor
    try:
        version = model_version_register(experiment_id=experiment.pk)
        if version.stage in (ModelStage.NONE, ModelStage.STAGING):
            model_version_set_stage(version_id=version.pk, stage=ModelStage.CANARY, actor=actor)
    except RegistryError as exc:
        logger.warning("promote of experiment %s registered no model version: %s", experiment.pk, exc.message)
    except Exception:
        logger.exception("registering a model version for experiment %s failed", experiment.pk)


def version_serve_on_deploy(done: Transitioned) -> None:
    """A deployed experiment's version serves all traffic."""
    experiment, actor = done.experiment, done.actor
    try:
        version = _experiment_version(experiment) or model_version_register(experiment_id=experiment.pk)
        model_version_promote(version_id=version.pk, actor=actor)
    except RegistryError as exc:
        logger.warning("deploy of experiment %s changed no model version: %s", experiment.pk, exc.message)
    except Exception:
        logger.exception("promoting the model version of experiment %s failed", experiment.pk)


def version_restore_on_rollback(done: Transitioned) -> None:
    """A rolled-back experiment's version leaves serving; production goes back to its parent."""
    experiment, actor = done.experiment, done.actor
    try:
        version = _experiment_version(experiment)
        if version is None:
            return
        if version.stage == ModelStage.PRODUCTION and version.parent_id is not None:
            model_rollback(model_name=version.model_name, actor=actor)
            return
        # A canary, or a production version with nothing earlier to restore: it stops serving
        # rather than keep answering with a rolled-back model.
        if version.stage != ModelStage.ARCHIVED:
            model_version_set_stage(version_id=version.pk, stage=ModelStage.ARCHIVED, actor=actor)
    except RegistryError as exc:
        logger.warning("rollback of experiment %s changed no model version: %s", experiment.pk, exc.message)
    except Exception:
        logger.exception("restoring the previous model version for experiment %s failed", experiment.pk)
