"""Figure 7 — scheduler: one scheduling pass over 1,000 queued experiments and 64 GPU workers; GPU idle gap.

Pass (in-process, fresh SQLite, private Redis as the Celery broker), ms per pass of the
project's own scheduler (control.scheduling.scheduler):
- plan: `scheduler_plan()` with all 64 GPUs free — every queued experiment gets its
  decision (a device or the reason it waits);
- tick, all busy: `scheduler_tick()` while every GPU is leased — the steady state of the
  periodic tick, nothing to dispatch;
- tick, dispatching 64: `scheduler_tick()` with all 64 GPUs free — leases, creates runs,
  fires start and sends 64 train tasks.
Baseline for the pass: a plain read of the 1,000 queued rows (the floor of any scheduler
whose queue is the database).

Idle gap (a real Celery worker, prefork, two processes as `make run` starts it, one CPU
slot standing in for a GPU since this machine has none): digits runs queued back to back;
the gap is the next run's started_at minus the previous run's finished_at, through the
real path (run end -> lease release -> scheduler tick task -> dispatch -> train task ->
run start). Goals: <= 10 ms per pass, <= 1 s gap.

Cost-aware ordering (a simulated workload, no database): a sweep of 40 digits-like configs
(hidden x lr x epochs; wide ones on a GPU at $3/h, the rest on a CPU slot at $0.20/h; a
config's accuracy and run time follow from its parameters), queued at once in a random order
in one class, run on 4 slots. The next run is picked by control/scheduling/ordering.py's own
estimator and rank (improvement_per_dollar, history = the runs finished so far, cost = the
recipe's mean run time so far times the device's price, as admission estimates it) or, the
baseline, first in first out. Figures: hours and dollars until the workload's best config has
trained, over many arrival orders.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from bench.common import (
    Goal,
    base_parser,
    bench_env,
    database_label,
    emit,
    emit_failure,
    emit_latency,
    figure,
    note,
    repeat,
    skipped,
)

FIGURES = (
    "scheduler_plan_ms",
    "scheduler_tick_busy_ms",
    "scheduler_tick_dispatch_ms",
    "scheduler_cost_aware_hours_to_best",
    "scheduler_cost_aware_usd_to_best",
    "scheduler_fair_share_pct",
    "scheduler_idle_gap_s",
)
GPU_NAME = "NVIDIA H100 80GB HBM3"


def make_fleet(workers: int) -> list[Any]:
    """Create `workers` heart-beating workers with one 80 GB GPU each; return the devices."""
    from django.utils import timezone

    from control.models import Device, DeviceKind, Worker
    from control.scheduling.inventory import worker_queue_name

    now = timezone.now()
    rows = [
        Worker(
            hostname=f"gpu-{i:03d}@bench", queue=worker_queue_name(f"gpu-{i:03d}@bench"), last_heartbeat=now
        )
        for i in range(workers)
    ]
    Worker.objects.bulk_create(rows)
    devices = [
        Device(worker=w, kind=DeviceKind.GPU, index=0, name=GPU_NAME, memory_total_mb=81559)
        for w in Worker.objects.filter(hostname__endswith="@bench")
    ]
    return Device.objects.bulk_create(devices)


def make_queue(count: int) -> list[int]:
    """Create `count` queued GPU experiments of mixed class, priority and age; return their ids."""
    from datetime import timedelta

    from django.utils import timezone

    from experiments.choices import PriorityClass, State
    from experiments.models import Experiment

    now = timezone.now()
    classes = list(PriorityClass.values)
    rows = [
        Experiment(
            name=f"queued {i}",
            recipe="digits",
            config={},
            priority_class=classes[i % len(classes)],
            priority=i % 11,
            gpus=1 + (i % 17 == 0),  # a few want two GPUs (they wait: one GPU per worker here)
            memory_gb=float(i % 5) * 8,
            state=State.QUEUED,
            queued_at=now - timedelta(seconds=i),
        )
        for i in range(count)
    ]
    return [e.pk for e in Experiment.objects.bulk_create(rows)]


def reset_queue(ids: list[int]) -> None:
    """Put the experiments back in the queue and free the fleet (between dispatch repetitions)."""
    from control.models import Device
    from experiments.choices import State
    from experiments.models import Experiment, Run, TransitionLog

    Device.objects.update(leased_run=None, leased_at=None)
    Run.objects.filter(experiment_id__in=ids).delete()
    TransitionLog.objects.filter(experiment_id__in=ids).delete()
    # The state is protected on instances; a queryset update is the bench's reset, not a transition.
    Experiment.objects.filter(pk__in=ids).update(state=State.QUEUED)


def occupy_fleet() -> None:
    """Lease every GPU to a running run of its own (so a tick finds nothing free)."""
    from control.models import Device
    from experiments.choices import RunStatus, State
    from experiments.models import Experiment, Run

    for device in Device.objects.all():
        busy = Experiment.objects.create(
            name=f"busy {device.pk}", recipe="digits", gpus=1, state=State.RUNNING
        )
        run = Run.objects.create(
            experiment=busy, attempt=1, status=RunStatus.RUNNING, worker=device.worker.hostname
        )
        Device.objects.filter(pk=device.pk).update(leased_run=run)


def measure_pass(*, queued: int, workers: int, repetitions: int) -> dict[str, Any]:
    """Return the samples of the three pass figures and of the baseline read."""
    from control.scheduling.scheduler import scheduler_plan, scheduler_tick
    from experiments.choices import State
    from experiments.models import Experiment

    make_fleet(workers)
    ids = make_queue(queued)

    def timed(fn: Any) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000

    baseline = repeat(
        lambda: timed(lambda: list(Experiment.objects.filter(state=State.QUEUED))), repetitions=repetitions
    )
    plan = repeat(lambda: timed(scheduler_plan), repetitions=repetitions)
    decided = scheduler_plan()
    granted = sum(1 for d in decided.decisions if d.devices)

    dispatch: list[float] = []
    started_runs = 0
    for _ in range(repetitions + 1):
        reset_queue(ids)
        started = time.perf_counter()
        runs = scheduler_tick()
        elapsed = (time.perf_counter() - started) * 1000
        started_runs = len(runs)
        dispatch.append(elapsed)
    dispatch = dispatch[1:]

    reset_queue(ids)
    occupy_fleet()
    busy = repeat(lambda: timed(scheduler_tick), repetitions=repetitions)
    return {
        "baseline": baseline,
        "plan": plan,
        "busy": busy,
        "dispatch": dispatch,
        "granted": granted,
        "dispatched": started_runs,
    }


FAIR_SHARE_GPUS = 8
# Two projects of equal share, each with more work than a day holds: short jobs queued first
# (they would take every GPU in plain urgency order), long jobs an hour later.
FAIR_SHARE_JOBS = {"short": (400, 30), "long": (400, 90)}  # project -> (jobs, minutes each)


def fair_share_day(*, fair: bool) -> dict[str, float]:
    """Simulate a day of the real scheduler on FAIR_SHARE_GPUS GPUs; return each project's % of GPU time.

    The planning is the project's own (`scheduler_plan`, with fair share on or off); leasing and
    finishing are plain writes standing in for workers, on a simulated clock.
    """
    from datetime import timedelta
    from unittest import mock

    from django.utils import timezone

    from control.models import Device, Worker
    from control.scheduling import fairshare
    from control.scheduling.scheduler import scheduler_plan
    from experiments.choices import RunStatus, State
    from experiments.models import Experiment, Project, Run

    Device.objects.update(leased_run=None, leased_at=None, reserved=False)
    Run.objects.all().delete()
    Experiment.objects.all().delete()
    # Keep FAIR_SHARE_GPUS devices in service; the rest are reserved.
    keep = list(Device.objects.order_by("pk").values_list("pk", flat=True)[:FAIR_SHARE_GPUS])
    Device.objects.exclude(pk__in=keep).update(reserved=True)
    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    minutes: dict[int, int] = {}
    for offset, (slug, (jobs, length)) in enumerate(FAIR_SHARE_JOBS.items()):
        project, _ = Project.objects.get_or_create(
            slug=slug, defaults={"name": slug.capitalize(), "share": 1}
        )
        minutes[project.pk] = length
        Experiment.objects.bulk_create(
            Experiment(
                name=f"{slug} {i}",
                recipe="digits",
                gpus=1,
                project=project,
                state=State.QUEUED,
                queued_at=start - timedelta(hours=1 - offset, seconds=-i),
            )
            for i in range(jobs)
        )
    gpu_seconds = {pid: 0.0 for pid in minutes}
    running: list[tuple[Any, int, int]] = []  # (ends at, run id, project id)
    now, end = start, start + timedelta(days=1)
    plain = mock.patch.object(fairshare, "fair_order", side_effect=list) if not fair else None
    if plain is not None:
        plain.start()
    try:
        while now < end:
            Worker.objects.update(last_heartbeat=now, online=True)
            for decision in scheduler_plan(now=now).decisions:
                if not decision.devices:
                    continue
                experiment = Experiment.objects.get(pk=decision.experiment.pk)
                Experiment.objects.filter(pk=experiment.pk).update(state=State.RUNNING)
                run = Run.objects.create(
                    experiment=experiment, attempt=1, status=RunStatus.RUNNING, started_at=now, worker="sim"
                )
                Device.objects.filter(pk__in=[d.pk for d in decision.devices]).update(leased_run=run)
                duration = timedelta(minutes=minutes[experiment.project_id])
                running.append((now + duration, run.pk, experiment.project_id))
            if not running:
                break
            running.sort()
            now = running[0][0]
            while running and running[0][0] <= now:
                finished_at, run_id, project_id = running.pop(0)
                gpu_seconds[project_id] += (
                    min(finished_at, end) - (finished_at - timedelta(minutes=minutes[project_id]))
                ).total_seconds()
                Run.objects.filter(pk=run_id).update(status=RunStatus.SUCCEEDED, finished_at=finished_at)
                Device.objects.filter(leased_run_id=run_id).update(leased_run=None)
                Experiment.objects.filter(runs__pk=run_id).update(state=State.COMPLETED)
        # Runs still going at midnight count up to it.
        for finished_at, _, project_id in running:
            started = finished_at - timedelta(minutes=minutes[project_id])
            gpu_seconds[project_id] += max(0.0, (end - started).total_seconds())
    finally:
        if plain is not None:
            plain.stop()
        Device.objects.update(leased_run=None, reserved=False)
    total = sum(gpu_seconds.values()) or 1.0
    slugs = dict(Project.objects.filter(pk__in=gpu_seconds).values_list("pk", "slug"))
    return {slugs[pid]: round(100 * seconds / total, 2) for pid, seconds in gpu_seconds.items()}


def main() -> None:
    """Measure the scheduling pass and the idle gap; print four figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queued", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--gap-runs", type=int, default=None, help="back-to-back runs for the idle gap")
    parser.add_argument("--gap", action="store_true", help="measure the idle gap in --quick mode too")
    parser.add_argument("--no-gap", action="store_true", help="only the pass figures (no Celery worker)")
    args = parser.parse_args()
    queued = args.queued or (100 if args.quick else 1000)
    workers = args.workers or (8 if args.quick else 64)
    gap_runs = args.gap_runs or (2 if args.quick else 6)
    repetitions = args.repetitions or (2 if args.quick else 7)

    with bench_env(
        database=args.database,
        WORKER_CPU_SLOTS="1",
        HEARTBEAT_SECONDS="0.5",
        METRIC_FLUSH_SECONDS="0.1",
    ) as env:
        note(f"scheduler: pass over {queued} queued, {workers} GPU workers")
        samples = measure_pass(queued=queued, workers=workers, repetitions=repetitions)
        extra = {
            "queued": queued,
            "gpu_workers": workers,
            "granted_by_plan": samples["granted"],
            "dispatched_by_tick": samples["dispatched"],
            "database": database_label(args.database),
        }
        base_name = f"plain read of the {queued} queued rows"
        goals = {
            "plan": Goal("<= 10 ms per pass", median_max=10.0),
            "busy": Goal("<= 10 ms per pass", median_max=10.0),
            "dispatch": Goal("<= 50 ms per pass dispatching every free GPU", median_max=50.0),
        }
        for name, key in zip(FIGURES[:3], ("plan", "busy", "dispatch"), strict=True):
            emit_latency(
                name=name,
                samples=samples[key],
                goal=goals[key],
                baseline_name=base_name,
                baseline_samples=samples["baseline"],
                extra=extra,
            )
        orders = 8 if args.quick else 50
        note(f"scheduler: cost-aware vs FIFO on a simulated sweep, {orders} arrival orders")
        simulated = simulate_orderings(orders=orders)
        for name, key, unit in (
            (FIGURES[3], "hours", "h"),
            (FIGURES[4], "usd", "USD"),
        ):
            emit(
                figure(
                    name=name,
                    unit=unit,
                    samples=simulated["cost_aware"][key],
                    goal=Goal("the best model sooner / cheaper than FIFO within the class", ratio_min=1.0),
                    higher_is_better=False,
                    baseline_name="FIFO within the class",
                    baseline_samples=simulated["fifo"][key],
                    extra=simulated["extra"],
                )
            )
        note(f"scheduler: a simulated day on {FAIR_SHARE_GPUS} GPUs, two projects of equal share")
        fair = fair_share_day(fair=True)
        plain = fair_share_day(fair=False)
        emit(
            figure(
                name="scheduler_fair_share_pct",
                unit="% of GPU time",
                samples=[fair["short"]],
                goal=Goal(
                    "50 +/- 5 % of the GPU time to each of two equal-share projects",
                    median_min=45.0,
                    median_max=55.0,
                ),
                higher_is_better=False,
                extra={
                    "gpu_time_pct_by_project": fair,
                    "without_fair_share_pct_by_project": plain,
                    "jobs": {slug: {"count": n, "minutes": m} for slug, (n, m) in FAIR_SHARE_JOBS.items()},
                    "gpus": FAIR_SHARE_GPUS,
                },
            )
        )
        if args.no_gap:
            emit(skipped(FIGURES[-1], "not measured: --no-gap"))
            return
        if args.quick and not args.gap:
            emit(skipped(FIGURES[-1], "not measured in --quick mode (it starts a Celery worker); pass --gap"))
            return
        note(f"scheduler: idle gap over {gap_runs} back-to-back runs on a real worker")
        gaps, gap_extra = idle_gap(env, runs=gap_runs)
        emit(
            figure(
                name=FIGURES[-1],
                unit="s",
                samples=gaps,
                goal=Goal("<= 1 s from a run's end to the next run's start", median_max=1.0),
                higher_is_better=False,
                extra=gap_extra,
            )
        )


SLOTS = 4
CPU_USD_PER_HOUR, GPU_USD_PER_HOUR = 0.20, 3.00


def sweep(rng: Any) -> list[dict[str, Any]]:
    """Return the simulated workload: each config with its true accuracy, run hours and price."""
    import math

    jobs = []
    for hidden in (32, 64, 128, 256, 512):
        for lr in (0.0003, 0.001, 0.003, 0.01):
            for epochs in (10, 30):
                accuracy = (
                    0.985
                    - 0.35 / math.sqrt(hidden)
                    - 0.03 * abs(math.log10(lr / 0.003))
                    - (0.012 if epochs == 10 else 0.0)
                    + rng.gauss(0.0, 0.002)
                )
                gpu = hidden >= 256
                hours = (0.02 + 0.0004 * hidden) * epochs / 10 * (0.5 if gpu else 1.0)
                jobs.append(
                    {
                        "config": {"hidden": hidden, "lr": lr, "epochs": epochs},
                        "accuracy": accuracy,
                        "hours": hours,
                        "price": GPU_USD_PER_HOUR if gpu else CPU_USD_PER_HOUR,
                    }
                )
    rng.shuffle(jobs)  # the arrival order: FIFO runs them in this order
    return jobs


def simulate(jobs: list[dict[str, Any]], *, cost_aware: bool) -> tuple[float, float]:
    """Run the workload on SLOTS slots; return (hours, dollars) until its best config finished training."""
    from control.scheduling.ordering import Estimate, PastRun, expected_improvement, rank_key

    best = max(range(len(jobs)), key=lambda i: jobs[i]["accuracy"])
    waiting = list(range(len(jobs)))
    running: list[tuple[float, int, float]] = []  # (end, job, start)
    finished: list[tuple[int, float, float]] = []  # (job, start, end)
    now = 0.0
    keys = ["hidden", "lr", "epochs"]

    def pick() -> int:
        if not cost_aware:
            return waiting[0]
        past = [PastRun(jobs[j]["config"], jobs[j]["accuracy"]) for j, _s, _e in finished]
        mean_hours = sum(e - s for _j, s, e in finished) / len(finished) if finished else 1.0
        ranked = []
        for position, j in enumerate(waiting):
            gain, _ = expected_improvement(jobs[j]["config"], past, better="higher", keys=keys)
            estimate = Estimate(
                improvement=gain, cost_usd=mean_hours * jobs[j]["price"], metric="accuracy", basis=""
            )
            ranked.append((rank_key("improvement_per_dollar", estimate, position), j))
        return min(ranked)[1]

    while True:
        while waiting and len(running) < SLOTS:
            j = pick()
            waiting.remove(j)
            running.append((now + jobs[j]["hours"], j, now))
        running.sort()
        end, j, start = running.pop(0)
        now = end
        finished.append((j, start, end))
        if j == best:
            spent = sum((min(e, now) - s) * jobs[k]["price"] for k, s, e in finished)
            spent += sum((now - s) * jobs[k]["price"] for _e, k, s in running)
            return now, spent


def simulate_orderings(*, orders: int) -> dict[str, Any]:
    """Return hours and dollars to the best model per arrival order, cost-aware and FIFO."""
    import random

    out: dict[str, Any] = {"cost_aware": {"hours": [], "usd": []}, "fifo": {"hours": [], "usd": []}}
    for seed in range(orders):
        jobs = sweep(random.Random(seed))
        for mode, cost_aware in (("cost_aware", True), ("fifo", False)):
            hours, usd = simulate(jobs, cost_aware=cost_aware)
            out[mode]["hours"].append(round(hours, 4))
            out[mode]["usd"].append(round(usd, 4))
    out["extra"] = {
        "workload": "40 configs (hidden 32-512 x lr 3e-4-1e-2 x epochs 10/30), 4 slots, one class",
        "arrival_orders": orders,
        "cpu_usd_per_hour": CPU_USD_PER_HOUR,
        "gpu_usd_per_hour": GPU_USD_PER_HOUR,
        "ordering": "improvement_per_dollar (control/scheduling/ordering.py)",
    }
    return out


def idle_gap(env: Any, *, runs: int) -> tuple[list[float], dict[str, Any]]:
    """Run `runs` tiny digits experiments back to back on one slot of a real worker; return the gaps (s)."""
    from control.models import Worker
    from experiments.actors import Actor
    from experiments.choices import RunStatus
    from experiments.models import Experiment, Run
    from experiments.services import experiment_create, experiment_transition

    Experiment.objects.all().delete()
    Worker.objects.all().delete()
    node = env.start_celery_worker(name="bench-gap", queues=["control"], pool="prefork", concurrency=2)
    deadline = time.monotonic() + 60
    while not Worker.objects.filter(hostname=node, online=True).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never heart-beat its slot")
        time.sleep(0.1)
    actor = Actor.system("bench")
    ids = []
    for i in range(runs):
        experiment = experiment_create(
            name=f"gap {i}", recipe="digits", config={"epochs": 2}, priority=10 - i % 10
        )
        ids.append(experiment.pk)
    for pk in ids:
        experiment_transition(experiment_id=pk, event="queue", actor=actor)
    deadline = time.monotonic() + 60 + 20 * runs
    while Run.objects.filter(experiment_id__in=ids, status=RunStatus.SUCCEEDED).count() < runs:
        failed = Run.objects.filter(experiment_id__in=ids).exclude(
            status__in=(RunStatus.SUCCEEDED, RunStatus.STARTING, RunStatus.RUNNING)
        )
        if failed.exists():
            run = failed.first()
            assert run is not None
            raise RuntimeError(f"run {run.pk} ended {run.status}: {run.error[:300]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the back-to-back runs did not all finish in time")
        time.sleep(0.2)
    done = list(Run.objects.filter(experiment_id__in=ids).order_by("started_at"))
    gaps: list[float] = []
    for previous, following in itertools.pairwise(done):
        assert previous.finished_at is not None and following.started_at is not None
        gaps.append((following.started_at - previous.finished_at).total_seconds())
    durations = [
        (r.finished_at - r.started_at).total_seconds() for r in done if r.finished_at and r.started_at
    ]
    return gaps, {
        "runs": runs,
        "run_seconds_median": round(sorted(durations)[len(durations) // 2], 2),
        "slot": "one CPU slot of a real Celery worker (prefork, 2 processes) standing in for a GPU",
        "baseline_note": "none: the gap has no comparable outside measurement; the goal is absolute",
    }


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
