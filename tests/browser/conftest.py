"""Browser tests: Playwright driving Debian's Chromium against pytest-django's live server.

The Chromium launch, the e2e ordering (last) and the skip without Chromium are shared with
the live view's browser tests in tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A laptop-sized window."""
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture(scope="session", autouse=True)
def _allow_orm_beside_playwright(orm_beside_playwright: None) -> None:
    """Every test here drives a browser: let the ORM run beside Playwright's loop."""
