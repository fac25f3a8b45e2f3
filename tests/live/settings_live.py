"""Settings for the ASGI server of the browser tests: the project's, with the live pages routed."""

from __future__ import annotations

from crucible_ui.settings import *  # noqa: F403

ROOT_URLCONF = "tests.live.urls_pages"
