"""Fixtures of the MLflow tests: the official client in its own venv, and a live Daphne serving the project.

The official `mlflow` package is never a project dependency: it is installed (once, from the
package index the machine is configured with) into var/bench-mlflow-venv by bench/mlflow_env.py,
the venv the benchmarks compare against, and scripts run there as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.mlflow_env import MLFLOW_REQUIREMENT, ensure_mlflow_venv
from tests.web_server import daphne_server

ROOT = Path(__file__).resolve().parents[2]
# A script of the official client gets this long; logging 10k points takes seconds.
SCRIPT_TIMEOUT = 300


@pytest.fixture(scope="session")
def mlflow_python() -> Path:
    """Return the python of the venv holding the official MLflow client; skip loudly if it cannot be installed."""
    try:
        return ensure_mlflow_venv()
    except Exception as exc:
        message = (
            f"!!! MLflow tests SKIPPED: {MLFLOW_REQUIREMENT} could not be installed into var/bench-mlflow-venv "
            f"from the configured package index ({type(exc).__name__}: {exc}). "
            "Run `python bench/mlflow_env.py --verbose` to see why."
        )
        sys.stderr.write(f"\n{message}\n")
        pytest.skip(message)


@pytest.fixture
def live_server_port(transactional_db: Any, tmp_path: Path) -> Iterator[int]:
    """Serve the project from Daphne on the test database and the session's Redis; return the port."""
    with daphne_server(tmp_path) as port:
        yield port


@dataclass
class ScriptResult:
    """What a client script printed: its last line as JSON, and all its output for failures."""

    result: dict[str, Any]
    output: str


def run_mlflow_script(python: Path, script: str, *, env: dict[str, str], tmp_path: Path) -> ScriptResult:
    """Run a script with the official client; return the JSON it printed last; fail with its output otherwise."""
    path = tmp_path / "train_with_mlflow.py"
    path.write_text(script)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DJANGO_", "DATABASE_"))}
    proc = subprocess.run(
        [str(python), str(path)],
        env={**clean_env, **env},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the MLflow script failed ({proc.returncode}):\n{output[-4000:]}"
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return ScriptResult(result=json.loads(last), output=output)
