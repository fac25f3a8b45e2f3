"""Every route of the URL resolver has a project rule, and an outsider meets it: objects hide, lists omit.

The walk covers pages, API operations, serving, the admin and the MLflow API; a route added without a
row in PROJECT_RULES fails here. The member and the outsider have the same rights, each in their own
project (admin role, plus the control pages' global permissions), so only the project can tell them apart.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from control.policies.models import Policy, PolicyKind, TriggerEvent, TriggerStatus
from control.scheduling.models import Device, DeviceKind, Worker
from crucible_ui.access import route_access_table
from experiments.actors import Actor
from experiments.choices import Executor
from experiments.models import Membership, ModelStage, ModelVersion, Project, Role, Run
from experiments.pipelines.services import dependency_add
from experiments.runs.external import external_run_start
from experiments.runs.outputs import run_artifact_store
from experiments.services import experiment_create, experiment_transition
from tests.security.route_access import HIDDEN, OPERATOR_EXTRA_PERMISSIONS, ROUTES, URL_VALUES
from tests.security.test_route_access import _outcome, _request, _url_of

OBJECT = "object"  # its URL names one project's object: an outsider gets 404, as for a missing one
LIST = "list"  # lists or offers objects: an outsider's answer names none of another project's
BODY = "body"  # names its project or experiment in the body: tests/projects/test_isolation.py
SHARED = "shared"  # holds nothing of a project
OWN_AUTH = "own auth"  # its own credentials, not a session: tests/projects/test_mlflow.py walks it
ADMIN_SCOPED = "admin scoped"  # every ModelAdmin of project data: tests/projects/test_admin_scoping.py

PROJECT_RULES: dict[str, str] = {
    "experiments:list": LIST,
    "experiments:create": BODY,
    "experiments:detail": OBJECT,
    "experiments:actions_fragment": OBJECT,
    "experiments:action": OBJECT,
    "experiments:artifact_download": OBJECT,
    "experiments:pipeline_start": OBJECT,
    "live:fleet": LIST,
    "live:fleet_rows": LIST,
    "live:compare": LIST,
    "live:run_log": OBJECT,
    "control:gpus": LIST,
    "control:gpu_rows": LIST,
    "api:gpus": LIST,
    "triggers:list": LIST,
    "triggers:rows": LIST,
    "triggers:decide": OBJECT,
    "policies:list": LIST,
    "policies:new": LIST,
    "policies:edit": LIST,
    "policies:preview": BODY,
    "registry:index": LIST,
    "registry:rollback": OBJECT,
    "registry:predict": OBJECT,
    "registry:feedback": OBJECT,
    "deployments:model": OBJECT,
    "deployments:live": OBJECT,
    "deployments:promote": OBJECT,
    "deployments:canary_rollback": OBJECT,
    "deployments:ab_cancel": OBJECT,
    "api:api-root": SHARED,
    "api:openapi-json": SHARED,
    "api:openapi-view": SHARED,
    "api:experiment_list": LIST,
    "api:experiment_create_view": BODY,
    "api:experiment_detail": OBJECT,
    "api:experiment_action": OBJECT,
    "api:dependency_add_view": OBJECT,
    "api:dependency_remove_view": OBJECT,
    "api:pipeline_start_view": OBJECT,
    "api:experiment_metrics": OBJECT,
    "api:experiment_step_times": OBJECT,
    "api:run_start_view": BODY,
    "api:run_detail_view": OBJECT,
    "api:run_metrics_view": OBJECT,
    "api:run_heartbeat_view": OBJECT,
    "api:run_finish_view": OBJECT,
    "api:run_params_view": OBJECT,
    "api:run_tags_view": OBJECT,
    "api:queue": LIST,
    "healthz": SHARED,
    "login": SHARED,
    "logout": SHARED,
    "favicon": SHARED,
}
# Whole namespaces with one rule.
NAMESPACE_RULES: dict[str, str] = {
    # Staff only; each admin of project-owned rows is ProjectScoped, which a walk of the registry checks.
    "admin": ADMIN_SCOPED,
    # Its own credentials (experiments/mlflow/auth.py), so the session walk cannot reach it.
    "mlflow": OWN_AUTH,
}
MARKER = "vision-only-marker"


def _rule(name: str) -> str | None:
    return PROJECT_RULES.get(name) or NAMESPACE_RULES.get(name.split(":", 1)[0])


def test_every_route_has_a_project_rule() -> None:
    missing = [r.name for r in route_access_table() if _rule(r.name) is None]
    assert not missing, f"routes without a project rule (add them to PROJECT_RULES): {missing}"
    stale = set(PROJECT_RULES) - {r.name for r in route_access_table()}
    assert not stale, f"rows for routes that no longer exist: {sorted(stale)}"


def _person(username: str, project: Project) -> User:
    user = User.objects.create_user(username, password=f"pw-{username}-123")
    Membership.objects.create(user=user, project=project, role=Role.ADMIN)
    codenames = [p.split(".", 1)[1] for p in OPERATOR_EXTRA_PERMISSIONS] + ["change_abtest"]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _world() -> dict[str, Any]:
    """Create two projects with a member each; return the URL values of the vision project's objects."""
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    experiment = experiment_create(name=f"{MARKER} experiment", recipe="digits", project=vision)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=Actor.system("test"))
    ModelVersion.objects.create(
        model_name="digits", version=1, recipe="digits", experiment=experiment,
        checkpoint_path="/nonexistent/checkpoint.pt", checkpoint_sha256="0" * 64, stage=ModelStage.PRODUCTION,
    )  # fmt: skip
    policy = Policy.objects.create(
        name="matrix", kind=PolicyKind.CUSTOM, project=vision, description=f"{MARKER} policy"
    )
    trigger = TriggerEvent.objects.create(
        policy=policy,
        experiment=experiment,
        kind="metrics",
        conditions_passed=True,
        status=TriggerStatus.FIRED,
    )
    worker_run = Run.objects.create(experiment=experiment, attempt=1)
    run_artifact_store(run=worker_run, name=URL_VALUES["name"], data="{}", kind="report")
    teacher = experiment_create(name=f"{MARKER} teacher", recipe="digits", project=vision)
    student = experiment_create(name=f"{MARKER} student", recipe="distill", project=vision)
    edge = dependency_add(downstream=student, upstream=teacher)
    # A GPU held by the experiment: device rows name their holder to its project only.
    host = Worker.objects.create(hostname="matrix-host", queue="matrix-host.dq2")
    Device.objects.create(worker=host, kind=DeviceKind.GPU, index=0, name="H100", leased_run=worker_run)
    notebook = experiment_create(
        name=f"{MARKER} notebook", recipe="", executor=Executor.EXTERNAL, project=vision
    )
    run = external_run_start(experiment=notebook, actor=Actor.system("test"))
    return {
        **URL_VALUES,
        "member": _person("alice", vision),
        "outsider": _person("bob", nlp),
        "experiment_id": experiment.pk,
        "trigger_id": trigger.pk,
        "policy_id": policy.pk,
        "run_id": run.pk,
        "worker_run_id": worker_run.pk,
        "edge_id": edge.pk,
        "student_id": student.pk,
    }


def _answer(user: User, name: str, values: dict[str, Any]) -> Any:
    row = ROUTES[name]
    routes = {r.name: r.route for r in route_access_table()}
    values = {**values, **{param: values[key] for param, key in row.url_values.items()}}
    if name == "deployments:promote":
        row = type(row)(**{**row.__dict__, "data": {"experiment_id": values["experiment_id"]}})
    client = Client()
    client.force_login(user)
    return _request(client, row, _url_of(name, routes[name], values))


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(n for n, rule in PROJECT_RULES.items() if rule == OBJECT))
def test_another_projects_object_answers_as_a_missing_one(name: str) -> None:
    values = _world()
    assert _outcome(_answer(values["outsider"], name, values)) == HIDDEN, f"{name}: the outsider sees it"
    # The same request of the member passes: only the project told them apart.
    assert _outcome(_answer(values["member"], name, values)) != HIDDEN, f"{name}: hidden from its member too"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(n for n, rule in PROJECT_RULES.items() if rule == LIST))
def test_a_list_names_nothing_of_another_project(name: str) -> None:
    values = _world()
    outsider = _answer(values["outsider"], name, values)
    member = _answer(values["member"], name, values)
    assert MARKER not in outsider.content.decode(), f"{name} shows another project's experiment"
    assert MARKER in member.content.decode() or b"digits" in member.content, (
        f"{name} hides it from its member"
    )
