"""In a real browser against Daphne: every panel that shows state follows the same events.

State is changed behind the open pages, by the services the worker and the buttons use; the
experiment page (badge, lifecycle graph, buttons, runs table with progress and status,
"state since"), the experiment list rows and the deployment page's tables must all agree,
without a reload, and the experiment page holds one websocket, not one per panel.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from playwright.sync_api import Page, expect

from control.policies.engine import engine_on_complete
from control.policies.models import ActionRole, PolicyKind, PolicyMode
from experiments.actors import Actor
from experiments.choices import RunStatus
from experiments.events import FLEET_GROUP, experiment_group, send_to_groups
from experiments.models import Experiment, Run
from experiments.permissions import researcher_group_ensure
from experiments.services import experiment_create, experiment_transition
from tests.browser.helpers import in_thread, log_in, shot
from tests.digits_models import evaluating_digits_experiment
from tests.policies.helpers import make_policy, record_run

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]

SYSTEM = Actor.system("test")


def transition(experiment: Experiment, *events: str) -> None:
    for event in events:
        in_thread(experiment_transition, experiment_id=experiment.pk, event=event, actor=SYSTEM)


@pytest.fixture
def researcher(transactional_db: Any) -> User:
    """Return a person who may view, start, cancel and promote experiments."""
    user = User.objects.create_user("rita", password="pw-rita-123")
    user.groups.add(researcher_group_ensure())
    user.user_permissions.add(Permission.objects.get(codename="view_triggerevent"))
    return user


def test_every_panel_of_the_experiment_page_and_the_list_follow_one_model(
    page: Page, asgi_server: str, researcher: User
) -> None:
    experiment = experiment_create(name="one model", recipe="digits", owner=researcher)
    # Created long ago: "state since" must say so now, and "just now" after a change.
    Experiment.objects.filter(pk=experiment.pk).update(state_changed_at=timezone.now() - timedelta(days=3))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    log_in(page, asgi_server, "rita", "pw-rita-123", f"/experiments/{experiment.pk}/")
    expect(page.locator("#live-charts")).to_have_attribute("data-live-status", "live", timeout=20_000)
    expect(page.locator("#state-since")).to_have_text(re.compile(r"3\sdays ago"))
    list_page = page.context.new_page()
    list_page.goto(f"{asgi_server}/")
    row = list_page.locator(f'#experiment-table tr[data-experiment-id="{experiment.pk}"]')
    expect(row.locator(".badge")).to_have_attribute("data-state", "pending")
    expect(list_page.locator("body")).to_have_attribute("data-live-status", "live", timeout=20_000)
    page.evaluate("window.__sameDocument = true")
    list_page.evaluate("window.__sameDocument = true")
    expect(page.locator("#lifecycle-graph g.current")).to_have_attribute("data-state", "pending")
    expect(page.locator("#runs-panel tr[data-run-id]")).to_have_count(0)

    tick = list_page.get_by_label("Compare one model")
    tick.check()
    # Queued, then running with an attempt, behind the pages' back (as the worker does it).
    run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.RUNNING, worker="w1")
    transition(experiment, "queue", "start")
    badge = page.locator("#state-badge")
    run_row = page.locator(f'#runs-panel tr[data-run-id="{run.pk}"]')
    expect(badge).to_have_attribute("data-state", "running")
    expect(page.locator("#lifecycle-graph g.current")).to_have_attribute("data-state", "running")
    expect(run_row.locator(".badge")).to_have_text("Running")
    expect(page.get_by_role("button", name="Cancel…")).to_have_count(1)
    expect(page.locator("#state-since")).to_have_text("just now")
    expect(row.locator(".badge")).to_have_attribute("data-state", "running")

    # Progress of a run moves its row in place.
    in_thread(
        send_to_groups,
        [experiment_group(experiment.pk), FLEET_GROUP],
        {
            "type": "run.progress",
            "experiment_id": experiment.pk,
            "run_id": run.pk,
            "progress": 0.5,
            "eta_seconds": 10.0,
            "step": 50,
        },
    )
    cell = run_row.locator("[data-run-progress]")
    expect(cell).to_contain_text("50%")
    shot(page, "one-live-model", "experiment-running")

    # The run ends and is held for review: every panel says so.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, progress=1.0)
    transition(experiment, "complete")
    expect(badge).to_have_attribute("data-state", "evaluating")

    # A policy asks for approval: the triggers panel shows it, over the same socket.
    make_policy(
        "auto_promote",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}, {"kind": "hold", "role": ActionRole.FALLBACK}],
        mode=PolicyMode.APPROVE,
    )
    record_run(experiment, {"accuracy": [0.97]}, attempt=2)
    in_thread(engine_on_complete, experiment_id=experiment.pk)
    expect(page.locator("#trigger-panel")).to_contain_text("auto_promote")
    transition(experiment, "hold")
    expect(badge).to_have_attribute("data-state", "completed")
    expect(page.locator("#lifecycle-graph g.current")).to_have_attribute("data-state", "completed")
    expect(cell).to_contain_text("100%")
    expect(run_row.locator(".badge")).to_have_text("Succeeded")
    expect(page.locator("#experiment-actions button[data-event=promote]").first).to_be_visible()
    expect(row.locator(".badge")).to_have_attribute("data-state", "completed")
    # The list was redrawn from the server several times: the ticked row is still ticked.
    expect(tick).to_be_checked()
    shot(page, "one-live-model", "experiment-completed")
    shot(list_page, "one-live-model", "list-completed")

    assert page.evaluate("window.__sameDocument") is True
    assert list_page.evaluate("window.__sameDocument") is True
    # One socket for the whole experiment page (charts, triggers and panels share it).
    assert [u for u in sockets if "/ws/" in u] == [
        f"{asgi_server.replace('http', 'ws', 1)}/ws/experiments/{experiment.pk}/"
    ]


def test_the_deployment_tables_follow_the_promoted_version(
    page: Page, asgi_server: str, researcher: User, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "step-1.pt"
    checkpoint.write_bytes(b"not a real model; this page only lists it")
    experiment = in_thread(evaluating_digits_experiment, "deployed digits", checkpoint)
    transition(experiment, "promote")
    log_in(page, asgi_server, "rita", "pw-rita-123", "/registry/digits/")
    version_row = page.locator('#versions tr[data-version="1"]')
    expect(version_row).to_have_attribute("data-stage", "canary")
    expect(page.locator("body")).to_have_attribute("data-live-status", "live", timeout=20_000)
    page.evaluate("window.__sameDocument = true")

    transition(experiment, "deploy")
    expect(version_row).to_have_attribute("data-stage", "production")
    expect(page.locator("#candidates-table")).to_have_count(0)
    shot(page, "one-live-model", "deployment-after")
    assert page.evaluate("window.__sameDocument") is True
