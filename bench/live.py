"""Figure 4 — step -> browser latency and live stream throughput on /ws/experiments/<id>/ against a real Daphne.

A training loop (this process) logs through the project's `MetricReporter` (background
flusher: bulk insert into a fresh SQLite database, then channel-layer publish through a
private Redis); a websocket client in another process, logged in with a session cookie,
receives the `metrics.batch` events the way the browser does.
- Quiet latency: one point every 50 ms (a slow run); the reporter writes a point logged
  while nothing is pending at once, so it should not wait for the flush interval.
- Latency: the loop logs at a steady rate; each point carries the time it was logged
  (`wall_time`), the client takes the time it received it; p50/p99 per repetition,
  reported beside the flush interval (a point waits up to one interval in the buffer).
- Throughput: the loop logs at a steady rate above the goal (60k points/s by default)
  for a while; points/s from the first point logged until the last one received, with
  the count of points that never arrived (and why, when the server closed the socket).
Goals: quiet p50 <= 5 ms and p99 <= 20 ms; busy p99 <= flush interval + 10 ms; >= 50k
points/s to one client with no drops.
Baseline: the flush interval itself for latency (the floor a batching reporter sets);
none for throughput (the goal is absolute).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Goal,
    WebSocketClient,
    base_parser,
    bench_env,
    emit,
    emit_failure,
    figure,
    make_user,
    note,
    percentile,
    session_cookie,
)

FIGURES = (
    "live_latency_p50_ms",
    "live_latency_p99_ms",
    "live_quiet_latency_p50_ms",
    "live_quiet_latency_p99_ms",
    "live_throughput_points_per_s",
)
# A slow run: one point every 50 ms.
QUIET_RATE = 20.0


# --------------------------------------------------------------------------- the client process


async def client_main(args: Any) -> dict[str, Any]:
    """Receive metric batches until every expected step arrived (or time ran out); return what was seen."""
    cookies = json.loads(args.cookies)
    ws = await WebSocketClient.connect(args.port, f"/ws/experiments/{args.experiment}/", cookies=cookies)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    latencies: list[tuple[int, float]] = []
    seen: set[int] = set()
    # Per throughput phase: first point's log time, last receive time, points received.
    phases: dict[int, list[float]] = {}
    deadline = time.monotonic() + args.timeout
    closed = ""
    try:
        while len(seen) < args.expect and time.monotonic() < deadline:
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                closed = str(exc) or type(exc).__name__
                break
            received = time.time()
            event = json.loads(text)
            if event.get("type") != "metrics.batch":
                continue
            for point in event["points"]:
                step = point["step"]
                if step in seen:
                    continue
                seen.add(step)
                if step < args.latency_steps:
                    latencies.append((step, (received - point["wall_time"]) * 1000))
                else:
                    phase = (step - args.latency_steps) // args.phase_size
                    entry = phases.setdefault(phase, [point["wall_time"], received, 0])
                    entry[0] = min(entry[0], point["wall_time"])
                    entry[1] = max(entry[1], received)
                    entry[2] += 1
    finally:
        await ws.close()
    return {"latencies": latencies, "phases": phases, "received": len(seen), "closed": closed}


def run_client(argv: list[str]) -> None:
    """Entry point of the client process: print one JSON line of what it saw."""
    parser = base_parser(None)
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--experiment", type=int, required=True)
    parser.add_argument("--cookies", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--latency-steps", type=int, required=True)
    parser.add_argument("--phase-size", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    result = asyncio.run(client_main(parser.parse_args(argv)))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the training side


def main() -> None:
    """Start Daphne and the client, log through the reporter, print the three figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=None, help="points/s logged in the latency phase")
    parser.add_argument(
        "--stream-rate", type=float, default=None, help="points/s logged in the throughput phase"
    )
    parser.add_argument(
        "--stream-seconds", type=float, default=None, help="seconds per throughput repetition"
    )
    args = parser.parse_args()
    repetitions = args.repetitions or (2 if args.quick else 5)
    rate = args.rate or (500.0 if args.quick else 1000.0)
    per_rep = int(rate * (0.5 if args.quick else 2.0))
    stream_rate = args.stream_rate or (10_000.0 if args.quick else 60_000.0)
    burst = int(stream_rate * (args.stream_seconds or (0.25 if args.quick else 1.5)))
    quiet_per_rep = 10 if args.quick else 40
    quiet_steps = quiet_per_rep * (repetitions + 1)  # the first repetition is a warm-up
    latency_steps = quiet_steps + per_rep * (repetitions + 1)
    expect = latency_steps + burst * (repetitions + 1)

    with bench_env() as env:
        from django.conf import settings

        from experiments.choices import RunStatus
        from experiments.models import Run
        from experiments.runs.reporting import MetricReporter
        from experiments.services import experiment_create

        flush_ms = float(settings.METRIC_FLUSH_SECONDS) * 1000
        user = make_user("bench-watcher", permissions=["experiments.view_experiment"])
        cookies = session_cookie(user)
        experiment = experiment_create(name="bench live", recipe="digits")
        run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.RUNNING)
        port = env.start_daphne()
        timeout = 60.0 + expect / 5_000
        client = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--client",
                "--port",
                str(port),
                "--experiment",
                str(experiment.pk),
                "--cookies",
                json.dumps(cookies),
                "--expect",
                str(expect),
                "--latency-steps",
                str(latency_steps),
                "--phase-size",
                str(burst),
                "--timeout",
                str(timeout),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("the websocket client did not connect")
            note(f"live: quiet latency at {QUIET_RATE:.0f} points/s, then at {rate:.0f} points/s")
            with MetricReporter(experiment_id=experiment.pk, run_id=run.pk) as reporter:
                step = 0
                started = time.time()
                for i in range(quiet_steps):
                    pause = started + i / QUIET_RATE - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    reporter.log("loss", step, 0.5)
                    step += 1
                started = time.time()
                for i in range(latency_steps - quiet_steps):
                    target = started + i / rate
                    pause = target - time.time()
                    if pause > 0:
                        time.sleep(pause)
                    reporter.log("loss", step, 0.5)
                    step += 1
                note(f"live: throughput, {repetitions + 1} x {burst} points at {stream_rate:.0f} points/s")
                chunk = max(1, int(stream_rate / 1000))  # points per millisecond
                for _ in range(repetitions + 1):
                    wait_written(reporter, step, timeout=60)
                    time.sleep(0.3)  # let the previous phase reach the client before the next starts
                    phase_start, first = time.time(), step
                    while step - first < burst:
                        pause = phase_start + (step - first) / stream_rate - time.time()
                        if pause > 0:
                            time.sleep(pause)
                        for _ in range(min(chunk, burst - (step - first))):
                            reporter.log("loss", step, 0.5)
                            step += 1
                wait_written(reporter, step, timeout=120)
            out, _ = client.communicate(timeout=timeout + 30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        seen = json.loads(out.strip().splitlines()[-1])

    latencies = dict((int(s), float(ms)) for s, ms in seen["latencies"])
    p50s: list[float] = []
    p99s: list[float] = []
    quiet_p50s: list[float] = []
    quiet_p99s: list[float] = []
    for rep in range(1, repetitions + 1):
        first = quiet_steps + rep * per_rep
        values = [latencies[s] for s in range(first, first + per_rep) if s in latencies]
        if values:
            p50s.append(percentile(values, 50))
            p99s.append(percentile(values, 99))
        first = rep * quiet_per_rep
        values = [latencies[s] for s in range(first, first + quiet_per_rep) if s in latencies]
        if values:
            quiet_p50s.append(percentile(values, 50))
            quiet_p99s.append(percentile(values, 99))
    lost_latency = latency_steps - len(latencies)
    rates: list[float] = []
    drops = 0
    for phase in range(1, repetitions + 1):
        first_logged, last_received, count = seen["phases"].get(str(phase), [0.0, 0.0, 0])
        drops += burst - int(count)
        # A phase of which nothing arrived (the socket was closed) streamed at 0 points/s.
        rates.append(count / max(1e-9, last_received - first_logged) if count else 0.0)
    extra = {
        "flush_interval_ms": flush_ms,
        "log_rate_points_per_s": rate,
        "points_per_repetition": per_rep,
        "points_lost": lost_latency,
        "transport": "Redis pub/sub channel layer -> Daphne -> websocket (client in its own process)",
    }
    goal = Goal(f"p99 <= flush interval + 10 ms = {flush_ms + 10:.0f} ms", median_max=flush_ms + 10)
    flush_baseline = [flush_ms] * max(1, len(p50s))
    for name, samples in ((FIGURES[0], p50s), (FIGURES[1], p99s)):
        if not samples:
            raise RuntimeError(f"the client received none of the {latency_steps} latency points")
        emit(
            figure(
                name=name,
                unit="ms",
                samples=samples,
                goal=goal
                if name == FIGURES[1]
                else Goal(f"(p50; the goal is on p99) <= {flush_ms + 10:.0f} ms"),
                higher_is_better=False,
                baseline_name="the flush interval (the time a point may wait in the reporter's buffer)",
                baseline_samples=flush_baseline,
                extra=extra,
            )
        )
    for name, samples, limit in ((FIGURES[2], quiet_p50s, 5.0), (FIGURES[3], quiet_p99s, 20.0)):
        if not samples:
            raise RuntimeError(f"the client received none of the {quiet_steps} quiet points")
        emit(
            figure(
                name=name,
                unit="ms",
                samples=samples,
                goal=Goal(f"<= {limit:.0f} ms at one point every 50 ms", median_max=limit),
                higher_is_better=False,
                baseline_name="the flush interval (what a point waited before quiet flushes)",
                baseline_samples=[flush_ms] * len(samples),
                extra={**extra, "log_rate_points_per_s": QUIET_RATE, "points_per_repetition": quiet_per_rep},
            )
        )
    closed = seen.get("closed") or ""
    line = figure(
        name=FIGURES[4],
        unit="points/s",
        samples=rates,
        goal=Goal(">= 50k points/s to one client, no drops", median_min=50_000),
        higher_is_better=True,
        extra={
            **extra,
            "stream_rate_points_per_s": stream_rate,
            "points_per_repetition_streamed": burst,
            "points_dropped": drops,
            "points_lost": lost_latency,
            "connection_closed": closed or None,
        },
    )
    line["meets_goal"] = bool(line["meets_goal"] and drops == 0)
    emit(line)
    if statistics.median(p99s) > flush_ms + 10:
        note("live: p99 above the goal; see BENCHMARKS.md for what limits it")


def wait_written(reporter: Any, count: int, *, timeout: float) -> None:
    """Wait until the reporter's flusher has written `count` points in all (bounded)."""
    deadline = time.monotonic() + timeout
    while reporter.points_written < count:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the reporter wrote {reporter.points_written} of {count} points in {timeout:.0f} s"
            )
        time.sleep(0.01)


if __name__ == "__main__":
    if "--client" in sys.argv:
        run_client(sys.argv[1:])
    else:
        try:
            main()
        except Exception as exc:  # a broken figure still prints a line saying why
            emit_failure(FIGURES, exc)
            raise
