"""Figure 1b — metric ingest over HTTP, points/s: Crucible's MLflow API and its batch endpoint beside MLflow's own server.

All three receive the same 1,000-point batches from the same keep-alive HTTP/1.1 client, one
request at a time, each on a fresh run:
- ours, MLflow API: `POST /api/2.0/mlflow/runs/log-batch` of Daphne serving the project
  (bearer token), into a fresh SQLite database (WAL), live publish and policy hook included;
- ours, batch endpoint: `POST /api/runs/{id}/metrics` of the external-run API (the
  Crucible client's path), same server and database;
- baseline: `mlflow server` (its venv, one worker, a fresh sqlite backend store) answering
  the very same log-batch bodies.
Like with like: the same bodies and batch size, one server process each (one Daphne; `mlflow
server --workers 1` is one uvicorn process), one keep-alive connection each, one request at a
time (the connections each side's client opened per repetition are in the figure: 1 means
the server kept it alive throughout), and the sides' repetitions taken in turns so that
each meets the same load.
Each figure also says what a request cost our server in CPU time (`server_cpu_ms_per_request`:
milliseconds per timed request of the Daphne process, per repetition, the first one being the
side's warm-up): unlike points/s, it moves little with the machine's load. (Not for MLflow's
server: its process tree holds background workers whose polling would count as well.)
Goal: ≥ 10x MLflow's server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HOST,
    Goal,
    HttpClient,
    base_parser,
    bench_env,
    emit,
    emit_failure,
    figure,
    free_port,
    note,
    skipped,
    stop_process,
)

FIGURE_MLFLOW_API = "ingest_mlflow_api_points_per_s"
FIGURE_BATCH_ENDPOINT = "ingest_http_batch_points_per_s"
FIGURES = [FIGURE_MLFLOW_API, FIGURE_BATCH_ENDPOINT]
BATCH = 1000  # MLflow's per-request limit on metrics, which its client keeps to
# MLflow's server migrates its sqlite store before it listens: allow for a slow first start.
MLFLOW_START_TIMEOUT = 180.0
BASELINE_NAME = "mlflow server (sqlite store, 1 worker), same log-batch bodies"
GOAL = Goal("≥ 10x MLflow's server", ratio_min=10)


def metric_batches(batches: int) -> list[list[dict[str, Any]]]:
    """Return the batches every server gets: one metric, consecutive steps, MLflow's field names."""
    now_ms = int(time.time() * 1000)
    return [
        [
            {"key": "loss", "value": 1.0 / (1 + s), "timestamp": now_ms + s, "step": s}
            for s in range(b * BATCH, (b + 1) * BATCH)
        ]
        for b in range(batches)
    ]


# Connections each side's client opened per repetition (keyed by the server's port): 1 when
# the server kept the connection alive throughout, as both sides must for a like comparison.
CONNECTIONS: dict[int, list[int]] = {}
# Our server process behind its port, and the CPU time it spent per timed request, per side
# and repetition (milliseconds, its whole process tree, from /proc). Unlike points/s, CPU time
# hardly depends on what else loads the machine: it says what a request costs the server.
SERVER_PIDS: dict[int, int] = {}
SERVER_CPU_MS: dict[str, list[float]] = {}


def process_tree_cpu_seconds(pid: int) -> float | None:
    """Return the user+system CPU seconds of pid and its descendants so far (Linux /proc), or None."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or not Linux
            continue
        child, parent = int(entry.name), int(fields[1])
        children.setdefault(parent, []).append(child)
        cpu[child] = (int(fields[11]) + int(fields[12])) / tick
    if pid not in cpu:
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


async def _post_all(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], *, warm_up: str, side: str
) -> float:
    """POST every body in turn on one connection; return the seconds it took; fail on any non-200."""
    client = HttpClient(port)
    pid = SERVER_PIDS.get(port)
    try:
        # One request first so that opening the connection is not timed.
        await client.request("GET", warm_up, headers=headers)
        cpu_before = process_tree_cpu_seconds(pid) if pid else None
        started = time.perf_counter()
        for body in bodies:
            status, answer = await client.request("POST", path, body=body, headers=headers)
            if status != 200:
                raise RuntimeError(f"POST {path} answered {status}: {answer[:300]!r}")
        elapsed = time.perf_counter() - started
        cpu_after = process_tree_cpu_seconds(pid) if pid else None
        if cpu_before is not None and cpu_after is not None:
            per_request = (cpu_after - cpu_before) * 1000 / len(bodies)
            SERVER_CPU_MS.setdefault(side, []).append(round(per_request, 1))
        return elapsed
    finally:
        CONNECTIONS.setdefault(port, []).append(client.connections)
        await client.close()


def _call(
    port: int, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={**headers, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path} answered {exc.code}: {exc.read()[:300]!r}") from exc


class MlflowProtocol:
    """Drives a server that speaks MLflow's REST API (ours or MLflow's): a fresh run per repetition."""

    def __init__(self, port: int, headers: dict[str, str], *, side: str) -> None:
        self.port = port
        self.headers = headers
        self.side = side
        found = _call(
            port,
            "POST",
            "/api/2.0/mlflow/experiments/search",
            headers,
            {"filter": "name = 'bench'", "max_results": 10},
        )
        if found.get("experiments"):
            self.experiment_id = found["experiments"][0]["experiment_id"]
        else:
            self.experiment_id = _call(
                port, "POST", "/api/2.0/mlflow/experiments/create", headers, {"name": "bench"}
            )["experiment_id"]

    def one_repetition(self, batches: list[list[dict[str, Any]]]) -> float:
        """Log every batch into a new run; return points/s, after checking the run holds them all."""
        run_id = _call(
            self.port,
            "POST",
            "/api/2.0/mlflow/runs/create",
            self.headers,
            {"experiment_id": self.experiment_id},
        )["run"]["info"]["run_id"]
        bodies = [json.dumps({"run_id": run_id, "metrics": batch}).encode() for batch in batches]
        elapsed = asyncio.run(
            _post_all(
                self.port,
                "/api/2.0/mlflow/runs/log-batch",
                bodies,
                {**self.headers, "Content-Type": "application/json"},
                warm_up=f"/api/2.0/mlflow/runs/get?run_id={run_id}",
                side=self.side,
            )
        )
        history = _call(
            self.port,
            "GET",
            f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss",
            self.headers,
        )
        points = sum(len(b) for b in batches)
        if len(history.get("metrics", [])) != points:
            raise RuntimeError(f"{len(history.get('metrics', []))} points read back, {points} logged")
        return points / elapsed


def interleaved(
    sides: dict[str, Any], batches: list[list[dict[str, Any]]], repetitions: int
) -> dict[str, list[float]]:
    """Return points/s of each side's repetitions (after one warm-up each), taken in turns.

    In turns, not side after side: on a machine whose load drifts, each side's repetitions
    then meet the same load, and the ratio compares like with like.
    """
    for fn in sides.values():
        fn(batches)
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repetitions):
        for name, fn in sides.items():
            samples[name].append(float(fn(batches)))
    return samples


def start_mlflow_server(tmp: Path, *, quick: bool) -> tuple[subprocess.Popen[bytes], int] | str:
    """Start `mlflow server` from its venv on a fresh sqlite store; return (process, port) or why not."""
    from bench.mlflow_env import VENV_DIR, ensure_mlflow_venv, mlflow_installed

    if os.getenv("BENCH_NO_MLFLOW"):
        return "BENCH_NO_MLFLOW is set"
    if not mlflow_installed():
        if quick:
            return f"MLflow venv absent ({VENV_DIR}); build it with `python bench/mlflow_env.py`"
        note("building the MLflow venv (first run only)...")
        ensure_mlflow_venv()
    port = free_port()
    store = tmp / "mlflow-server"
    store.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO", "PYTHONPATH", "MLFLOW_", "DATABASE_"))
    }
    log = store / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(VENV_DIR / "bin" / "mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                "--default-artifact-root", str(store / "artifacts"),
                "--host", HOST, "--port", str(port), "--workers", "1",
            ],
            cwd=store, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + MLFLOW_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.5)
    stop_process(proc)
    raise RuntimeError(f"mlflow server did not answer /health within {MLFLOW_START_TIMEOUT:.0f} s")


def batch_endpoint_repetition(port: int, headers: dict[str, str]) -> Any:
    """Return a function logging batches through POST /api/runs/{id}/metrics, or why it cannot run."""
    try:
        _call(port, "POST", "/api/runs", headers, {"experiment": "bench http batch"})
    except RuntimeError as exc:
        cause = exc.__cause__
        if isinstance(cause, urllib.error.HTTPError) and cause.code in (404, 405):
            return "POST /api/runs is not served by this build (the external-run HTTP API)"
        raise
    attempt = 0

    def one_repetition(batches: list[list[dict[str, Any]]]) -> float:
        nonlocal attempt
        attempt += 1
        run = _call(port, "POST", "/api/runs", headers, {"experiment": f"bench http batch {attempt}"})
        run_id = run["id"]
        # The run-scoped token the Crucible client writes with.
        run_headers = {"Authorization": f"Bearer {run['token']}", "Content-Type": "application/json"}
        bodies = [
            json.dumps(
                {"points": [{"name": m["key"], "step": m["step"], "value": m["value"]} for m in batch]}
            ).encode()
            for batch in batches
        ]
        elapsed = asyncio.run(
            _post_all(
                port,
                f"/api/runs/{run_id}/metrics",
                bodies,
                run_headers,
                warm_up=f"/api/runs/{run_id}",
                side="batch",
            )
        )
        from experiments.models import MetricPoint

        points = sum(len(b) for b in batches)
        stored = MetricPoint.objects.filter(run_id=run_id).count()
        if stored != points:
            raise RuntimeError(f"{stored} points stored, {points} logged")
        return points / elapsed

    return one_repetition


def main() -> None:
    """Measure both of our HTTP ingest paths and MLflow's server on the same batches; print two figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=None, help="1,000-point batches per repetition")
    args = parser.parse_args()
    # MLflow's server takes seconds per 1,000-point batch here: 10 batches x 3 keep its side
    # within run_all's time per script.
    batches_n = args.batches or (3 if args.quick else 10)
    repetitions = args.repetitions or (2 if args.quick else 3)
    batches = metric_batches(batches_n)
    extra: dict[str, Any] = {
        "batch_size": BATCH,
        "points_per_repetition": batches_n * BATCH,
        "client": "one keep-alive HTTP/1.1 connection, one request at a time",
        "database": "sqlite (WAL)",
    }

    with bench_env() as env:
        from bench.common import make_user
        from experiments.api.tokens import api_token_create
        from experiments.permissions import researcher_group_ensure

        user = make_user("bench-mlflow", permissions=[])
        user.groups.add(researcher_group_ensure())
        _, token = api_token_create(user=user, name="bench")
        headers = {"Authorization": f"Bearer {token}"}
        port = env.start_daphne()
        # The MLflow API's repetitions, then the batch endpoint's (same server).
        extra["connections_per_repetition_ours"] = CONNECTIONS.setdefault(port, [])

        base: list[float] | str = []
        started = start_mlflow_server(env.tmp, quick=args.quick)
        proc = None
        SERVER_PIDS[port] = env.children[-1].pid  # the Daphne just started
        extra["server_cpu_ms_per_request"] = SERVER_CPU_MS
        sides: dict[str, Any] = {
            "mlflow_api": MlflowProtocol(port, headers, side="mlflow_api").one_repetition
        }
        batch_fn = batch_endpoint_repetition(port, headers)
        ours_batch: list[float] | str = batch_fn if isinstance(batch_fn, str) else []
        if not isinstance(batch_fn, str):
            sides["batch"] = batch_fn
        if isinstance(started, str):
            base = started
        else:
            proc, mlflow_port = started
            extra["connections_per_repetition_baseline"] = CONNECTIONS.setdefault(mlflow_port, [])
            sides["baseline"] = MlflowProtocol(mlflow_port, {}, side="baseline").one_repetition
        try:
            note(
                f"ingest over HTTP: {repetitions} x {batches_n} batches of {BATCH} points to each of "
                f"{', '.join(sides)}, their repetitions interleaved"
            )
            samples = interleaved(sides, batches, repetitions)
        finally:
            stop_process(proc)
        ours_mlflow = samples["mlflow_api"]
        if "batch" in samples:
            ours_batch = samples["batch"]
        if "baseline" in samples:
            base = samples["baseline"]

    for name, ours in ((FIGURE_MLFLOW_API, ours_mlflow), (FIGURE_BATCH_ENDPOINT, ours_batch)):
        if isinstance(ours, str):
            emit(skipped(name, ours))
            continue
        line = figure(
            name=name,
            unit="points/s",
            samples=ours,
            goal=GOAL,
            higher_is_better=True,
            baseline_name=None if isinstance(base, str) else BASELINE_NAME,
            baseline_samples=None if isinstance(base, str) else base,
            extra=extra,
        )
        if isinstance(base, str):
            line["baseline_skipped"] = base
        emit(line)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
