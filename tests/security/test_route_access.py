"""Deny by default: every route declares its access, has a row in route_access.py, and answers as the row says.

The walk covers the whole URL resolver (pages, API operations, serving, /healthz, login, the admin)
and the websocket routes; a route without a declaration or without a row fails here, with the
line to add.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.shortcuts import resolve_url
from django.test import Client
from django.urls import Resolver404, path, resolve, reverse
from ninja import NinjaAPI

from control.policies.models import Policy, PolicyKind, TriggerEvent, TriggerStatus
from crucible_ui.access import DeclaredConsumer, api_access_install, declared_consumer, route_access_table
from crucible_ui.api_auth import API_AUTH
from crucible_ui.asgi import application
from crucible_ui.routing import websocket_urlpatterns
from crucible_ui.urls import urlpatterns as project_urlpatterns
from experiments.actors import Actor
from experiments.choices import Executor
from experiments.live.consumers import FleetConsumer
from experiments.models import ModelStage, ModelVersion, Run
from experiments.permissions import (
    Decision,
    access_of,
    login_only,
    public,
    requires_permission,
    researcher_group_ensure,
)
from experiments.pipelines.services import dependency_add
from experiments.runs.external import external_run_start
from experiments.runs.outputs import run_artifact_store
from experiments.services import experiment_create
from tests.security.route_access import (
    ACCEPTED,
    ADMIN_LOGIN,
    ADMIN_SAMPLES,
    ALLOWED,
    FORBIDDEN,
    HIDDEN,
    LOGIN,
    OPERATOR_EXTRA_PERMISSIONS,
    ROLES,
    ROUTES,
    UNAUTHORIZED,
    URL_VALUES,
    VIEWER_PERMISSIONS,
    WEBSOCKETS,
    Route,
)

# Named so that a refusal that leaked object data would show it.
SECRET_NAME = "secret-zebra-experiment"
TABLE = "tests/security/route_access.py"
SOCKET_TIMEOUT = 10


def _perms(*names: str) -> list[Permission]:
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return found


def _people() -> dict[str, User | None]:
    """Return the four roles of the table (anonymous is None)."""
    nobody = User.objects.create_user("nobody")  # no password: hashing one is slow and unused
    viewer = User.objects.create_user("viewer")
    viewer.user_permissions.add(*_perms(*VIEWER_PERMISSIONS))
    operator = User.objects.create_user("operator")
    operator.groups.add(researcher_group_ensure())
    operator.user_permissions.add(*_perms(*OPERATOR_EXTRA_PERMISSIONS))
    return {"anonymous": None, "nobody": nobody, "viewer": viewer, "operator": operator}


def _objects() -> dict[str, Any]:
    """Create what the routes' URLs point at; return the value of each URL parameter."""
    experiment = experiment_create(name=SECRET_NAME, recipe="digits")
    ModelVersion.objects.create(
        model_name="digits",
        version=1,
        recipe="digits",
        experiment=experiment,
        checkpoint_path="/nonexistent/checkpoint.pt",
        checkpoint_sha256="0" * 64,
        stage=ModelStage.PRODUCTION,
    )
    policy = Policy.objects.create(name="access-test", kind=PolicyKind.CUSTOM)
    trigger = TriggerEvent.objects.create(
        policy=policy,
        experiment=experiment,
        kind="metrics",
        conditions_passed=True,
        status=TriggerStatus.FIRED,
    )
    worker_run = Run.objects.create(experiment=experiment, attempt=1)
    run_artifact_store(run=worker_run, name=URL_VALUES["name"], data="{}", kind="report")
    teacher = experiment_create(name=SECRET_NAME + " (teacher)", recipe="digits")
    student = experiment_create(name=SECRET_NAME + " (student)", recipe="distill")
    edge = dependency_add(downstream=student, upstream=teacher)
    notebook = experiment_create(name=SECRET_NAME + " (external)", recipe="", executor=Executor.EXTERNAL)
    run = external_run_start(experiment=notebook, actor=Actor.system("test"))
    return {
        **URL_VALUES,
        "experiment_id": experiment.pk,
        "trigger_id": trigger.pk,
        "policy_id": policy.pk,
        "run_id": run.pk,
        "worker_run_id": worker_run.pk,
        "edge_id": edge.pk,
        "student_id": student.pk,
    }


def _url_of(name: str, route: str, values: dict[str, Any]) -> str:
    params = re.findall(r"<(?:\w+:)?(\w+)>", route)
    missing = [p for p in params if p not in values]
    assert not missing, f"{name}: add a value for URL parameter(s) {missing} to URL_VALUES in {TABLE}"
    return reverse(name, kwargs={p: values[p] for p in params})


def _request(client: Client, row: Route, url: str) -> Any:
    if row.method == "GET":
        response = client.get(url)
    elif row.method == "DELETE":
        response = client.delete(url)
    elif row.json is not None:
        response = client.post(url, json.dumps(row.json), content_type="application/json")
    elif row.raw is not None:
        response = client.post(url, row.raw, content_type="application/json")
    else:
        response = client.post(url, row.data)
    return response


def _outcome(response: Any) -> str:
    """Name what the response says, in the table's words."""
    status = response.status_code
    if status in (301, 302):
        location = urlsplit(response["Location"])
        if location.path == resolve_url(settings.LOGIN_URL) and "next=" in location.query:
            return LOGIN
        if location.path == reverse("admin:login"):
            return ADMIN_LOGIN
    if status == 401:
        assert response["Content-Type"].startswith("application/json"), "a 401 is JSON"
        return UNAUTHORIZED
    if status == 403:
        return FORBIDDEN
    if status == 404:
        return HIDDEN
    if status >= 500 and status != 503:  # /healthz answers 503 when a part is down
        return f"error {status}"
    return ALLOWED


def _routes() -> dict[str, str]:
    return {r.name: r.route for r in route_access_table()}


# --- every route is declared and has a row ----------------------------------------------------


def test_every_route_declares_who_may_use_it() -> None:
    undeclared = [r for r in route_access_table() if not r.declared]
    assert not undeclared, "\n".join(
        f"route {r.name!r} ({r.route}) declares no access, so every request to it is refused: decorate "
        "its view (or API operation) with @public, @login_only or @requires_permission(...) from "
        "experiments.permissions; a view we do not write goes into THIRD_PARTY_ROUTES in crucible_ui/access.py"
        for r in undeclared
    )


def test_every_route_has_a_row_in_the_access_table() -> None:
    routes = {name: route for name, route in _routes().items() if not name.startswith("admin:")}
    missing = sorted(set(routes) - set(ROUTES))
    stale = sorted(set(ROUTES) - set(routes))
    assert not missing, "\n".join(
        f"route {name!r} ({routes[name]}) has no row in {TABLE}: add "
        f'"{name}": Route("GET" or "POST", <anonymous>, <nobody>, <viewer>, <operator>) to ROUTES'
        for name in missing
    )
    assert not stale, f"rows of {TABLE} for routes that no longer exist: {stale}"


def test_admin_routes_are_all_the_admin_sites_own() -> None:
    """The admin is the one part trusted to check access itself; nothing of ours may hide in it."""
    for r in route_access_table():
        if r.route.startswith("admin/"):
            assert r.name.startswith("admin:") or "(?P<url>" in r.route, r.name
            assert r.delegated_to and r.access is None, r.name


def test_static_files_are_served_outside_the_url_resolver() -> None:
    """No view serves /static/ (the staticfiles handler does, before any view): nothing there to declare."""
    with pytest.raises(Resolver404):
        resolve(f"{settings.STATIC_URL}css/app.css")


def test_every_websocket_route_declares_who_may_use_it() -> None:
    for pattern in websocket_urlpatterns:
        route = str(pattern.pattern)
        app = pattern.callback
        assert isinstance(app, DeclaredConsumer), (
            f"websocket route {route!r} is not guarded: route it as declared_consumer(<ConsumerClass>) "
            "in crucible_ui/routing.py"
        )
        assert access_of(app.consumer_class) is not None, (
            f"{app.consumer_class.__name__} ({route}) declares no access: decorate the class with "
            "@requires_permission(...) or @login_only from experiments.permissions"
        )
        assert route in WEBSOCKETS, (
            f'websocket route {route!r} has no row in {TABLE}: add "{route}": Route("WS", ...) to WEBSOCKETS'
        )
    assert set(WEBSOCKETS) == {str(p.pattern) for p in websocket_urlpatterns}, "stale rows in WEBSOCKETS"


# --- each route answers each role as its row says ---------------------------------------------


def _check_route(name: str, row: Route, route: str) -> None:
    people = _people()
    values = _objects()
    values.update({param: values[key] for param, key in row.url_values.items()})
    url = _url_of(name, route, values)
    wrong = []
    for role in ROLES:
        client = Client()
        user = people[role]
        if user is not None:
            client.force_login(user)
        response = _request(client, row, url)
        got = _outcome(response)
        if got != row.expected(role):
            wrong.append(f"{role}: expected {row.expected(role)}, got {got} ({response.status_code})")
        elif got not in (ALLOWED,) and SECRET_NAME in response.content.decode(errors="replace"):
            wrong.append(f"{role}: the refusal ({response.status_code}) names the experiment")
    assert not wrong, f"{row.method} {url} ({name}):\n" + "\n".join(wrong)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(ROUTES))
def test_the_route_answers_each_role_as_its_row_says(name: str) -> None:
    routes = _routes()
    assert name in routes, f"{name} is in {TABLE} but not a route"
    _check_route(name, ROUTES[name], routes[name])


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(ADMIN_SAMPLES))
def test_the_admin_answers_each_role_with_its_own_login(name: str) -> None:
    _check_route(name, ADMIN_SAMPLES[name], _routes()[name])


def _unmasked(response: Any) -> str:
    """Return the body with the CSRF token blanked (it is masked afresh on every page)."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())


def test_a_hidden_object_answers_exactly_like_a_missing_one(db: Any) -> None:
    """Someone who may not view experiments cannot tell an existing id from a missing one."""
    nobody = _people()["nobody"]
    assert nobody is not None
    experiment_id = _objects()["experiment_id"]
    client = Client()
    client.force_login(nobody)
    for template in ("/experiments/{}/", "/api/experiments/{}", "/api/experiments/{}/metrics"):
        existing = client.get(template.format(experiment_id))
        missing = client.get(template.format(experiment_id + 1000))
        assert existing.status_code == missing.status_code == 404, template
        assert _unmasked(existing) == _unmasked(missing), template


# --- websockets --------------------------------------------------------------------------------


async def _socket_outcome(path: str, cookie: str | None) -> str:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    try:
        connected, code = await communicator.connect(timeout=SOCKET_TIMEOUT)
        if not connected:
            return f"close {code}"
        if await communicator.receive_nothing(timeout=0.5):
            return ACCEPTED
        message = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        if message["type"] == "websocket.close":
            return f"close {message.get('code', 1000)}"
        return ACCEPTED
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", sorted(WEBSOCKETS))
async def test_the_socket_answers_each_role_as_its_row_says(route: str) -> None:
    def setup() -> tuple[str, dict[str, str | None]]:
        values = _objects()
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)
        cookies: dict[str, str | None] = {}
        for role, user in _people().items():
            if user is None:
                cookies[role] = None
                continue
            client = Client()
            client.force_login(user)
            cookies[role] = (
                f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
            )
        return path, cookies

    path, cookies = await sync_to_async(setup)()
    row = WEBSOCKETS[route]
    wrong = []
    for role in ROLES:
        got = await _socket_outcome(path, cookies[role])
        if got != row.expected(role):
            wrong.append(f"{role}: expected {row.expected(role)}, got {got}")
    assert not wrong, f"{path}:\n" + "\n".join(wrong)


# --- fail closed: what declares nothing is refused to everyone, superusers included ------------


def _undeclared_page(request: Any) -> HttpResponse:
    return HttpResponse(f"the page {SECRET_NAME}")


_undeclared_api = api_access_install(NinjaAPI(urls_namespace="undeclared_test_api", auth=API_AUTH))


@_undeclared_api.get("/thing")
def _undeclared_operation(request: Any) -> dict[str, str]:
    return {"name": SECRET_NAME}


class _UndeclaredConsumer(FleetConsumer):
    """Inherits nothing from FleetConsumer's declaration: each consumer declares its own."""


# The project's routes and two that declare nothing, for the tests below (pytest.mark.urls).
urlpatterns = [
    path("undeclared/", _undeclared_page, name="undeclared"),
    path("undeclared-api/", _undeclared_api.urls),
    *project_urlpatterns,
]


@pytest.fixture
def superuser(db: Any) -> User:
    """Return someone who holds every permission."""
    return User.objects.create_superuser("root")


@pytest.mark.urls("tests.security.test_route_access")
def test_a_page_that_declares_nothing_is_refused_to_everyone(superuser: User) -> None:
    client = Client()
    assert client.get("/undeclared/").status_code == 403
    client.force_login(superuser)
    response = client.get("/undeclared/")
    assert response.status_code == 403
    assert SECRET_NAME not in response.content.decode()


@pytest.mark.urls("tests.security.test_route_access")
def test_an_api_operation_that_declares_nothing_is_refused_to_everyone(superuser: User) -> None:
    client = Client()
    client.force_login(superuser)
    response = client.get("/undeclared-api/thing")
    assert response.status_code == 403
    assert SECRET_NAME not in response.content.decode()
    assert "declares no access" in response.json()["detail"]


@pytest.mark.django_db(transaction=True)
async def test_a_consumer_that_declares_nothing_is_refused_to_everyone() -> None:
    def login() -> str:
        client = Client()
        client.force_login(User.objects.create_superuser("root"))
        return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    cookie = await sync_to_async(login)()
    app = AuthMiddlewareStack(declared_consumer(_UndeclaredConsumer))
    headers = [(b"host", b"testserver"), (b"cookie", cookie.encode())]
    communicator = WebsocketCommunicator(app, "/ws/undeclared/", headers=headers)
    try:
        connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
        assert connected  # accepted only to be closed with a code the page understands
        message = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        assert message == {"type": "websocket.close", "code": 4403}
    finally:
        await communicator.disconnect()


def test_public_cannot_be_combined_with_another_declaration() -> None:
    def view(request: Any) -> HttpResponse:
        return HttpResponse()

    with pytest.raises(ImproperlyConfigured):
        public(requires_permission("experiments.view_experiment")(view))


def test_a_declaration_decides_login_then_hidden_then_forbidden(db: Any) -> None:
    def view(request: Any) -> HttpResponse:
        return HttpResponse()

    decide = requires_permission("control.change_triggerevent")(
        requires_permission("control.view_triggerevent", hidden=True)(view)
    )
    access = access_of(decide)
    assert access is not None
    looker = User.objects.create_user("looker")
    looker.user_permissions.add(*_perms("control.view_triggerevent"))
    assert access.decide(AnonymousUser()) is Decision.LOGIN
    # Without the view permission the caller is told nothing exists, not which permission is missing.
    assert access.decide(User.objects.create_user("stranger")) is Decision.HIDDEN
    assert access.decide(looker) is Decision.FORBIDDEN
    assert access.lacking(User.objects.get(username="looker")) == ["control.change_triggerevent"]

    def page(request: Any) -> HttpResponse:
        return HttpResponse()

    anyone = access_of(login_only(page))
    assert anyone is not None
    assert anyone.decide(AnonymousUser()) is Decision.LOGIN
    assert anyone.decide(User.objects.get(username="stranger")) is Decision.ALLOWED
