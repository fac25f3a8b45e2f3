"""`manage.py api_token <username> [--name ...]`: create a bearer token for the JSON API and print it once."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from experiments.api.tokens import api_token_create
from experiments.models import ApiToken


class Command(BaseCommand):
    """Create an API token for a user (only its hash is kept), list or revoke tokens."""

    help = "Create a bearer token for the JSON API (printed once), or --list / --revoke PREFIX."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="What the token is for (shown in listings).")
        parser.add_argument("--list", action="store_true", help="List the user's tokens instead.")
        parser.add_argument("--revoke", metavar="PREFIX", help="Delete the user's token(s) with this prefix.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Create, list or revoke tokens of one user."""
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: options["username"]})
        except user_model.DoesNotExist:
            raise CommandError(f"No user {options['username']!r}") from None
        if options["list"]:
            for token in ApiToken.objects.filter(user=user).order_by("created_at"):
                used = token.last_used_at.isoformat() if token.last_used_at else "never"
                self.stdout.write(
                    f"{token.prefix}…  {token.name}  created {token.created_at:%Y-%m-%d}  used {used}"
                )
            return
        if options["revoke"]:
            deleted, _ = ApiToken.objects.filter(user=user, prefix=options["revoke"]).delete()
            if not deleted:
                raise CommandError(f"No token with prefix {options['revoke']!r} for {options['username']!r}")
            self.stdout.write(f"Revoked {deleted} token(s).")
            return
        _, raw = api_token_create(user=user, name=options["name"])
        # The raw token is not stored anywhere: this is the only time it can be seen.
        self.stdout.write(raw)
        self.stderr.write(
            "Store it now: it cannot be shown again. Use it as 'Authorization: Bearer <token>'."
        )
