"""Projects (tenants): who belongs to each, with which role, and the limits its work runs under."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

# The project everything made before projects existed lives in, and what new objects join
# when nobody names one (existing code paths keep working).
DEFAULT_PROJECT_SLUG = "default"


class Role(models.TextChoices):
    """A member's role in one project; each role holds every right of the roles before it."""

    VIEWER = "viewer", "Viewer"
    RESEARCHER = "researcher", "Researcher (create, start, cancel)"
    OPERATOR = "operator", "Operator (promote, roll back, approve)"
    ADMIN = "admin", "Admin (policies, members)"


# What each role grants inside its project, as the permission names the routes and the
# transitions already declare. Driving runs ("operate") and running scripts are never a
# project right: they stay with the scheduler, the workers and holders of the global permission.
_VIEWER = frozenset({"experiments.view_experiment"})
_RESEARCHER = _VIEWER | {
    "experiments.add_experiment",
    "experiments.queue_experiment",
    "experiments.cancel_experiment",
    "experiments.retry_experiment",
    "experiments.retrain_experiment",
    "experiments.give_feedback",
}
_OPERATOR = _RESEARCHER | {
    "experiments.promote_experiment",
    "experiments.rollback_experiment",
    "experiments.give_trusted_feedback",
    # Decide on a policy's trigger (approve, reject, run now) and cancel an A/B test.
    "control.change_triggerevent",
    "control.change_abtest",
}
_ADMIN = _OPERATOR | {
    "control.view_policy",
    "control.add_policy",
    "control.change_policy",
    "control.delete_policy",
    "experiments.change_membership",
}
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: _VIEWER,
    Role.RESEARCHER: frozenset(_RESEARCHER),
    Role.OPERATOR: frozenset(_OPERATOR),
    Role.ADMIN: frozenset(_ADMIN),
}


class Project(models.Model):
    """A tenant: its experiments, models and policies are seen and driven by its members only."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True)
    share = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Fair-share weight: a contended queue gives projects GPU time in proportion to it.",
    )
    max_concurrent_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Live runs of this project at once; blank: no project cap."
    )
    max_gpus = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs its runs may hold at once; blank: no quota."
    )
    gpu_hours_per_day = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="GPU-hours its runs may use per day (UTC); blank: no quota.",
    )
    daily_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="USD its runs may spend per day (UTC); blank: no project budget.",
    )
    members = models.ManyToManyField(  # type: ignore[var-annotated]
        settings.AUTH_USER_MODEL, through="Membership", related_name="projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """One user's role in one project."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project__name", "user__username"]
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="membership_one_per_project")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


def default_project() -> Project:
    """Return the default project, creating it when missing (a fresh database, a test)."""
    project, _ = Project.objects.get_or_create(slug=DEFAULT_PROJECT_SLUG, defaults={"name": "Default"})
    return project


def default_project_id() -> int:
    """Return the default project's id: the default of every object's project field."""
    return default_project().pk


# Rights that no project role grants: whoever holds the global permission has them everywhere.
GLOBAL_ONLY_PERMISSIONS = frozenset({"experiments.operate_experiment", "experiments.run_script"})

# Where a user's roles and global rights are kept for the rest of a request (one query each).
_ROLES_CACHE = "_project_roles_cache"


def _model_backend_has_perm(user: Any, perm: str) -> bool:
    """Return whether the user's own and group permissions (not their roles) hold `perm`."""
    from django.contrib.auth.backends import ModelBackend

    return ModelBackend().has_perm(user, perm)


def roles_of(user: Any) -> dict[int, str]:
    """Return the user's role in each of their projects, by project id (cached on the user)."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return {}
    cached = getattr(user, _ROLES_CACHE, None)
    if cached is None:
        cached = dict(Membership.objects.filter(user_id=user.pk).values_list("project_id", "role"))
        setattr(user, _ROLES_CACHE, cached)
    return cached


def roles_forget(user: Any) -> None:
    """Drop the roles cached on this user object (after a membership changed)."""
    for cache in (_ROLES_CACHE, "_default_project_id_cache"):
        if hasattr(user, cache):
            delattr(user, cache)


def is_superuser(user: Any) -> bool:
    """Return whether the user sees and does everything (an active superuser)."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_superuser)


def user_may(user: Any, perm: str, project_id: int | None) -> bool:
    """Return whether the user holds `perm` ("app_label.codename") in this project.

    The rule, in one place: a superuser may do everything; a member may do what their role in
    the project grants; the default project also honours global permissions (the accounts made
    before projects, and staff tooling); operate and run_script are global rights only.
    """
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if is_superuser(user):
        return True
    if perm in GLOBAL_ONLY_PERMISSIONS:
        return _model_backend_has_perm(user, perm)
    role = roles_of(user).get(project_id) if project_id is not None else None
    if role is not None and perm in ROLE_PERMISSIONS.get(role, frozenset()):
        return True
    return project_id == default_project_id_for(user) and _model_backend_has_perm(user, perm)


def default_project_id_for(user: Any) -> int:
    """Return the default project's id, kept on the user object for the rest of the request."""
    cached = getattr(user, "_default_project_id_cache", None)
    if cached is None:
        cached = default_project_id()
        user._default_project_id_cache = cached
    return int(cached)


def user_may_anywhere(user: Any, perm: str) -> bool:
    """Return whether some project's role grants the user `perm` (the door of a route)."""
    return any(perm in ROLE_PERMISSIONS.get(role, frozenset()) for role in roles_of(user).values())
