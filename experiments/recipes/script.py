"""The `script` recipe: run an existing training script, unchanged, as a subprocess (no Django, no torch).

The config is an argv list (never a shell string), a working directory that must lie under one
of the allowed roots, and extra environment variables. The script reports metric points as JSON
lines on stdout, `{"name": "loss", "step": 3, "value": 0.41}` (what `python -m experiments.recipes
run` prints), and may report `{"progress": 0.5}`; every other line goes to the run log.

Whoever runs the recipe may offer more through the run context (`ScriptHost`): the worker passes
the allowed roots from its settings, the `CRUCIBLE_*` variables of the run and a run log sink. A
context without them (the CLI, a test) gets the roots from the SCRIPT_ROOTS environment variable
and only the variables it can derive itself.

A stop (cancel, early stop, worker shutdown, timeout) sends SIGTERM to the script's whole process
group and SIGKILL after `stop_grace_seconds`; the group is killed once the script exits too, so no
child it forked outlives the run. Exit status 0 completes the run; any other fails it with the
last STDERR_TAIL_LINES lines of stderr.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from .base import RecipeResult, RunContext
from .schema import ConfigError, Param, ParamValue, validate_config

SCRIPT_RECIPE = "script"
STDERR_TAIL_LINES = 50
MAX_ARGV_ITEMS = 256
MAX_ARG_CHARS = 4096
MAX_ENV_ITEMS = 100
# A line longer than this is cut in the run log (a runaway print must not fill memory).
MAX_LINE_CHARS = 8192
# Malformed metric lines are all counted; only the first few are quoted in the run log.
MALFORMED_QUOTED = 5
# How often the loop looks at the stop request while the script runs.
POLL_SECONDS = 0.1
# The worker's interpreter stands in for these: a script then sees the packages the worker has
# (torch, numpy), whatever PATH says.
PYTHON_NAMES = frozenset({"python", "python3", f"python3.{sys.version_info.minor}"})
# Environment the script inherits from the process that runs it; nothing else (a worker's
# DATABASE_URL or SECRET_KEY must not reach user code).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER", "LOGNAME")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV = ("CRUCIBLE_", "CUDA_VISIBLE_DEVICES")


# Stored as [] when left out; the coerce of each parameter turns it into its own empty value.
_EMPTY: ParamValue = cast(ParamValue, ())


class ScriptError(RuntimeError):
    """The script could not be started, or it exited with a non-zero status."""


@runtime_checkable
class ScriptHost(Protocol):
    """What a run context may add for script runs (the worker's does)."""

    def script_roots(self) -> list[str]:
        """Return the folders scripts may run in (empty: script runs are off)."""

    def script_env(self) -> dict[str, str]:
        """Return CUDA_VISIBLE_DEVICES and the CRUCIBLE_* variables of this run."""

    def output(self, stream: str, line: str) -> None:
        """Append one line of the script's output ("stdout" or "stderr") to the run log."""


# --- parameters: an argv list and an environment mapping, checked like any other parameter ---


@dataclass(frozen=True)
class ArgvParam(Param):
    """The command to run as a list of strings: the program, then its arguments (never a shell line)."""

    type: type[int] | type[float] | type[str] | type[bool] = str
    default: ParamValue = _EMPTY

    def describe(self) -> dict[str, Any]:
        """Return the JSON-able description, typed as a list of strings."""
        return {**super().describe(), "type": "list[str]", "default": []}

    def coerce(self, raw: Any) -> ParamValue:
        """Return the argv as a list, or raise ValueError saying what is wrong with it."""
        if isinstance(raw, str):
            raise ValueError(
                'must be a list of strings, e.g. ["python", "train.py", "--lr", "0.01"] (a shell line is not run)'
            )
        if not isinstance(raw, list | tuple) or not raw:
            raise ValueError('must be a non-empty list of strings, e.g. ["python", "train.py"]')
        if len(raw) > MAX_ARGV_ITEMS:
            raise ValueError(f"at most {MAX_ARGV_ITEMS} items")
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise ValueError(f'item {i} must be a string (numbers too: write "0.01")')
            if "\x00" in item or len(item) > MAX_ARG_CHARS:
                raise ValueError(f"item {i} must be under {MAX_ARG_CHARS} characters, without NUL")
        if not raw[0].strip():
            raise ValueError("item 0 must name the program to run")
        return cast(ParamValue, list(raw))


@dataclass(frozen=True)
class EnvParam(Param):
    """Extra environment variables of the script, names to string values."""

    type: type[int] | type[float] | type[str] | type[bool] = str
    default: ParamValue = _EMPTY

    def describe(self) -> dict[str, Any]:
        """Return the JSON-able description, typed as a mapping."""
        return {**super().describe(), "type": "dict[str, str]", "default": {}}

    def coerce(self, raw: Any) -> ParamValue:
        """Return the variables as a dict, or raise ValueError naming the bad one."""
        if raw in ((), [], None):
            return cast(ParamValue, {})
        if not isinstance(raw, dict):
            raise ValueError('must be an object of names to strings, e.g. {"OMP_NUM_THREADS": "1"}')
        if len(raw) > MAX_ENV_ITEMS:
            raise ValueError(f"at most {MAX_ENV_ITEMS} variables")
        for name, value in raw.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, _)")
            if name.startswith(_RESERVED_ENV):
                raise ValueError(f"{name} is set by Crucible for each run and cannot be overridden")
            if not isinstance(value, str) or "\x00" in value or len(value) > MAX_ARG_CHARS:
                raise ValueError(f"{name} must be a string under {MAX_ARG_CHARS} characters")
        return cast(ParamValue, dict(raw))


SCRIPT_PARAMS: tuple[Param, ...] = (
    ArgvParam(
        "argv",
        help='The command, e.g. ["python", "train.py", "--lr", "0.01"]; "python" is the worker\'s interpreter.',
    ),
    Param(
        "workdir",
        str,
        "",
        "Folder the script runs in: absolute, or relative to the first allowed root (SCRIPT_ROOTS).",
    ),
    EnvParam(
        "env", help="Extra environment variables (CRUCIBLE_* and CUDA_VISIBLE_DEVICES are set per run)."
    ),
    Param(
        "stop_grace_seconds",
        float,
        5.0,
        "After SIGTERM (cancel, early stop) the script has this long before SIGKILL.",
        0.1,
        60.0,
    ),
    Param("seed", int, 0, "Passed on as CRUCIBLE_SEED; the script decides what to do with it.", 0, 2**31 - 1),
)


def _require_command(config: dict[str, ParamValue]) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not config["argv"]:
        errors["argv"] = 'required: the command to run, e.g. ["python", "train.py", "--lr", "0.01"]'
    if not str(config["workdir"]).strip():
        errors["workdir"] = "required: the folder the script runs in (under SCRIPT_ROOTS)"
    return errors


SCRIPT_CONSTRAINTS = (_require_command,)


def parse_roots(raw: str) -> list[str]:
    """Return the allowed roots of a SCRIPT_ROOTS value (paths separated by commas or os.pathsep)."""
    return [part.strip() for part in re.split(rf"[,{re.escape(os.pathsep)}]", raw) if part.strip()]


def resolve_workdir(workdir: str, roots: Sequence[str]) -> Path:
    """Return the real folder a script runs in, or raise ConfigError on workdir.

    Symlinks and `..` are resolved before the check, so neither leads out of the roots.
    """
    if not roots:
        raise ConfigError(
            {
                "workdir": "script runs are off: an administrator must list the folders scripts may "
                "run in (SCRIPT_ROOTS)"
            }
        )
    real_roots = [Path(root).resolve() for root in roots]
    candidate = Path(workdir)
    if not candidate.is_absolute():
        candidate = real_roots[0] / candidate
    real = candidate.resolve()
    if not any(real == root or root in real.parents for root in real_roots):
        allowed = ", ".join(str(root) for root in real_roots)
        raise ConfigError({"workdir": f"{workdir} is outside the allowed roots ({allowed})"})
    if not real.is_dir():
        raise ConfigError({"workdir": f"{workdir} is not an existing folder"})
    return real


def resolve_program(program: str, *, workdir: Path, path: str) -> str:
    """Return the executable argv[0] names, or raise ConfigError on argv."""
    if program in PYTHON_NAMES:
        return sys.executable
    if os.sep in program:
        candidate = Path(program) if Path(program).is_absolute() else workdir / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise ConfigError({"argv": f"executable {program!r} not found in {workdir} (or not executable)"})
    found = shutil.which(program, path=path)
    if found is None:
        raise ConfigError({"argv": f"executable {program!r} not found on PATH ({path})"})
    return found


# --- the output of a script: metric points and everything else ---


@dataclass
class OutputParser:
    """Turn stdout lines into metric points (and progress); count the lines that only look like them."""

    log: Callable[[str, int, float], None]
    progress: Callable[[float], None]
    malformed: int = 0
    quoted: list[str] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)
    max_step: int = 0

    def feed(self, line: str) -> str | None:
        """Take one stdout line; return None when it was a point, else what the run log should say.

        A line that starts with `{` is meant as a point: if it is not one it is counted as
        malformed (never fatal) and logged with the reason.
        """
        text = line.strip()
        if not text.startswith("{"):
            return line
        problem = self._take(text)
        if problem is None:
            return None
        self.malformed += 1
        note = f"[crucible] malformed metric line #{self.malformed} ({problem}): {line}"
        if len(self.quoted) < MALFORMED_QUOTED:
            self.quoted.append(note)
        return note

    def _take(self, text: str) -> str | None:
        try:
            data = json.loads(text)
        except ValueError as exc:
            return f"not JSON: {exc}"
        if not isinstance(data, dict):
            return "not a JSON object"
        if set(data) == {"progress"}:
            fraction = data["progress"]
            if isinstance(fraction, bool) or not isinstance(fraction, int | float):
                return "progress must be a number"
            self.progress(float(fraction))
            return None
        name, step, value = data.get("name"), data.get("step"), data.get("value", "missing")
        if not isinstance(name, str) or not name or len(name) > 64:
            return "name must be a string of 1-64 characters"
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return "step must be a whole number >= 0"
        if value is None:
            number = math.nan  # what the recipe CLI prints for NaN/inf
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return "value must be a number (or null for NaN)"
        else:
            number = float(value)
        self.log(name, step, number)
        self.last[name] = number
        self.max_step = max(self.max_step, step)
        return None


# --- running it ---


def cuda_visible_devices(device: str) -> str:
    """Return CUDA_VISIBLE_DEVICES for a leased device ("cuda:1" → "1"; a CPU slot sees no GPU)."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return index or "0"
    return ""


def default_env(ctx: RunContext, config: Mapping[str, ParamValue]) -> dict[str, str]:
    """Return the per-run variables a context without ScriptHost still gets."""
    env = {
        "CUDA_VISIBLE_DEVICES": cuda_visible_devices(ctx.device),
        "CRUCIBLE_SEED": str(config.get("seed", 0)),
    }
    checkpoint_dir = getattr(ctx, "checkpoint_dir", None)
    env["CRUCIBLE_CHECKPOINT_DIR"] = str(checkpoint_dir) if checkpoint_dir else ""
    env["CRUCIBLE_RESUME_FROM"] = ""
    return env


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ScriptRecipe:
    """Runs argv in workdir as its own process group and reads its output until it ends or is stopped."""

    name = SCRIPT_RECIPE
    summary = "Run an existing training script unchanged (argv, a folder under SCRIPT_ROOTS, env)."
    params = SCRIPT_PARAMS

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Run the script to its end or a stop; raise ScriptError or ConfigError when it cannot run or fails."""
        # Checked again here: the config may come from anywhere (an old row, the CLI).
        config = validate_config(SCRIPT_PARAMS, config)
        errors: dict[str, str] = {}
        for constraint in SCRIPT_CONSTRAINTS:
            errors.update(constraint(config))
        if errors:
            raise ConfigError(errors)
        argv = [str(a) for a in cast(list[str], config["argv"])]
        extra_env = {str(k): str(v) for k, v in cast(dict[str, str], config.get("env") or {}).items()}
        grace = float(config.get("stop_grace_seconds", 5.0))
        host = ctx if isinstance(ctx, ScriptHost) else None
        roots = host.script_roots() if host is not None else parse_roots(os.environ.get("SCRIPT_ROOTS", ""))
        workdir = resolve_workdir(str(config["workdir"]), roots)

        env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
        env.setdefault("PATH", os.defpath)
        # Without it a Python script's prints sit in a block buffer and the chart stays empty.
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env)
        env.update(default_env(ctx, config))
        if host is not None:
            env.update(host.script_env())
        program = resolve_program(argv[0], workdir=workdir, path=env["PATH"])

        def emit(stream: str, line: str) -> None:
            if host is not None:
                host.output(stream, line)
            else:
                print(line, file=sys.stderr if stream == "stderr" else sys.stdout)

        emit("stdout", f"[crucible] running {json.dumps(argv)} in {workdir}")
        parser = OutputParser(log=ctx.log, progress=ctx.progress)
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        try:
            proc = subprocess.Popen(
                [program, *argv[1:]],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Its own process group: a stop reaches every process the script forked.
                start_new_session=True,
            )
        except OSError as exc:
            raise ScriptError(f"could not start {argv[0]!r}: {exc.strerror or exc}") from None
        pgid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None

        def read_stdout() -> None:
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:MAX_LINE_CHARS]
                shown = parser.feed(line)
                if shown is not None:
                    emit("stdout", shown)

        def read_stderr() -> None:
            for raw in proc.stderr:  # type: ignore[union-attr]
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:MAX_LINE_CHARS]
                stderr_tail.append(line)
                emit("stderr", line)

        readers = [
            threading.Thread(target=read_stdout, name=f"script-stdout-{pgid}", daemon=True),
            threading.Thread(target=read_stderr, name=f"script-stderr-{pgid}", daemon=True),
        ]
        for reader in readers:
            reader.start()

        stopped = False
        killed = False
        try:
            while proc.poll() is None:
                if ctx.should_stop():
                    stopped = True
                    killed = _stop_group(proc, pgid, grace)
                    break
                time.sleep(POLL_SECONDS)
        finally:
            # The script is gone (or being stopped): whatever it forked goes with it, and a child
            # still holding the pipes open must not keep the readers (and the run) waiting.
            if proc.poll() is None:
                _kill_group(pgid, signal.SIGKILL)
            proc.wait()
            _kill_group(pgid, signal.SIGKILL)
            for reader in readers:
                reader.join(5)
            proc.stdout.close()
            proc.stderr.close()

        if parser.malformed:
            emit("stdout", f"[crucible] {parser.malformed} malformed metric line(s) ignored")
        if stopped:
            how = "killed after the grace period" if killed else "ended after SIGTERM"
            emit("stdout", f"[crucible] stop requested: the script {how} (exit status {proc.returncode})")
        elif proc.returncode != 0:
            tail = "\n".join(stderr_tail)
            raise ScriptError(
                f"the script exited with status {_describe_status(proc.returncode)}; "
                f"last {len(stderr_tail)} lines of stderr:\n{tail}"
            )
        else:
            emit("stdout", "[crucible] the script exited with status 0")
        result = ScriptResult(
            final_metrics=_finite(parser.last),
            steps=parser.max_step,
            stopped=stopped,
            malformed_lines=parser.malformed,
        )
        return result


@dataclass(frozen=True)
class ScriptResult(RecipeResult):
    """A RecipeResult that also counts the stdout lines that looked like points but were not."""

    malformed_lines: int = 0


def _stop_group(proc: subprocess.Popen[bytes], pgid: int, grace: float) -> bool:
    """SIGTERM the group, SIGKILL it after grace; return True when it had to be killed."""
    _kill_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return False
        time.sleep(0.05)
    _kill_group(pgid, signal.SIGKILL)
    return True


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}


RECIPE = ScriptRecipe()
