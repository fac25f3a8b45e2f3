"""Figure 5 — action latency: N concurrent logged-in clients pressing transitions over HTTP against a real Daphne.

Each of N clients (default 32) holds its own browser session and its own pending
experiments, and presses Start then Cancel on each of them through the page's action
endpoint (POST /experiments/<id>/actions/<event>/ with the CSRF token, as the buttons
do), each press sent as soon as the previous answered: the audited transition service,
its after-commit effects (scheduler tick sent to Celery, live-view publish) and all.
p50/p99 of the press-to-answer time per repetition.
Baseline, in the same run and with the same N clients: GET of a trivial page (/login/).
Goal: p99 <= 50 ms at 32 clients.
"""

from __future__ import annotations

import asyncio
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
    emit,
    emit_failure,
    figure,
    make_user,
    note,
    percentile,
    session_cookie,
)

FIGURES = ("actions_p50_ms", "actions_p99_ms")
PERMISSIONS = [
    "experiments.view_experiment",
    "experiments.queue_experiment",
    "experiments.cancel_experiment",
]


async def press_round(port: int, sessions: list[dict[str, str]], work: list[list[int]]) -> list[float]:
    """Every client presses Start then Cancel on each of its experiments; return all latencies (ms)."""

    async def one_client(cookies: dict[str, str], experiment_ids: list[int]) -> list[float]:
        client = HttpClient(port, cookies=cookies)
        headers = {
            "X-CSRFToken": cookies["csrftoken"],
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        timings: list[float] = []
        try:
            for experiment_id in experiment_ids:
                for event in ("queue", "cancel"):
                    started = time.perf_counter()
                    status, body = await client.request(
                        "POST", f"/experiments/{experiment_id}/actions/{event}/", headers=headers
                    )
                    timings.append((time.perf_counter() - started) * 1000)
                    if status != 200:
                        raise RuntimeError(f"{event} on #{experiment_id} answered {status}: {body[:300]!r}")
        finally:
            await client.close()
        return timings

    results = await asyncio.gather(*(one_client(c, ids) for c, ids in zip(sessions, work, strict=True)))
    return [t for r in results for t in r]


async def page_round(port: int, sessions: list[dict[str, str]], requests: int) -> list[float]:
    """Every client GETs the trivial page `requests` times; return all latencies (ms)."""

    async def one_client(cookies: dict[str, str]) -> list[float]:
        client = HttpClient(port, cookies=cookies)
        timings: list[float] = []
        try:
            for _ in range(requests):
                started = time.perf_counter()
                status, body = await client.request("GET", "/login/")
                timings.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"GET /login/ answered {status}: {body[:200]!r}")
        finally:
            await client.close()
        return timings

    results = await asyncio.gather(*(one_client(c) for c in sessions))
    return [t for r in results for t in r]


def make_work(users: list[Any], *, per_client: int, rounds: int) -> list[list[list[int]]]:
    """Create pending experiments, per_client for each user and round; return ids[round][client]."""
    from experiments.models import Experiment

    rows = [
        Experiment(name=f"press {r}-{u.pk}-{i}", recipe="digits", config={}, owner=u)
        for r in range(rounds)
        for u in users
        for i in range(per_client)
    ]
    created = Experiment.objects.bulk_create(rows)
    ids = [e.pk for e in created]
    out: list[list[list[int]]] = []
    position = 0
    for _ in range(rounds):
        per_round: list[list[int]] = []
        for _ in users:
            per_round.append(ids[position : position + per_client])
            position += per_client
        out.append(per_round)
    return out


def main() -> None:
    """Run alternating baseline and action rounds; print the p50 and p99 figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--experiments", type=int, default=None, help="experiments per client per repetition")
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 32)
    per_client = args.experiments or (2 if args.quick else 5)
    repetitions = args.repetitions or (2 if args.quick else 5)

    with bench_env() as env:
        users = [make_user(f"presser-{i:02d}", permissions=PERMISSIONS) for i in range(clients)]
        sessions = [session_cookie(u) for u in users]
        work = make_work(users, per_client=per_client, rounds=repetitions + 1)
        solo_work = make_work(users[:1], per_client=10, rounds=1)[0]
        port = env.start_daphne()
        note(f"actions: {clients} clients x {per_client * 2} presses, {repetitions} repetitions")
        ours: list[list[float]] = []
        base: list[list[float]] = []
        for round_work in work:  # the first round is a warm-up
            base.append(asyncio.run(page_round(port, sessions, per_client * 2)))
            ours.append(asyncio.run(press_round(port, sessions, round_work)))
        ours, base = ours[1:], base[1:]
        # One client alone: the service time of a press, without anyone queued in front of it.
        solo = asyncio.run(press_round(port, sessions[:1], solo_work))

    extra = {
        "clients": clients,
        "presses_per_client_per_repetition": per_client * 2,
        "events": "queue then cancel, each client on its own experiments",
        "server": "one Daphne process, SQLite (WAL)",
        "single_client_p50_ms": round(percentile(solo, 50), 1),
        "single_client_p99_ms": round(percentile(solo, 99), 1),
    }
    for name, q in ((FIGURES[0], 50), (FIGURES[1], 99)):
        emit(
            figure(
                name=name,
                unit="ms",
                samples=[percentile(r, q) for r in ours],
                goal=Goal("p99 <= 50 ms at 32 clients", median_max=50.0)
                if q == 99
                else Goal("(p50; the goal is on p99 <= 50 ms)"),
                higher_is_better=False,
                baseline_name=f"GET /login/ (trivial page), same clients, p{q}",
                baseline_samples=[percentile(r, q) for r in base],
                extra=extra,
            )
        )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
