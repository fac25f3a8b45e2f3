"""Shared steps of the browser tests: log in, run a service outside Playwright's loop, screenshots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.sync_api import Page

SHOTS = Path(__file__).resolve().parents[2] / "test-results"


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Return fn's result, run outside Playwright's event loop (channel-layer sends refuse to run inside one)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
    return result[0] if result else None


def log_in(page: Page, url: str, username: str, password: str, next_path: str = "/") -> None:
    """Log in through the login form and land on next_path."""
    page.goto(f"{url}/login/?next={quote(next_path)}")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda address: address.endswith(next_path))


def shot(page: Page, folder: str, name: str) -> None:
    """Save a full-page screenshot under test-results/<folder>/ (kept as a CI artifact)."""
    (SHOTS / folder).mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / folder / f"{name}.png"), full_page=True)


def wait_until(page: Page, predicate: str, *, timeout_s: float = 30.0, what: str = "") -> None:
    """Wait until a JS arrow function returns true, polled from here.

    Not page.wait_for_function: its polling compiles the predicate with eval(), which a page whose
    Content-Security-Policy lacks 'unsafe-eval' (every page but the experiment page) refuses once
    the first check fails. page.evaluate calls the function through the debugger protocol instead.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        page.wait_for_timeout(100)
