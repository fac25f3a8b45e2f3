"""The MLflow baseline: runs INSIDE var/bench-mlflow-venv (see bench/mlflow_env.py) and prints one JSON line.

Measures MLflow's own tracking client against a local sqlite tracking store, the way a
training script uses it without a server:
- ingest: `MlflowClient.log_batch` of 1,000-point batches (MLflow's per-call limit), points/s;
- history: `MlflowClient.get_metric_history` of one metric with N points, ms;
- log_metric: one synchronous `MlflowClient.log_metric` call, µs (median of each repetition).
It imports nothing from the project (it cannot: the project is not installed in that venv).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _metrics(start_step: int, count: int, key: str = "loss") -> list[Any]:
    """Return `count` Metric entities of one key at consecutive steps."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    return [
        Metric(key=key, value=1.0 / (1 + s), timestamp=now_ms, step=s)
        for s in range(start_step, start_step + count)
    ]


def measure_ingest(
    client: Any, experiment_id: str, *, batches: int, batch_size: int, repetitions: int
) -> list[float]:
    """Return points/s of log_batch per repetition (a fresh run each time)."""
    rates: list[float] = []
    for _ in range(repetitions + 1):  # the first is a warm-up
        run_id = client.create_run(experiment_id).info.run_id
        payloads = [_metrics(b * batch_size, batch_size) for b in range(batches)]
        started = time.perf_counter()
        for metrics in payloads:
            client.log_batch(run_id, metrics=metrics)
        elapsed = time.perf_counter() - started
        rates.append(batches * batch_size / elapsed)
    return rates[1:]


def measure_history(
    client: Any, experiment_id: str, *, points: int, repetitions: int
) -> tuple[list[float], float]:
    """Return (ms per get_metric_history of `points` points, seconds spent logging them)."""
    run_id = client.create_run(experiment_id).info.run_id
    started = time.perf_counter()
    for start in range(0, points, 1000):
        client.log_batch(run_id, metrics=_metrics(start, min(1000, points - start)))
    setup_s = time.perf_counter() - started
    timings: list[float] = []
    for _ in range(repetitions + 1):
        t0 = time.perf_counter()
        history = client.get_metric_history(run_id, "loss")
        timings.append((time.perf_counter() - t0) * 1000)
        if len(history) != points:
            raise RuntimeError(f"get_metric_history returned {len(history)} points, expected {points}")
    return timings[1:], setup_s


def measure_log_metric(client: Any, experiment_id: str, *, calls: int, repetitions: int) -> list[float]:
    """Return the median µs of one synchronous log_metric call, per repetition."""
    run_id = client.create_run(experiment_id).info.run_id
    medians: list[float] = []
    step = 0
    for _ in range(repetitions + 1):
        per_call: list[float] = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            client.log_metric(run_id, "loss", 0.5, step=step)
            per_call.append((time.perf_counter_ns() - t0) / 1000)
            step += 1
        medians.append(statistics.median(per_call))
    return medians[1:]


def main() -> None:
    """Parse the parts to measure, run them against a fresh sqlite store, print one JSON line."""
    parser = argparse.ArgumentParser(description="MLflow tracking baseline (sqlite store)")
    parser.add_argument("--parts", default="ingest,history,log_metric")
    parser.add_argument("--batches", type=int, default=20, help="1,000-point batches per ingest repetition")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--history-points", type=int, default=100_000)
    parser.add_argument("--log-calls", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}

    logging.disable(logging.WARNING)
    import mlflow
    from mlflow.tracking import MlflowClient

    out: dict[str, Any] = {"mlflow_version": mlflow.__version__, "store": "sqlite"}
    with tempfile.TemporaryDirectory(prefix="bench-mlflow-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        started = time.perf_counter()
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.create_experiment("bench", artifact_location=str(Path(tmp) / "artifacts"))
        out["store_setup_s"] = round(time.perf_counter() - started, 2)
        if "ingest" in parts:
            out["log_batch_points_per_s"] = measure_ingest(
                client,
                experiment_id,
                batches=args.batches,
                batch_size=args.batch_size,
                repetitions=args.repetitions,
            )
        if "history" in parts:
            timings, setup_s = measure_history(
                client, experiment_id, points=args.history_points, repetitions=args.repetitions
            )
            out["get_metric_history_ms"] = timings
            out["history_points"] = args.history_points
            out["history_setup_s"] = round(setup_s, 2)
        if "log_metric" in parts:
            out["log_metric_us"] = measure_log_metric(
                client, experiment_id, calls=args.log_calls, repetitions=args.repetitions
            )
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
