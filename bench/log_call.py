"""Figure 2 — log call cost: µs per `MetricReporter.log()` inside a training loop, p50 and p99.

Ours: a loop calling `log()` on a started reporter whose background flusher writes to a
fresh SQLite database and publishes to a private Redis meanwhile (the flush interval of
the settings), each call timed with perf_counter_ns. The max per repetition is reported
too: a call that blocks on I/O would show there.
Baseline: MLflow `log_metric` (synchronous, sqlite store), median µs per call.
Goal: ≤ 10 µs per call (p50 and p99), never blocking.

Also the Crucible client's `Run.log()` (crucible_client/), the call a script outside the
workers makes: a run started over HTTP against Daphne serving the project, each call timed
while the client's sender thread posts batches to `POST /api/runs/{id}/metrics` meanwhile;
afterwards every point is checked to be stored. Same goal and baseline.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    Goal,
    base_parser,
    bench_env,
    emit,
    emit_failure,
    figure,
    make_user,
    mlflow_baseline,
    note,
    percentile,
)

FIGURES = ("log_call_p50_us", "log_call_p99_us")
CLIENT_FIGURES = ("client_log_call_p50_us", "client_log_call_p99_us")


def _timed_calls(log: Any, calls: int, first_step: int) -> tuple[float, float, float, float]:
    """Call log(step) `calls` times, each timed; return (p50, p99, max, mean with the timer) in µs."""
    clock = time.perf_counter_ns
    per_call = [0] * calls
    step = first_step
    loop_started = clock()
    for i in range(calls):
        t0 = clock()
        log(step)
        per_call[i] = clock() - t0
        step += 1
    loop_ns = clock() - loop_started
    us = [ns / 1000 for ns in per_call]
    return percentile(us, 50), percentile(us, 99), max(us), loop_ns / calls / 1000


def client_log_calls(
    env: Any, *, calls: int, repetitions: int
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Time the Crucible client's Run.log() against Daphne; return p50s, p99s and what else the figure says."""
    from crucible_client import Run as ClientRun
    from experiments.api.tokens import api_token_create
    from experiments.models import MetricPoint
    from experiments.permissions import researcher_group_ensure

    user = make_user("bench-client", permissions=[])
    user.groups.add(researcher_group_ensure())
    _, token = api_token_create(user=user, name="bench client")
    port = env.start_daphne()
    note(f"client log_call: {repetitions} x {calls} Run.log() calls, sent over HTTP meanwhile")
    run = ClientRun.start(f"http://{HOST}:{port}", token, experiment="bench client log call")
    p50s: list[float] = []
    p99s: list[float] = []
    maxima: list[float] = []
    try:
        for repetition in range(repetitions + 1):  # the first is a warm-up
            p50, p99, worst, _mean = _timed_calls(
                lambda step: run.log("loss", 0.5, step), calls, repetition * calls
            )
            if repetition:
                p50s.append(p50)
                p99s.append(p99)
                maxima.append(worst)
    finally:
        run.finish()
    logged = (repetitions + 1) * calls
    stored = MetricPoint.objects.filter(run_id=run.id).count()
    if stored != logged:
        raise RuntimeError(f"{stored} points stored, {logged} logged through the client")
    extra = {
        "calls_per_repetition": calls,
        "max_us_median": round(statistics.median(maxima), 1),
        "points_stored": stored,
        "batches_sent": run.stats["batches"],
    }
    return p50s, p99s, extra


def main() -> None:
    """Time log() calls while the flusher runs; print the p50 and p99 figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=None, help="log() calls per repetition")
    parser.add_argument(
        "--client-calls", type=int, default=None, help="the client's Run.log() calls per repetition"
    )
    args = parser.parse_args()
    calls = args.calls or (2_000 if args.quick else 100_000)
    repetitions = args.repetitions or (2 if args.quick else 5)
    # Every client call is a point sent over HTTP before the figure is done: fewer of them.
    client_calls = args.client_calls or (2_000 if args.quick else 20_000)

    p50s: list[float] = []
    p99s: list[float] = []
    maxima: list[float] = []
    means: list[float] = []
    with bench_env() as env:
        from django.conf import settings

        from experiments.choices import RunStatus
        from experiments.models import MetricPoint, Run
        from experiments.runs.reporting import MetricReporter
        from experiments.services import experiment_create

        experiment = experiment_create(name="bench log call", recipe="digits")
        run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.RUNNING)
        flush_seconds = float(settings.METRIC_FLUSH_SECONDS)
        note(f"log_call: {repetitions} x {calls} calls, flusher every {flush_seconds * 1000:.0f} ms")
        step = 0
        with MetricReporter(experiment_id=experiment.pk, run_id=run.pk) as reporter:
            log = reporter.log
            clock = time.perf_counter_ns
            for repetition in range(repetitions + 1):  # the first is a warm-up
                per_call = [0] * calls
                loop_started = clock()
                for i in range(calls):
                    t0 = clock()
                    log("loss", step, 0.5)
                    per_call[i] = clock() - t0
                    step += 1
                loop_ns = clock() - loop_started
                if repetition == 0:
                    continue
                us = [ns / 1000 for ns in per_call]
                p50s.append(percentile(us, 50))
                p99s.append(percentile(us, 99))
                maxima.append(max(us))
                means.append(loop_ns / calls / 1000)
        written = MetricPoint.objects.filter(run=run).count()
        if written != step:
            raise RuntimeError(f"{written} points written, {step} logged: the reporter lost points")
        client = client_log_calls(env, calls=client_calls, repetitions=repetitions)

    note("log_call: MLflow log_metric baseline")
    base = mlflow_baseline(
        [
            "--parts",
            "log_metric",
            "--log-calls",
            "50" if args.quick else "100",
            "--repetitions",
            str(repetitions),
        ],
        quick=args.quick,
    )
    extra = {
        "calls_per_repetition": calls,
        "flush_interval_ms": flush_seconds * 1000,
        "max_us_median": round(statistics.median(maxima), 1),
        "max_us_worst": round(max(maxima), 1),
        "loop_mean_us_with_timer": round(statistics.median(means), 3),
        "points_written": written,
    }
    client_p50s, client_p99s, client_extra = client
    for names, (p50_samples, p99_samples), extra_of in (
        (FIGURES, (p50s, p99s), extra),
        (CLIENT_FIGURES, (client_p50s, client_p99s), client_extra),
    ):
        for name, samples in zip(names, (p50_samples, p99_samples), strict=True):
            goal = Goal("≤ 10 µs per call", median_max=10.0)
            if isinstance(base, str):
                line = figure(
                    name=name, unit="µs", samples=samples, goal=goal, higher_is_better=False, extra=extra_of
                )
                line["baseline_skipped"] = base
            else:
                line = figure(
                    name=name,
                    unit="µs",
                    samples=samples,
                    goal=goal,
                    higher_is_better=False,
                    baseline_name="MLflow log_metric, synchronous (sqlite store), median per call",
                    baseline_samples=base["log_metric_us"],
                    extra={**extra_of, "mlflow_version": base["mlflow_version"]},
                )
            emit(line)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure((*FIGURES, *CLIENT_FIGURES), exc)
        raise
