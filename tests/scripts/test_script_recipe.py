"""The script recipe on its own (no Django, no worker): real subprocesses, real signals."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from experiments.recipes import ConfigError, get_spec
from experiments.recipes.base import RecipeResult
from experiments.recipes.script import RECIPE, STDERR_TAIL_LINES, ScriptError, ScriptResult

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "script-run"


class ScriptTestContext:
    """A run context that is also a ScriptHost: keeps points and output lines, stops on request."""

    def __init__(self, roots: list[Path], *, env: dict[str, str] | None = None, device: str = "cpu") -> None:
        self.device = device
        self.seed = 0
        self.roots = [str(r) for r in roots]
        self.env = env or {}
        self.points: list[tuple[str, int, float]] = []
        self.fractions: list[float] = []
        self.lines: list[tuple[str, str]] = []
        self.stop = threading.Event()

    def log(self, name: str, step: int, value: float) -> None:
        self.points.append((name, step, value))

    def progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        raise AssertionError("a script saves its own checkpoints")

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        return None

    def dataset_path(self, dataset_id: int) -> str:
        raise ValueError("no datasets here")

    def script_roots(self) -> list[str]:
        return self.roots

    def script_env(self) -> dict[str, str]:
        return {"CRUCIBLE_RUN_ID": "7", **self.env}

    def output(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def text(self, stream: str | None = None) -> str:
        return "\n".join(line for s, line in self.lines if stream is None or s == stream)


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def _run(ctx: ScriptTestContext, workdir: Path | str, argv: list[str], **config: Any) -> RecipeResult:
    clean = get_spec("script").clean({"argv": argv, "workdir": str(workdir), **config})
    return RECIPE.train(ctx, clean)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_example_script_trains_unchanged_and_its_points_arrive_as_metrics(tmp_path: Path) -> None:
    ctx = ScriptTestContext([EXAMPLE])
    result = _run(ctx, EXAMPLE, ["python", "train.py", "--lr", "0.01", "--steps", "30", "--eval-every", "10"])

    assert not result.stopped
    losses = [(step, value) for name, step, value in ctx.points if name == "loss"]
    assert [step for step, _ in losses] == list(range(1, 31))
    assert [step for name, step, _ in ctx.points if name == "accuracy"] == [10, 20, 30]
    assert result.steps == 30
    assert set(result.final_metrics) == {"loss", "val_loss", "accuracy"}
    assert result.final_metrics["loss"] == losses[-1][1]
    # Ordinary output goes to the run log, metric lines do not.
    assert "training 4482 parameters, lr 0.01" in ctx.text("stdout")
    assert '"name": "loss"' not in ctx.text()


def test_malformed_metric_lines_are_counted_and_shown_but_never_fatal(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "noisy.py",
        """
        print('{"name": "loss", "step": 1, "value": 0.5}')
        print('{"name": "loss", "step": 2, "value": "high"}')
        print('{not json')
        print('{"name": "loss", "value": 0.4}')
        print('plain words are just output')
        print('{"name": "loss", "step": 3, "value": null}')
        print('{"progress": 0.5}')
        print('{"name": "loss", "step": 4, "value": 0.3}')
        """,
    )
    ctx = ScriptTestContext([tmp_path])
    result = _run(ctx, tmp_path, ["python", "noisy.py"])

    assert isinstance(result, ScriptResult)
    assert result.malformed_lines == 3
    assert [(s, v) for _, s, v in ctx.points if v == v] == [(1, 0.5), (4, 0.3)]
    assert [s for _, s, v in ctx.points if v != v] == [3]  # null is NaN, as the recipe CLI prints it
    assert ctx.fractions == [0.5]
    log = ctx.text()
    assert "malformed metric line #1 (value must be a number" in log
    assert "malformed metric line #2 (not JSON" in log
    assert "malformed metric line #3 (step must be a whole number" in log
    assert "3 malformed metric line(s) ignored" in log
    assert "plain words are just output" in log
    assert result.final_metrics == {"loss": 0.3}


def test_a_failing_script_fails_with_the_last_50_lines_of_stderr(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "fails.py",
        """
        import sys
        for i in range(1, 81):
            print(f"problem line {i}", file=sys.stderr)
        sys.exit(3)
        """,
    )
    ctx = ScriptTestContext([tmp_path])
    with pytest.raises(ScriptError) as err:
        _run(ctx, tmp_path, ["python", "fails.py"])

    message = str(err.value)
    assert message.startswith("the script exited with status 3; last 50 lines of stderr:")
    assert STDERR_TAIL_LINES == 50
    assert "problem line 31\n" in message and message.endswith("problem line 80")
    assert "problem line 30\n" not in message
    # The whole stderr is in the run log.
    assert "problem line 1" in ctx.text("stderr").splitlines()


def test_a_workdir_outside_the_allowed_roots_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    ctx = ScriptTestContext([allowed])

    for workdir in (outside, allowed / ".." / "outside", allowed / "escape", "../outside"):
        with pytest.raises(ConfigError) as err:
            _run(ctx, workdir, ["python", "-c", "print(1)"])
        assert err.value.errors["workdir"].endswith(f"is outside the allowed roots ({allowed})")
    with pytest.raises(ConfigError) as err:
        _run(ctx, allowed / "missing", ["python", "-c", "print(1)"])
    assert err.value.errors == {"workdir": f"{allowed / 'missing'} is not an existing folder"}
    assert not ctx.lines  # nothing ran


def test_script_runs_are_off_while_no_root_is_allowed(tmp_path: Path) -> None:
    ctx = ScriptTestContext([])
    with pytest.raises(ConfigError) as err:
        _run(ctx, tmp_path, ["python", "-c", "print(1)"])
    assert err.value.errors["workdir"].startswith("script runs are off: an administrator must list")


def test_a_missing_executable_is_named(tmp_path: Path) -> None:
    ctx = ScriptTestContext([tmp_path])
    with pytest.raises(ConfigError) as err:
        _run(ctx, tmp_path, ["no-such-trainer-xyz", "--lr", "0.01"])
    assert err.value.errors["argv"].startswith("executable 'no-such-trainer-xyz' not found on PATH")
    with pytest.raises(ConfigError) as err:
        _run(ctx, tmp_path, ["./train.sh"])
    assert err.value.errors == {
        "argv": f"executable './train.sh' not found in {tmp_path} (or not executable)"
    }


def test_a_shell_string_is_refused_as_argv() -> None:
    with pytest.raises(ConfigError) as err:
        get_spec("script").clean({"argv": "python train.py --lr 0.01", "workdir": "x"})
    assert "must be a list of strings" in err.value.errors["argv"]
    assert "a shell line is not run" in err.value.errors["argv"]
    with pytest.raises(ConfigError) as err:
        get_spec("script").clean({"argv": ["python", 0.01], "workdir": ""})
    assert err.value.errors == {"argv": 'item 1 must be a string (numbers too: write "0.01")'}
    with pytest.raises(ConfigError) as err:
        get_spec("script").clean({"workdir": "x", "env": {"CRUCIBLE_TOKEN": "mine"}})
    assert (
        err.value.errors["env"] == "CRUCIBLE_TOKEN is set by Crucible for each run and cannot be overridden"
    )


def test_the_script_gets_the_run_variables_and_no_secret_of_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", "worker-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://worker@db/prod")
    _write(
        tmp_path,
        "env.py",
        """
        import os
        for name in ("CRUCIBLE_RUN_ID", "CUDA_VISIBLE_DEVICES", "MY_FLAG", "SECRET_KEY", "DATABASE_URL"):
            print(f"{name}={os.environ.get(name, '<unset>')}")
        """,
    )
    ctx = ScriptTestContext([tmp_path], device="cuda:1")
    _run(ctx, tmp_path, ["python", "env.py"], env={"MY_FLAG": "on"})

    out = ctx.text("stdout").splitlines()
    assert "CRUCIBLE_RUN_ID=7" in out
    assert "CUDA_VISIBLE_DEVICES=1" in out
    assert "MY_FLAG=on" in out
    assert "SECRET_KEY=<unset>" in out and "DATABASE_URL=<unset>" in out


def test_a_script_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
        print('{"name": "loss", "step": 1, "value": 1.0}', flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    ctx = ScriptTestContext([tmp_path])
    threading.Thread(target=_stop_after_first_point, args=(ctx,), daemon=True).start()
    result = _run(ctx, tmp_path, ["python", "stubborn.py"], stop_grace_seconds=0.5)

    assert result.stopped
    log = ctx.text()
    assert "ignoring SIGTERM" in log  # it got the SIGTERM first
    assert "the script killed after the grace period (exit status -9)" in log


def test_a_stopped_script_that_forked_children_leaves_none_behind(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "forks.py",
        """
        import os, subprocess, sys, time
        kids = [subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"]) for _ in range(2)]
        if os.fork() == 0:  # a grandchild by fork, as a data loader would
            while True:
                time.sleep(0.1)
        with open("pids", "w") as fh:
            fh.write(" ".join(str(k.pid) for k in kids))
        print('{"name": "loss", "step": 1, "value": 1.0}', flush=True)
        while True:
            time.sleep(0.1)
        """,
    )
    ctx = ScriptTestContext([tmp_path])
    threading.Thread(target=_stop_after_first_point, args=(ctx,), daemon=True).start()
    result = _run(ctx, tmp_path, ["python", "forks.py"], stop_grace_seconds=2)

    assert result.stopped
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_children_left_running_by_a_script_that_exits_are_killed_too(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "leaves.py",
        """
        import subprocess, sys
        kid = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.1)"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open("pid", "w").write(str(kid.pid))
        """,
    )
    ctx = ScriptTestContext([tmp_path])
    result = _run(ctx, tmp_path, ["python", "leaves.py"])

    assert not result.stopped
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _stop_after_first_point(ctx: ScriptTestContext, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ctx.points and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.stop.set()


def test_python_means_the_interpreter_running_the_recipe(tmp_path: Path) -> None:
    _write(tmp_path, "which.py", "import sys\nprint(sys.executable)\n")
    ctx = ScriptTestContext([tmp_path])
    _run(ctx, tmp_path, ["python3", "which.py"])
    assert sys.executable in ctx.text("stdout").splitlines()
