"""Run tokens: the one credential a run reports with, a worker's script run or an external client's run.

A run token is signed (Django's signing with SECRET_KEY and its own salt), not stored: it names
the run and its experiment. Nothing about it is kept in the database, so there is neither a
secret to leak from a backup nor a row to clean up after the run. It speaks for its run only,
and only while that run is live: every request re-reads the run, and once the run has ended
(completed, failed, cancelled, interrupted, lost) its token opens nothing. Ending the run is
how a leaked token is revoked; rotating SECRET_KEY revokes all of them at once.

The caller a valid token authenticates is a `RunTokenUser`: it holds the one permission the
run's own routes need, and experiments.permissions refuses it on every other route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core import signing

from experiments.choices import RunStatus
from experiments.models import Run
from experiments.permissions import TOKEN_RUN_ATTR

RUN_TOKEN_PREFIX = "crr_"
_SALT = "crucible.run-token"
# Writing to one's own run is starting experiments' business (the Start button's permission);
# experiments.permissions.Access admits a run token to routes that declare run_token=True only.
RUN_TOKEN_PERMISSIONS = frozenset({"experiments.queue_experiment"})


@dataclass(frozen=True)
class RunTokenClaims:
    """What a valid run token names."""

    run_id: int
    experiment_id: int


def run_token_mint(*, run_id: int, experiment_id: int) -> str:
    """Return a token that speaks for this one run while it is live."""
    return RUN_TOKEN_PREFIX + signing.dumps({"run": run_id, "experiment": experiment_id}, salt=_SALT)


def run_token_verify(raw: str) -> RunTokenClaims | None:
    """Return the run a token names, or None when it is not a run token of ours or was altered.

    The signature only: whether the run is still live is run_token_user()'s question.
    """
    if not raw.startswith(RUN_TOKEN_PREFIX) or len(raw) > 500:
        return None
    try:
        data = signing.loads(raw[len(RUN_TOKEN_PREFIX) :], salt=_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    run_id, experiment_id = data.get("run"), data.get("experiment")
    if not isinstance(run_id, int) or not isinstance(experiment_id, int):
        return None
    return RunTokenClaims(run_id=run_id, experiment_id=experiment_id)


class RunTokenUser:
    """The caller behind a run token: authenticated, allowed to write to its run, to nothing else."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, claims: RunTokenClaims, run: Run | None = None) -> None:
        self.run_id = claims.run_id
        self.experiment_id = claims.experiment_id
        # The live run as the token check read it (with its experiment): the run's own routes
        # use it instead of reading it again.
        self.run = run
        self.username = f"run #{claims.run_id}"
        setattr(self, TOKEN_RUN_ATTR, claims.run_id)

    def has_perm(self, perm: str, obj: Any = None) -> bool:
        """Return whether the token holds perm: only what its run's own routes need."""
        return perm in RUN_TOKEN_PERMISSIONS

    def has_perms(self, perms: Any, obj: Any = None) -> bool:
        """Return whether the token holds every one of perms."""
        return all(self.has_perm(perm) for perm in perms)

    def get_username(self) -> str:
        """Return how logs name this caller."""
        return self.username

    def __str__(self) -> str:
        return self.username


def run_token_user(raw: str) -> RunTokenUser | None:
    """Return the caller of a run token whose run is live, or None (not ours, altered, or run ended)."""
    claims = run_token_verify(raw)
    if claims is None:
        return None
    live = (
        Run.objects.select_related("experiment")
        .filter(pk=claims.run_id, experiment_id=claims.experiment_id, status=RunStatus.RUNNING)
        .first()
    )
    return RunTokenUser(claims, live) if live is not None else None
