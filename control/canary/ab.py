"""A/B tests: two or more candidate versions share a model's traffic until a sequential test decides.

`ab_test_start` warms every arm (as a canary is warmed), gives each an equal share of the
requests (serving's `route` splits them) and opens the test's window. `ab_test_evaluate`
(run by the canary sweep) pairs the arms' outcomes on the policy's served metric and keeps,
for each pair, the confidence sequence of control/canary/sequential.py at the policy's alpha
(split between the pairs): an arm another one beats is dropped (archived, no more traffic);
the last arm standing is promoted to production; when the arms left are all within the
margin of each other the test ends with no winner and production serves alone again. Each
decision is a trigger of kind "ab_test" whose snapshot holds the effect size, its interval
and the number of requests.

The policy's mode decides what a winner leads to: auto promotes it at once; approve leaves the
test awaiting approval (the winner keeps its share, the beaten arms serve no more) until a person
approves the trigger (the next sweep promotes it) or rejects it or lets it expire (the test ends
without a winner); dry_run records "would promote vN" and ends. Whenever a test ends without
carrying out a decision (no winner outside auto mode, rejected, dry run, cancelled by a person
with `ab_test_cancel`), every arm it left in the canary stage goes back to the stage it had
before the test, and production serves alone.

The winner's experiment follows the registry into deployed (experiments.registry.services);
the experiment of an arm the test archived is held for review when it was still evaluating
(withdrawn when it was promoting without a canary), so no loser waits for a promotion.
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.utils import timezone

from control.canary.models import (
    OPEN_AB_STATUSES,
    UNFINISHED_ROLLOUT_STATUSES,
    ABTest,
    ABTestStatus,
    CanaryRollout,
)
from control.canary.sequential import PairedTest, paired_comparison
from control.policies.conditions import ConditionResult
from control.policies.engine import Evaluation, trigger_fire
from control.policies.models import Policy, PolicyKind, PolicyMode, TriggerEvent, TriggerStatus
from experiments.actors import Actor
from experiments.choices import State
from experiments.models import Experiment, ModelStage, ModelVersion
from experiments.projects import can, model_project_id
from experiments.registry.services import RegistryError, model_version_promote, model_version_set_stage
from experiments.registry.serving import ServingError, last_request_id, version_warm, window_outcomes
from experiments.services import TransitionRefused, experiment_transition

# Who may cancel a running test (the admin's action and the deployment page's button).
AB_TEST_CANCEL_PERMISSION = "control.change_abtest"
# An arm's experiment in these states could not follow the registry if its version won: an
# attempt is under way (its lifecycle belongs to the run), or its training failed.
_BUSY_STATES = (State.PENDING, State.QUEUED, State.RUNNING, State.FAILED)

logger = logging.getLogger(__name__)


class ABTestError(Exception):
    """An A/B test that cannot start, with the field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def ab_test_start(*, model_name: str, version_ids: list[int], policy: Policy, actor: Actor) -> ABTest:
    """Start an A/B test of these versions (two or more, warmed first); traffic is split equally."""
    if policy.kind != PolicyKind.AB_TEST:
        raise ABTestError("policy", f"policy {policy.name!r} is a {policy.kind} policy, not an A/B test")
    ids = list(dict.fromkeys(version_ids))
    if len(ids) < 2:
        raise ABTestError("version_ids", "an A/B test needs two or more different versions")
    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=ids, model_name=model_name)}
    missing = [pk for pk in ids if pk not in versions]
    if missing:
        raise ABTestError("version_ids", f"no version #{missing[0]} of model {model_name!r}")
    if CanaryRollout.objects.filter(model_name=model_name, status__in=UNFINISHED_ROLLOUT_STATUSES).exists():
        raise ABTestError("model_name", f"{model_name} has a canary rollout under way: it splits the traffic")
    busy = Experiment.objects.filter(
        pk__in=[v.experiment_id for v in versions.values()], state__in=_BUSY_STATES
    ).first()
    if busy is not None:
        experiment = busy
        version = next(v for v in versions.values() if v.experiment_id == experiment.pk)
        raise ABTestError(
            "version_ids",
            f"v{version.version}'s experiment #{experiment.pk} is {experiment.state}: "
            "only a finished experiment's version can be an arm",
        )
    for pk in ids:
        try:
            version_warm(versions[pk])
        except ServingError as exc:
            raise ABTestError("version_ids", f"checkpoint failed to load: {exc.message}") from None
    share = 100.0 / len(ids)
    try:
        with transaction.atomic():
            test = ABTest.objects.create(
                model_name=model_name,
                policy=policy,
                arms=ids,
                metric=policy.ab_metric or "accuracy",
                after_request=last_request_id(),
                started_by=actor.label,
                stages_before={str(pk): versions[pk].stage for pk in ids},
            )
            for pk in ids:
                version = versions[pk]
                if version.stage != ModelStage.PRODUCTION:
                    if version.stage != ModelStage.CANARY:
                        model_version_set_stage(version_id=pk, stage=ModelStage.CANARY, actor=actor)
                    # Production, when it is an arm, keeps the rest of the traffic: its share.
                    ModelVersion.objects.filter(pk=pk).update(traffic_pct=share)
    except IntegrityError:
        raise ABTestError("model_name", f"{model_name} already has an A/B test running") from None
    except RegistryError as exc:
        raise ABTestError("version_ids", exc.message) from None
    logger.info("%s A/B test #%s of versions %s started by %s", model_name, test.pk, ids, actor.label)
    return test


def _pairs_tested(arms: int) -> int:
    return max(1, arms * (arms - 1) // 2)


def ab_pair_alpha(*, test: ABTest, policy: Policy) -> float:
    """Return the error rate each pairwise comparison is held to: the policy's alpha split between the pairs."""
    return policy.canary_alpha / _pairs_tested(len(test.arms) + len(test.dropped))


def _drop(version_id: int, actor: Actor, *, archive: bool, reason: str = "") -> None:
    """An arm leaves the test: no more traffic; a candidate is archived (a decision carried out), production stays.

    The archived candidate's experiment stops waiting for a promotion: held for review when it
    was still evaluating, withdrawn when it was promoting without a canary.
    """
    version = ModelVersion.objects.get(pk=version_id)
    ModelVersion.objects.filter(pk=version_id).update(traffic_pct=0.0)
    if not archive or version.stage != ModelStage.CANARY:
        return
    model_version_set_stage(version_id=version_id, stage=ModelStage.ARCHIVED, actor=actor)
    experiment_id = version.experiment_id
    if experiment_id is None:
        return
    state = Experiment.objects.filter(pk=experiment_id).values_list("state", flat=True).first()
    event = {State.EVALUATING: "hold", State.PROMOTING: "withdraw"}.get(state) if state else None
    if event is None:
        return
    try:
        experiment_transition(experiment_id=experiment_id, event=event, actor=actor, reason=reason)
    except TransitionRefused as exc:
        logger.info("A/B arm v%s archived; experiment not moved: %s", version.version, exc.message)


def _restore(test: ABTest, actor: Actor) -> None:
    """Nothing was decided: every version the test left in the canary stage goes back to its stage before it.

    Production, an arm or not, stays production and serves alone again.
    """
    dropped = [d["version_id"] for d in test.dropped if isinstance(d.get("version_id"), int)]
    ids = [*test.arms, *dropped]
    ModelVersion.objects.filter(pk__in=ids).update(traffic_pct=0.0)
    for version in ModelVersion.objects.filter(pk__in=ids, stage=ModelStage.CANARY):
        before = (test.stages_before or {}).get(str(version.pk))
        if before and before not in (ModelStage.CANARY, ModelStage.PRODUCTION):
            model_version_set_stage(version_id=version.pk, stage=before, actor=actor)


def _record(test: ABTest, policy: Policy, decision: str, tests: list[dict[str, Any]], now: datetime) -> None:
    """Fire the "ab_test" trigger that explains the decision (effect, interval, requests)."""
    version_id = test.winner_id or test.arms[0]
    version = ModelVersion.objects.select_related("experiment").get(pk=version_id)
    results = [
        ConditionResult(
            description=f"{t['a']} vs {t['b']} on {test.metric}",
            passed=t["decision"] in ("a_better", "b_better"),
            value=t["effect"],
            detail=f"{t['decision']}: effect {t['effect']:+.4f} in [{t['low']:+.4f}, {t['high']:+.4f}] "
            f"over {t['pairs']} pairs",
        )
        for t in tests
    ]
    if version.experiment is None:
        return  # a version registered without an experiment: nothing to attach the trigger to
    evaluation = Evaluation(policy=policy, experiment=version.experiment, passed=True, results=results)
    context: dict[str, Any] = {
        "ab_test": test.pk,
        "decision": decision,
        "metric": test.metric,
        "tests": tests,
    }
    if test.winner_id is not None:
        # What approving it carries out (approve mode) or what it would have done (dry_run).
        context["promote"] = {"version_id": version.pk, "version": f"v{version.version}"}
    test.trigger = trigger_fire(evaluation=evaluation, kind="ab_test", now=now, context=context)


def ab_test_evaluate(*, ab_test_id: int, now: datetime | None = None) -> str:
    """Judge one open A/B test on its window (or follow the decision on its approval); return what happened."""
    now = now or timezone.now()
    with transaction.atomic():
        test = ABTest.objects.select_for_update().filter(pk=ab_test_id, status__in=OPEN_AB_STATUSES).first()
        if test is None:
            return "not running"
        policy = Policy.objects.filter(pk=test.policy_id).first() if test.policy_id else None
        if test.status == ABTestStatus.AWAITING_APPROVAL:
            return _resolve_approval(test, policy, now)
        if policy is None:
            _restore(test, Actor.system("ab_test"))
            return _finish(test, ABTestStatus.CANCELLED, "its policy is gone", now)
        versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=test.arms)}
        outcomes = {
            pk: window_outcomes(versions[pk], after_request=test.after_request, metric=test.metric)
            for pk in test.arms
        }
        if min(len(o) for o in outcomes.values()) < policy.canary_min_requests:
            return "waiting"
        alpha = ab_pair_alpha(test=test, policy=policy)
        verdicts: list[tuple[int, int, PairedTest]] = [
            (a, b, paired_comparison(a=outcomes[a], b=outcomes[b], alpha=alpha, margin=policy.canary_margin))
            for a, b in itertools.combinations(test.arms, 2)
        ]
        label = {pk: f"v{versions[pk].version}" for pk in test.arms}
        tests = [
            {"a": label[a], "b": label[b], "requests": len(outcomes[a]) + len(outcomes[b]), **v.as_dict()}
            for a, b, v in verdicts
        ]
        acts = policy.mode == PolicyMode.AUTO
        actor = Actor.policy(policy.name)
        losers = _losers(verdicts)
        if losers:
            for loser, winner, verdict in losers:
                test.dropped = [
                    *test.dropped,
                    {
                        "version": label[loser],
                        "version_id": loser,
                        "beaten_by": label[winner],
                        **verdict.as_dict(),
                    },
                ]
                reason = f"lost A/B test #{test.pk} on {test.metric} to {label[winner]}"
                _drop(loser, actor, archive=acts, reason=reason)
            test.arms = [pk for pk in test.arms if pk not in {loser for loser, _, _ in losers}]
            test.save(update_fields=["arms", "dropped"])
            if len(test.arms) > 1:
                return "dropped"
        if len(test.arms) == 1:
            return _decide_winner(test, policy, label[test.arms[0]], tests, now)
        if not test.arms or all(v.decision == "equivalent" for _, _, v in verdicts):
            _record(test, policy, "no_winner", tests, now)
            margin = f"{policy.canary_margin:g}"
            outcome = f"no difference of {margin} or more on {test.metric}"
            if acts:
                for pk in test.arms:
                    _drop(pk, actor, archive=True, reason=f"A/B test #{test.pk}: {outcome}")
            else:
                _restore(test, actor)
            return _finish(test, ABTestStatus.NO_WINNER, outcome, now)
        return "waiting"


def _decide_winner(
    test: ABTest, policy: Policy, label: str, tests: list[dict[str, Any]], now: datetime
) -> str:
    """The last arm standing won: promote it (auto), ask a person (approve) or only record it (dry_run)."""
    test.winner_id = test.arms[0]
    won = f"{label} won on {test.metric}"
    if policy.mode == PolicyMode.DRY_RUN:
        _record(test, policy, "would_promote", tests, now)
        _restore(test, Actor.policy(policy.name))
        return _finish(
            test, ABTestStatus.DRY_RUN, f"would promote {label} ({won}); dry run: nothing changed", now
        )
    _record(test, policy, "winner", tests, now)
    if policy.mode == PolicyMode.APPROVE:
        if test.trigger is None:
            # Nothing a person could approve (the version has no experiment to attach it to).
            _restore(test, Actor.policy(policy.name))
            test.winner_id = None
            return _finish(test, ABTestStatus.NO_WINNER, f"{won}; no trigger to approve its promotion", now)
        # The winner keeps its share (production, or nothing, serves the rest) while a person decides.
        test.status = ABTestStatus.AWAITING_APPROVAL
        test.outcome = f"{won}: its promotion awaits approval [trigger #{test.trigger.pk}]"
        test.save(update_fields=["status", "outcome", "winner", "trigger"])
        return str(test.status)
    model_version_promote(version_id=test.arms[0], actor=Actor.policy(policy.name), adopt_experiment=True)
    return _finish(test, ABTestStatus.DECIDED, won, now)


def _resolve_approval(test: ABTest, policy: Policy | None, now: datetime) -> str:
    """A winner awaiting approval follows the person's decision on its trigger.

    Approved (or executed by hand): the winner is promoted and the beaten arms archived, as the
    policy. Rejected or expired: the test ends without a winner and the arms go back.
    """
    actor = Actor.policy(policy.name) if policy is not None else Actor.system("ab_test")
    trigger = (
        TriggerEvent.objects.filter(pk=test.trigger_id).select_related("decided_by").first()
        if test.trigger_id is not None
        else None
    )
    winner = ModelVersion.objects.filter(pk=test.winner_id).first() if test.winner_id is not None else None
    if trigger is None or winner is None:
        _restore(test, actor)
        test.winner_id = None
        return _finish(test, ABTestStatus.NO_WINNER, "its approval trigger (or winner) is gone", now)
    who = f"user:{trigger.decided_by.get_username()}" if trigger.decided_by else "nobody (timed out)"
    won = f"v{winner.version} won on {test.metric}"
    if trigger.status in (TriggerStatus.FIRED, TriggerStatus.ACTED, TriggerStatus.FAILED):
        try:
            model_version_promote(version_id=winner.pk, actor=actor, adopt_experiment=True)
        except RegistryError as exc:
            _restore(test, actor)
            test.winner_id = None
            return _finish(
                test,
                ABTestStatus.NO_WINNER,
                f"{won}; approved, but it cannot be promoted: {exc.message}",
                now,
            )
        for dropped in test.dropped:
            if isinstance(dropped.get("version_id"), int):
                reason = f"lost A/B test #{test.pk} on {test.metric} to {dropped['beaten_by']}"
                _drop(dropped["version_id"], actor, archive=True, reason=reason)
        outcome = f"{won}; promotion approved by {who} [trigger #{trigger.pk}]"
        return _finish(test, ABTestStatus.DECIDED, outcome, now)
    if trigger.status in (TriggerStatus.DISMISSED, TriggerStatus.EXPIRED):
        _restore(test, actor)
        test.winner_id = None
        verdict = (
            f"rejected by {who}" if trigger.status == TriggerStatus.DISMISSED else "not approved in time"
        )
        return _finish(
            test, ABTestStatus.NO_WINNER, f"{won}; its promotion was {verdict} [trigger #{trigger.pk}]", now
        )
    return str(test.status)


def ab_test_may_cancel(user: Any, test: ABTest) -> bool:
    """Return whether the user may cancel the test: the permission held in its model's project."""
    project_id = model_project_id(test.model_name)
    if project_id is None:
        return bool(user.has_perm(AB_TEST_CANCEL_PERMISSION))
    return can(user, AB_TEST_CANCEL_PERMISSION, project_id)


def ab_test_cancel(*, test: ABTest, actor: Actor, reason: str = "") -> ABTest:
    """A person ends an open A/B test with no decision: traffic goes back to production alone.

    Every arm the test left in the canary stage returns to the stage it had before the test;
    arms the test already archived (beaten, in auto mode) stay archived. A winner awaiting
    approval is not promoted (its trigger is dismissed). The outcome records who and why.
    """
    if actor.is_person and not ab_test_may_cancel(actor.user, test):
        raise PermissionDenied("You may not cancel this project's A/B tests.")
    now = timezone.now()
    with transaction.atomic():
        locked = ABTest.objects.select_for_update().filter(pk=test.pk).first()
        if locked is None or not locked.is_open:
            status = locked.get_status_display().lower() if locked is not None else "gone"
            raise ABTestError(
                "status", f"A/B test #{test.pk} is {status}: only a running test can be cancelled"
            )
        if locked.status == ABTestStatus.AWAITING_APPROVAL and locked.trigger_id is not None:
            TriggerEvent.objects.filter(pk=locked.trigger_id, status=TriggerStatus.PENDING_APPROVAL).update(
                status=TriggerStatus.DISMISSED, decided_at=now, decided_by=actor.user
            )
        _restore(locked, actor)
        locked.winner_id = None
        outcome = f"cancelled by {actor.label}" + (f": {reason.strip()}" if reason.strip() else "")
        _finish(locked, ABTestStatus.CANCELLED, outcome[:2000], now)
    logger.info("%s A/B test #%s %s", locked.model_name, locked.pk, outcome)
    return locked


def _losers(verdicts: list[tuple[int, int, PairedTest]]) -> list[tuple[int, int, PairedTest]]:
    """Return (loser, winner, test) for every arm that another arm beat (once per loser)."""
    out: dict[int, tuple[int, int, PairedTest]] = {}
    for a, b, verdict in verdicts:
        if verdict.decision == "a_better":
            out.setdefault(b, (b, a, verdict))
        elif verdict.decision == "b_better":
            out.setdefault(a, (a, b, verdict))
    return list(out.values())


def _finish(test: ABTest, status: str, outcome: str, now: datetime) -> str:
    test.status = status
    test.outcome = outcome
    test.finished_at = now
    test.save(update_fields=["status", "outcome", "finished_at", "winner", "trigger"])
    # Whatever the ending, production serves alone again (the winner, in auto mode, is production).
    ModelVersion.objects.filter(pk__in=test.arms).update(traffic_pct=0.0)
    return str(status)


def ab_sweep(*, now: datetime | None = None) -> dict[str, str]:
    """Judge every open A/B test; return {"ab:<id>": what happened}."""
    outcomes = {}
    for test_id in ABTest.objects.filter(status__in=OPEN_AB_STATUSES).values_list("pk", flat=True):
        try:
            outcomes[f"ab:{test_id}"] = ab_test_evaluate(ab_test_id=test_id, now=now)
        except Exception:  # one broken test must not stop the others being judged
            logger.exception("judging A/B test %s failed", test_id)
            outcomes[f"ab:{test_id}"] = "error"
    return outcomes
