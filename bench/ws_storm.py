"""Reconnect storm — N websocket clients (500 by default) open /ws/experiments/<id>/ within a few seconds against a real Daphne.

What a restart of the web process looks like from the server: every open page reconnects
at once. Each client is a separate logged-in session (its own cookie), opens the socket at
a moment spread evenly over the window (10 s by default), and counts as connected once
the server accepted it (HTTP 101) AND answered a ping over it (a socket accepted and then
closed with 4401/4403 is refused). A refused attempt is retried as the page does
(jittered exponential backoff from 0.5 s) until 30 s after the client's first attempt.
All sockets stay open until the last client finished, as pages do.
Figures: clients connected (beside it: attempted, refused at the first attempt, attempts
in all), the p50/p99 of the time from a client's first attempt to its accepted socket,
and the web process's CPU time per connection (user + system, read from /proc: a
figure that holds on a busy machine, where the others depend on what else runs).
Goal: every client gets in; p99 under 5 s (Daphne drops a handshake its application has
not accepted within 5 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
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
)

FIGURES = (
    "ws_storm_connected",
    "ws_storm_connect_p50_ms",
    "ws_storm_connect_p99_ms",
    "ws_storm_cpu_ms_per_connection",
)
# A client still out after this long (from its first attempt) counts as refused.
CLIENT_DEADLINE_SECONDS = 30.0


async def attempt_once(port: int, path: str, cookies: dict[str, str], n: int, timeout: float) -> Any:
    """Open one socket and wait for the answer to a ping; return it, or raise why not."""
    ws = await asyncio.wait_for(WebSocketClient.connect(port, path, cookies=cookies), timeout)
    try:
        # Accepted is not enough: a refused session is accepted and then closed with a code.
        await ws.send_text(json.dumps({"type": "ping", "id": n}))
        deadline = time.monotonic() + timeout
        while True:
            text = await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic()))
            if json.loads(text).get("type") == "pong":
                return ws
    except BaseException:
        await ws.close()
        raise


async def one_client(port: int, path: str, cookies: dict[str, str], delay: float, n: int) -> dict[str, Any]:
    """Start after delay seconds, retry like the page; return the time to get in and the attempts made."""
    await asyncio.sleep(delay)
    started = time.perf_counter()
    give_up = time.monotonic() + CLIENT_DEADLINE_SECONDS
    attempts = 0
    why = ""
    while time.monotonic() < give_up:
        attempts += 1
        try:
            ws = await attempt_once(port, path, cookies, n, max(0.1, give_up - time.monotonic()))
            elapsed_ms = (time.perf_counter() - started) * 1000
            return {"ok": True, "connect_ms": elapsed_ms, "ws": ws, "attempts": attempts}
        except (TimeoutError, OSError, RuntimeError, ConnectionError, asyncio.IncompleteReadError) as exc:
            why = type(exc).__name__ + ": " + str(exc)[:60]
        # As live_socket.js: min(30 s, 0.5 s * 2^(n-1)) * (0.75 .. 1.25)
        await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempts - 1)) * (0.75 + random.random() / 2))
    return {"ok": False, "why": why, "attempts": attempts}


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time a process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def storm(port: int, path: str, sessions: list[dict[str, str]], window: float) -> list[dict[str, Any]]:
    """Start every client at its moment of the window; close the sockets once all are done."""
    count = len(sessions)
    tasks = [
        one_client(port, path, cookies, window * i / max(1, count - 1), i)
        for i, cookies in enumerate(sessions)
    ]
    results = await asyncio.gather(*tasks)
    await asyncio.gather(*(r["ws"].close() for r in results if r.get("ws")))
    return results


def main() -> None:
    """Start Daphne, open the storm of sockets, print the three figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=None, help="sockets opened in the window (500)")
    parser.add_argument("--window", type=float, default=None, help="seconds over which they open (10)")
    args = parser.parse_args()
    clients = args.clients or (40 if args.quick else 500)
    window = args.window or (2.0 if args.quick else 10.0)
    repetitions = args.repetitions or 1

    with bench_env() as env:
        from django.contrib.auth.models import User

        from bench.common import session_cookie
        from experiments.services import experiment_create

        experiment = experiment_create(name="bench storm", recipe="digits")
        user = make_user("bench-storm", permissions=["experiments.view_experiment"])
        # One session per client, as many browsers would hold; users share the permission.
        sessions = [session_cookie(User.objects.get(pk=user.pk)) for _ in range(clients)]
        port = env.start_daphne()
        daphne_pid = env.children[-1].pid
        path = f"/ws/experiments/{experiment.pk}/"
        connected: list[float] = []
        p50s: list[float] = []
        p99s: list[float] = []
        refused_total: list[int] = []
        first_refused: list[int] = []
        attempts_total: list[int] = []
        cpu_ms: list[float] = []
        reasons: dict[str, int] = {}
        # One small storm first: the first connection pays imports and the first Redis connection.
        asyncio.run(storm(port, path, sessions[:5], 0.5))
        for rep in range(repetitions):
            note(f"ws_storm: {clients} clients within {window:.0f} s (repetition {rep + 1}/{repetitions})")
            cpu_before = cpu_seconds(daphne_pid)
            results = asyncio.run(storm(port, path, sessions, window))
            cpu_ms.append((cpu_seconds(daphne_pid) - cpu_before) * 1000 / clients)
            ok = [r["connect_ms"] for r in results if r["ok"]]
            first_refused.append(sum(1 for r in results if r["attempts"] > 1 or not r["ok"]))
            attempts_total.append(sum(r["attempts"] for r in results))
            for r in results:
                if not r["ok"]:
                    reasons[r["why"]] = reasons.get(r["why"], 0) + 1
            connected.append(float(len(ok)))
            refused_total.append(clients - len(ok))
            p50s.append(percentile(ok, 50) if ok else float("nan"))
            p99s.append(percentile(ok, 99) if ok else float("nan"))
        extra = {
            "clients_attempted": clients,
            "clients_connected": int(statistics.median(connected)),
            "clients_refused": int(statistics.median(refused_total)),
            "refused_at_first_attempt": int(statistics.median(first_refused)),
            "attempts": int(statistics.median(attempts_total)),
            "window_s": window,
            "refusals": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
        }
        emit(
            figure(
                name="ws_storm_connected",
                unit="clients",
                samples=connected,
                goal=Goal(f"all {clients} clients connected", median_min=float(clients)),
                higher_is_better=True,
                extra=extra,
            )
        )
        emit(
            figure(
                name="ws_storm_connect_p50_ms",
                unit="ms",
                samples=p50s,
                goal=Goal("(p50; the goal is on p99)"),
                higher_is_better=False,
                extra=extra,
            )
        )
        emit(
            figure(
                name="ws_storm_connect_p99_ms",
                unit="ms",
                samples=p99s,
                goal=Goal("p99 < 5000 ms (Daphne's connect timeout)", median_max=5000.0),
                higher_is_better=False,
                extra=extra,
            )
        )
        emit(
            figure(
                name="ws_storm_cpu_ms_per_connection",
                unit="ms",
                samples=cpu_ms,
                goal=Goal("(the web process's CPU per connection: what bounds a storm on any machine)"),
                higher_is_better=False,
                extra=extra,
            )
        )


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        emit_failure(FIGURES, exc)
        if not isinstance(exc, SystemExit):
            raise
