"""Suite-wide set-up: a private Redis for every test session, started before Django settings load.

Loaded as a plugin (`-p tests.plugin_services` in pyproject) so that its hook runs before
pytest-django reads the settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from crucible_ui.redis_server import free_port, start_redis

_redis_proc: subprocess.Popen[bytes] | None = None
_tmp_dir: str | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Start our own Redis on a free port and point settings at it (unless REDIS_URL is set)."""
    global _redis_proc, _tmp_dir
    _tmp_dir = tempfile.mkdtemp(prefix="crucible-test-")
    os.environ.setdefault("VAR_DIR", _tmp_dir)
    os.environ.setdefault("ARTIFACTS_ROOT", str(Path(_tmp_dir) / "artifacts"))
    # Development mode, as `make run`: DEBUG is off by default (production); tests that need
    # production settings start a process of their own with them.
    os.environ.setdefault("DEBUG", "true")
    if "TEST_REDIS_URL" in os.environ:
        os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    else:
        port = free_port()
        _redis_proc = start_redis(port=port, data_dir=Path(_tmp_dir) / "redis")
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the Redis this session started and remove its files."""
    if _redis_proc is not None:
        _redis_proc.terminate()
        try:
            _redis_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _redis_proc.kill()
    if _tmp_dir:
        shutil.rmtree(_tmp_dir, ignore_errors=True)


@pytest.fixture
def redis_url() -> str:
    """Return the URL of the test session's Redis."""
    return os.environ["REDIS_URL"]
