"""The client package on its own: importable without Django, and its spool keeps points until acknowledged."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from crucible_client import CrucibleError, Run
from crucible_client.spool import Spool
from crucible_client.transport import TransientError, Transport, request_with_retry
from crucible_ui.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_imports_nothing_of_django_or_the_project() -> None:
    code = (
        "import sys, crucible_client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'experiments', 'control', 'crucible_ui', 'ninja', 'celery', 'channels')); "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-E", "-s", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env={}
    )

    assert out.stdout.strip() == "[]", out.stderr


def test_the_spool_hands_out_points_in_order_and_forgets_them_only_once_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([("loss", s, s / 10, 1.0) for s in range(5)])

    first = spool.take(3)
    again = spool.take(3)  # not acknowledged: the same points come out again
    spool.ack(len(again))
    rest = spool.take(10)
    spool.ack(len(rest))

    assert [p[1] for p in first] == [p[1] for p in again] == [0, 1, 2]
    assert [p[1] for p in rest] == [3, 4]
    assert spool.count == 0 and spool.path.stat().st_size == 0
    spool.remove()
    assert not spool.path.exists()


def test_an_unreachable_server_is_retried_until_the_deadline_then_reported() -> None:
    transport = Transport(f"http://127.0.0.1:{free_port()}", "cru_x", timeout=1)
    retries: list[Exception] = []

    with pytest.raises(TransientError):
        request_with_retry(
            transport,
            "GET",
            "/api/runs/1",
            deadline=time.monotonic() + 0.5,
            on_retry=retries.append,
        )

    assert retries  # it did try again before giving up


def test_a_start_with_a_wrong_token_fails_at_once_with_the_servers_reason(live_server: Any) -> None:
    with pytest.raises(CrucibleError) as refused:
        Run.start(str(live_server.url), "cru_not-a-token", experiment="x", start_timeout=5)

    assert refused.value.status == 401 and "token" in str(refused.value.detail).lower()


def test_from_env_outside_a_worker_run_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_API_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("CRUCIBLE_TOKEN", raising=False)
    monkeypatch.delenv("CRUCIBLE_RUN_ID", raising=False)

    with pytest.raises(CrucibleError) as refused:
        Run.from_env()

    assert "CRUCIBLE_TOKEN, CRUCIBLE_RUN_ID not set" in str(refused.value.detail)
