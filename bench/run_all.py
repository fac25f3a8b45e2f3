"""`make bench`: run every bench script in turn, each in its own process, and print all their JSON lines.

Each script starts and stops its own servers (Redis, Daphne, a Celery worker) on free
127.0.0.1 ports against a fresh temporary database. The MLflow baseline venv is built
first, if missing, outside any timing.

Every script has a time budget of its own (SCRIPT_BUDGETS: about three times what it takes
on a quiet 2-core machine), so a slow script costs only its own figures, never the next
scripts' ones, and every figure is printed on a machine three times slower. A script is
told its deadline (BENCH_DEADLINE, in epoch seconds) and scripts that repeat rounds stop
repeating when the next round would not fit (bench.common.time_for). `--scale 2` doubles
every budget (a much slower machine); a script that still runs past its budget is stopped,
keeps the figures it printed, and prints a skipped line for the others. The lines are also
written to var/bench/results-<UTC time>.jsonl, and a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BASE_DIR, emit, note, run_bounded, skipped

# In the order they run; gpu.py prints a skipped line at once where there is no CUDA.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("ingest.py", ["ingest_points_per_s"]),
    ("ingest_http.py", ["ingest_mlflow_api_points_per_s", "ingest_http_batch_points_per_s"]),
    (
        "log_call.py",
        ["log_call_p50_us", "log_call_p99_us", "client_log_call_p50_us", "client_log_call_p99_us"],
    ),
    ("history.py", ["history_100k_full_ms", "history_100k_downsampled_ms", "history_1m_downsampled_ms"]),
    (
        "live.py",
        [
            "live_latency_p50_ms",
            "live_latency_p99_ms",
            "live_quiet_latency_p50_ms",
            "live_quiet_latency_p99_ms",
            "live_throughput_points_per_s",
        ],
    ),
    (
        "actions.py",
        [
            "actions_p50_ms",
            "actions_p99_ms",
            "actions_p99_n_processes_ms",
            "list_p99_ms",
            "actions_p99_uvicorn_ms",
        ],
    ),
    ("page_load.py", ["page_first_point_warm_ms", "page_first_point_cold_ms"]),
    ("trigger_action.py", ["trigger_action_ms"]),
    (
        "scheduler.py",
        [
            "scheduler_plan_ms",
            "scheduler_tick_busy_ms",
            "scheduler_tick_dispatch_ms",
            "scheduler_cost_aware_hours_to_best",
            "scheduler_cost_aware_usd_to_best",
            "scheduler_fair_share_pct",
            "scheduler_idle_gap_s",
        ],
    ),
    (
        "canary.py",
        [
            "canary_bad_caught_share",
            "canary_good_deployed_share",
            "canary_detect_requests",
            "canary_detect_sim_s",
        ],
    ),
    ("ab.py", ["ab_equal_winner_share", "ab_correct_share", "ab_decision_requests"]),
    (
        "loop_soak.py",
        [
            "soak_worse_deployed",
            "soak_good_rolled_back_share",
            "soak_needed_person_share",
            "soak_trigger_action_ms",
        ],
    ),
    ("gpu.py", ["gpu_charlm_tokens_per_s"]),
    (
        "ws_storm.py",
        [
            "ws_storm_connected",
            "ws_storm_connect_p50_ms",
            "ws_storm_connect_p99_ms",
            "ws_storm_cpu_ms_per_connection",
        ],
    ),
]
# Seconds each script may run (its servers' start and stop included). About three times
# what it took on the 2-core development machine, so that it prints every figure on one three
# times slower; a script not named gets DEFAULT_SCRIPT_BUDGET.
SCRIPT_BUDGETS: dict[str, float] = {
    "ingest.py": 240.0,
    "log_call.py": 120.0,
    "history.py": 300.0,
    "live.py": 180.0,
    "actions.py": 420.0,
    "page_load.py": 180.0,
    "trigger_action.py": 180.0,
    "scheduler.py": 240.0,
    "canary.py": 240.0,
    "ab.py": 180.0,
    "loop_soak.py": 600.0,
    "gpu.py": 120.0,
    "ws_storm.py": 240.0,
}
DEFAULT_SCRIPT_BUDGET = 240.0
# --quick runs tiny sizes: a fixed, short limit each.
QUICK_SCRIPT_BUDGET = 180.0


def run_script(script: str, figures: list[str], *, extra: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run one script within timeout; return its JSON lines (a skipped line for each figure it did not print)."""
    argv = [sys.executable, str(BASE_DIR / "bench" / script), *extra]
    lines: list[dict[str, Any]] = []
    env = {**os.environ, "BENCH_DEADLINE": f"{time.time() + timeout:.3f}"}
    code, stdout, stderr = run_bounded(argv, timeout=timeout, env=env)
    for raw in stdout.splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    sys.stderr.write(stderr)
    printed = {str(line.get("figure")) for line in lines}
    for name in figures:
        if name not in printed:
            lines.append(
                skipped(name, f"{script} exited {code} without this figure: {stderr.strip()[-300:]}")
            )
    return lines


def main() -> None:
    """Run the scripts within the budget and print every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (checks the scripts, measures nothing)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every script's time budget (a slower machine)"
    )
    parser.add_argument("--only", default="", help="comma-separated script names, e.g. ingest,live")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow baselines")
    args = parser.parse_args()
    if args.no_mlflow:
        os.environ["BENCH_NO_MLFLOW"] = "1"
    started = time.monotonic()
    if not args.quick and not args.no_mlflow:
        from bench.mlflow_env import ensure_mlflow_venv, mlflow_installed

        if not mlflow_installed():
            note("building the MLflow baseline venv (first run only, not timed)...")
            ensure_mlflow_venv()
            started = time.monotonic()
    wanted = {name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()}
    extra = ["--quick"] if args.quick else []
    results: list[dict[str, Any]] = []
    for script, figures in SCRIPTS:
        if wanted and script.removesuffix(".py") not in wanted:
            continue
        budget = QUICK_SCRIPT_BUDGET if args.quick else SCRIPT_BUDGETS.get(script, DEFAULT_SCRIPT_BUDGET)
        budget *= args.scale
        note(f"running {script} (budget {budget:.0f} s)")
        script_started = time.monotonic()
        for line in run_script(script, figures, extra=extra, timeout=budget):
            emit(line)
            results.append(line)
        note(f"{script} took {time.monotonic() - script_started:.0f} s of its {budget:.0f} s")
    elapsed = time.monotonic() - started
    out_dir = BASE_DIR / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"results-{stamp}{'-quick' if args.quick else ''}.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in results))
    note(f"done in {elapsed:.0f} s; lines written to {out.relative_to(BASE_DIR)}")
    for line in results:
        if "skipped" in line:
            note(f"  {line['figure']:<32} skipped: {line['skipped'][:100]}")
        else:
            ratio = "" if line.get("ratio") is None else f" ratio {line['ratio']}"
            met = line.get("meets_goal")
            verdict = "meets goal" if met else "not judged" if met is None else "SHORT of goal"
            note(f"  {line['figure']:<32} {line['median']} {line['unit']}{ratio}  {verdict} ({line['goal']})")


if __name__ == "__main__":
    main()
