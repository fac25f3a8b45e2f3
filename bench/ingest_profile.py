"""Where one 1,000-point ingest request goes, in process: the MLflow API's log-batch and the batch endpoint.

Not a figure of BENCHMARKS.md's table but the profile behind §1b: each request goes through
Django's whole stack (middleware, authentication, the view, the ingest, the commit and the
live publish) with Django's test client, so the HTTP server's share is what §1b's figures
add to these. Prints one JSON line per endpoint: milliseconds per request (median), the
queries one request runs, and the functions that took most of the time under cProfile
(cumulative, over the profiled requests).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import HOST, base_parser, bench_env, make_user, note

BATCH = 1000
# Functions of the ingest path whose cumulative time the profile reports (module suffix, name).
WATCHED = (
    ("ninja/params/models.py", "resolve"),
    ("experiments/mlflow/auth.py", "mlflow_caller"),
    ("crucible_ui/api_auth.py", "__call__"),
    ("experiments/runs/external.py", "_validate"),
    ("experiments/runs/external.py", "_not_stored"),
    ("experiments/runs/external.py", "external_metrics_ingest"),
    ("experiments/runs/reporting.py", "metrics_write"),
    ("experiments/runs/rollups.py", "rollups_add"),
    ("experiments/runs/reporting.py", "publish_metric_batch"),
    ("control/policies/listeners.py", "policies_evaluate_on_metrics"),
    ("django/db/transaction.py", "__exit__"),
    ("experiments/mlflow/services.py", "_points"),
    ("experiments/mlflow/views.py", "_request_body"),
)


def _bodies(kind: str, run_id: str, batches: int) -> list[bytes]:
    out = []
    for b in range(batches):
        metrics = [
            {"key": "loss", "value": 1.0 / (i + 1), "timestamp": 1_700_000_000_000 + i, "step": b * BATCH + i}
            for i in range(BATCH)
        ]
        if kind == "mlflow_log_batch":
            out.append(json.dumps({"run_id": run_id, "metrics": metrics}).encode())
        else:
            points = [{"name": m["key"], "step": m["step"], "value": m["value"]} for m in metrics]
            out.append(json.dumps({"points": points}).encode())
    return out


def _watched(stats: pstats.Stats, requests: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        for suffix, wanted in WATCHED:
            if name == wanted and filename.endswith(suffix):
                key = f"{suffix.rsplit('/', 1)[-1]}:{name}"
                found[key] = round(found.get(key, 0.0) + row[3] * 1000 / requests, 2)
    return found


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per endpoint")
    args = parser.parse_args()
    requests = 4 if args.quick else args.requests
    with bench_env() as _env:
        from django.db import connection
        from django.test import Client

        from experiments.api.tokens import api_token_create
        from experiments.permissions import researcher_group_ensure

        user = make_user("bench-profile", permissions=[])
        user.groups.add(researcher_group_ensure())
        _, token = api_token_create(user=user, name="profile")
        client = Client(HTTP_HOST=HOST, HTTP_AUTHORIZATION=f"Bearer {token}")
        group = client.post(
            "/api/2.0/mlflow/experiments/create", {"name": "profile"}, content_type="application/json"
        ).json()["experiment_id"]
        mlflow_run = client.post(
            "/api/2.0/mlflow/runs/create", {"experiment_id": group}, content_type="application/json"
        ).json()["run"]["info"]["run_id"]
        run: dict[str, Any] = client.post(
            "/api/runs", {"experiment": "profile batch"}, content_type="application/json"
        ).json()
        run_client = Client(HTTP_HOST=HOST, HTTP_AUTHORIZATION=f"Bearer {run['token']}")
        endpoints = {
            "mlflow_log_batch": (client, "/api/2.0/mlflow/runs/log-batch", mlflow_run),
            "batch_endpoint": (run_client, f"/api/runs/{run['id']}/metrics", ""),
        }
        for kind, (caller, path, run_id) in endpoints.items():
            note(f"profiling {path}: {requests} timed and {requests} profiled requests of {BATCH} points")
            bodies = iter(_bodies(kind, run_id, 2 + 2 * requests))

            def send(caller: Client = caller, path: str = path, bodies: Any = bodies) -> None:
                response = caller.post(path, next(bodies), content_type="application/json")
                if response.status_code != 200:
                    raise RuntimeError(
                        f"POST {path} answered {response.status_code}: {response.content[:300]!r}"
                    )

            send()  # warm-up: caches, prepared statements
            queries: list[str] = []

            def record(
                execute: Any, sql: str, params: Any, many: bool, context: Any, queries: list[str] = queries
            ) -> Any:
                queries.append(("many: " if many else "") + sql[:90])
                return execute(sql, params, many, context)

            with connection.execute_wrapper(record):
                send()
            timings = []
            for _ in range(requests):
                started = time.perf_counter()
                send()
                timings.append((time.perf_counter() - started) * 1000)
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(requests):
                send()
            profile.disable()
            line = {
                "profile": kind,
                "ms_per_request_median": round(statistics.median(timings), 2),
                "ms_per_request_min": round(min(timings), 2),
                "queries_per_request": len(queries),
                "queries": queries,
                "cumulative_ms_per_request_profiled": _watched(pstats.Stats(profile), requests),
                "batch_size": BATCH,
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
