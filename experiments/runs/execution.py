"""The worker side of a run: a RunContext backed by the database, and the loop that drives a recipe.

Runs inside a Celery pool process (never the worker's parent: CUDA must start in the child).
The training thread never waits on the network: metrics go through the reporter's buffer,
and a monitor thread heart-beats and watches for a cancel request every CANCEL_POLL_SECONDS.

A stop of the worker (experiments.recipes.stop, set from its SIGTERM) makes the loop
checkpoint at its next step; the run then ends interrupted and its experiment is requeued
without spending an attempt. So does an outage of the database or the broker under the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import threading
import time
import traceback as tb
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from experiments.choices import Interruption, RunStatus, State
from experiments.events import FLEET_GROUP, Progress, experiment_group, send_to_groups
from experiments.models import DatasetVersion, Dependency, Experiment, Run, RunStage
from experiments.recipes import get_spec
from experiments.recipes.script import SCRIPT_RECIPE, cuda_visible_devices
from experiments.recipes.stop import stop_reason
from experiments.runs.logs import RunLogWriter, RunOutputCapture
from experiments.runs.outputs import run_artifact_store, run_completed_stages, run_stage_record
from experiments.runs.reporting import MetricReporter
from experiments.runs.services import (
    run_end,
    run_fail,
    run_heartbeat,
    run_interrupt,
    run_record_checkpoint,
    run_record_resume,
    run_start,
    run_succeed,
)
from experiments.runs.system import ProcessTreeSampler, StepSampler
from experiments.runs.tokens import run_token_mint

logger = logging.getLogger(__name__)


def checkpoint_dir(*, experiment_id: int, run_id: int) -> Path:
    """Return the folder of one run's checkpoints under ARTIFACTS_ROOT."""
    return Path(settings.ARTIFACTS_ROOT) / "checkpoints" / f"experiment-{experiment_id}" / f"run-{run_id}"


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StopReason:
    """Why the monitor asked the loop to stop."""

    status: str  # RunStatus.CANCELLED, FAILED (timeout), INTERRUPTED (worker stop) or "" when taken away
    message: str


class DbRunContext:
    """The RunContext of a run on a worker: metrics via the reporter, checkpoints as files, cancel via the DB."""

    def __init__(self, *, run: Run, reporter: MetricReporter, timeout_seconds: float) -> None:
        self.run = run
        self.device = run.device or "cpu"
        self.seed = int(run.config.get("seed", 0) or 0)
        self.reporter = reporter
        self.timeout_seconds = timeout_seconds
        self.started = time.monotonic()
        self._stop = threading.Event()
        self.stop_reason: StopReason | None = None
        self.fraction = 0.0
        self._resumed_fraction: float | None = None
        self._resumed_at = self.started
        self.last_step = 0
        self._last_file: Path | None = None
        self.log_writer: RunLogWriter | None = None

    # --- RunContext ---

    def log(self, name: str, step: int, value: float) -> None:
        """Queue one metric point (no I/O here)."""
        self.reporter.log(name, step, value)
        if step > self.last_step:
            self.last_step = step

    def progress(self, fraction: float) -> None:
        """Remember how far the run is; the monitor thread reports it with the heartbeat."""
        self.fraction = max(0.0, min(1.0, float(fraction)))
        if self._resumed_fraction is None:
            # ETA counts from the first progress report of this attempt (a resumed run starts past 0).
            self._resumed_fraction = self.fraction
            self._resumed_at = time.monotonic()

    def should_stop(self) -> bool:
        """Return True once a cancel was seen, the run was taken away, it ran out of time or the worker stops."""
        if not self._stop.is_set():
            worker_stop = stop_reason()
            if worker_stop is not None:
                self.request_stop(RunStatus.INTERRUPTED, worker_stop)
            elif time.monotonic() - self.started > self.timeout_seconds:
                self.request_stop(RunStatus.FAILED, f"timed out after {self.timeout_seconds:.0f} s")
        return self._stop.is_set()

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Write state atomically, flush metrics up to it, then record path, sha256 and size on the run."""
        # torch only in the worker's pool process that trains: web and beat import this module too.
        import torch

        folder = checkpoint_dir(experiment_id=self.run.experiment_id, run_id=self.run.pk)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"step-{step:09d}.pt"
        tmp = folder / f".{final.name}.tmp"
        torch.save(state, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(final)
        # Points logged up to this step must be durable before the checkpoint is: a later
        # attempt resumes after it and never logs them again.
        self.reporter.flush()
        run_record_checkpoint(
            run_id=self.run.pk,
            path=str(final),
            sha256=file_sha256(final),
            size=final.stat().st_size,
            step=step,
        )
        if self._last_file is not None and self._last_file != final:
            self._last_file.unlink(missing_ok=True)
        self._last_file = final

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """Return the newest intact checkpoint of an earlier attempt of this experiment, or None."""
        import torch  # see save_checkpoint

        earlier = (
            Run.objects.filter(experiment_id=self.run.experiment_id, attempt__lt=self.run.attempt)
            .exclude(checkpoint_path="")
            .order_by("-attempt")
        )
        for prev in earlier:
            path = Path(prev.checkpoint_path)
            if not path.exists() or path.stat().st_size != prev.checkpoint_size:
                logger.warning("checkpoint %s of run %s is missing or truncated", path, prev.pk)
                continue
            if file_sha256(path) != prev.checkpoint_sha256:
                logger.warning("checkpoint %s of run %s does not match its sha256", path, prev.pk)
                continue
            # Our own file, verified against the digest we recorded when writing it; recipes save
            # tensors and plain data only (experiments.recipes.base's save_checkpoint contract).
            state = torch.load(path, map_location="cpu", weights_only=True)
            step = int(prev.checkpoint_step or 0)
            run_record_resume(run_id=self.run.pk, step=step)
            self.last_step = step
            return step, state
        return None

    def dataset_path(self, dataset_id: int) -> str:
        """Return the verified file of a curated dataset version, found under DATASETS_ROOT only."""
        dataset = DatasetVersion.objects.filter(pk=dataset_id).first()
        if dataset is None:
            raise ValueError(f"dataset #{dataset_id} does not exist")
        path = dataset.file_path()
        if file_sha256(path) != dataset.sha256:
            raise ValueError(f"dataset #{dataset_id}: its file does not match its registered sha256")
        return str(path)

    # --- for recipes that start from another run's model (experiments.recipes.dpo.CheckpointHost) ---

    def run_checkpoint_path(self, run_id: int) -> str:
        """Return the verified last checkpoint of run run_id (its own file, under ARTIFACTS_ROOT)."""
        # Only a run of this experiment's project: another tenant's model answers as a missing run.
        run = Run.objects.filter(
            pk=run_id, experiment__project_id=self.run.experiment.project_id or 0
        ).first()
        if run is None:
            raise ValueError(f"run #{run_id} does not exist in this experiment's project")
        if not run.checkpoint_path:
            raise ValueError(f"run #{run_id} saved no checkpoint")
        path = Path(run.checkpoint_path)
        if not path.exists() or path.stat().st_size != run.checkpoint_size:
            raise ValueError(f"run #{run_id}: its checkpoint file is missing or truncated")
        if file_sha256(path) != run.checkpoint_sha256:
            raise ValueError(f"run #{run_id}: its checkpoint does not match its recorded sha256")
        return str(path)

    # --- stages and artifacts (experiments.recipes.base.RunOutputs) ---

    def stage_done(self, name: str, seconds: float) -> None:
        """Record the stage on the run (the experiment page's checklist; a resumed attempt skips it)."""
        run_stage_record(run_id=self.run.pk, name=name, seconds=seconds)

    def completed_stages(self) -> frozenset[str]:
        """Return the stages this attempt and the experiment's earlier attempts completed."""
        return run_completed_stages(run=self.run)

    def save_artifact(self, name: str, data: bytes | str | os.PathLike[str], kind: str = "file") -> None:
        """Store the artifact under the run's folder with its size and sha256."""
        run_artifact_store(run=self.run, name=name, data=data, kind=kind)

    def upstream_checkpoint(self, experiment_id: int) -> dict[str, Any]:
        """Return the final checkpoint of an experiment this one depends on (a pipeline's upstream).

        Only an upstream of this experiment (or of one it retrains), only a succeeded run's
        checkpoint, and only when the file still matches the sha256 recorded when it was written.
        """
        import torch  # see save_checkpoint

        # A retrain keeps its parent's teacher: the edge may belong to an ancestor.
        lineage: list[int] = []
        current = Experiment.objects.filter(pk=self.run.experiment_id).first()
        while current is not None and len(lineage) < 50:
            lineage.append(current.pk)
            current = current.parent
        if not Dependency.objects.filter(
            upstream_id=experiment_id,
            downstream_id__in=lineage,
            # An edge made across projects before they were refused hands nothing over.
            upstream__project_id=self.run.experiment.project_id or 0,
        ).exists():
            raise ValueError(
                f"experiment #{experiment_id} is not a dependency of this experiment or of one it retrains"
            )
        done = (
            Run.objects.filter(experiment_id=experiment_id, status=RunStatus.SUCCEEDED)
            .exclude(checkpoint_path="")
            .order_by("-attempt")
            .first()
        )
        if done is None:
            raise ValueError(f"experiment #{experiment_id} has no succeeded run with a checkpoint")
        path = Path(done.checkpoint_path)
        if not path.exists() or file_sha256(path) != done.checkpoint_sha256:
            raise ValueError(
                f"experiment #{experiment_id}: its final checkpoint is missing or does not match its sha256"
            )
        # The digest says the file is the one recorded, not what wrote it (a script run writes its
        # own): read tensors and plain data only, never objects that would run code here.
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"experiment #{experiment_id}: its final checkpoint holds more than tensors and plain data "
                f"({str(exc).splitlines()[0]})"
            ) from None
        return state

    # --- for the script recipe (experiments.recipes.script.ScriptHost) ---

    def script_roots(self) -> list[str]:
        """Return the folders scripts may run in, from this worker's settings."""
        return [str(root) for root in settings.SCRIPT_ROOTS]

    def script_env(self) -> dict[str, str]:
        """Return the lease, the run's identity and token, and its checkpoint folders as variables."""
        return run_script_env(run=self.run)

    def output(self, stream: str, line: str) -> None:
        """Append one line of the script's output to the run log."""
        if self.log_writer is not None:
            self.log_writer.write(stream, line)

    # --- for the monitor ---

    def request_stop(self, status: str, message: str) -> None:
        """Ask the loop to stop at its next step, remembering why (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = StopReason(status=status, message=message)
        self._stop.set()

    def eta_seconds(self) -> float | None:
        """Return the seconds left, extrapolated from this attempt's pace so far."""
        if self._resumed_fraction is None:
            return None
        done = self.fraction - self._resumed_fraction
        if done <= 0:
            return None
        elapsed = time.monotonic() - self._resumed_at
        return elapsed / done * (1.0 - self.fraction)


def latest_checkpoint_file(*, run: Run) -> Path | None:
    """Return the newest file an earlier attempt of the run's experiment left in its checkpoint folder."""
    earlier = Run.objects.filter(experiment_id=run.experiment_id, attempt__lt=run.attempt).order_by(
        "-attempt"
    )
    for prev in earlier:
        folder = checkpoint_dir(experiment_id=run.experiment_id, run_id=prev.pk)
        files = [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")]
        if files:
            return max(files, key=lambda p: p.stat().st_mtime)
    return None


def run_script_env(*, run: Run) -> dict[str, str]:
    """Return the CRUCIBLE_* variables (and the lease as CUDA_VISIBLE_DEVICES) of a script run."""
    folder = checkpoint_dir(experiment_id=run.experiment_id, run_id=run.pk)
    folder.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint_file(run=run)
    device = run.device or "cpu"
    env = {
        "CUDA_VISIBLE_DEVICES": cuda_visible_devices(device),
        "CRUCIBLE_RUN_ID": str(run.pk),
        "CRUCIBLE_EXPERIMENT_ID": str(run.experiment_id),
        "CRUCIBLE_ATTEMPT": str(run.attempt),
        "CRUCIBLE_DEVICE": device,
        # Speaks for this run only, while it runs: /api/runs/<id>/metrics takes the client's batches.
        "CRUCIBLE_TOKEN": run_token_mint(run_id=run.pk, experiment_id=run.experiment_id),
        "CRUCIBLE_CHECKPOINT_DIR": str(folder),
        "CRUCIBLE_RESUME_FROM": str(resume) if resume is not None else "",
    }
    if settings.CRUCIBLE_API_URL:
        env["CRUCIBLE_API_URL"] = str(settings.CRUCIBLE_API_URL)
    return env


def _record_script_checkpoint(ctx: DbRunContext) -> None:
    """Record the newest file a script left in its checkpoint folder on the run (path, sha256, size)."""
    folder = checkpoint_dir(experiment_id=ctx.run.experiment_id, run_id=ctx.run.pk)
    files = (
        [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")] if folder.exists() else []
    )
    if not files:
        return
    newest = max(files, key=lambda p: p.stat().st_mtime)
    run_record_checkpoint(
        run_id=ctx.run.pk,
        path=str(newest),
        sha256=file_sha256(newest),
        size=newest.stat().st_size,
        step=ctx.last_step,
    )


class RunMonitor(threading.Thread):
    """Heart-beat the run and look for a cancel request (or loss of the run) while the loop trains."""

    def __init__(self, ctx: DbRunContext) -> None:
        super().__init__(name=f"monitor-run-{ctx.run.pk}", daemon=True)
        self.ctx = ctx
        self.done = threading.Event()
        self.system = _system_sampler(ctx)

    def sample_system(self) -> None:
        """Log the run's system metrics at its current step (never lets a failure reach the run)."""
        if self.system is None:
            return
        try:
            self.system.tick()
        except Exception:
            logger.warning("run %s: system metrics sample failed", self.ctx.run.pk, exc_info=True)

    def close_system(self) -> None:
        """Take a last sample at the final step, then let go of NVML."""
        if self.system is None:
            return
        self.sample_system()
        with contextlib.suppress(Exception):
            self.system.sampler.close()
        self.system = None

    def run(self) -> None:
        """Poll every CANCEL_POLL_SECONDS; heart-beat every HEARTBEAT_SECONDS."""
        poll = float(settings.CANCEL_POLL_SECONDS)
        every = float(settings.HEARTBEAT_SECONDS)
        sample_every = float(settings.SYSTEM_METRICS_SECONDS)
        last_beat = 0.0
        last_sample = time.monotonic()
        try:
            while not self.done.wait(poll):
                if self.system is not None and time.monotonic() - last_sample >= sample_every:
                    self.sample_system()
                    last_sample = time.monotonic()
                try:
                    self._check()
                    if time.monotonic() - last_beat >= every:
                        self._beat()
                        last_beat = time.monotonic()
                except Exception:  # a hiccup of the DB must not kill the monitor
                    logger.warning("monitor of run %s: check failed", self.ctx.run.pk, exc_info=True)
        finally:
            connection.close()

    def check_now(self) -> None:
        """Look for a cancel or the run's end once, now (after the loop has returned)."""
        try:
            self._check()
        except Exception:  # the run's own ending path reports a database outage
            logger.warning("run %s: last stop check failed", self.ctx.run.pk, exc_info=True)

    def _check(self) -> None:
        row = (
            Run.objects.filter(pk=self.ctx.run.pk)
            .values("status", "cancel_requested_at", "experiment__state", "last_step")
            .first()
        )
        if row is not None and (row["last_step"] or 0) > self.ctx.last_step:
            # A script's points come in over the API, not through ctx.log: its step is the run's.
            self.ctx.last_step = int(row["last_step"])
        if row is None or row["status"] != RunStatus.RUNNING:
            self.ctx.request_stop("", "the run was ended elsewhere (watchdog)")
        elif row["cancel_requested_at"] is not None or row["experiment__state"] != State.RUNNING:
            self.ctx.request_stop(RunStatus.CANCELLED, "cancel requested")

    def _beat(self) -> None:
        ctx = self.ctx
        eta = ctx.eta_seconds()
        alive = run_heartbeat(
            run_id=ctx.run.pk, progress=ctx.fraction, eta_seconds=eta, last_step=ctx.last_step
        )
        if not alive:
            ctx.request_stop("", "the run was ended elsewhere (watchdog)")
            return
        payload: Progress = {
            "type": "run.progress",
            "experiment_id": ctx.run.experiment_id,
            "run_id": ctx.run.pk,
            "progress": ctx.fraction,
            "eta_seconds": eta,
            "step": ctx.last_step,
        }
        send_to_groups([experiment_group(ctx.run.experiment_id), FLEET_GROUP], dict(payload))


def _system_sampler(ctx: DbRunContext) -> StepSampler | None:
    """Return the sampler of this pool process's tree (and leased GPU), None when switched off or failing."""
    if float(settings.SYSTEM_METRICS_SECONDS) <= 0:
        return None
    try:
        sampler = ProcessTreeSampler(device=ctx.device)
    except Exception:
        logger.warning("run %s: no system metrics", ctx.run.pk, exc_info=True)
        return None
    return StepSampler(sampler, ctx.reporter.log, lambda: ctx.last_step)


def run_execute(*, run_id: int, worker: str) -> str:
    """Claim the run and train its recipe to the end, a stop or an error; return the run's final status."""
    run = run_start(run_id=run_id, worker=worker)
    if run is None:
        return "skipped"
    experiment = run.experiment
    reporter = MetricReporter(experiment_id=experiment.pk, run_id=run.pk).start()
    ctx = DbRunContext(run=run, reporter=reporter, timeout_seconds=float(experiment.timeout_seconds))
    log_writer = RunLogWriter(experiment_id=experiment.pk, run_id=run.pk).start()
    ctx.log_writer = log_writer
    monitor = RunMonitor(ctx)
    monitor.start()
    try:
        recipe = get_spec(experiment.recipe).load()
        with RunOutputCapture(log_writer):
            result = recipe.train(ctx, dict(run.config))
        if experiment.recipe == SCRIPT_RECIPE:
            _record_script_checkpoint(ctx)
    except BaseException as exc:
        monitor.done.set()
        monitor.join(5)
        monitor.close_system()
        _close_quietly(reporter)
        _close_log_quietly(log_writer)
        cause = _platform_cause(exc)
        if cause:
            # Not the training's fault: the next attempt resumes from the last checkpoint.
            _interrupt_quietly(run_id=run.pk, cause=cause, error=f"{type(exc).__name__}: {exc}", ctx=ctx)
        else:
            run_fail(
                run_id=run.pk,
                error=f"{type(exc).__name__}: {exc}",
                traceback=tb.format_exc(),
                component="worker",
            )
        if not isinstance(exc, Exception):
            raise  # SystemExit, KeyboardInterrupt: let the worker handle them
        return RunStatus.INTERRUPTED if cause else RunStatus.FAILED
    monitor.done.set()
    monitor.join(5)
    monitor.close_system()
    # Every point must be in the database before the run (and experiment) say "done".
    reporter.close()
    _close_log_quietly(log_writer, malformed_lines=getattr(result, "malformed_lines", 0))
    stopped = bool(result.stopped)
    if experiment.recipe == SCRIPT_RECIPE and not stopped:
        # A script that uses crucible_client hears of a cancel or an early stop in the answer to
        # its next batch and may exit on its own before the monitor's next poll would SIGTERM it:
        # look once more, so that the run ends as the script saw it (cancelled), not completed.
        monitor.check_now()
        stopped = ctx.stop_reason is not None
    reason = ctx.stop_reason
    if reason is not None and stopped:
        if reason.status == RunStatus.CANCELLED:
            run_end(
                run_id=run.pk,
                status=RunStatus.CANCELLED,
                error=reason.message,
                final_metrics=result.final_metrics,
                progress=ctx.fraction,
                last_step=ctx.last_step,
            )
            return RunStatus.CANCELLED
        if reason.status == RunStatus.FAILED:
            run_fail(run_id=run.pk, error=reason.message, component="worker")
            return RunStatus.FAILED
        if reason.status == RunStatus.INTERRUPTED:
            run_interrupt(
                run_id=run.pk,
                cause=Interruption.SHUTDOWN,
                error=f"{reason.message}; checkpoint at step {ctx.last_step}",
                component="worker",
                progress=ctx.fraction,
                last_step=ctx.last_step,
                final_metrics=result.final_metrics,
            )
            return RunStatus.INTERRUPTED
        return "taken away"
    if not RunStage.objects.filter(run=run).exists():
        # A recipe that records no stages of its own: the whole loop was its training.
        run_stage_record(run_id=run.pk, name="train", seconds=time.monotonic() - ctx.started)
    run_succeed(run_id=run.pk, final_metrics=result.final_metrics, last_step=max(ctx.last_step, result.steps))
    return RunStatus.SUCCEEDED


# Raised when the database or the broker under a run is unreachable: an outage, not a fault
# of the training.
_OUTAGE_ERRORS = (OperationalError, InterfaceError, BrokerError, RedisConnectionError, RedisTimeoutError)


def _platform_cause(exc: BaseException) -> str:
    """Return the interruption an exception stands for, or "" when it is the training's own fault."""
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return Interruption.SHUTDOWN  # the pool process was told to exit before the loop could stop
    if isinstance(exc, _OUTAGE_ERRORS):
        return Interruption.OUTAGE
    return ""


def _interrupt_quietly(*, run_id: int, cause: str, error: str, ctx: DbRunContext) -> None:
    """Record the interruption; if the database itself is down, the watchdog records it later."""
    try:
        run_interrupt(
            run_id=run_id,
            cause=cause,
            error=error,
            component="worker",
            progress=ctx.fraction,
            last_step=ctx.last_step,
        )
    except Exception:
        logger.warning("could not record the interruption of run %s", run_id, exc_info=True)


def _close_log_quietly(writer: RunLogWriter, *, malformed_lines: int = 0) -> None:
    try:
        writer.close(malformed_lines=malformed_lines)
    except Exception:
        logger.warning("closing the log of run %s failed", writer.run_id, exc_info=True)


def _close_quietly(reporter: MetricReporter) -> None:
    try:
        reporter.close()
    except Exception:
        logger.warning("final metric flush of run %s failed", reporter.run_id, exc_info=True)
