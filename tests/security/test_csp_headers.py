"""Every answer carries the Content-Security-Policy and Permissions-Policy; no template has inline script."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from experiments.services import experiment_create

TEMPLATES = Path(settings.BASE_DIR) / "templates"


def directives(response: Any) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", ["/login/", "/", "/admin/", "/api/experiments", "/healthz"])
@pytest.mark.django_db
def test_pages_and_the_api_carry_both_policies(admin_client: Client, path: str) -> None:
    response = admin_client.get(path)
    policy = directives(response)
    assert policy["script-src"] == ["'self'"]  # never 'unsafe-inline', no eval
    assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    features = dict(item.strip().split("=", 1) for item in response["Permissions-Policy"].split(","))
    for feature in ("camera", "microphone", "geolocation", "usb", "payment", "serial"):
        assert features[feature] == "()", feature


def test_no_template_has_an_inline_script_or_event_handler() -> None:
    # The policy refuses them; a page that relied on one would silently lose its behaviour.
    offenders = []
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag and 'type="application/json"' not in tag:
                offenders.append(f"{template.relative_to(TEMPLATES)}: {tag}")
        offenders += [
            f"{template.relative_to(TEMPLATES)}: {m}" for m in re.findall(r"\son[a-z]+=\"[^\"]*\"", text)
        ]
        offenders += [
            f"{template.relative_to(TEMPLATES)}: javascript: URL" for _ in re.findall("javascript:", text)
        ]
    assert offenders == []


@pytest.mark.django_db
def test_only_the_experiment_page_allows_eval_for_its_webgl_charts(admin_client: Client) -> None:
    experiment = experiment_create(name="csp", recipe="digits", config={}, owner=None)
    policy = directives(admin_client.get(f"/experiments/{experiment.pk}/"))
    assert policy["script-src"] == ["'self'", "'unsafe-eval'"]  # still never 'unsafe-inline'
    assert directives(admin_client.get("/"))["script-src"] == ["'self'"]
