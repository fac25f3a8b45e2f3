"""Who may see and do what, project by project: the one module every page, route and socket asks.

The rule (experiments/models/project.py `user_may`):
- an active superuser sees and does everything, in every project;
- a member may do what their role in the object's project grants (ROLE_PERMISSIONS):
  viewer sees; researcher also creates, starts, cancels, retries, retrains; operator also
  promotes, rolls back and approves (trusted feedback); admin also edits policies and members;
- the default project (everything made before projects existed) also honours global Django
  permissions, so accounts and groups set up before projects keep working there; in every other
  project only membership counts;
- driving runs (operate) and running scripts are global permissions only, never a project role.

An object outside the caller's projects answers exactly as a missing one (404); lists omit it.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet

from experiments.models import Experiment, ModelVersion, Project
from experiments.models.project import (
    ROLE_PERMISSIONS,
    default_project_id_for,
    is_superuser,
    roles_of,
    user_may,
    user_may_anywhere,
)

VIEW = "experiments.view_experiment"
CREATE = "experiments.add_experiment"


def role_of(user: Any, project: Project | int) -> str | None:
    """Return the user's role in the project ("viewer" ... "admin"), or None for a non-member."""
    project_id = project if isinstance(project, int) else project.pk
    return roles_of(user).get(project_id)


def project_id_of(obj: Model | int) -> int | None:
    """Return the project an object belongs to (a Project, or anything with a project field)."""
    if isinstance(obj, Project):
        return obj.pk
    if isinstance(obj, int):
        return obj
    return getattr(obj, "project_id", None)


def can(user: Any, action: str, obj: Model | int) -> bool:
    """Return whether the user may `action` ("app_label.codename") on obj (or in project obj)."""
    return user_may(user, action, project_id_of(obj))


def project_ids_where(user: Any, action: str) -> set[int] | None:
    """Return the ids of the projects where the user may `action`; None means every project."""
    if is_superuser(user):
        return None
    ids = {pid for pid, role in roles_of(user).items() if action in ROLE_PERMISSIONS.get(role, frozenset())}
    default_id = default_project_id_for(user)
    if user_may(user, action, default_id):
        ids.add(default_id)
    return ids


def visible_projects(user: Any, action: str = VIEW) -> QuerySet[Project]:
    """Return the projects where the user may `action` (all of them for a superuser), by name."""
    ids = project_ids_where(user, action)
    projects = Project.objects.all()
    return projects if ids is None else projects.filter(pk__in=ids)


def visible(
    user: Any, queryset: QuerySet[Any], *, field: str = "project", action: str = VIEW
) -> QuerySet[Any]:
    """Return the rows of queryset whose project (reached through `field`) the user may `action` in."""
    ids = project_ids_where(user, action)
    if ids is None:
        return queryset
    return queryset.filter(**{f"{field}__in": ids})


def visible_experiments(user: Any, queryset: QuerySet[Experiment] | None = None) -> QuerySet[Experiment]:
    """Return the experiments the user may see (of queryset, else of all)."""
    return visible(user, Experiment.objects.all() if queryset is None else queryset)


def may_see_experiment(user: Any, experiment_id: int) -> bool:
    """Return whether the experiment exists and the user may see it (a hidden one reads as missing)."""
    return visible_experiments(user).filter(pk=experiment_id).exists()


def creatable_projects(user: Any) -> QuerySet[Project]:
    """Return the projects where the user may create experiments (the create form's choices)."""
    return visible_projects(user, CREATE)


def default_project_for(user: Any) -> Project | None:
    """Return the project a new experiment joins when none is named: the user's only or first one."""
    return creatable_projects(user).order_by("pk").first()


class ProjectRoleBackend:
    """Authentication backend that answers permission questions from project roles.

    Without an object it says whether some project grants the permission (so a member passes the
    door of a route their role opens); with an object it asks that object's project. It
    authenticates nobody (ModelBackend does).
    """

    def authenticate(self, request: Any, **credentials: Any) -> None:
        """Return None: roles grant rights, never a login."""
        return None

    def has_perm(self, user: Any, perm: str, obj: Any = None) -> bool:
        """Return whether a project role grants perm (anywhere, or in obj's project)."""
        if obj is None:
            return user_may_anywhere(user, perm)
        project_id = project_id_of(obj)
        return project_id is not None and user_may(user, perm, project_id)

    def has_module_perms(self, user: Any, app_label: str) -> bool:
        """Return False: the admin keeps to staff and their global permissions."""
        return False

    def get_user(self, user_id: int) -> None:
        """Return None: sessions are ModelBackend's."""
        return None


def visible_model_versions(
    user: Any, queryset: QuerySet[ModelVersion] | None = None
) -> QuerySet[ModelVersion]:
    """Return the model versions the user may see (of queryset, else of all)."""
    return visible(user, ModelVersion.objects.all() if queryset is None else queryset)


def model_project_id(model_name: str) -> int | None:
    """Return the project a registered model name belongs to (its newest version's), or None."""
    return (
        ModelVersion.objects.filter(model_name=model_name)
        .order_by("-version")
        .values_list("project_id", flat=True)
        .first()
    )


def may_see_model(user: Any, model_name: str) -> bool:
    """Return whether the model name exists and the user may see it (a hidden one reads as unknown)."""
    project_id = model_project_id(model_name)
    return project_id is not None and can(user, VIEW, project_id)


def model_hidden(user: Any, model_name: str) -> bool:
    """Return whether the model name is registered in a project the user may not see.

    A name with no version yet belongs to no project: its page (promote a first version) shows
    only the user's own experiments.
    """
    project_id = model_project_id(model_name)
    return project_id is not None and not can(user, VIEW, project_id)
