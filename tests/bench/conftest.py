"""Bench smoke tests: register their marker, so `-m "not bench"` deselects them."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Declare the `bench` marker (the suite runs with --strict-markers)."""
    config.addinivalue_line(
        "markers", "bench: runs a bench script in --quick mode (deselect with -m 'not bench')"
    )
