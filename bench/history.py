"""Figure 3 — history fetch: GET /api/experiments/{id}/metrics over HTTP JSON against a real Daphne.

Ours, each timed from sending the request until the JSON body is parsed (chart-ready):
- 100k points of one metric, full (max_points=100000: nothing dropped);
- the same 100k points downsampled to the chart budget (the endpoint's default);
- 1M points downsampled to the chart budget.
Baselines: MLflow `get_metric_history` of the same 100k points (in-process, sqlite store,
no HTTP at all) for the 100k figures; the same 1M points fetched in full for the 1M figure.
Goals: ≤ 150 ms and ≥ 25x MLflow for 100k; ≤ 100 ms chart-ready for 1M.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Goal,
    HttpClient,
    base_parser,
    bench_env,
    database_label,
    emit,
    emit_failure,
    figure,
    make_user,
    mlflow_baseline,
    note,
    session_cookie,
)

FIGURES = ("history_100k_full_ms", "history_100k_downsampled_ms", "history_1m_downsampled_ms")
METRIC = "loss"


def load_points(*, experiment_id: int, run_id: int, count: int) -> None:
    """Write `count` points of one metric straight into the table (set-up, not measured)."""
    from django.db import connection, transaction

    from experiments.models import MetricPoint
    from experiments.runs.rollups import rollups_rebuild

    table = MetricPoint._meta.db_table
    sql = f"INSERT INTO {table} (run_id, experiment_id, name, step, value, wall_time) VALUES (%s, %s, %s, %s, %s, %s)"
    now = time.time()
    chunk = 50_000
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, count, chunk):
            rows = [
                (run_id, experiment_id, METRIC, s, 1.0 / (1 + s) + (0.5 if s % 997 == 0 else 0.0), now)
                for s in range(start, min(count, start + chunk))
            ]
            cursor.executemany(sql, rows)
        # What metrics_write keeps at ingest, built once for the whole series.
        rollups_rebuild(cursor, run_id=run_id, name=METRIC)


def fetch_ms(
    port: int, cookies: dict[str, str], path: str, *, repetitions: int, expect_total: int
) -> list[float]:
    """Return ms per GET of path until its JSON is parsed, after one warm-up request."""

    async def run() -> list[float]:
        client = HttpClient(port, cookies=cookies)
        timings: list[float] = []
        try:
            for i in range(repetitions + 1):
                started = time.perf_counter()
                status, body = await client.request("GET", path, headers={"Accept": "application/json"})
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
                data: dict[str, Any] = json.loads(body)
                elapsed = (time.perf_counter() - started) * 1000
                total = data["series"][METRIC]["total_points"]
                if total != expect_total:
                    raise RuntimeError(f"GET {path} saw {total} points, expected {expect_total}")
                if i:
                    timings.append(elapsed)
        finally:
            await client.close()
        return timings

    return asyncio.run(run())


def main() -> None:
    """Load the series, fetch them over HTTP, compare with MLflow; print three figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    args = parser.parse_args()
    small = 2_000 if args.quick else 100_000
    large = 20_000 if args.quick else 1_000_000
    repetitions = args.repetitions or (2 if args.quick else 5)

    with bench_env(database=args.database) as env:
        from experiments.choices import RunStatus
        from experiments.live.series import default_max_points
        from experiments.models import Run
        from experiments.services import experiment_create

        budget = default_max_points()
        user = make_user("bench-viewer", permissions=["experiments.view_experiment"])
        cookies = session_cookie(user)
        ids: dict[int, int] = {}
        for count in (small, large):
            experiment = experiment_create(name=f"bench history {count}", recipe="digits")
            run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.SUCCEEDED)
            note(f"history: loading {count} points")
            load_points(experiment_id=experiment.pk, run_id=run.pk, count=count)
            ids[count] = experiment.pk
        port = env.start_daphne()
        url = "/api/experiments/{}/metrics?names=" + METRIC
        note("history: fetching over HTTP")
        full_small = fetch_ms(
            port,
            cookies,
            url.format(ids[small]) + f"&max_points={small}",
            repetitions=repetitions,
            expect_total=small,
        )
        down_small = fetch_ms(
            port, cookies, url.format(ids[small]), repetitions=repetitions, expect_total=small
        )
        down_large = fetch_ms(
            port, cookies, url.format(ids[large]), repetitions=repetitions, expect_total=large
        )
        full_large = fetch_ms(
            port,
            cookies,
            url.format(ids[large]) + f"&max_points={large}",
            repetitions=max(2, repetitions // 2),
            expect_total=large,
        )

    note("history: MLflow get_metric_history baseline")
    base = mlflow_baseline(
        ["--parts", "history", "--history-points", str(small), "--repetitions", str(repetitions)],
        quick=args.quick,
    )
    extra: dict[str, Any] = {
        "chart_budget_points": budget,
        "transport": "HTTP/1.1 keep-alive to Daphne, JSON parsed",
        "database": database_label(args.database),
    }
    goal_small = Goal("<= 150 ms and >= 25x MLflow get_metric_history", median_max=150.0, ratio_min=25)
    for name, samples in ((FIGURES[0], full_small), (FIGURES[1], down_small)):
        points_extra = {**extra, "points": small}
        if isinstance(base, str):
            line = figure(
                name=name,
                unit="ms",
                samples=samples,
                goal=goal_small,
                higher_is_better=False,
                extra=points_extra,
            )
            line["baseline_skipped"] = base
        else:
            line = figure(
                name=name,
                unit="ms",
                samples=samples,
                goal=goal_small,
                higher_is_better=False,
                baseline_name=f"MLflow get_metric_history of {small} points (in-process, sqlite store)",
                baseline_samples=base["get_metric_history_ms"],
                extra={**points_extra, "mlflow_version": base["mlflow_version"]},
            )
        emit(line)
    emit(
        figure(
            name=FIGURES[2],
            unit="ms",
            samples=down_large,
            goal=Goal("<= 100 ms chart-ready", median_max=100.0),
            higher_is_better=False,
            baseline_name=f"the same {large} points fetched in full (max_points={large})",
            baseline_samples=full_large,
            extra={**extra, "points": large},
        )
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
