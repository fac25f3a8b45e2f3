"""`manage.py demo`: the demo login and a few demo experiments; running it again adds nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

from control.policies.demo import demo_policies_ensure
from control.policies.models import Policy
from crucible_ui.launcher import demo_credentials
from experiments.actors import Actor
from experiments.choices import PriorityClass
from experiments.models import Experiment, Membership, Project, Role, default_project
from experiments.permissions import researcher_group_ensure
from experiments.pipelines.services import dependency_add
from experiments.services import experiment_create, experiment_retrain, experiment_transition

DEMO_TAG = "demo"
DEMO_ACTOR = Actor.system("demo")


@dataclass(frozen=True)
class DemoExperiment:
    """One demo experiment and the events fired on it, in order, after creation."""

    name: str
    recipe: str
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    priority_class: str = PriorityClass.BATCH
    priority: int = 5
    events: tuple[tuple[str, str], ...] = ()  # (event, reason)
    retrain_reason: str = ""  # non-empty: retrain it afterwards (a child, queued)
    retrain_overrides: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()  # names of demo experiments it waits for (created before it)


# Only transitions that the system really makes without a run: drafts, the queue, a
# cancellation, a retrain. Everything past "queued" (running, metrics, promotion) is left to
# the scheduler and the worker that `make run` starts, so no state or number here is invented.
DEMO_EXPERIMENTS: tuple[DemoExperiment, ...] = (
    DemoExperiment(
        name="digits · baseline",
        recipe="digits",
        description="A small MLP on scikit-learn's bundled digits. Press Start to train it on the worker.",
        config={"epochs": 30, "seed": 1},
        priority_class=PriorityClass.INTERACTIVE,
    ),
    DemoExperiment(
        name="digits · wide, slowed down to watch live",
        recipe="digits",
        description="Wider hidden layers; a 40 ms pause per step makes the curves easy to follow.",
        config={"epochs": 40, "hidden": 512, "step_delay_ms": 40.0, "seed": 2},
        priority_class=PriorityClass.INTERACTIVE,
        priority=7,
    ),
    DemoExperiment(
        name="charlm · tiny byte-level transformer",
        recipe="charlm",
        description="A two-layer transformer on text shipped with Python; its val_loss falls over a few minutes.",
        config={"steps": 300, "seed": 3},
        priority_class=PriorityClass.BATCH,
    ),
    DemoExperiment(
        name="distill · teacher to small student",
        recipe="distill",
        description="A 32-unit student learns the soft labels of a 256-unit digits teacher.",
        config={"teacher_epochs": 15, "epochs": 20, "seed": 4},
        priority_class=PriorityClass.OFFLINE,
    ),
    # A pipeline: one "Start pipeline" on the student queues the teacher; the student waits, then
    # distils the teacher's final checkpoint (same seed, so the same train/validation split).
    DemoExperiment(
        name="pipeline · digits teacher",
        recipe="digits",
        description="The teacher of the pipeline: the distilled student waits for it to succeed.",
        config={"epochs": 15, "hidden": 256, "seed": 4},
        priority_class=PriorityClass.INTERACTIVE,
    ),
    DemoExperiment(
        name="pipeline · distilled student",
        recipe="distill",
        description="Press Start pipeline: its digits teacher queues, this one waits, then a 32-unit student "
        "learns the teacher's soft labels from its final checkpoint.",
        config={"epochs": 20, "seed": 4},
        priority_class=PriorityClass.INTERACTIVE,
        depends_on=("pipeline · digits teacher",),
    ),
    DemoExperiment(
        name="dpo · prefer balanced brackets",
        recipe="dpo",
        description="Pre-trains a small byte-level LM, then tunes it with DPO to prefer code whose brackets "
        "balance; watch reward_accuracy rise and kl grow.",
        config={"pretrain_steps": 200, "steps": 100, "seed": 8},
        priority_class=PriorityClass.BATCH,
    ),
    DemoExperiment(
        name="grpo · learn to reverse digits from a reward",
        recipe="grpo",
        description="A tiny transformer samples groups of answers and learns from their rewards alone: "
        "reward_mean climbs from chance (0.1) towards 1.",
        config={"steps": 150, "seed": 9},
        priority_class=PriorityClass.BATCH,
    ),
    DemoExperiment(
        name="digits · higher learning rate",
        recipe="digits",
        description="Queued by the demo: the scheduler hands it to the worker as soon as one is up.",
        config={"epochs": 15, "lr": 0.01, "seed": 5},
        priority_class=PriorityClass.BATCH,
        priority=8,
        events=(("queue", "Queued by the demo data"),),
    ),
    DemoExperiment(
        name="digits · fails when served (the canary rolls it back)",
        recipe="digits",
        description="Trains as well as the baseline, but its served model fails 30% of requests. Press Start: "
        "auto_promote promotes it, and with `python manage.py traffic --model digits` running the canary "
        "rolls it back on its own at its first stage.",
        config={"epochs": 20, "seed": 7, "serve_error_rate": 0.3},
        priority_class=PriorityClass.INTERACTIVE,
    ),
    DemoExperiment(
        name="digits · first draft",
        recipe="digits",
        description="Cancelled before it ran, then retrained with fewer epochs: see its lineage.",
        config={"epochs": 60, "seed": 6},
        priority_class=PriorityClass.OFFLINE,
        events=(("cancel", "Too many epochs for a first try"),),
        retrain_reason="Retrain with 10 epochs",
        retrain_overrides={"epochs": 10},
    ),
)


def demo_user_ensure(*, username: str, password: str) -> tuple[AbstractBaseUser, bool]:
    """Create or update the demo superuser so that the printed password works; return (user, created)."""
    user_model = get_user_model()
    user, created = user_model.objects.get_or_create(
        username=username, defaults={"is_staff": True, "is_superuser": True, "email": ""}
    )
    changed = created
    if not (user.is_staff and user.is_superuser and user.is_active):
        user.is_staff = user.is_superuser = user.is_active = True
        changed = True
    if not user.check_password(password):
        user.set_password(password)
        changed = True
    if changed:
        user.save()
    _join_researchers(user)
    return user, created


# A second project with its own researcher: logged in as them, the demo's experiments are invisible.
SECOND_PROJECT = ("Vision", "vision")
SECOND_USER = "vision"


def demo_projects_ensure(*, owner: Any, password: str) -> tuple[Project, Any]:
    """Make the demo user admin of the default project; create the second project, its user and experiment."""
    Membership.objects.get_or_create(user=owner, project=default_project(), defaults={"role": Role.ADMIN})
    name, slug = SECOND_PROJECT
    project, _ = Project.objects.get_or_create(slug=slug, defaults={"name": name})
    user, created = get_user_model().objects.get_or_create(username=SECOND_USER)
    if created:
        user.set_password(password)
        user.save()
    Membership.objects.get_or_create(user=user, project=project, defaults={"role": Role.RESEARCHER})
    if not Experiment.objects.filter(project=project).exists():
        experiment_create(
            name="vision · digits baseline",
            recipe="digits",
            description="Only the vision project's members (and superusers) see this one.",
            owner=user,
            tags=[DEMO_TAG, "digits"],
            project=project,
        )
    return project, user


def _join_researchers(user: Any) -> None:
    """Put the demo user in the Researchers group, so it also shows what a researcher sees."""
    user.groups.add(researcher_group_ensure())


def _demo_policies_ensure() -> list[Any] | None:
    """Create the seed's example policies (auto-promote, early stop, ...); None while there are none to create.

    The policy records load only once their tables exist (i.e. the migrations are applied).
    """
    if Policy._meta.db_table not in connection.introspection.table_names():
        return None
    return list(demo_policies_ensure())


def demo_experiments_load(*, owner: Any) -> list[Experiment]:
    """Create the demo experiments that do not exist yet (matched by name); return the new ones."""
    created: list[Experiment] = []
    for demo in DEMO_EXPERIMENTS:
        if Experiment.objects.filter(name=demo.name).exists():
            continue
        with transaction.atomic():
            experiment = experiment_create(
                name=demo.name,
                recipe=demo.recipe,
                description=demo.description,
                config=dict(demo.config),
                owner=owner,
                priority_class=demo.priority_class,
                priority=demo.priority,
                tags=[DEMO_TAG, demo.recipe],
            )
            for upstream_name in demo.depends_on:
                dependency_add(downstream=experiment, upstream=Experiment.objects.get(name=upstream_name))
            for event, reason in demo.events:
                experiment_transition(
                    experiment_id=experiment.pk, event=event, actor=DEMO_ACTOR, reason=reason
                )
            if demo.retrain_reason:
                experiment_retrain(
                    experiment_id=experiment.pk,
                    actor=DEMO_ACTOR,
                    reason=demo.retrain_reason,
                    config_overrides=dict(demo.retrain_overrides),
                )
        created.append(experiment)
    return created


class Command(BaseCommand):
    help = "Create the demo login and a few demo experiments. Running it again creates nothing new."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user-only", action="store_true", help="create or update the demo login, but no experiments"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username, password = demo_credentials()
        user, user_created = demo_user_ensure(username=username, password=password)
        verb = "Created" if user_created else "Demo login ready:"
        self.stdout.write(f"{verb} user {username!r} (superuser), password {password!r}")
        if options["user_only"]:
            return
        policies = _demo_policies_ensure()
        if policies is not None:
            self.stdout.write(f"Demo policies ready: {', '.join(p.name for p in policies)}")
        project, second = demo_projects_ensure(owner=user, password=password)
        self.stdout.write(
            f"Project {project.slug!r}: user {second.get_username()!r} (researcher there only), password {password!r}"
        )
        created = demo_experiments_load(owner=user)
        if created:
            names = ", ".join(repr(e.name) for e in created)
            self.stdout.write(f"Created {len(created)} demo experiments: {names}")
        else:
            self.stdout.write("Demo experiments already present; nothing created.")
