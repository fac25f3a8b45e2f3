"""The groups people are put in, and the access each route declares (deny by default)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured

RESEARCHERS_GROUP = "Researchers"

# Researchers create experiments and drive them by hand; driving runs ("operate") stays
# with the scheduler and workers.
RESEARCHER_PERMISSIONS: tuple[str, ...] = (
    "add_experiment",
    "view_experiment",
    "queue_experiment",
    "cancel_experiment",
    "promote_experiment",
    "rollback_experiment",
    "retrain_experiment",
    "retry_experiment",
    # Researchers label served predictions, and their labels count (canaries, curated datasets).
    "give_feedback",
    "give_trusted_feedback",
)


def researcher_group_ensure() -> Group:
    """Create (or complete) the Researchers group with its experiment permissions; idempotent."""
    group, _ = Group.objects.get_or_create(name=RESEARCHERS_GROUP)
    perms = Permission.objects.filter(
        content_type__app_label="experiments", codename__in=RESEARCHER_PERMISSIONS
    )
    missing = set(RESEARCHER_PERMISSIONS) - {p.codename for p in perms}
    if missing:
        # Permissions are created by migrate's post_migrate signal; without them the group is useless.
        raise RuntimeError(f"permissions missing (run migrate first): {', '.join(sorted(missing))}")
    group.permissions.add(*perms)
    return group


# --- who may reach each route: declarations read by the HTTP middleware, the API and the sockets ---
#
# Every page, API operation, serving endpoint and websocket consumer declares its access with one
# of the decorators below; what declares nothing is refused (crucible_ui/access.py enforces it).


class Decision(enum.Enum):
    """What an access check concluded for one caller."""

    ALLOWED = "allowed"
    LOGIN = "login"  # nobody is logged in: log in first (401 for programs)
    HIDDEN = "hidden"  # answer as for a missing object (404): the caller may not know it exists
    FORBIDDEN = "forbidden"  # 403, naming nothing of the object


@dataclass(frozen=True)
class Access:
    """The access a route declares: open to all, to anyone logged in, or to holders of permissions.

    `hidden` permissions guard object routes: a caller without one is told the object does not
    exist (404), so that existing and missing ids answer alike. `api` routes are called by
    programs: they accept `Authorization: Bearer <token>` and answer refusals as JSON.
    `run_token` routes also take a run-scoped token (one that may write to its own run only,
    handed to an external client); every other route refuses such a token (403).
    """

    public: bool = False
    permissions: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    api: bool = False
    run_token: bool = False

    def merged(self, other: Access) -> Access:
        """Return both declarations at once (stacked decorators); public cannot be combined."""
        if self.public or other.public:
            raise ImproperlyConfigured("@public cannot be combined with another access declaration")
        return Access(
            permissions=self.permissions | other.permissions,
            hidden=self.hidden | other.hidden,
            api=self.api or other.api,
            run_token=self.run_token and other.run_token,
        )

    def decide(self, user: Any) -> Decision:
        """Return whether this user may use the route, and if not, how to refuse."""
        if self.public:
            return Decision.ALLOWED
        if user is None or not user.is_authenticated:
            return Decision.LOGIN
        if token_run_id(user) is not None and not self.run_token:
            return Decision.FORBIDDEN
        # Hidden first: a caller who may not see the object must not learn that a
        # stronger permission would be needed for it either.
        if not all(user.has_perm(perm) for perm in sorted(self.hidden)):
            return Decision.HIDDEN
        if not all(user.has_perm(perm) for perm in sorted(self.permissions)):
            return Decision.FORBIDDEN
        return Decision.ALLOWED

    def lacking(self, user: Any) -> list[str]:
        """Return the declared permissions this user lacks (to name in a refusal; never object data)."""
        if token_run_id(user) is not None and not self.run_token:
            return ["a user's token (this token may only write to its own run)"]
        return [perm for perm in sorted(self.hidden | self.permissions) if not user.has_perm(perm)]

    def describe(self) -> str:
        """Return the declaration as a person reads it, e.g. "login + experiments.view_experiment (404)"."""
        if self.public:
            return "public"
        parts = ["login"]
        parts += [f"{perm} (404 without)" for perm in sorted(self.hidden)]
        parts += sorted(self.permissions - self.hidden)
        return " + ".join(parts) + (" [api]" if self.api else "") + (" [run token]" if self.run_token else "")


# The attribute a user authenticated by a run-scoped API token carries: the run's id.
TOKEN_RUN_ATTR = "api_token_run_id"


def token_run_id(user: Any) -> int | None:
    """Return the run a run-scoped token is limited to, or None (a session or a user's token)."""
    value = getattr(user, TOKEN_RUN_ATTR, None)
    return value if isinstance(value, int) else None


ACCESS_ATTR = "access_declaration"

_Declared = TypeVar("_Declared")


def access_of(target: Any) -> Access | None:
    """Return the access a view, API operation or consumer class declares itself (None: nothing)."""
    # A consumer class declares its own access: one inherited from a base would let a new
    # consumer slip through with its parent's rule, unread.
    found = vars(target).get(ACCESS_ATTR) if isinstance(target, type) else getattr(target, ACCESS_ATTR, None)
    return found if isinstance(found, Access) else None


def _declare(target: _Declared, access: Access) -> _Declared:
    existing = access_of(target)
    setattr(target, ACCESS_ATTR, existing.merged(access) if existing else access)
    return target


def public(target: _Declared) -> _Declared:
    """Declare a route open to everyone, logged in or not (the login page, /healthz)."""
    return _declare(target, Access(public=True))


def login_only(target: _Declared) -> _Declared:
    """Declare a route open to anyone logged in, whatever their permissions."""
    return _declare(target, Access())


def requires_permission(
    *permissions: str, hidden: bool = False, api: bool = False, run_token: bool = False
) -> Callable[[_Declared], _Declared]:
    """Declare the permissions a route needs ("app_label.codename"); stack it to add more.

    hidden: refuse with 404, as for a missing object, rather than 403 (object routes).
    api: a route for programs (bearer tokens accepted, JSON refusals).
    run_token: a run-scoped token is accepted too (the view checks that the run is its own).
    """
    if not permissions or not all(isinstance(p, str) and "." in p for p in permissions):
        raise ImproperlyConfigured(f"permissions are 'app_label.codename' strings, got {permissions!r}")
    perms = frozenset(permissions)
    access = Access(permissions=perms, hidden=perms if hidden else frozenset(), api=api, run_token=run_token)

    def declare(target: _Declared) -> _Declared:
        return _declare(target, access)

    return declare
