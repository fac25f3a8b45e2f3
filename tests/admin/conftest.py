"""Fixtures of the admin tests: a staff superuser session and a helper that submits a change form."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client


class _FormFields(HTMLParser):
    """Collect the values a browser would submit from the admin's change form."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}
        self._in_form = False
        self._select: str | None = None
        self._select_first: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and (a.get("id") or "").endswith("_form"):
            self._in_form = True
        if not self._in_form:
            return
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "checkbox", "radio"):
            self.data[name] = a.get("value") or ""
        elif tag == "input" and name and a.get("type") in ("checkbox", "radio") and "checked" in a:
            self.data[name] = a.get("value") or "on"
        elif tag == "select" and name:
            self._select, self._select_first = name, None
            self.data.setdefault(name, "")
        elif tag == "option" and self._select:
            value = a.get("value") or ""
            if self._select_first is None:
                self._select_first = value
                self.data[self._select] = value
            if "selected" in a:
                self.data[self._select] = value
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.data[self._textarea] += data


def change_form_data(html: str) -> dict[str, Any]:
    """Return the fields of an admin change form as the browser would post them."""
    parser = _FormFields()
    parser.feed(html)
    data = parser.data
    # A textarea's first newline is not part of its value.
    return {k: (v[1:] if isinstance(v, str) and v.startswith("\n") else v) for k, v in data.items()}


@pytest.fixture
def admin_user(db: Any) -> User:
    """A superuser who can see the admin."""
    return User.objects.create_superuser("boss", password="pw-boss-123")


@pytest.fixture
def staff_client(client: Client, admin_user: User) -> Client:
    """An admin session."""
    client.force_login(admin_user)
    return client
