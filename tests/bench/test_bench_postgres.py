"""`--database postgres`: the figures the bench quotes for both databases run on a PostgreSQL database of their own."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests.bench.helpers import ROOT

pytestmark = [pytest.mark.bench, pytest.mark.slow]


def _postgres_reachable() -> bool:
    import psycopg

    from bench.common import POSTGRES_SERVER_URL

    try:
        with psycopg.connect(POSTGRES_SERVER_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.mark.parametrize(
    ("script", "figure"),
    [
        ("history.py", "history_1m_downsampled_ms"),
        ("scheduler.py", "scheduler_tick_dispatch_ms"),
        ("ingest.py", "ingest_points_per_s"),
    ],
)
def test_a_bench_script_measures_on_postgresql_and_drops_its_database(script: str, figure: str) -> None:
    if not _postgres_reachable():
        pytest.skip("no PostgreSQL server at BENCH_POSTGRES_URL (or 127.0.0.1:5432)")
    import psycopg

    from bench.common import POSTGRES_SERVER_URL, run_bounded

    env = {**os.environ, "BENCH_NO_MLFLOW": "1"}
    argv = [sys.executable, str(ROOT / "bench" / script), "--quick", "--database", "postgres"]
    code, out, err = run_bounded(argv, timeout=300, env=env)
    assert code == 0, err[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, out.splitlines()) if line}
    assert lines[figure]["database"] == "postgresql"
    assert lines[figure]["median"] > 0
    [name] = re.findall(r"PostgreSQL database (crucible_bench_\w+)", err)
    with psycopg.connect(POSTGRES_SERVER_URL) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchall()
    assert left == [], f"{name} was left behind"
