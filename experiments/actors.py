"""Who fires a transition: a person, a policy or the system itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    """The one who acts, as written into the audit log.

    A user is held to the transition's permission; policies and system components act
    with the system's authority (their own rules decide what they may do).
    """

    label: str
    user: Any = None

    @classmethod
    def for_user(cls, user: Any) -> Actor:
        """Return the actor for a logged-in person."""
        return cls(label=f"user:{user.get_username()}", user=user)

    @classmethod
    def policy(cls, name: str) -> Actor:
        """Return the actor for an automated policy decision."""
        return cls(label=f"policy:{name}")

    @classmethod
    def system(cls, component: str = "") -> Actor:
        """Return the actor for the system (scheduler, worker, watchdog...)."""
        return cls(label=f"system:{component}" if component else "system")

    @property
    def is_person(self) -> bool:
        """Return True when a permission check against a user applies."""
        return self.user is not None
