"""Notify actions: email through Django's mail backend, and a webhook POST to a real local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from django.core import mail

from control.policies.actions import validate_action_params
from control.policies.engine import engine_on_complete
from control.policies.models import ExecutionStatus, PolicyKind
from tests.policies.helpers import experiment_through, make_policy, record_run, run_pending_actions

pytestmark = pytest.mark.django_db


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def fire(actions: list[dict[str, Any]]) -> None:
    make_policy(
        "notify_on_complete",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.5}],
        actions,
    )
    experiment = experiment_through("queue", "start", "complete", name="finished")
    record_run(experiment, {"accuracy": [0.9]})
    engine_on_complete(experiment_id=experiment.pk)


def test_email_goes_out_through_the_mail_backend() -> None:
    fire([{"kind": "notify_email", "params": {"to": "ml@example.com, lead@example.com"}}])
    [execution] = run_pending_actions()
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error
    [message] = mail.outbox
    assert message.to == ["ml@example.com", "lead@example.com"]
    assert "notify_on_complete" in message.subject and "latest accuracy > 0.5" in message.body


def test_the_webhook_receives_the_trigger_as_json(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    fire([{"kind": "notify_webhook", "params": {"url": url}}])
    [execution] = run_pending_actions()
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error
    assert execution.result == {"status": 204}
    [body] = received
    assert body["type"] == "trigger.changed" and body["policy"] == "notify_on_complete"


def test_an_unreachable_webhook_fails_the_execution_with_the_reason() -> None:
    fire([{"kind": "notify_webhook", "params": {"url": "http://127.0.0.1:9/nothing-listens"}}])
    [execution] = run_pending_actions()
    assert execution.status == ExecutionStatus.FAILED and "refused" in execution.error.lower()


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("notify_email", {"to": "not-an-address"}, "to"),
        ("notify_webhook", {"url": "ftp://example.com"}, "url"),
        ("requeue", {"lr_factor": 0}, "lr_factor"),
        ("requeue", {"config_overrides": [1]}, "config_overrides"),
        ("retrain", {"priority_class": "urgent"}, "priority_class"),
        ("cancel", {"surprise": 1}, "surprise"),
        ("teleport", {}, "kind"),
    ],
)
def test_bad_action_parameters_are_refused_by_name(kind: str, params: dict[str, Any], field: str) -> None:
    assert field in validate_action_params(kind, params)
