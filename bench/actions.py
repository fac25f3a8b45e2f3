"""Figure 5 — action latency and list throughput under concurrent clients, with 1 and with N web processes.

Each of N clients (default 32) holds its own browser session and its own pending
experiments, and presses Start then Cancel on each of them through the page's action
endpoint (POST /experiments/<id>/actions/<event>/ with the CSRF token, as the buttons
do), each press sent as soon as the previous answered: the audited transition service,
its after-commit effects (scheduler tick sent to Celery, live-view publish) and all.
p50/p99 of the press-to-answer time per repetition. Then 50 clients GET the experiment
list at once (each its next GET as soon as the last answered): p99 and requests/s.

Every figure is measured against the servers `make run` starts: WEB_CONCURRENCY Daphne
processes (the CPU count, at least 2 here) sharing one listening socket; the same rounds
against one Daphne process are the baseline of the scaling figures, and N uvicorn
processes are measured beside Daphne for the record (when uvicorn is installed).
Baselines, in the same run: GET of a trivial page (/login/) by the same clients; one web
process; Daphne for uvicorn.
Goals: actions p99 <= 50 ms at 32 clients; list p99 <= 100 ms at 50 clients.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
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
    skipped,
    time_for,
)

FIGURES = (
    "actions_p50_ms",
    "actions_p99_ms",
    "actions_p99_n_processes_ms",
    "list_p99_ms",
    "actions_p99_uvicorn_ms",
)
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


async def get_round(port: int, sessions: list[dict[str, str]], path: str, requests: int) -> list[float]:
    """Every client GETs path `requests` times, all clients at once; return all latencies (ms)."""

    async def one_client(cookies: dict[str, str]) -> list[float]:
        client = HttpClient(port, cookies=cookies)
        timings: list[float] = []
        try:
            for _ in range(requests):
                started = time.perf_counter()
                status, body = await client.request("GET", path)
                timings.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
        finally:
            await client.close()
        return timings

    results = await asyncio.gather(*(one_client(c) for c in sessions))
    return [t for r in results for t in r]


async def page_round(port: int, sessions: list[dict[str, str]], requests: int) -> list[float]:
    """Every client GETs the trivial page `requests` times; return all latencies (ms)."""
    return await get_round(port, sessions, "/login/", requests)


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


async def list_round(port: int, sessions: list[dict[str, str]], requests: int) -> tuple[list[float], float]:
    """Every client GETs the experiment list `requests` times at once; return latencies (ms) and requests/s."""
    started = time.perf_counter()
    timings = await get_round(port, sessions, "/", requests)
    return timings, len(timings) / (time.perf_counter() - started)


@dataclass
class Measured:
    """Per repetition (warm-up dropped): press latencies, trivial-page latencies, list latencies and rates."""

    presses: list[list[float]] = field(default_factory=list)
    login: list[list[float]] = field(default_factory=list)
    lists: list[list[float]] = field(default_factory=list)
    list_rates: list[float] = field(default_factory=list)
    solo: list[float] = field(default_factory=list)
    solo_list: list[float] = field(default_factory=list)

    def p(self, rows: list[list[float]], q: float) -> list[float]:
        return [percentile(r, q) for r in rows]


def measure(
    port: int,
    *,
    sessions: list[dict[str, str]],
    list_sessions: list[dict[str, str]],
    work: list[list[list[int]]],
    presses: int,
    list_requests: int,
    solo_work: list[list[int]] | None,
    later_rounds: int = 0,
) -> Measured:
    """Run the warm-up round and the measured ones against the servers on port."""
    out = Measured()
    for i, round_work in enumerate(work):  # the first round is a warm-up
        round_started = time.monotonic()
        login = asyncio.run(page_round(port, sessions, presses))
        pressed = asyncio.run(press_round(port, sessions, round_work))
        listed, rate = (
            asyncio.run(list_round(port, list_sessions, list_requests)) if list_sessions else ([], 0.0)
        )
        if i == 0:
            continue
        out.login.append(login)
        out.presses.append(pressed)
        if listed:
            out.lists.append(listed)
            out.list_rates.append(rate)
        # On a slow machine fewer repetitions: the next one, and a warm-up and one measured round
        # of each server still to come, must fit the script's budget.
        more = len(work) - 1 - i
        if i >= 1 and more and not time_for((time.monotonic() - round_started) * (1 + later_rounds)):
            note(f"actions: {i} repetition(s) instead of {len(work) - 1}, to stay within the budget")
            break
    if solo_work is not None:
        # One client alone: the service time of a press, without anyone queued in front of it.
        out.solo = asyncio.run(press_round(port, sessions[:1], solo_work))
        if list_sessions:
            out.solo_list, _rate = asyncio.run(list_round(port, list_sessions[:1], 10))
    return out


def uvicorn_installed() -> bool:
    """Return True when uvicorn can be imported (a dev dependency; optional for this comparison)."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    """Run the rounds against 1 and N Daphne processes (and N uvicorn); print the figures."""
    from crucible_ui.launcher import web_concurrency

    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--experiments", type=int, default=None, help="experiments per client per repetition")
    parser.add_argument("--list-clients", type=int, default=None, help="clients GETting the list at once")
    parser.add_argument(
        "--processes", type=int, default=None, help="web processes (default: WEB_CONCURRENCY)"
    )
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 32)
    per_client = args.experiments or (2 if args.quick else 5)
    list_clients = args.list_clients or (5 if args.quick else 50)
    list_requests = 2 if args.quick else 3
    repetitions = args.repetitions or (2 if args.quick else 3)
    # As `make run` would: WEB_CONCURRENCY, else the CPU count; at least two, to compare with one.
    processes = max(2, args.processes or web_concurrency(dict(os.environ)))
    servers = [("daphne", 1), ("daphne", processes)]
    if uvicorn_installed():
        servers.append(("uvicorn", processes))
    else:
        note("actions: uvicorn is not installed; the server comparison is skipped")

    with bench_env() as env:
        users = [make_user(f"presser-{i:02d}", permissions=PERMISSIONS) for i in range(clients)]
        sessions = [session_cookie(u) for u in users]
        viewer = make_user("list-viewer", permissions=["experiments.view_experiment"])
        list_sessions = [session_cookie(viewer) for _ in range(list_clients)]
        # Every experiment is created before the first round: each server sees the same list.
        works = {key: make_work(users, per_client=per_client, rounds=repetitions + 1) for key in servers}
        solo_work = make_work(users[:1], per_client=10, rounds=1)[0]
        measured: dict[tuple[str, int], Measured] = {}
        for position, (server, count) in enumerate(servers):
            note(
                f"actions: {server} x{count}: {clients} clients x {per_client * 2} presses, "
                f"{list_clients} clients x {list_requests} list GETs, {repetitions} repetitions"
            )
            with env.web_processes(processes=count, server=server) as port:
                measured[(server, count)] = measure(
                    port,
                    sessions=sessions,
                    list_sessions=list_sessions if server == "daphne" else [],
                    work=works[(server, count)],
                    presses=per_client * 2,
                    list_requests=list_requests,
                    solo_work=solo_work if (server, count) == ("daphne", processes) else None,
                    later_rounds=2 * (len(servers) - 1 - position),
                )

    one, many = measured[("daphne", 1)], measured[("daphne", processes)]
    # The floor no server can beat: clients that send their next request as soon as the last is
    # answered keep every CPU busy, so (Little's law) the mean answer takes at least
    # clients x the CPU time of one request / CPUs. The solo time stands in for that CPU time
    # (one client alone waits for nobody); the goal needs the cost per request named below.
    cpus = len(os.sched_getaffinity(0))
    extra_floor = {
        "cpus": cpus,
        "little_law_floor_ms": round(clients * statistics.mean(many.solo) / cpus, 1),
        "press_cost_the_goal_needs_ms": round(50.0 * cpus / clients, 2),
    }
    extra = {
        **extra_floor,
        "clients": clients,
        "presses_per_client_per_repetition": per_client * 2,
        "events": "queue then cancel, each client on its own experiments",
        "server": f"{processes} Daphne processes on one socket (WEB_CONCURRENCY), SQLite (WAL)",
        "web_processes": processes,
        "single_client_p50_ms": round(percentile(many.solo, 50), 1),
        "single_client_p99_ms": round(percentile(many.solo, 99), 1),
        "one_process_p50_ms": round(statistics.median(one.p(one.presses, 50)), 1),
        "one_process_p99_ms": round(statistics.median(one.p(one.presses, 99)), 1),
    }
    for name, q in ((FIGURES[0], 50), (FIGURES[1], 99)):
        emit(
            figure(
                name=name,
                unit="ms",
                samples=many.p(many.presses, q),
                goal=Goal("p99 <= 50 ms at 32 clients", median_max=50.0)
                if q == 99
                else Goal("(p50; the goal is on p99 <= 50 ms)"),
                higher_is_better=False,
                baseline_name=f"GET /login/ (trivial page), same clients and servers, p{q}",
                baseline_samples=many.p(many.login, q),
                extra=extra,
            )
        )
    emit(
        figure(
            name=FIGURES[2],
            unit="ms",
            samples=many.p(many.presses, 99),
            goal=Goal("(N processes faster than one: ratio > 1)"),
            higher_is_better=False,
            baseline_name="the same presses against one Daphne process, p99",
            baseline_samples=one.p(one.presses, 99),
            extra={**extra, "measure": "actions p99 with N web processes; the baseline is one process"},
        )
    )
    emit(
        figure(
            name=FIGURES[3],
            unit="ms",
            samples=many.p(many.lists, 99),
            goal=Goal(f"p99 <= 100 ms at {list_clients} clients", median_max=100.0),
            higher_is_better=False,
            baseline_name="the same GETs against one Daphne process, p99",
            baseline_samples=one.p(one.lists, 99),
            extra={
                "clients": list_clients,
                "gets_per_client_per_repetition": list_requests,
                "web_processes": processes,
                "requests_per_s": round(statistics.median(many.list_rates), 1),
                "one_process_requests_per_s": round(statistics.median(one.list_rates), 1),
                "p50_ms": round(statistics.median(many.p(many.lists, 50)), 1),
                "one_process_p50_ms": round(statistics.median(one.p(one.lists, 50)), 1),
                "experiments_in_the_list": clients * per_client * (repetitions + 1) * len(servers) + 10,
                "single_client_p50_ms": round(percentile(many.solo_list, 50), 1),
                "little_law_floor_ms": round(list_clients * statistics.mean(many.solo_list) / cpus, 1),
                "get_cost_the_goal_needs_ms": round(100.0 * cpus / list_clients, 2),
            },
        )
    )
    uv = measured.get(("uvicorn", processes))
    if uv is None:
        emit(skipped(FIGURES[4], "uvicorn is not installed (pip install uvicorn: a dev dependency)"))
    else:
        emit(
            figure(
                name=FIGURES[4],
                unit="ms",
                samples=uv.p(uv.presses, 99),
                goal=Goal("(for the record: Daphne stays the server)"),
                higher_is_better=False,
                baseline_name=f"the same presses against {processes} Daphne processes, p99",
                baseline_samples=many.p(many.presses, 99),
                extra={
                    "web_processes": processes,
                    "p50_ms": round(statistics.median(uv.p(uv.presses, 50)), 1),
                    "daphne_p50_ms": round(statistics.median(many.p(many.presses, 50)), 1),
                    "login_p99_ms": round(statistics.median(uv.p(uv.login, 99)), 1),
                    "daphne_login_p99_ms": round(statistics.median(many.p(many.login, 99)), 1),
                },
            )
        )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
