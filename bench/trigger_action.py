"""Figure 6 — trigger -> action: a metric crossing a policy threshold until the action has executed.

An early-stop policy record (mode auto, no cooldown): when the latest `loss` is above 10,
cancel the experiment. A running experiment logs through the project's `MetricReporter`
(background flusher, the settings' flush interval); after a few points below the
threshold (so the policy is armed), one point crosses it. The latency runs from the time
that point was logged (its `wall_time`) until the cancel action finished
(`ActionExecution.finished_at`), through the real path: flush -> bulk insert -> engine
hook in the flusher thread -> trigger -> action task on the control queue -> a real
Celery worker (prefork, two processes, as `make run` starts it) -> cancel transition.
Each crossing uses a fresh experiment; the figure's median is p50 over the crossings, and
its p99 is judged against the goal. Baseline: the flush interval (a point waits up to one
interval in the reporter before anything can see it). Goal: p99 <= 1 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Goal, base_parser, bench_env, emit, emit_failure, figure, note, percentile, skipped

FIGURE = "trigger_action_ms"
THRESHOLD = 10.0


def engine_hooked() -> str | None:
    """Return None when the engine evaluates policies on metric flushes, else why it does not."""
    from control.policies.listeners import policies_evaluate_on_metrics
    from experiments.effects import effects_installed

    if policies_evaluate_on_metrics not in effects_installed().metrics_flushed:
        return "the effect table does not hand metric batches to the policies engine"
    return None


def make_policy() -> None:
    """Create the early-stop policy: latest loss above the threshold -> cancel."""
    from control.policies.models import Policy, PolicyAction, PolicyCondition, PolicyKind, PolicyMode

    policy = Policy.objects.create(
        name="bench_loss_guard",
        kind=PolicyKind.EARLY_STOP,
        mode=PolicyMode.AUTO,
        cooldown_seconds=0,
        max_fires_per_hour=100_000,
    )
    condition = PolicyCondition(
        policy=policy, kind="metric", metric="loss", aggregate="latest", operator=">", threshold=THRESHOLD
    )
    condition.full_clean()
    condition.save()
    action = PolicyAction(policy=policy, kind="cancel", params={})
    action.full_clean()
    action.save()


def one_crossing(index: int, *, timeout: float) -> float:
    """Start an experiment, log below then above the threshold; return ms until the cancel finished."""
    from control.policies.models import ActionExecution, ExecutionStatus
    from experiments.actors import Actor
    from experiments.choices import State
    from experiments.models import Experiment
    from experiments.runs.reporting import MetricReporter
    from experiments.runs.services import run_create
    from experiments.services import experiment_create, experiment_transition

    actor = Actor.system("bench")
    # One GPU wanted and none exists: the scheduler never dispatches it; we start it ourselves.
    experiment = experiment_create(name=f"guarded {index}", recipe="digits", gpus=1)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=actor)
    run = run_create(experiment=experiment, worker="bench", device="cpu", task_id=f"bench-{index}")
    experiment_transition(experiment_id=experiment.pk, event="start", actor=actor)
    with MetricReporter(experiment_id=experiment.pk, run_id=run.pk) as reporter:
        for step in range(5):
            reporter.log("loss", step, 1.0)
        deadline = time.monotonic() + timeout
        while reporter.points_written < 5:
            if time.monotonic() > deadline:
                raise RuntimeError("the reporter did not flush the warm-up points")
            time.sleep(0.005)
        time.sleep(0.05)  # the engine has seen a passing-below batch: the policy is armed
        crossed_at = time.time()
        reporter.log("loss", 5, THRESHOLD * 2)
        while True:
            execution: Any = (
                ActionExecution.objects.filter(trigger__experiment=experiment, kind="cancel")
                .exclude(status__in=(ExecutionStatus.PENDING, ExecutionStatus.RUNNING))
                .first()
            )
            if execution is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no cancel action finished for #{experiment.pk} within {timeout:.0f} s")
            time.sleep(0.005)
    if execution.status != ExecutionStatus.SUCCEEDED:
        raise RuntimeError(f"the cancel action failed: {execution.error[:300]}")
    if Experiment.objects.get(pk=experiment.pk).state != State.CANCELLED:
        raise RuntimeError(f"#{experiment.pk} is not cancelled after its cancel action")
    return (execution.finished_at.timestamp() - crossed_at) * 1000


def main() -> None:
    """Measure crossings against a real worker; print the figure (or why it cannot be measured)."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    args = parser.parse_args()
    crossings = args.repetitions or (2 if args.quick else 20)
    with bench_env() as env:
        from django.conf import settings

        why = engine_hooked()
        if why is not None:
            emit(skipped(FIGURE, why))
            return
        flush_ms = float(settings.METRIC_FLUSH_SECONDS) * 1000
        make_policy()
        env.start_celery_worker(name="bench-control", queues=["control"], pool="prefork", concurrency=2)
        note(f"trigger_action: {crossings} crossings (+1 warm-up), flush every {flush_ms:.0f} ms")
        one_crossing(0, timeout=30)
        samples = [one_crossing(i, timeout=30) for i in range(1, crossings + 1)]
    p99 = percentile(samples, 99)
    line = figure(
        name=FIGURE,
        unit="ms",
        samples=samples,
        goal=Goal("p99 <= 1 s (the median here is p50)"),
        higher_is_better=False,
        baseline_name="the flush interval (the time a point may wait in the reporter's buffer)",
        baseline_samples=[flush_ms],
        extra={
            "p50_ms": round(percentile(samples, 50), 1),
            "p99_ms": round(p99, 1),
            "crossings": crossings,
            "flush_interval_ms": flush_ms,
            "path": "flush -> insert -> engine (flusher thread) -> trigger -> control queue -> worker -> cancel",
        },
    )
    line["meets_goal"] = p99 <= 1000.0
    emit(line)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure([FIGURE], exc)
        raise
