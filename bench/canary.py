"""Figure 9 — canary rollouts: share of bad versions rolled back, good versions kept, time to detect.

Real digits checkpoints are trained with the project's recipe: a good one, a good one with 1%
baseline serving errors, one per fault level (serve_error_rate 0.1, 0.2, 0.3, 0.5: the served
model fails that share of predictions) and an under-trained one (accuracy ~0.64 against ~0.96).
Each checkpoint file is registered under many experiments (each with its own succeeded Run, so
the registry numbers a new version each time). N bad and N good versions, shuffled, are then
promoted one after another; promote fires the hook that starts the canary rollout of the
policy below. Traffic is real and in-process: `serving.predict` routes each request (canary
by its traffic share, else production), the model answers held-out digits, and
`serving.feedback` posts the true label of every answer. Judging is the real
`canary_sweep(now=...)`, and a rollback it decides is carried out by a real Celery worker.

Time is simulated, so minutes of rollout take seconds: requests arrive at RATE_RPS on the
simulated clock, `canary_sweep` runs every SWEEP_SECONDS of it (the beat's default), and a
stage ends once its duration has passed on that clock. A stage's window is the requests
served after the stage began (by request id, not by clock), so no timestamp is touched: the
rows, answers and labels are the serving code's own.

Policy (the demo's canary_deploy conditions and min_requests, with 20 s stages): 10% of
traffic for 20 s, 50% for 20 s, then all; roll back when error_rate > 0.05 or accuracy < 0.85.
Both are rate conditions, so they are judged by the sequential test (Wald's SPRT, see
control/canary/sequential.py) at the policy's alpha = beta = 0.01 with a margin of 0.04: a
version is rolled back as soon as its rate is worse than the threshold with confidence 1 - alpha,
and a stage passes (after its 20 s and 30 requests) once the test says the version is not worse
than threshold + margin. Baseline, in the same run: the same bad versions sent to all traffic
at once for one 20 s stage, judged by the same policy. Figures: share of bad versions caught
(goal >= 0.99), share of good versions deployed (goal: false rollbacks <= 1%), and per caught
bad version the requests it served and the simulated seconds until rollback. Each share also
carries the one-sided 95% upper bound of its miss rate: 0 misses in 10 only bounds it by 26%;
`--n 300` with none bounds it by 1%. `--bounds` judges the old fixed-sample Wilson bounds
instead (plain thresholds, once min_requests are in), for comparison.
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Goal, base_parser, bench_env, emit, emit_failure, figure, note, skipped

FIGURES = (
    "canary_bad_caught_share",
    "canary_good_deployed_share",
    "canary_detect_requests",
    "canary_detect_sim_s",
)
MODEL = "digits"
# Simulated traffic: requests per second to the model, and how often beat judges live rollouts.
RATE_RPS = 20
SWEEP_SECONDS = 5
MIN_REQUESTS = 30
# The sequential test's stated error rates and indifference margin (policy fields).
ALPHA = 0.01
BETA = 0.01
MARGIN = 0.04
CANARY_STAGES = [("canary_10pct", 10.0, 20), ("canary_50pct", 50.0, 20), ("full_rollout", 100.0, 0)]
ALL_AT_ONCE_STAGES = [("all_traffic", 100.0, 20)]
CONDITIONS = [
    {"kind": "metric", "metric": "error_rate", "operator": ">", "threshold": 0.05, "role": "rollback_on"},
    {"kind": "metric", "metric": "accuracy", "operator": "<", "threshold": 0.85, "role": "rollback_on"},
]
# --bounds: the same thresholds on the 95% Wilson bounds, so that a few unlucky requests of a
# good version cannot cross them (fewer false rollbacks, bad versions caught a little later).
BOUND_CONDITIONS = [
    {**CONDITIONS[0], "metric": "error_rate_lower_95"},
    {**CONDITIONS[1], "metric": "accuracy_upper_95"},
]
# A rollout that neither deploys nor rolls back within this much simulated time is a bench failure.
MAX_ROLLOUT_SIM_SECONDS = 600
ROLLBACK_WAIT_SECONDS = 60.0
# The checkpoints: what each is trained with, and whether it should be rolled back.
GOOD_TRAINING = {"epochs": 4, "hidden": 64, "seed": 0}
KINDS: dict[str, tuple[dict[str, Any], bool]] = {
    "good": ({**GOOD_TRAINING}, False),
    "good_1pct_errors": ({**GOOD_TRAINING, "serve_error_rate": 0.01}, False),
    "errors_10pct": ({**GOOD_TRAINING, "serve_error_rate": 0.1}, True),
    "errors_20pct": ({**GOOD_TRAINING, "serve_error_rate": 0.2}, True),
    "errors_30pct": ({**GOOD_TRAINING, "serve_error_rate": 0.3}, True),
    "errors_50pct": ({**GOOD_TRAINING, "serve_error_rate": 0.5}, True),
    "low_accuracy": ({"epochs": 1, "hidden": 32, "seed": 0}, True),
}
QUICK_KINDS = ("good", "errors_50pct")


@dataclass(frozen=True)
class Checkpoint:
    """A trained checkpoint file and what it is: registered again for every version of its kind."""

    kind: str
    config: dict[str, Any]
    bad: bool
    path: Path
    sha256: str
    size: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Outcome:
    """How one rollout ended and what the candidate served until then."""

    kind: str
    bad: bool
    policy: str
    result: str
    requests: int
    errors: int
    wrong: int
    sim_seconds: float
    reason: str


def train_checkpoints(folder: Path, kinds: list[str]) -> dict[str, Checkpoint]:
    """Train one checkpoint per kind with the digits recipe; return them by kind."""
    from experiments.recipes.digits import RECIPE
    from experiments.recipes.local import LocalRunContext
    from experiments.runs.execution import file_sha256

    out = {}
    for kind in kinds:
        config, bad = KINDS[kind]
        ctx = LocalRunContext(checkpoint_dir=folder / kind, keep=1)
        result = RECIPE.train(ctx, dict(config))
        path = sorted((folder / kind).glob("step-*.pt"))[-1]
        out[kind] = Checkpoint(
            kind=kind,
            config=dict(config),
            bad=bad,
            path=path,
            sha256=file_sha256(path),
            size=path.stat().st_size,
            metrics=dict(result.final_metrics),
        )
        note(f"  trained {kind}: val accuracy {result.final_metrics['accuracy']:.3f}")
    return out


def evaluating_experiment(checkpoint: Checkpoint, *, name: str, tag: str) -> Any:
    """Create an experiment that finished training with this checkpoint (its own Run), ready to promote."""
    from experiments.actors import Actor
    from experiments.choices import RunStatus
    from experiments.models import Run
    from experiments.services import experiment_create, experiment_transition

    actor = Actor.system("bench")
    experiment = experiment_create(name=name, recipe=MODEL, config=checkpoint.config, tags=[tag])
    for event in ("queue", "start", "complete"):
        experiment = experiment_transition(experiment_id=experiment.pk, event=event, actor=actor)
    Run.objects.create(
        experiment=experiment,
        attempt=1,
        status=RunStatus.SUCCEEDED,
        checkpoint_path=str(checkpoint.path),
        checkpoint_sha256=checkpoint.sha256,
        checkpoint_size=checkpoint.size,
        final_metrics=checkpoint.metrics,
    )
    return experiment


def make_policies(conditions: list[dict[str, Any]]) -> None:
    """The canary policy (experiments tagged "canary") and the all-at-once baseline ("all-at-once")."""
    from control.policies.authoring import policy_create

    common: dict[str, Any] = {
        "kind": "canary",
        "canary_min_requests": MIN_REQUESTS,
        "canary_alpha": ALPHA,
        "canary_beta": BETA,
        "canary_margin": MARGIN,
        "scope_recipes": [MODEL],
    }
    policy_create(
        name="bench_canary", scope_tags=["canary"], conditions=conditions, stages=CANARY_STAGES, **common
    )
    policy_create(
        name="bench_all_at_once",
        scope_tags=["all-at-once"],
        conditions=conditions,
        stages=ALL_AT_ONCE_STAGES,
        **common,
    )


class Traffic:
    """Held-out digits answered in-process by the model's routed version, each labelled at once."""

    def __init__(self, seed: int, *, canary_only: bool = False) -> None:
        from experiments.recipes.classify import raw_split

        _, _, x_val, y_val = raw_split(int(GOOD_TRAINING["seed"]), 0.2)
        self.rows = [[float(v) for v in row] for row in x_val]
        self.labels = [int(v) for v in y_val]
        self.rng = random.Random(seed)
        self.canary_only = canary_only
        self.skipped = 0

    def serve(self, *, seconds: float) -> None:
        """Serve the requests arriving in the next `seconds` of the simulated clock."""
        import experiments.registry.serving as serving
        from experiments.models import ModelStage, ModelVersion

        # The split holds still between sweeps: read the canary's share once per interval.
        share = (
            ModelVersion.objects.filter(model_name=MODEL, stage=ModelStage.CANARY, traffic_pct__gt=0)
            .values_list("traffic_pct", flat=True)
            .first()
        ) or 0.0
        for _ in range(round(RATE_RPS * seconds)):
            i = self.rng.randrange(len(self.rows))
            draw = self.rng.uniform(0, 100)
            if self.canary_only and draw >= share:
                # --canary-only: the request production would answer (route's split, same draw) is
                # drawn, not served: the canary's conditions read only its own requests here.
                self.skipped += 1
                continue
            try:
                answer = serving.predict(model_name=MODEL, payload={"features": self.rows[i]}, draw=draw)
            except serving.ServingError as exc:
                if exc.status != 503:
                    raise
                continue
            serving.feedback(
                model_name=MODEL, payload={"request_id": answer["request_id"], "label": self.labels[i]}
            )


def roll_out(experiment: Any, checkpoint: Checkpoint, *, policy: str, traffic: Traffic) -> Outcome:
    """Promote the experiment (a fresh version of the checkpoint); drive its rollout on the simulated clock to its end."""
    from control.canary.models import CanaryRollout
    from control.canary.rollouts import canary_sweep
    from experiments.actors import Actor
    from experiments.models import ServedRequest
    from experiments.services import experiment_transition

    experiment_transition(experiment_id=experiment.pk, event="promote", actor=Actor.system("bench"))
    rollout = CanaryRollout.objects.filter(experiment=experiment).first()
    if rollout is None:
        raise RuntimeError(f"promoting {experiment.name} started no canary rollout")
    # The promote hook started the rollout on the real clock; the simulated one starts there.
    started = rollout.stage_started_at
    now = started
    result = "waiting"
    while result not in ("rolled_back", "deployed", "cancelled", "error", "not live"):
        if (now - started).total_seconds() >= MAX_ROLLOUT_SIM_SECONDS:
            raise RuntimeError(f"rollout of {experiment.name} undecided after {MAX_ROLLOUT_SIM_SECONDS} s")
        traffic.serve(seconds=SWEEP_SECONDS)
        now += timedelta(seconds=SWEEP_SECONDS)
        result = canary_sweep(now=now).get(str(rollout.pk), "not live")
    rollout.refresh_from_db()
    served = ServedRequest.objects.filter(version_id=rollout.candidate_id)
    return Outcome(
        kind=checkpoint.kind,
        bad=checkpoint.bad,
        policy=policy,
        result=rollout.status,
        requests=served.count(),
        errors=served.filter(ok=False).count(),
        wrong=served.filter(correct=False).count(),
        sim_seconds=(now - started).total_seconds(),
        reason=rollout.outcome[:200],
    )


def wait_for_rollbacks(timeout: float) -> dict[str, int]:
    """Wait (bounded) until the worker has carried out every rollback action; return their statuses."""
    from control.policies.models import ActionExecution, ExecutionStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ActionExecution.objects.filter(
            status__in=(ExecutionStatus.PENDING, ExecutionStatus.RUNNING)
        ).exists():
            break
        time.sleep(0.1)
    return dict(Counter(ActionExecution.objects.filter(kind="rollback").values_list("status", flat=True)))


def miss_rate_upper_95(misses: int, n: int) -> float:
    """Return the one-sided 95% (Clopper-Pearson) upper bound of a rate seen `misses` times in n."""
    if misses >= n:
        return 1.0

    def at_most_misses(rate: float) -> float:
        return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(misses + 1))

    low, high = misses / n, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if at_most_misses(mid) > 0.05 else (low, mid)
    return round(high, 4)


def by_kind(outcomes: list[Outcome], wanted: str) -> dict[str, str]:
    """Return "k/n" per kind: how many of its rollouts ended as wanted."""
    totals = Counter(o.kind for o in outcomes)
    hits = Counter(o.kind for o in outcomes if o.result == wanted)
    return {kind: f"{hits[kind]}/{n}" for kind, n in sorted(totals.items())}


def emit_figures(canary: list[Outcome], all_at_once: list[Outcome], extra: dict[str, Any]) -> None:
    """Print the four figures from the rollouts' outcomes."""
    bad = [o for o in canary if o.bad]
    good = [o for o in canary if not o.bad]
    caught = [o for o in bad if o.result == "rolled_back"]
    base_caught = [o for o in all_at_once if o.result == "rolled_back"]
    false_rollbacks = [o for o in good if o.result == "rolled_back"]
    baseline_name = "the same bad versions sent to all traffic at once, judged by the same conditions"
    emit(
        figure(
            name="canary_bad_caught_share",
            unit="share of bad versions rolled back",
            samples=[len(caught) / len(bad)],
            goal=Goal(">= 0.99 of bad versions rolled back", median_min=0.99),
            higher_is_better=True,
            baseline_name=baseline_name,
            baseline_samples=[len(base_caught) / len(all_at_once)] if all_at_once else None,
            extra={
                **extra,
                "bad_versions": len(bad),
                "caught": len(caught),
                "miss_rate_upper_95": miss_rate_upper_95(len(bad) - len(caught), len(bad)),
                "caught_by_kind": by_kind(bad, "rolled_back"),
                "missed": [
                    {"kind": o.kind, "result": o.result, "reason": o.reason}
                    for o in bad
                    if o.result != "rolled_back"
                ],
            },
        )
    )
    emit(
        figure(
            name="canary_good_deployed_share",
            unit="share of good versions deployed",
            samples=[(len(good) - len(false_rollbacks)) / len(good)],
            goal=Goal("false rollbacks <= 1% of good versions", median_min=0.99),
            higher_is_better=True,
            extra={
                **extra,
                "good_versions": len(good),
                "false_rollback_rate": round(len(false_rollbacks) / len(good), 4),
                "false_rollback_upper_95": miss_rate_upper_95(len(false_rollbacks), len(good)),
                "deployed_by_kind": by_kind(good, "deployed"),
                "false_rollbacks": [{"kind": o.kind, "reason": o.reason} for o in false_rollbacks],
                "requests_per_good_rollout": round(sum(o.requests for o in good) / len(good), 1),
            },
        )
    )
    if not caught:
        for name in ("canary_detect_requests", "canary_detect_sim_s"):
            emit(skipped(name, "no bad version was rolled back: there is no detection to time"))
        return
    bad_answers = sorted(o.errors + o.wrong for o in caught)
    base_bad_answers = sorted(o.errors + o.wrong for o in base_caught)
    emit(
        figure(
            name="canary_detect_requests",
            unit="requests served by a bad version before its rollback",
            samples=[o.requests for o in caught],
            goal=Goal("fewer than an all-at-once deploy judged the same way (ratio > 1)", ratio_min=1.0),
            higher_is_better=False,
            baseline_name=baseline_name,
            baseline_samples=[o.requests for o in base_caught] or None,
            extra={
                **extra,
                "failed_or_wrong_answers_median": bad_answers[len(bad_answers) // 2],
                "baseline_failed_or_wrong_answers_median": base_bad_answers[len(base_bad_answers) // 2]
                if base_bad_answers
                else None,
            },
        )
    )
    emit(
        figure(
            name="canary_detect_sim_s",
            unit="simulated seconds from promote to rollback",
            samples=[o.sim_seconds for o in caught],
            goal=Goal("reported, not judged: a 10% share gathers min_requests ten times slower"),
            higher_is_better=False,
            baseline_name=baseline_name,
            baseline_samples=[o.sim_seconds for o in base_caught] or None,
            extra=extra,
        )
    )


def main() -> None:
    """Train, roll out N bad and N good versions and the all-at-once baseline; print the figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--n", type=int, default=None, help="bad versions, and as many good ones (default 10)"
    )
    parser.add_argument(
        "--canary-only",
        action="store_true",
        help="draw the split but serve only the canary's requests (production's are judged by nothing "
        "here): the same decisions, several times faster",
    )
    parser.add_argument(
        "--baseline-n",
        type=int,
        default=None,
        help="bad versions sent all at once for the baseline (default: --n)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="order of the rollouts, routing and injected faults"
    )
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="judge error_rate_lower_95 and accuracy_upper_95 (Wilson bounds) instead of the raw rates",
    )
    args = parser.parse_args()
    conditions = BOUND_CONDITIONS if args.bounds else CONDITIONS
    n = args.n or (1 if args.quick else 10)
    kinds = list(QUICK_KINDS) if args.quick else list(KINDS)
    good_kinds = [k for k in kinds if not KINDS[k][1]]
    bad_kinds = [k for k in kinds if KINDS[k][1]]
    # Injected faults and the canary's traffic split draw from the global generator.
    random.seed(args.seed)
    import torch

    # One row at a time: intra-op threads only add hand-offs (a GELU on 64 values took ~4 ms
    # with two threads on a busy 2-core machine, 25 us with one).
    torch.set_num_threads(1)
    order = random.Random(args.seed)
    with bench_env() as env, tempfile.TemporaryDirectory(prefix="canary-ckpt-") as folder:
        from experiments.actors import Actor
        from experiments.registry.services import model_version_promote, model_version_register

        note(f"canary: training {len(kinds)} digits checkpoints")
        checkpoints = train_checkpoints(Path(folder), kinds)
        make_policies(conditions)
        production = evaluating_experiment(checkpoints["good"], name="production", tag="none")
        model_version_promote(
            version_id=model_version_register(experiment_id=production.pk).pk, actor=Actor.system("bench")
        )
        plan = [("canary", checkpoints[good_kinds[i % len(good_kinds)]]) for i in range(n)]
        plan += [("canary", checkpoints[bad_kinds[i % len(bad_kinds)]]) for i in range(n)]
        order.shuffle(plan)
        baseline_n = n if args.baseline_n is None else args.baseline_n
        plan += [("all-at-once", checkpoints[bad_kinds[i % len(bad_kinds)]]) for i in range(baseline_n)]
        experiments = [
            evaluating_experiment(checkpoint, name=f"{checkpoint.kind} #{index}", tag=policy)
            for index, (policy, checkpoint) in enumerate(plan, start=1)
        ]
        # Started once every experiment has finished "training": the scheduler ticks that their
        # queue transitions sent then find nothing queued, so the worker never runs one.
        env.start_celery_worker(name="bench-canary", queues=["control"], concurrency=1)
        traffic = Traffic(args.seed, canary_only=args.canary_only)
        note(f"canary: {len(plan)} rollouts at {RATE_RPS} req/s simulated, sweep every {SWEEP_SECONDS} s")
        started = time.monotonic()
        outcomes = []
        for index, ((policy, checkpoint), experiment) in enumerate(
            zip(plan, experiments, strict=True), start=1
        ):
            outcome = roll_out(experiment, checkpoint, policy=policy, traffic=traffic)
            outcomes.append(outcome)
            note(
                f"  {index:>3} {policy:<11} {checkpoint.kind:<16} {outcome.result:<11} "
                f"{outcome.requests:>4} requests, {outcome.sim_seconds:>4.0f} s simulated"
            )
        rollbacks = wait_for_rollbacks(ROLLBACK_WAIT_SECONDS)
        extra = {
            "policy": {
                "stages": CANARY_STAGES,
                "min_requests": MIN_REQUESTS,
                "test": "Wilson bounds, fixed thresholds"
                if args.bounds
                else "SPRT per stage and rate condition",
                "alpha": ALPHA,
                "beta": BETA,
                "margin": MARGIN,
                "rollback_on": [f"{c['metric']} {c['operator']} {c['threshold']}" for c in conditions],
            },
            "simulated_rps": RATE_RPS,
            "production_requests_drawn_not_served": traffic.skipped if args.canary_only else 0,
            "sweep_seconds": SWEEP_SECONDS,
            "val_accuracy_by_kind": {k: round(c.metrics["accuracy"], 3) for k, c in checkpoints.items()},
            "rollback_actions": rollbacks,
            "rollouts_wall_s": round(time.monotonic() - started, 1),
        }
        emit_figures(
            [o for o in outcomes if o.policy == "canary"],
            [o for o in outcomes if o.policy == "all-at-once"],
            extra,
        )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
