"""Run-scoped tokens: what a script run gets (CRUCIBLE_TOKEN) to report about its own run and nothing else.

The token is signed (Django's signing with SECRET_KEY and its own salt), not stored: it names the
run and the experiment and carries its issue time. An endpoint that accepts it checks the
signature and age with run_token_verify() and must then check that the run it names is the one
addressed and is still running, so a token leaked after its run ended opens nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core import signing

RUN_TOKEN_PREFIX = "crr_"
_SALT = "crucible.run-token"


@dataclass(frozen=True)
class RunTokenClaims:
    """What a valid run token names."""

    run_id: int
    experiment_id: int


def run_token_mint(*, run_id: int, experiment_id: int) -> str:
    """Return a token that speaks for this one run."""
    return RUN_TOKEN_PREFIX + signing.dumps({"run": run_id, "experiment": experiment_id}, salt=_SALT)


def run_token_verify(raw: str, *, max_age_seconds: float) -> RunTokenClaims | None:
    """Return the run a token speaks for, or None when it is not ours, altered or older than max_age."""
    if not raw.startswith(RUN_TOKEN_PREFIX) or len(raw) > 500:
        return None
    try:
        data = signing.loads(raw[len(RUN_TOKEN_PREFIX) :], salt=_SALT, max_age=int(max_age_seconds))
    except signing.BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(data, dict):
        return None
    run_id, experiment_id = data.get("run"), data.get("experiment")
    if not isinstance(run_id, int) or not isinstance(experiment_id, int):
        return None
    return RunTokenClaims(run_id=run_id, experiment_id=experiment_id)
