"""Figure 1 — metric ingest: points/s through the project's reporter into the database, 1,000-point batches.

Ours: `MetricReporter.log()` 1,000 times, then `flush()` — the same bulk insert (ignoring
duplicates) and channel-layer publish that the background flusher does during training —
into a fresh SQLite database, with a private Redis as the channel layer.
Baseline: MLflow `log_batch` of 1,000-point batches into a sqlite tracking store.
Goal: ≥ 10x MLflow.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Goal,
    base_parser,
    bench_env,
    database_label,
    emit,
    emit_failure,
    figure,
    mlflow_baseline,
    note,
    repeat,
)

FIGURE = "ingest_points_per_s"
BATCH = 1000


def main() -> None:
    """Measure our ingest rate and MLflow's in the same run; print the figure."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=None, help="1,000-point batches per repetition")
    args = parser.parse_args()
    batches = args.batches or (3 if args.quick else 50)
    repetitions = args.repetitions or (2 if args.quick else 5)

    with bench_env(database=args.database) as _env:
        from experiments.choices import RunStatus
        from experiments.models import MetricPoint, Run
        from experiments.runs.reporting import MetricReporter
        from experiments.services import experiment_create

        experiment = experiment_create(name="bench ingest", recipe="digits")
        attempt = 0

        def one_repetition() -> float:
            # A fresh run each time, so every insert is new (no conflicts ignored).
            nonlocal attempt
            attempt += 1
            run = Run.objects.create(experiment=experiment, attempt=attempt, status=RunStatus.RUNNING)
            reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk)
            step = 0
            started = time.perf_counter()
            for _ in range(batches):
                for _ in range(BATCH):
                    reporter.log("loss", step, 1.0 / (1 + step))
                    step += 1
                reporter.flush()
            elapsed = time.perf_counter() - started
            stored = MetricPoint.objects.filter(run=run).count()
            if stored != batches * BATCH:
                raise RuntimeError(f"{stored} points stored, {batches * BATCH} logged")
            return batches * BATCH / elapsed

        note(f"ingest: {repetitions} x {batches} batches of {BATCH} points")
        ours = repeat(one_repetition, repetitions=repetitions, warmup=1)

    note("ingest: MLflow log_batch baseline")
    # The same number of batches as ours: MLflow's rate falls as a run's metric table grows.
    base_batches = batches
    base = mlflow_baseline(
        ["--parts", "ingest", "--batches", str(base_batches), "--repetitions", str(repetitions)],
        quick=args.quick,
    )
    goal = Goal("≥ 10x MLflow log_batch", ratio_min=10)
    extra = {
        "batch_size": BATCH,
        "points_per_repetition": batches * BATCH,
        "database": database_label(args.database),
    }
    if isinstance(base, str):
        line = figure(
            name=FIGURE, unit="points/s", samples=ours, goal=goal, higher_is_better=True, extra=extra
        )
        line["baseline_skipped"] = base
        emit(line)
        return
    extra["mlflow_version"] = base["mlflow_version"]
    extra["baseline_points_per_repetition"] = base_batches * BATCH
    emit(
        figure(
            name=FIGURE,
            unit="points/s",
            samples=ours,
            goal=goal,
            higher_is_better=True,
            baseline_name="MLflow log_batch (sqlite store)",
            baseline_samples=base["log_batch_points_per_s"],
            extra=extra,
        )
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure([FIGURE], exc)
        raise
