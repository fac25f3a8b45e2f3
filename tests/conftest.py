"""Shared fixtures of the suite (the private Redis itself starts in tests/plugin_services.py)."""

from __future__ import annotations
