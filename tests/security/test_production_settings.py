"""Production defaults: DEBUG off unless set, check --deploy clean, and the Procfile's web process
refuses DEBUG on a network address; each in a real process started with a production environment."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible_ui.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a deployment sets, and nothing this test session set for itself.
_SESSION_ONLY = (
    "DEBUG",
    "HOST",
    "PORT",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
    "DATABASE_URL",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
)


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a production process: no DEBUG, its own SECRET_KEY and host name."""
    env = {k: v for k, v in os.environ.items() if k not in _SESSION_ONLY}
    env.update(
        {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "crucible.example.com,127.0.0.1",
            "VAR_DIR": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "crucible_ui.settings",
            # `python` in the Procfile is this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_debug_is_off_unless_the_environment_sets_it(tmp_path: Path) -> None:
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    assert run_python(code, production_env(tmp_path)).stdout.strip() == "False"
    assert run_python(code, production_env(tmp_path, DEBUG="1")).stdout.strip() == "True"


def test_production_refuses_to_start_without_its_own_secret_key(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    result = run_python("import django; django.setup()", env)
    assert result.returncode != 0
    assert "set SECRET_KEY" in result.stderr


def test_the_deploy_check_passes_without_a_warning_in_production(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_deploy_check_does_flag_debug(tmp_path: Path) -> None:
    # The check above can fail: the same command with DEBUG on (on loopback) reports it.
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path, DEBUG="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr


def procfile_web_command() -> str:
    """Return the Procfile's web command, as a Procfile runner hands it to the shell."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web process")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_web(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", "-c", procfile_web_command()],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def stop_afterwards() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_the_procfile_web_process_refuses_debug_on_its_default_network_address(
    tmp_path: Path, stop_afterwards: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    # HOST unset: the Procfile binds 0.0.0.0.
    proc = start_web(production_env(tmp_path, DEBUG="1", PORT=str(port)), tmp_path / "web.log")
    stop_afterwards.append(proc)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        assert not listening(port), "Daphne served with DEBUG on a network address"
        time.sleep(0.2)
    log = (tmp_path / "web.log").read_text(errors="replace")
    assert proc.returncode not in (None, 0), log[-3000:]
    assert "HOST=0.0.0.0 is not a loopback address" in log


def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """GET url without following redirects; return status, headers and body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")


def test_the_procfile_web_process_serves_production_with_its_security_headers(
    tmp_path: Path, stop_afterwards: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    env = production_env(tmp_path, HOST="127.0.0.1", PORT=str(port))
    proc = start_web(env, tmp_path / "web.log")
    stop_afterwards.append(proc)
    deadline = time.monotonic() + 120
    while not listening(port):
        log = (tmp_path / "web.log").read_text(errors="replace")
        assert proc.poll() is None and time.monotonic() < deadline, f"Daphne did not listen:\n{log[-3000:]}"
        time.sleep(0.2)
    base = f"http://127.0.0.1:{port}"

    # Plain HTTP is sent to HTTPS.
    status, headers, _ = get(base + "/login/", Host="crucible.example.com")
    assert status == 301 and headers["Location"] == "https://crucible.example.com/login/"

    # Behind the TLS proxy (X-Forwarded-Proto): the page, with HSTS, CSP and Permissions-Policy.
    status, headers, body = get(
        base + "/login/", Host="crucible.example.com", **{"X-Forwarded-Proto": "https"}
    )
    assert status == 200 and "Log in" in body
    assert "max-age=31536000" in headers["Strict-Transport-Security"]
    csp = headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", csp)
    # Scripts by src from this origin only: an injected <script> or onclick= never runs.
    assert script_src is not None and script_src.group(1).split() == ["'self'"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    for feature in ("camera", "microphone", "geolocation", "usb"):
        assert f"{feature}=()" in headers["Permissions-Policy"]
    assert "Secure" in headers["Set-Cookie"]  # the CSRF cookie travels over HTTPS only

    # A server error shows no debug page (no settings, no paths).
    status, _, body = get(base + "/login/", Host="evil.example.org", **{"X-Forwarded-Proto": "https"})
    assert status == 400 and "Traceback" not in body and "DisallowedHost" not in body
