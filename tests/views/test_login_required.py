"""Every experiment page asks an anonymous visitor to log in first."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import Experiment


@pytest.mark.parametrize(
    ("name", "needs_id", "method"),
    [
        ("experiments:list", False, "get"),
        ("experiments:create", False, "get"),
        ("experiments:create", False, "post"),
        ("experiments:detail", True, "get"),
        ("experiments:actions_fragment", True, "get"),
    ],
)
def test_anonymous_visitor_is_sent_to_the_login_page(
    client: Client, make_experiment: Callable[..., Experiment], name: str, needs_id: bool, method: str
) -> None:
    experiment = make_experiment()
    url = reverse(name, args=[experiment.pk] if needs_id else [])
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_anonymous_action_post_changes_nothing(
    client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    response = client.post(reverse("experiments:action", args=[experiment.pk, "queue"]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    experiment.refresh_from_db()
    assert experiment.state == "pending"
    assert not experiment.transitions.exists()


def test_login_page_logs_a_person_in_and_lands_on_the_list(client: Client, researcher: object) -> None:
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'name="username"' in page.content
    response = client.post(reverse("login"), {"username": "ana", "password": "pw-ana-123"})
    assert response.status_code == 302
    assert response["Location"] == reverse("experiments:list")


def test_missing_page_and_forbidden_page_keep_the_layout(client: Client, viewer: object) -> None:
    client.login(username="vic", password="pw-vic-123")
    missing = client.get("/experiments/424242/")
    assert missing.status_code == 404
    assert "Back to the experiments" in missing.content.decode()
    forbidden = client.get("/experiments/new/")
    assert forbidden.status_code == 403
    assert "Researchers" in forbidden.content.decode()


@pytest.mark.django_db
def test_pages_need_the_view_permission_like_the_api_and_the_sockets(client: Client) -> None:
    from django.contrib.auth.models import User

    User.objects.create_user("nobody", password="pw-nobody-123")
    client.login(username="nobody", password="pw-nobody-123")
    for url in ("/", "/gpus/", "/triggers/", "/fleet/"):
        assert client.get(url).status_code == 403, url
