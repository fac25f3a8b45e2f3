"""Every bench script runs in --quick mode and prints its figures as JSON lines with the keys `make bench` reads.

--quick measures nothing worth quoting; it proves that the scripts still drive the
project's real code paths (reporter, history endpoint, websocket, actions, scheduler)
end to end. MLflow is not needed: its baselines are left out here (BENCH_NO_MLFLOW).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.helpers import FIGURE_KEYS, ROOT

pytestmark = [
    pytest.mark.bench,
    # The scripts always build their own SQLite database: a second suite pass on
    # PostgreSQL would run the same thing again.
    pytest.mark.skipif(
        os.getenv("DATABASE_URL", "").startswith("postgres"),
        reason="bench scripts use their own SQLite database; run once, in the SQLite pass",
    ),
]


# script -> (figures it prints, figures that may be skipped here: no CUDA, no engine hook, --quick)
SCRIPTS: dict[str, tuple[list[str], set[str]]] = {
    "ingest.py": (["ingest_points_per_s"], set()),
    # The batch endpoint is skipped by a build without the external-run HTTP API.
    "ingest_http.py": (
        ["ingest_mlflow_api_points_per_s", "ingest_http_batch_points_per_s"],
        {"ingest_http_batch_points_per_s"},
    ),
    "log_call.py": (
        ["log_call_p50_us", "log_call_p99_us", "client_log_call_p50_us", "client_log_call_p99_us"],
        set(),
    ),
    "history.py": (
        ["history_100k_full_ms", "history_100k_downsampled_ms", "history_1m_downsampled_ms"],
        set(),
    ),
    "live.py": (
        [
            "live_latency_p50_ms",
            "live_latency_p99_ms",
            "live_quiet_latency_p50_ms",
            "live_quiet_latency_p99_ms",
            "live_throughput_points_per_s",
        ],
        set(),
    ),
    "actions.py": (
        [
            "actions_p50_ms",
            "actions_p99_ms",
            "actions_p99_n_processes_ms",
            "list_p99_ms",
            "actions_p99_uvicorn_ms",
        ],
        {"actions_p99_uvicorn_ms"},
    ),
    # Skipped where Chromium is not installed (the e2e tests' condition).
    "page_load.py": (
        ["page_first_point_warm_ms", "page_first_point_cold_ms"],
        {"page_first_point_warm_ms", "page_first_point_cold_ms"},
    ),
    "trigger_action.py": (["trigger_action_ms"], set()),
    "scheduler.py": (
        [
            "scheduler_plan_ms",
            "scheduler_tick_busy_ms",
            "scheduler_tick_dispatch_ms",
            "scheduler_cost_aware_hours_to_best",
            "scheduler_cost_aware_usd_to_best",
            "scheduler_fair_share_pct",
            "scheduler_idle_gap_s",
        ],
        {"scheduler_idle_gap_s"},
    ),
    "gpu.py": (["gpu_charlm_tokens_per_s"], {"gpu_charlm_tokens_per_s"}),
    "loop_soak.py": (
        [
            "soak_worse_deployed",
            "soak_good_rolled_back_share",
            "soak_needed_person_share",
            "soak_trigger_action_ms",
        ],
        set(),
    ),
}


# Figures that count wrong decisions: zero is their goal, not a sign that nothing was measured.
ZERO_IS_A_RESULT = {"soak_worse_deployed", "soak_good_rolled_back_share", "soak_needed_person_share"}


@functools.cache
def run_quick(script: str) -> tuple[list[dict[str, Any]], str]:
    """Run one bench script with --quick (once per session); return its JSON lines and its stderr."""
    from bench.common import run_bounded

    env = {**os.environ, "BENCH_NO_MLFLOW": "1"}
    code, out, err = run_bounded(
        [sys.executable, str(ROOT / "bench" / script), "--quick"], timeout=180, env=env
    )
    assert code == 0, f"{script} exited {code}:\n{err[-3000:]}"
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return lines, err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_bench_script_prints_every_figure_as_a_json_line(script: str) -> None:
    figures, may_skip = SCRIPTS[script]
    lines, stderr = run_quick(script)
    by_name = {line["figure"]: line for line in lines}
    assert list(by_name) == figures, stderr[-2000:]
    for name, line in by_name.items():
        if "skipped" in line:
            assert name in may_skip, f"{name} was skipped: {line['skipped']}"
            assert line["skipped"].strip(), "a skipped figure must say why"
            continue
        assert set(line) >= FIGURE_KEYS, f"{name} lacks {FIGURE_KEYS - set(line)}"
        assert line["repetitions"] >= 1
        assert line["min"] <= line["median"] <= line["max"]
        assert line["median"] > 0 or name in ZERO_IS_A_RESULT
        assert line["machine"]["cpu_count"] >= 1
        if line["baseline"] is not None:
            assert line["baseline"]["median"] > 0
            assert line["ratio"] is not None and line["ratio"] > 0


def test_the_soak_sends_each_quick_experiment_down_its_path_of_the_loop() -> None:
    lines, stderr = run_quick("loop_soak.py")
    by_name = {line["figure"]: line for line in lines}
    worse = by_name["soak_worse_deployed"]
    # One experiment per path: the regression guard holds the worse one, the canary rolls back
    # the failing one, the early stop requeues the diverging one (a second run), the good one ships.
    assert worse["experiments"] == 4, stderr[-2000:]
    ended = worse["ended_by_kind"]
    assert ended["worse_than_production"] == {"completed": 1}
    assert ended["failing_when_served"] == {"rolled_back": 1}
    assert ended["good"] == {"deployed": 1}
    assert worse["median"] == 0 and worse["worse"] == []
    assert by_name["soak_good_rolled_back_share"]["good_deployed"] == 1
    assert by_name["soak_needed_person_share"]["needed"] == []
    timed = by_name["soak_trigger_action_ms"]["by_policy"]
    # Every decision was carried out by the worker: early stop, the gate (4 completions), the rollback.
    assert timed["early_stop"]["n"] == 1 and timed["auto_promote"]["n"] >= 4
    assert timed["canary_deploy"]["n"] == 1


def test_a_missing_mlflow_venv_is_a_skipped_baseline_in_quick_mode_not_an_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("BENCH_NO_MLFLOW", raising=False)
    from bench.common import mlflow_baseline

    absent = tmp_path / "no-venv"
    result = mlflow_baseline(["--parts", "ingest"], quick=True, venv_dir=absent)
    assert isinstance(result, str) and "venv absent" in result
    assert not absent.exists()
