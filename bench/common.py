"""What every bench script shares: repetition statistics, the JSON figure, and our own servers.

A figure is one JSON line: the median, min and max over several repetitions of one
measured quantity (a rate, a latency percentile...), the same for a baseline measured in
the same run, their ratio, and whether the goal is met. Servers (Redis, Daphne, a Celery
worker) are started here on free 127.0.0.1 ports against a fresh temporary SQLite
database, and stopped again; nothing is ever sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    # The scripts run as `python bench/x.py`; the project's packages sit one level up.
    sys.path.insert(0, str(BASE_DIR))

HOST = "127.0.0.1"
# Every wait for a server is bounded: a server that does not come up fails the figure.
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) of values, linearly interpolated."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Return median, min, max and the number of repetitions of samples."""
    if not samples:
        raise ValueError("no samples")
    return {
        "median": _round(statistics.median(samples)),
        "min": _round(min(samples)),
        "max": _round(max(samples)),
        "repetitions": len(samples),
    }


def _round(value: float) -> float:
    """Return value with four significant decimals, enough for a figure and short in JSON."""
    if value == 0 or not isinstance(value, float):
        return value
    magnitude = abs(value)
    digits = 4 if magnitude < 1 else 3 if magnitude < 100 else 1
    return round(value, digits)


def repeat(fn: Callable[[], float], *, repetitions: int, warmup: int = 1) -> list[float]:
    """Call fn warmup + repetitions times; return what the measured calls returned."""
    for _ in range(warmup):
        fn()
    return [float(fn()) for _ in range(repetitions)]


def time_for(seconds: float, *, reserve: float = 20.0) -> bool:
    """Return True when `seconds` more work fits before this script's deadline, with `reserve` to stop its servers.

    run_all.py sets BENCH_DEADLINE (epoch seconds) from the script's budget; a script run by
    hand has none, and everything fits.
    """
    raw = os.getenv("BENCH_DEADLINE")
    return not raw or time.time() + seconds + reserve < float(raw)


def machine() -> dict[str, Any]:
    """Return what the figures were measured on."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "load_average": load,
    }


@dataclass
class Goal:
    """The target of a figure: bounds on its median and/or on its ratio to the baseline."""

    text: str
    median_max: float | None = None
    median_min: float | None = None
    ratio_min: float | None = None

    def met(self, median: float, ratio: float | None) -> bool | None:
        """Return True when every bound holds; None when it has no bound or lacks the ratio it needs."""
        if self.median_max is None and self.median_min is None and self.ratio_min is None:
            return None  # e.g. a p50 reported beside the p99 that the goal is about
        if self.median_max is not None and median > self.median_max:
            return False
        if self.median_min is not None and median < self.median_min:
            return False
        if self.ratio_min is None:
            return True
        return None if ratio is None else ratio >= self.ratio_min


def figure(
    *,
    name: str,
    unit: str,
    samples: Sequence[float],
    goal: Goal,
    higher_is_better: bool,
    baseline_name: str | None = None,
    baseline_samples: Sequence[float] | None = None,
    baseline_unit: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one figure; ratio says how many times better ours is than the baseline (>1 = better)."""
    ours = summary(samples)
    out: dict[str, Any] = {"figure": name, "unit": unit, **ours}
    ratio: float | None = None
    if baseline_samples:
        base = summary(baseline_samples)
        out["baseline"] = {"name": baseline_name, "unit": baseline_unit or unit, **base}
        ours_median = float(statistics.median(samples))
        base_median = float(statistics.median(baseline_samples))
        if ours_median > 0 and base_median > 0:
            ratio = ours_median / base_median if higher_is_better else base_median / ours_median
    else:
        out["baseline"] = None
    out["ratio"] = None if ratio is None else round(ratio, 3)
    out["ratio_means"] = "times better than the baseline (medians; >1 is better)"
    out["goal"] = goal.text
    out["meets_goal"] = goal.met(float(statistics.median(samples)), ratio)
    if extra:
        out.update(extra)
    out["machine"] = machine()
    out["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return out


def emit_latency(
    *,
    name: str,
    samples: Sequence[float],
    goal: Goal,
    baseline_name: str,
    baseline_samples: Sequence[float],
    extra: dict[str, Any],
) -> None:
    """Print one figure in milliseconds, where lower is better, beside its baseline."""
    emit(
        figure(
            name=name,
            unit="ms",
            samples=samples,
            goal=goal,
            higher_is_better=False,
            baseline_name=baseline_name,
            baseline_samples=baseline_samples,
            extra=extra,
        )
    )


def skipped(name: str, reason: str) -> dict[str, Any]:
    """Build the line of a figure that could not be measured here, saying why."""
    return {
        "figure": name,
        "skipped": reason,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# Figures printed so far by this process: a failure then reports only the ones still missing.
EMITTED: set[str] = set()


def emit(line: dict[str, Any]) -> None:
    """Print one figure as a JSON line (flushed at once, so run_all streams)."""
    EMITTED.add(str(line.get("figure")))
    if "--quick" in sys.argv[1:] and "skipped" not in line:
        # Tiny sizes prove the script works; they say nothing about the goal.
        line = {**line, "quick": True, "meets_goal": None}
    sys.stdout.write(json.dumps(line, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def emit_failure(names: Sequence[str], exc: BaseException) -> None:
    """Print a skipped line, saying why, for each figure of names not printed yet."""
    for name in names:
        if name not in EMITTED:
            emit(skipped(name, f"failed: {type(exc).__name__}: {exc}"))


def note(text: str) -> None:
    """Say what the bench is doing, on stderr (stdout carries only JSON)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """Return the argument parser every bench script starts from (--quick, --repetitions)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the script, measures nothing"
    )
    parser.add_argument("--repetitions", type=int, default=None, help="measured repetitions per figure")
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="sqlite: a fresh file (the default); postgres: a fresh database of its own on "
        f"{POSTGRES_SERVER_URL} (BENCH_POSTGRES_URL overrides), dropped afterwards",
    )
    return parser


# --------------------------------------------------------------------------- databases

DATABASES = ("sqlite", "postgres")
# The server the PostgreSQL figures use; each bench run creates (and drops) a database of its own.
POSTGRES_SERVER_URL = os.getenv("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def database_label(database: str) -> str:
    """Return how a figure names the database it was measured on."""
    return "sqlite (WAL)" if database == "sqlite" else "postgresql"


def _postgres_admin(sql: str) -> None:
    """Run one statement on the PostgreSQL server's maintenance database (outside a transaction)."""
    import psycopg

    with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as conn:
        conn.execute(sql)


def _postgres_bench_url() -> tuple[str, str]:
    """Create a fresh database for this bench run; return (its URL, its name)."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"crucible_bench_{os.getpid()}_{secrets.token_hex(3)}"
    _postgres_admin(f'CREATE DATABASE "{name}"')
    parts = urlsplit(POSTGRES_SERVER_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment)), name


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    from crucible_ui.redis_server import free_port as _free_port

    return _free_port()


def wait_for_port(port: int, *, proc: subprocess.Popen[bytes] | None, what: str, log: Path | None) -> None:
    """Return once something accepts connections on 127.0.0.1:port; raise if proc dies or time runs out."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with status {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {SERVER_START_TIMEOUT:.0f} s")


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    """Stop a server we started (its own process group): SIGTERM, then SIGKILL after a timeout."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=SERVER_STOP_TIMEOUT)


@dataclass
class BenchEnv:
    """A private Redis, a fresh migrated SQLite database and the settings that point at them."""

    tmp: Path
    env: dict[str, str]
    redis_url: str
    redis_proc: subprocess.Popen[bytes] | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_daphne(self) -> int:
        """Start Daphne on the project's ASGI app on a free port; return the port."""
        port = free_port()
        log = self.tmp / f"daphne-{port}.log"
        argv = [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "crucible_ui.asgi:application"]
        proc = self._spawn(argv, log)
        wait_for_port(port, proc=proc, what="daphne", log=log)
        return port

    @contextmanager
    def web_processes(self, *, processes: int = 1, server: str = "daphne") -> Iterator[int]:
        """Serve the project from `processes` servers sharing one listening socket, as `make run` does; yield the port.

        server: "daphne" (the product's) or "uvicorn" (for comparison). Each process is up
        once its log says it listens; they are stopped on leaving.
        """
        from crucible_ui.launcher import listening_socket

        listener = listening_socket(HOST, 0)
        port, fd = listener.getsockname()[1], listener.fileno()
        if server == "daphne":
            argv = [sys.executable, "-m", "daphne", "--fd", str(fd), "crucible_ui.asgi:application"]
            ready = "Listening on"
        elif server == "uvicorn":
            argv = [sys.executable, "-m", "uvicorn", "--fd", str(fd), "--no-access-log",
                    "--log-level", "info", "crucible_ui.asgi:application"]  # fmt: skip
            ready = "Uvicorn running on"
        else:
            raise ValueError(f"unknown server {server!r}")
        # INFO: the servers say when they listen (the bench reads nothing else from their logs).
        env = {**self.env, "LOG_LEVEL": "INFO"}
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        try:
            for i in range(processes):
                log = self.tmp / f"{server}-{port}-{i}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True, pass_fds=(fd,),
                    )  # fmt: skip
                self.children.append(proc)
                procs.append((proc, log))
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            for proc, log in procs:
                while ready not in log.read_text(errors="replace"):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{server} did not start (status {proc.poll()}):\n{tail}")
                    time.sleep(0.05)
            yield port
        finally:
            for proc, _log in procs:
                stop_process(proc)
                if proc in self.children:
                    self.children.remove(proc)
            listener.close()

    def start_celery_worker(
        self, *, name: str = "bench", queues: Sequence[str] = (), pool: str = "prefork", concurrency: int = 1
    ) -> str:
        """Start a Celery worker of the project's app; return its node name once it answers a ping."""
        node = f"{name}-{secrets.token_hex(3)}@{socket.gethostname()}"
        log = self.tmp / f"celery-{node.split('@')[0]}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "crucible_ui", "worker",
            "--hostname", node, "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if queues:
            argv += ["--queues", ",".join(queues)]
        proc = self._spawn(argv, log)
        from crucible_ui.celery import app

        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited: {log.read_text(errors='replace')[-2000:]}")
            replies = app.control.ping(destination=[node], timeout=0.5) or []
            if any(node in reply for reply in replies):
                return node
        raise RuntimeError(f"celery worker {node} did not answer within {SERVER_START_TIMEOUT:.0f} s")

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            # Its own session: stop_process signals the whole group (pool children included).
            proc = subprocess.Popen(
                argv, cwd=BASE_DIR, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every server started here (web and workers first, Redis last) and remove the files."""
        for proc in reversed(self.children):
            stop_process(proc)
        self.children.clear()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # Django may not be set up when start-up failed early
            pass
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
                self.redis_proc.wait()
        if os.getenv("BENCH_KEEP_TMP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_bounded(
    argv: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a bench script; on timeout SIGTERM it (it then stops its servers), SIGKILL if it lingers.

    Return (exit status, stdout, stderr); the status is -1 when it timed out.
    """
    proc = subprocess.Popen(
        argv, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=SERVER_STOP_TIMEOUT * 3)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return -1, out, f"{err}\ntimed out after {timeout:.0f} s"


@contextmanager
def bench_env(*, database: str = "sqlite", **settings_env: str) -> Iterator[BenchEnv]:
    """Start a private Redis, point Django at a fresh database, migrate it, and clean up after.

    database: "sqlite" (a fresh file) or "postgres" (a fresh database of its own, dropped
    afterwards). Must run before anything imports Django settings in this process. Extra
    keyword arguments become environment variables read by the settings (e.g. METRIC_FLUSH_SECONDS).
    """
    from crucible_ui.redis_server import start_redis

    if database not in DATABASES:
        raise ValueError(f"database must be one of {DATABASES}, not {database!r}")
    tmp = Path(tempfile.mkdtemp(prefix="crucible-bench-"))
    pg_name = ""
    database_url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if database == "postgres":
        database_url, pg_name = _postgres_bench_url()
        note(f"PostgreSQL database {pg_name} (dropped at the end)")
    redis_port = free_port()
    redis_proc = start_redis(port=redis_port, data_dir=tmp / "redis")
    redis_url = f"redis://{HOST}:{redis_port}/0"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "crucible_ui.settings",
        "VAR_DIR": str(tmp),
        "ARTIFACTS_ROOT": str(tmp / "artifacts"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        # Production mode (no query log, no debug pages) but plain HTTP on loopback.
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "SECRET_KEY": "bench-" + secrets.token_hex(32),
        "ALLOWED_HOSTS": f"{HOST},localhost",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(BASE_DIR),
        **settings_env,
    }
    bench = BenchEnv(tmp=tmp, env=env, redis_url=redis_url, redis_proc=redis_proc)
    # A SIGTERM (run_all's or a test's timeout) unwinds through the finally below, so the
    # servers started here, each in its own session, are stopped rather than left behind.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        os.environ.update(env)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        yield bench
    finally:
        bench.stop()
        if pg_name:
            with suppress(Exception):  # a database left behind is named crucible_bench_*
                _postgres_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


# --------------------------------------------------------------------------- users and sessions


def make_user(username: str, *, permissions: Sequence[str]) -> Any:
    """Create a user holding the given "app.codename" permissions (no password: sessions are minted)."""
    from django.contrib.auth.models import Permission, User

    user = User.objects.create(username=username, is_active=True)
    user.set_unusable_password()
    user.save()
    for perm in permissions:
        app_label, codename = perm.split(".", 1)
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def session_cookie(user: Any) -> dict[str, str]:
    """Return the cookies of a logged-in browser session of user, and a CSRF secret.

    The session is written the way django.contrib.auth.login writes it, so the server
    sees an ordinary logged-in user; the password login itself is not what we measure.
    """
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    assert store.session_key is not None
    # An unmasked 32-character secret is a valid CSRF cookie and header value.
    csrf = secrets.token_hex(16)
    return {settings.SESSION_COOKIE_NAME: store.session_key, settings.CSRF_COOKIE_NAME: csrf}


def cookie_header(cookies: dict[str, str]) -> str:
    """Return a Cookie header value."""
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


# --------------------------------------------------------------------------- HTTP/1.1 client


class HttpClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio (one connection, one request at a time)."""

    def __init__(self, port: int, *, cookies: dict[str, str] | None = None) -> None:
        self.port = port
        self.cookies = dict(cookies or {})
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0  # opened so far: 1 while the server keeps the connection alive

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(HOST, self.port, limit=2**24)
        self.connections += 1

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request and return (status, body); reconnects once if the server closed."""
        for attempt in range(2):
            if self._writer is None:
                await self._connect()
            try:
                return await self._exchange(method, path, body, headers or {})
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}", "Connection: keep-alive"]
        if self.cookies:
            lines.append(f"Cookie: {cookie_header(self.cookies)}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                response_headers[key.strip().lower()] = value.strip()
        if "content-length" in response_headers:
            data = await self._reader.readexactly(int(response_headers["content-length"]))
        elif response_headers.get("transfer-encoding", "").lower() == "chunked":
            data = await self._read_chunked()
        else:
            data = await self._reader.read()
            await self.close()
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            with suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


# --------------------------------------------------------------------------- websocket client


class WebSocketClient:
    """A minimal RFC 6455 client on asyncio: text frames in, masked text frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str, *, cookies: dict[str, str]) -> WebSocketClient:
        """Open a websocket to 127.0.0.1:port/path as the session in cookies."""
        reader, writer = await asyncio.open_connection(HOST, port, limit=2**26)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://{HOST}:{port}\r\nCookie: {cookie_header(cookies)}\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line:
            raise RuntimeError(f"websocket refused: {status_line!r}")
        return cls(reader, writer)

    async def recv(self) -> str:
        """Return the next text message; answer pings; raise ConnectionError on close."""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
            payload = await self.reader.readexactly(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise ConnectionError(f"websocket closed by the server (code {code})")
            if opcode == 0x9:
                await self._send_frame(0xA, payload)
                continue
            if opcode in (0x1, 0x0):
                # The server sends each event as one unfragmented frame.
                return payload.decode("utf-8")

    async def send_text(self, text: str) -> None:
        """Send one text message."""
        await self._send_frame(0x1, text.encode("utf-8"))

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = secrets.token_bytes(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 2**16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def close(self) -> None:
        """Send a close frame and drop the connection."""
        with suppress(ConnectionError, OSError):
            await self._send_frame(0x8, (1000).to_bytes(2, "big"))
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# --------------------------------------------------------------------------- MLflow baseline


def mlflow_baseline(
    args: Sequence[str], *, quick: bool, venv_dir: Path | None = None
) -> dict[str, Any] | str:
    """Run bench/mlflow_baseline.py in the MLflow venv; return its JSON, or why it was skipped.

    In --quick mode a missing venv is a skip (the smoke test must not install MLflow);
    otherwise the venv is built on first use.
    """
    from bench.mlflow_env import VENV_DIR, ensure_mlflow_venv, mlflow_installed, venv_python

    venv_dir = venv_dir or VENV_DIR
    if os.getenv("BENCH_NO_MLFLOW"):
        return "BENCH_NO_MLFLOW is set"
    if not mlflow_installed(venv_dir):
        if quick:
            return f"MLflow venv absent ({venv_dir}); build it with `python bench/mlflow_env.py`"
        note("building the MLflow venv (first run only)...")
        ensure_mlflow_venv(venv_dir=venv_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "PYTHONPATH"))}
    env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
    proc = subprocess.run(
        [str(venv_python(venv_dir)), str(BASE_DIR / "bench" / "mlflow_baseline.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mlflow baseline failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
