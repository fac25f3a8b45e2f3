"""Actions that tell people: email through Django's mail backend, a JSON webhook."""

from __future__ import annotations

import json
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from django.core.mail import send_mail

from control.policies.actions.base import ActionContext, ActionKind, action_kind_register
from experiments.recipes.schema import Param


def _addresses(raw: Any) -> list[str]:
    return [a.strip() for a in str(raw or "").split(",") if a.strip()]


@action_kind_register
class NotifyEmail(ActionKind):
    """Email the trigger (as JSON) to a list of addresses."""

    name = "notify_email"
    label = "Notify by email"
    help = 'Send an email through Django\'s mail backend. {"to": "ml-team@example.com, lead@example.com"}'
    params = (
        Param("to", str, "", "Comma-separated addresses."),
        Param("subject", str, "", "Subject; blank: a default."),
    )

    def check(self, clean: dict[str, Any]) -> dict[str, str]:
        """Refuse a list without addresses, or with something that is not one."""
        addresses = _addresses(clean.get("to"))
        if not addresses or any("@" not in a for a in addresses):
            return {"to": "give one or more email addresses, comma-separated"}
        return {}

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """Send the mail; return how many went out and to whom."""
        to = _addresses(ctx.params.get("to"))
        subject = ctx.params.get("subject") or f"[Crucible] policy {ctx.policy_name} fired"
        body = json.dumps(ctx.trigger_payload(), indent=2, default=str)
        return {"sent": send_mail(subject, body, None, to), "to": to}


@action_kind_register
class NotifyWebhook(ActionKind):
    """POST the trigger as JSON to an http(s) URL."""

    name = "notify_webhook"
    label = "Notify by webhook"
    help = 'POST the trigger as JSON to a URL. {"url": "http://127.0.0.1:9000/hook"}'
    params = (Param("url", str, "", "http(s) URL to POST to."),)

    def check(self, clean: dict[str, Any]) -> dict[str, str]:
        """Refuse anything but an http(s) URL with a host."""
        url = urlsplit(str(clean.get("url", "")))
        if url.scheme not in ("http", "https") or not url.netloc:
            return {"url": "give an http:// or https:// URL"}
        return {}

    def perform(self, ctx: ActionContext) -> dict[str, Any]:
        """POST the payload; return the answer's status."""
        payload = json.dumps(ctx.trigger_payload(), default=str).encode()
        request = urllib.request.Request(
            str(ctx.params["url"]), data=payload, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # the URL was validated as http(s)
            return {"status": response.status}
