"""The GPU-aware priority scheduler: the database is the queue, Celery only carries the run.

Order: priority class, then priority, then age, where waiting earns priority (aging) so
that nothing starves; while a cost policy sets priority_by, expected improvement per dollar
within each class (ordering.py). A device is leased only on a worker whose host has the
experiment's CPU cores and memory free (placement.py), with a conditional UPDATE, so two
schedulers (two beat ticks, a tick and a transition hook) never lease the same device.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, OperationalError, connections, router, transaction
from django.db.models import Case, ExpressionWrapper, FloatField, Func, Q, QuerySet, Value, When
from django.db.models.functions import Cast, Coalesce, Greatest
from django.urls import reverse
from django.utils import timezone
from django_fsm import ConcurrentTransition

import control.scheduling.cost as cost
from control.dispatch import tasks_send
from control.scheduling import fairshare, ordering, placement, quotas
from control.scheduling.models import Device, DeviceKind
from experiments.actors import Actor
from experiments.choices import LIVE_RUN_STATUSES, PRIORITY_CLASS_RANK, Executor, PriorityClass, State
from experiments.models import EVALUATION_PENDING, Experiment, Run
from experiments.models.bulk import case_by_pk
from experiments.runs.services import RunStart, run_create, runs_create_many, runs_next_attempts
from experiments.services import TransitionRefused, experiment_transition, experiments_transition_many

logger = logging.getLogger(__name__)

# Priorities run 0-10; one class outranks the next by a whole priority span, so with no
# aging the order is class first, then priority.
_CLASS_SPAN = 11


class _EpochSeconds(Func):
    """Seconds since 1970 of a datetime column: SQLite stores text, PostgreSQL a timestamp."""

    output_field = FloatField()
    template = "EXTRACT(EPOCH FROM %(expressions)s)"

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # julianday() reads Django's 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC); day 2440587.5 is 1970-01-01.
        return self.as_sql(
            compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)", **extra
        )


def _aging(aging_per_minute: float | None) -> float:
    return float(settings.SCHEDULER_AGING_PER_MINUTE if aging_per_minute is None else aging_per_minute)


def experiment_urgency(
    experiment: Experiment | QueuedExperiment, *, now: datetime, aging_per_minute: float | None = None
) -> float:
    """Return the experiment's scheduling score (higher goes first): class, priority, then aging."""
    aging = _aging(aging_per_minute)
    rank = PRIORITY_CLASS_RANK.get(PriorityClass(experiment.priority_class), len(PRIORITY_CLASS_RANK))
    waited_min = max(0.0, (now - (experiment.queued_at or experiment.created_at)).total_seconds() / 60.0)
    return (len(PRIORITY_CLASS_RANK) - rank) * _CLASS_SPAN + experiment.priority + aging * waited_min


def urgency_expression(*, now: datetime, aging_per_minute: float | None = None) -> Any:
    """Return experiment_urgency as a database expression, so the database orders the queue."""
    aging = _aging(aging_per_minute)
    class_score = Case(
        *[
            When(priority_class=str(cls), then=Value(float((len(PRIORITY_CLASS_RANK) - rank) * _CLASS_SPAN)))
            for cls, rank in PRIORITY_CLASS_RANK.items()
        ],
        default=Value(0.0),
        output_field=FloatField(),
    )
    waited_s = Greatest(
        Value(0.0),
        Value(now.timestamp()) - _EpochSeconds(Coalesce("queued_at", "created_at")),
        output_field=FloatField(),
    )
    return ExpressionWrapper(
        class_score + Cast("priority", FloatField()) + Value(aging / 60.0) * waited_s,
        output_field=FloatField(),
    )


class QueuedExperiment:
    """A queued experiment as the scheduler reads it: the columns it decides on, and its score.

    Built from the database's raw row: datetimes (text on SQLite) and tags (JSON text) are
    decoded only when read, which a pass over a thousand rows mostly never does.
    """

    __slots__ = (
        "_created_at",
        "_not_before",
        "_queued_at",
        "_tags",
        "cpu_cores",
        "gpu_type",
        "gpus",
        "host_memory_gb",
        "memory_gb",
        "name",
        "pk",
        "priority",
        "priority_class",
        "project_id",
        "recipe",
        "timeout_seconds",
        "urgency",
    )

    def __init__(self, *row: Any) -> None:
        (
            self.pk,
            self.name,
            self.priority_class,
            self.priority,
            self.gpus,
            self.gpu_type,
            self.memory_gb,
            self.recipe,
            self.timeout_seconds,
            self._tags,
            self._queued_at,
            self._created_at,
            self._not_before,
            self.cpu_cores,
            self.host_memory_gb,
            self.project_id,
            self.urgency,
        ) = row
        self.memory_gb = float(self.memory_gb)
        self.host_memory_gb = float(self.host_memory_gb)

    @property
    def id(self) -> int:
        return int(self.pk)

    @property
    def tags(self) -> list[str]:
        tags = json.loads(self._tags) if isinstance(self._tags, str) else self._tags
        return list(tags or [])

    @property
    def queued_at(self) -> datetime | None:
        return _as_datetime(self._queued_at)

    @property
    def created_at(self) -> datetime:
        created = _as_datetime(self._created_at)
        assert created is not None
        return created

    @property
    def not_before(self) -> datetime | None:
        return None if self._not_before is None else _as_datetime(self._not_before)

    def get_absolute_url(self) -> str:
        return reverse("experiments:detail", args=[self.pk])

    def get_priority_class_display(self) -> str:
        return str(PriorityClass(self.priority_class).label)


def _as_datetime(raw: Any) -> datetime | None:
    """Return a column as an aware datetime: PostgreSQL's driver gives one, SQLite naive UTC (or its text)."""
    if raw is None:
        return None
    value = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_QUEUED_COLUMNS = (
    "pk",
    "name",
    "priority_class",
    "priority",
    "gpus",
    "gpu_type",
    "memory_gb",
    "recipe",
    "timeout_seconds",
    "tags",
    "queued_at",
    "created_at",
    "not_before",
    "cpu_cores",
    "host_memory_gb",
    "project_id",  # its project's GPU prices
)


def queued_in_order(
    *, now: datetime | None = None, aging_per_minute: float | None = None
) -> list[QueuedExperiment]:
    """Return the queued experiments, most urgent first (ties: longest waiting first).

    The database scores and orders them and the rows come back raw: at a thousand queued,
    building model instances (or converting every column) cost more than the query.
    """
    now = now or timezone.now()
    alias = router.db_for_read(Experiment)
    sql, compiled = _queued_sql(alias, _aging(aging_per_minute))
    # The statement is the same every pass but for the moment the waiting is counted from.
    stamp = now.timestamp()
    params = [stamp if p == _NOW_PLACEHOLDER else p for p in compiled]
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        return [QueuedExperiment(*row) for row in cursor.fetchall()]


# Stands for "now" in the compiled queue statement (no real timestamp or score equals it).
_NOW_PLACEHOLDER = -987654321.125
_PLACEHOLDER_NOW = datetime.fromtimestamp(_NOW_PLACEHOLDER, tz=UTC)
_queued_sql_cache: dict[tuple[str, str, float], tuple[str, tuple[Any, ...]]] = {}


def _queued_sql(alias: str, aging: float) -> tuple[str, tuple[Any, ...]]:
    """Return the queue statement compiled once per database and aging rate.

    Compiling it (the class CASE, the aging expression, the ordering) cost Django more than
    the database spends running it; only "now" changes between passes.
    """
    key = (alias, connections[alias].vendor, aging)
    cached = _queued_sql_cache.get(key)
    if cached is None:
        queryset = (
            Experiment.objects.using(alias)
            .filter(state=State.QUEUED)
            # An external experiment waits for its client to start a run: no device is ever leased for it.
            .exclude(executor=Executor.EXTERNAL)
            .annotate(urgency=urgency_expression(now=_PLACEHOLDER_NOW, aging_per_minute=aging))
            .order_by("-urgency", Coalesce("queued_at", "created_at"), "pk")
            .values_list(*_QUEUED_COLUMNS, "urgency")
        )
        sql, params = queryset.query.sql_with_params()
        if _NOW_PLACEHOLDER not in params:  # "now" written into the SQL would stay fixed
            raise RuntimeError("the queue statement does not take the time as a parameter")
        cached = _queued_sql_cache[key] = (sql, tuple(params))
    return cached


def _reserved_by_settings(device: Device) -> bool:
    names = set(settings.SCHEDULER_RESERVED_DEVICES)
    if not names:
        return False
    return (
        bool(device.uuid and device.uuid in names)
        or f"{device.worker.hostname}/{device.kind}{device.index}" in names
    )


def usable_devices(*, now: datetime | None = None) -> QuerySet[Device]:
    """Return devices of live workers (heart-beating, online, not shutting down), leased or not."""
    now = now or timezone.now()
    fresh = now - timedelta(seconds=settings.WORKER_OFFLINE_SECONDS)
    return Device.objects.select_related("worker", "leased_run").filter(
        worker__online=True, worker__last_heartbeat__gte=fresh, worker__stopping_since__isnull=True
    )


def device_fits(experiment: Experiment | QueuedExperiment, device: Device) -> bool:
    """Return True when the device is the kind, type and size the experiment asks for."""
    if experiment.gpus == 0:
        return device.kind == DeviceKind.CPU
    if device.kind != DeviceKind.GPU:
        return False
    if experiment.gpu_type and experiment.gpu_type.lower() not in device.name.lower():
        return False
    return device.memory_total_gb + 1e-9 >= experiment.memory_gb


def _needs(experiment: Experiment | QueuedExperiment) -> str:
    if experiment.gpus == 0:
        return "a CPU slot"
    what = f"{experiment.gpus} GPU{'s' if experiment.gpus > 1 else ''}"
    if experiment.gpu_type:
        what += f" of type {experiment.gpu_type}"
    if experiment.memory_gb:
        what += f" with ≥ {experiment.memory_gb:g} GiB"
    return what + (" on one worker" if experiment.gpus > 1 else "")


def _pick(
    experiment: Experiment | QueuedExperiment,
    free: list[Device],
    hosts: dict[int, placement.HostFree] | None = None,
) -> list[Device]:
    """Return the devices to lease (all on one worker, whose host has the cores and memory), or [] when none fit."""

    def fits(device: Device) -> bool:
        return device_fits(experiment, device) and (
            hosts is None or placement.host_fits(experiment, hosts.get(device.worker_id))
        )

    wanted = max(1, experiment.gpus)
    if wanted == 1:
        # The first worker with a fitting device wins, as below; only its devices are compared
        # (a pass places up to one experiment per free device: checking every device each time
        # was the plan's largest cost).
        first = next((d for d in free if fits(d)), None)
        if first is None:
            return []
        same = [d for d in free if d.worker_id == first.worker_id and (d is first or fits(d))]
        return [min(same, key=lambda d: (d.memory_total_mb, d.index))]
    by_worker: dict[int, list[Device]] = defaultdict(list)
    for device in free:
        if fits(device):
            by_worker[device.worker_id].append(device)
    for devices in by_worker.values():
        if len(devices) >= wanted:
            # Smallest sufficient GPUs first: keep the big ones for jobs that need them.
            devices.sort(key=lambda d: (d.memory_total_mb, d.index))
            return devices[:wanted]
    return []


def _host_reason(
    experiment: QueuedExperiment,
    free: list[Device],
    devices: list[Device],
    hosts: dict[int, placement.HostFree],
) -> str:
    """Return why the devices it needs are there but no host has its cores or memory, or ""."""
    fitting_ever = {d.worker_id for d in devices if device_fits(experiment, d)}
    if fitting_ever and placement.host_never_fits(experiment, hosts, fitting_ever):
        return "no live worker has room: " + placement.host_shortfall(
            experiment, hosts, fitting_ever, idle=True
        )
    fitting_now = {d.worker_id for d in _pick_all_workers(experiment, free)}
    return placement.host_shortfall(experiment, hosts, fitting_now) if fitting_now else ""


def _pick_all_workers(experiment: QueuedExperiment, free: list[Device]) -> list[Device]:
    """Return one device per worker that has enough free devices of the kind wanted (hosts not checked)."""
    by_worker: dict[int, list[Device]] = defaultdict(list)
    for device in free:
        if device_fits(experiment, device):
            by_worker[device.worker_id].append(device)
    return [ds[0] for ds in by_worker.values() if len(ds) >= max(1, experiment.gpus)]


def _admission_refusal(experiment: QueuedExperiment, now: datetime, cache: dict[str, Any]) -> str:
    """Return why the experiment must wait (a cost policy's daily budget), or ""."""
    try:
        return cost.admission_reason(experiment, now=now, cache=cache) or quotas.admission_reason(
            experiment, now=now, cache=cache
        )
    except Exception:  # a broken policy must not stop scheduling
        logger.exception("the budget check of experiment %s failed", experiment.pk)
        return ""


def concurrency_limit(cache: dict[str, Any] | None = None) -> int | None:
    """Return the cap on live runs now: settings (0 = none) and a cost policy's; None = no cap."""
    caps = [settings.SCHEDULER_MAX_CONCURRENT_RUNS] if settings.SCHEDULER_MAX_CONCURRENT_RUNS > 0 else []
    try:
        cap = cost.concurrency_cap(cache)
    except Exception:  # a broken policy must not stop scheduling
        logger.exception("the cost policy's concurrency cap failed")
        cap = None
    if cap is not None:
        caps.append(max(0, int(cap)))
    return min(caps) if caps else None


@dataclass
class Decision:
    """Where one queued experiment stands: the devices it gets now, or why it waits."""

    experiment: QueuedExperiment
    position: int
    urgency: float
    devices: list[Device] = field(default_factory=list)
    reason: str = ""
    # Set while a cost policy orders the queue: what the rank within the class was decided on.
    estimate: ordering.Estimate | None = None


@dataclass
class Plan:
    """A scheduling pass: every queued experiment's decision, and the capacity picture."""

    decisions: list[Decision]
    running: int
    ordering: str  # the cost policy's priority_by in force ("": plain order)
    limit: int | None  # None: no limit
    free_devices: list[Device]


def scheduler_plan(
    *, now: datetime | None = None, max_concurrent: int | None = None, placements_only: bool = False
) -> Plan:
    """Decide, without writing, which queued experiments get which free devices, and why the rest wait.

    placements_only: stop deciding once no free device or run slot is left (nothing after
    that can be placed): what a tick needs; the queue page wants every experiment's reason.
    """
    now = now or timezone.now()
    # One scheduling pass's reads: the cost policies, today's spend, estimates (read once each).
    pass_cache: dict[str, Any] = {}
    limit = concurrency_limit(pass_cache) if max_concurrent is None else max_concurrent
    # External runs train on their client's hardware: they hold no slot of ours.
    live_runs_of = list(
        Run.objects.filter(status__in=LIVE_RUN_STATUSES)
        .exclude(experiment__executor=Executor.EXTERNAL)
        .values_list("experiment_id", flat=True)
    )
    running = len(live_runs_of)
    live = set(live_runs_of)
    devices = list(usable_devices(now=now))
    free = [d for d in devices if d.leased_run_id is None and not d.reserved and not _reserved_by_settings(d)]
    initially_free = list(free)
    decisions: list[Decision] = []
    slots_left = None if limit is None else limit - running
    # Experiments asking for the same thing get the same answer once nothing fits them: free
    # devices and host room only go away during a pass. Keyed by (gpus, gpu_type, memory_gb,
    # cpu_cores, host_memory_gb).
    no_fit: set[tuple[int, str, float, int, float]] = set()
    fits_any: dict[tuple[int, str, float], bool] = {}
    # Cores and host memory left on each worker's host, taken from as experiments are placed.
    hosts = placement.host_capacity({d.worker for d in devices})
    # Why a need does not fit any host, once per need and pass (free room only shrinks in a pass).
    host_reasons: dict[tuple[int, str, float, int, float], str] = {}
    hosts_report = any(h.cpu_cores_total or h.memory_gb_total for h in hosts.values())
    # Improvement per dollar orders each priority class; fair share then interleaves the projects.
    queue, estimates, mode = ordering.queue_rank(queued_in_order(now=now), cache=pass_cache)
    for position, experiment in enumerate(fairshare.fair_order(queue), start=1):
        if placements_only and (not free or (slots_left is not None and slots_left <= 0)):
            break
        decision = Decision(
            experiment=experiment,
            position=position,
            urgency=experiment.urgency,
            estimate=estimates.get(experiment.pk),
        )
        decisions.append(decision)
        if experiment.not_before and experiment.not_before > now:
            decision.reason = f"retry backoff until {experiment.not_before:%H:%M:%S} UTC"
            continue
        if experiment.pk in live:
            # Requeued while its attempt still stops: one attempt at a time trains.
            decision.reason = "waiting for its previous attempt to stop"
            continue
        if slots_left is not None and slots_left <= 0:
            decision.reason = f"max concurrent runs reached ({running}/{limit})"
            continue
        refusal = _admission_refusal(experiment, now, pass_cache)
        if refusal:
            decision.reason = refusal
            continue
        need = (
            experiment.gpus,
            experiment.gpu_type,
            experiment.memory_gb,
            experiment.cpu_cores,
            experiment.host_memory_gb,
        )
        chosen = [] if need in no_fit or not free else _pick(experiment, free, hosts)
        if chosen:
            decision.devices = chosen
            quotas.admission_record(experiment, cache=pass_cache)
            taken = {d.pk for d in chosen}
            free = [d for d in free if d.pk not in taken]
            placement.host_take(hosts, chosen[0].worker_id, experiment)
            if slots_left is not None:
                slots_left -= 1
            continue
        no_fit.add(need)
        if hosts_report and need not in host_reasons:
            host_reasons[need] = _host_reason(experiment, free, devices, hosts)
        if why := host_reasons.get(need, ""):
            decision.reason = why
            continue
        device_need = need[:3]
        if device_need not in fits_any:
            fits_any[device_need] = any(device_fits(experiment, d) for d in devices)
        if fits_any[device_need]:
            decision.reason = f"waiting for {_needs(experiment)} to free up"
        else:
            decision.reason = f"no live worker has {_needs(experiment)}"
    if placements_only:
        return Plan(
            decisions=decisions, running=running, ordering=mode, limit=limit, free_devices=initially_free
        )
    # Shown in the queue, last and never given a device: their client starts their runs.
    waiting_clients = Experiment.objects.filter(state=State.QUEUED, executor=Executor.EXTERNAL).order_by(
        "queued_at", "pk"
    )
    for position, experiment in enumerate(waiting_clients, start=len(decisions) + 1):
        decisions.append(
            Decision(
                experiment=experiment,
                position=position,
                urgency=experiment_urgency(experiment, now=now),
                reason="external: waiting for its client to start a run (no device is leased)",
            )
        )
    return Plan(decisions=decisions, running=running, ordering=mode, limit=limit, free_devices=initially_free)


def device_lease(*, device_ids: list[int], run: Run) -> bool:
    """Lease every device to the run or none (call inside a transaction); False when one was taken."""
    return devices_lease([(device_ids, run)])


def devices_lease(leases: list[tuple[list[int], Run]]) -> bool:
    """Lease each run its devices, all or none, in one statement (call inside a transaction).

    Return False when one of the devices was taken (or its worker went offline): the caller
    rolls back what this wrote.
    """
    now = timezone.now()
    run_of = {device_id: run.pk for device_ids, run in leases for device_id in device_ids}
    if not run_of or Device.objects.filter(pk__in=list(run_of), worker__online=False).exists():
        return False
    # The conditional update is the lock: of two schedulers, exactly one matches each row,
    # and the row count says whether this one got every device it asked for.
    # Only the device's own columns in the WHERE: a condition on a joined table makes
    # Django write `WHERE id IN (SELECT ...)`, and PostgreSQL re-checks only the outer
    # clause after waiting for the other writer, so both would "win".
    won = Device.objects.filter(pk__in=list(run_of), leased_run__isnull=True, reserved=False).update(
        leased_run=case_by_pk(Device, "leased_run", run_of), leased_at=now
    )
    return won == len(run_of)


class _LeaseLost(Exception):
    """Another scheduler leased one of the devices first."""


# A lost race (device leased, experiment moved by someone else, PostgreSQL breaking a lock
# cycle between two schedulers): what rolls a dispatch back to its savepoint.
_LOST_RACE = (_LeaseLost, TransitionRefused, ConcurrentTransition, IntegrityError, OperationalError)
SCHEDULER = Actor.system("scheduler")


# A train task to send once the dispatch commits: (run id, the worker's queue, task id).
_Send = tuple[int, str, str]


def _send_train_tasks(sends: list[_Send]) -> None:
    # ignore_result as the task itself declares it: sent by name from a process that may not
    # have the task registered, Celery would otherwise subscribe to (and later unsubscribe
    # from) a result channel per task, two broker round trips each that nobody reads.
    tasks_send(
        [
            ("control.train_run", [run_id], {"queue": queue, "task_id": task_id, "ignore_result": True})
            for run_id, queue, task_id in sends
        ]
    )


def _dispatch_one(*, experiment_id: int, devices: list[Device], sends: list[_Send]) -> Run | None:
    """Lease the devices, create the run and fire start in a savepoint; on a lost race roll back only that."""
    worker = devices[0].worker
    task_id = str(uuid.uuid4())
    try:
        with transaction.atomic():
            experiment = Experiment.objects.get(pk=experiment_id)
            run = run_create(
                experiment=experiment, worker=worker.hostname, device=devices[0].label, task_id=task_id
            )
            if not device_lease(device_ids=[d.pk for d in devices], run=run):
                raise _LeaseLost
            experiment_transition(
                experiment_id=experiment_id,
                event="start",
                actor=SCHEDULER,
                reason=_start_reason(run.attempt, devices),
            )
    except _LOST_RACE as exc:
        # Lost a race (device leased, experiment started or cancelled by someone else, or
        # PostgreSQL broke a lock cycle between two schedulers): this
        # attempt rolled back to its savepoint; the next tick looks again.
        logger.info("dispatch of experiment %s lost a race: %r", experiment_id, exc)
        return None
    sends.append((run.pk, worker.queue, task_id))
    return run


def _start_reason(attempt: int, devices: list[Device]) -> str:
    return f"attempt {attempt} on {devices[0].worker.hostname} ({', '.join(d.label for d in devices)})"


def _dispatch_batch(plans: list[tuple[int, list[Device]]], sends: list[_Send]) -> list[Run]:
    """Dispatch every pair at once in a savepoint: a few statements whatever the number of runs.

    One read of the next attempts, the start transitions as one conditional UPDATE (an
    experiment cancelled or started by someone else since the plan is left out), one insert
    of the runs, one conditional UPDATE of the leases. Any other lost race (a device taken,
    a state moved between read and write, a lock cycle broken by PostgreSQL) raises, and
    the savepoint takes back everything the batch wrote.
    """
    task_ids = {experiment_id: str(uuid.uuid4()) for experiment_id, _ in plans}
    with transaction.atomic():
        attempts = runs_next_attempts([experiment_id for experiment_id, _ in plans])
        fired, refused = experiments_transition_many(
            experiment_ids=[experiment_id for experiment_id, _ in plans],
            event="start",
            actor=SCHEDULER,
            reasons={pk: _start_reason(attempts[pk], devices) for pk, devices in plans},
        )
        for refusal in refused:
            logger.info("dispatch of experiment %s lost a race: %s", refusal.experiment.pk, refusal.message)
        started = {e.pk: e for e in fired}
        chosen = [(started[pk], devices) for pk, devices in plans if pk in started]
        runs = runs_create_many(
            [
                RunStart(
                    experiment=experiment,
                    worker=devices[0].worker.hostname,
                    device=devices[0].label,
                    task_id=task_ids[experiment.pk],
                )
                for experiment, devices in chosen
            ],
            attempts=attempts,
        )
        if chosen and not devices_lease(
            [([d.pk for d in devices], run) for run, (_, devices) in zip(runs, chosen, strict=True)]
        ):
            raise _LeaseLost
    for run, (experiment, devices) in zip(runs, chosen, strict=True):
        sends.append((run.pk, devices[0].worker.queue, task_ids[experiment.pk]))
    return runs


def experiments_dispatch(plans: list[tuple[int, list[Device]]]) -> list[Run]:
    """Dispatch (experiment id, devices) pairs in one transaction; return the runs created.

    The pairs go as one batch (_dispatch_batch); when the batch loses a race it is rolled back
    and each pair is dispatched in a savepoint of its own, so one lost race costs only that
    experiment. The pass commits once and sends its train tasks together, over one broker
    connection, after the commit.
    """
    sends: list[_Send] = []
    started: list[Run] = []
    with transaction.atomic():
        try:
            started = _dispatch_batch(plans, sends)
        except _LOST_RACE as exc:
            logger.info("a dispatch of %d experiments lost a race (%r): one at a time", len(plans), exc)
            for experiment_id, devices in plans:
                run = _dispatch_one(experiment_id=experiment_id, devices=devices, sends=sends)
                if run is not None:
                    started.append(run)
        # Registered last: the runs' start effects (pages, policies) are queued before it.
        transaction.on_commit(lambda: _send_train_tasks(sends))
    return started


def experiment_dispatch(*, experiment_id: int, devices: list[Device]) -> Run | None:
    """Lease the devices, create the run, fire start and (after commit) send it to the worker's queue."""
    started = experiments_dispatch([(experiment_id, devices)])
    return started[0] if started else None


def scheduler_tick(*, now: datetime | None = None, max_concurrent: int | None = None) -> list[Run]:
    """Dispatch every queued experiment that fits on a free device now; return the new runs."""
    # The steady state of a busy cluster: every device leased. Nothing can start, so skip
    # ordering the whole queue (the queue page plans for itself when someone looks).
    if not usable_devices(now=now).filter(leased_run__isnull=True, reserved=False).exists():
        return []
    plan = scheduler_plan(now=now, max_concurrent=max_concurrent, placements_only=True)
    chosen = [(d.experiment.pk, d.devices) for d in plan.decisions if d.devices]
    return experiments_dispatch(chosen) if chosen else []


def live_runs() -> QuerySet[Run]:
    """Return the runs starting or training now, with their experiments and devices."""
    return (
        Run.objects.filter(status__in=LIVE_RUN_STATUSES)
        .select_related("experiment")
        .prefetch_related("leased_devices")
        .order_by("started_at", "pk")
    )


def orphan_leases() -> QuerySet[Device]:
    """Return devices leased by runs that are no longer live (left behind by a crash)."""
    return (
        Device.objects.filter(leased_run__isnull=False)
        .filter(~Q(leased_run__status__in=LIVE_RUN_STATUSES))
        # A finished run's slot held by its evaluation job (control/scheduling/evaluations.py).
        .exclude(leased_run__evaluation__status__in=EVALUATION_PENDING)
    )
