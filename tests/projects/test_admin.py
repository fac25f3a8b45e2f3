"""The admin lists show each row's project, filter by it, and keep staff to their projects' rows."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client

from tests.projects.conftest import Side


def _admin_page(user: User, path: str) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200, path
    return response.content.decode()


def test_a_staff_member_sees_only_their_projects_rows(vision: Side, nlp: Side) -> None:
    # The admin admits staff by global model permissions; the project narrows the rows.
    User.objects.filter(pk=vision.user.pk).update(is_staff=True)
    vision.user.refresh_from_db()
    vision.user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_run", "view_modelversion"])
    )
    for path in (
        "/admin/experiments/experiment/",
        "/admin/experiments/run/",
        "/admin/experiments/modelversion/",
    ):
        page = _admin_page(vision.user, path)
        assert "Vision" in page  # the project column and its filter
        assert nlp.experiment.name not in page and nlp.model_name not in page
    experiments = _admin_page(vision.user, "/admin/experiments/experiment/")
    assert vision.experiment.name in experiments
    assert "Nlp" not in experiments  # not even in the project filter
    # Another project's row answers as a missing one (the admin redirects to its index).
    client = Client()
    client.force_login(vision.user)
    assert client.get(f"/admin/experiments/experiment/{nlp.experiment.pk}/change/").status_code == 302


def test_a_superuser_sees_every_project_and_filters_by_one(vision: Side, nlp: Side) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    page = _admin_page(root, "/admin/experiments/experiment/")
    assert vision.experiment.name in page and nlp.experiment.name in page
    filtered = _admin_page(root, f"/admin/experiments/experiment/?project__id__exact={nlp.project.pk}")
    assert nlp.experiment.name in filtered and vision.experiment.name not in filtered
