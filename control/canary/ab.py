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
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from control.canary.models import UNFINISHED_ROLLOUT_STATUSES, ABTest, ABTestStatus, CanaryRollout
from control.canary.sequential import PairedTest, paired_comparison
from control.policies.conditions import ConditionResult
from control.policies.engine import Evaluation, trigger_fire
from control.policies.models import Policy, PolicyKind, PolicyMode
from experiments.actors import Actor
from experiments.models import ModelStage, ModelVersion
from experiments.registry.services import RegistryError, model_version_promote, model_version_set_stage
from experiments.registry.serving import ServingError, last_request_id, version_warm, window_outcomes

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


def _drop(version_id: int, actor: Actor, *, archive: bool) -> None:
    """An arm leaves the test: no more traffic; a candidate is archived (auto mode), production stays."""
    version = ModelVersion.objects.get(pk=version_id)
    ModelVersion.objects.filter(pk=version_id).update(traffic_pct=0.0)
    if archive and version.stage == ModelStage.CANARY:
        model_version_set_stage(version_id=version_id, stage=ModelStage.ARCHIVED, actor=actor)


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
    context = {"ab_test": test.pk, "decision": decision, "metric": test.metric, "tests": tests}
    test.trigger = trigger_fire(evaluation=evaluation, kind="ab_test", now=now, context=context)


def ab_test_evaluate(*, ab_test_id: int, now: datetime | None = None) -> str:
    """Judge one running A/B test on its window; return what happened (for logs and tests)."""
    now = now or timezone.now()
    with transaction.atomic():
        test = ABTest.objects.select_for_update().filter(pk=ab_test_id, status=ABTestStatus.RUNNING).first()
        if test is None:
            return "not running"
        policy = Policy.objects.filter(pk=test.policy_id).first() if test.policy_id else None
        if policy is None:
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
                    {"version": label[loser], "beaten_by": label[winner], **verdict.as_dict()},
                ]
                _drop(loser, actor, archive=acts)
            test.arms = [pk for pk in test.arms if pk not in {loser for loser, _, _ in losers}]
            test.save(update_fields=["arms", "dropped"])
            if len(test.arms) > 1:
                return "dropped"
        if len(test.arms) == 1:
            test.winner_id = test.arms[0]
            _record(test, policy, "winner", tests, now)
            if acts:
                model_version_promote(version_id=test.arms[0], actor=actor)
            return _finish(test, ABTestStatus.DECIDED, f"{label[test.arms[0]]} won on {test.metric}", now)
        if not test.arms or all(v.decision == "equivalent" for _, _, v in verdicts):
            _record(test, policy, "no_winner", tests, now)
            for pk in test.arms:
                _drop(pk, actor, archive=acts)
            margin = f"{policy.canary_margin:g}"
            return _finish(
                test, ABTestStatus.NO_WINNER, f"no difference of {margin} or more on {test.metric}", now
            )
        return "waiting"


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
    """Judge every running A/B test; return {"ab:<id>": what happened}."""
    outcomes = {}
    for test_id in ABTest.objects.filter(status=ABTestStatus.RUNNING).values_list("pk", flat=True):
        try:
            outcomes[f"ab:{test_id}"] = ab_test_evaluate(ab_test_id=test_id, now=now)
        except Exception:  # one broken test must not stop the others being judged
            logger.exception("judging A/B test %s failed", test_id)
            outcomes[f"ab:{test_id}"] = "error"
    return outcomes
