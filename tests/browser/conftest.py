"""Browser tests: Playwright driving Debian's Chromium against pytest-django's live server.

They are marked `e2e` and run last: pytest-playwright's session-wide Playwright keeps an
event loop that breaks async tests run after it. Without /usr/bin/chromium they are
skipped with the reason and the fix (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SKIP_REASON = (
    f"browser tests need Chromium at {CHROMIUM}: apt-get install -y chromium (never `playwright install`)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move e2e tests to the end of the run; skip them when Chromium is missing."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)  # stable: order kept otherwise
    if not CHROMIUM.exists():
        for item in items:
            if item.get_closest_marker("e2e") is not None:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system Chromium with flags that suit a container (no sandbox, no GPU, no network)."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A laptop-sized window."""
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


@pytest.fixture(scope="session", autouse=True)
def _allow_orm_beside_playwright() -> Iterator[None]:
    # Playwright's sync API runs an event loop in this thread; Django then refuses ORM
    # calls (test database set-up included) unless told this thread is safe. It is: no
    # coroutine touches the database here. Session-wide because the database set-up is;
    # e2e tests run last, so no other test runs with it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
