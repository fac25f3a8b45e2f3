"""Policies refuse what can never fire, and the dry-run and backtest show how close they came."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client

from control.policies.authoring import policy_backtest_report, policy_dry_run
from control.policies.models import Policy, PolicyKind
from experiments.recipes import RECIPES
from experiments.recipes.local import LocalRunContext
from tests.policies.helpers import experiment_through, make_policy, record_run

pytestmark = pytest.mark.django_db


def test_a_misspelt_metric_is_refused_on_the_field_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError) as refused:
        make_policy(
            "promote_on_f1",
            PolicyKind.AUTO_PROMOTE,
            [{"kind": "metric", "metric": "f1_scroe", "operator": ">", "threshold": 0.9}],
            [{"kind": "promote"}],
            scope_recipes=["digits"],
        )
    [message] = refused.value.message_dict["metric"]
    assert "'f1_scroe'" in message and "accuracy, eval/accuracy" in message
    # The held-out evaluation's numbers are named too (eval/<metric>), after the loop's own.
    assert "eval/val_loss, f1, loss, val_loss" in message
    assert not Policy.objects.exists()


def test_a_metric_only_another_recipe_logs_is_refused_for_this_scope() -> None:
    with pytest.raises(ValidationError) as refused:
        make_policy(
            "lm_accuracy",
            PolicyKind.CUSTOM,
            [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
            [],
            scope_recipes=["charlm"],
        )
    assert "tokens_per_s" in refused.value.message_dict["metric"][0]
    # Without a scope, a metric any recipe logs may fire.
    make_policy(
        "any_accuracy",
        PolicyKind.CUSTOM,
        [{"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9}],
        [],
    )


def test_the_admin_form_shows_the_typo_as_an_error_of_the_condition() -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    data = {
        "name": "typo",
        "kind": PolicyKind.AUTO_PROMOTE,
        "mode": "auto",
        "enabled": "on",
        "order": "10",
        "description": "",
        "scope_recipes": '["digits"]',
        "scope_tags": "[]",
        "cooldown_seconds": "300",
        "max_fires_per_hour": "60",
        "approval_timeout_seconds": "3600",
        "canary_min_requests": "50",
        "canary_alpha": "0.01",
        "canary_beta": "0.01",
        "canary_margin": "0.05",
        "ab_metric": "accuracy",
        "daily_budget_usd": "",
        "max_concurrent_runs": "",
        "priority_by": "",
        "conditions-TOTAL_FORMS": "1",
        "conditions-INITIAL_FORMS": "0",
        "conditions-0-role": "when",
        "conditions-0-order": "0",
        "conditions-0-kind": "metric",
        "conditions-0-metric": "f1_scroe",
        "conditions-0-aggregate": "latest",
        "conditions-0-operator": ">",
        "conditions-0-threshold": "0.9",
        "actions-TOTAL_FORMS": "0",
        "actions-INITIAL_FORMS": "0",
        "stages-TOTAL_FORMS": "0",
        "stages-INITIAL_FORMS": "0",
    }
    answer = client.post("/admin/control/policy/add/", data)
    assert answer.status_code == 200  # the form again, with the error
    assert "unknown metric &#x27;f1_scroe&#x27;" in answer.content.decode()
    assert not Policy.objects.exists()
    data["conditions-0-metric"] = "f1"
    assert client.post("/admin/control/policy/add/", data).status_code == 302
    assert Policy.objects.get().conditions.get().metric == "f1"


def test_every_metric_the_digits_recipe_logs_is_declared() -> None:
    ctx = LocalRunContext()
    RECIPES["digits"].load().train(ctx, {"epochs": 1, "hidden": 8})
    assert {p.name for p in ctx.points} == set(RECIPES["digits"].metrics)


def test_dry_run_and_backtest_show_how_close_each_condition_came() -> None:
    policy = make_policy(
        "good_enough",
        PolicyKind.CUSTOM,
        [
            {"kind": "metric", "metric": "accuracy", "operator": ">", "threshold": 0.9},
            {"kind": "metric", "metric": "val_loss", "operator": "<", "threshold": 0.5},
        ],
        [],
    )
    experiment = experiment_through("queue", "start", name="almost")
    record_run(experiment, {"accuracy": [0.5, 0.86, 0.84], "val_loss": [1.0, 0.4, 0.45]})

    dry = policy_dry_run(policy=policy, experiment=experiment)
    accuracy, val_loss = dry["conditions"]
    assert accuracy["passed"] is False and accuracy["short_by"] == pytest.approx(0.06)
    assert val_loss["passed"] is True and val_loss["short_by"] == 0

    hits, [miss] = policy_backtest_report(policy=policy, experiments=[experiment])
    assert hits == []
    closest = {c["condition"]: c for c in miss.conditions}
    assert closest["latest accuracy > 0.9"]["value"] == pytest.approx(0.86)
    assert closest["latest accuracy > 0.9"]["step"] == 2
    assert closest["latest accuracy > 0.9"]["short_by"] == pytest.approx(0.04)

    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get(
        f"/admin/control/policy/{policy.pk}/backtest/", {"experiments": [str(experiment.pk)], "run": "1"}
    )
    assert "Near misses" in page.content.decode() and "0.04" in page.content.decode()
    page = client.get(f"/admin/control/policy/{policy.pk}/dry-run/", {"experiment": experiment.pk})
    assert "0.06" in page.content.decode()


def test_a_condition_may_name_the_system_metrics_every_run_logs_but_not_a_misspelt_one() -> None:
    policy = make_policy(
        "memory_guard",
        PolicyKind.CUSTOM,
        [{"kind": "metric", "metric": "sys/rss_mb", "operator": ">", "threshold": 4000}],
        [],
        scope_recipes=["digits"],
    )
    with pytest.raises(ValidationError) as refused:
        make_policy(
            "memory_typo",
            PolicyKind.CUSTOM,
            [{"kind": "metric", "metric": "sys/rss_gb", "operator": ">", "threshold": 4}],
            [],
            scope_recipes=["digits"],
        )
    assert "'sys/rss_gb'" in refused.value.message_dict["metric"][0]

    # The condition reads the stored sys/ points like any metric.
    experiment = experiment_through("queue", "start", name="hungry")
    record_run(experiment, {"loss": [1.0, 0.5], "sys/rss_mb": [3000.0, 4500.0]})
    [memory] = policy_dry_run(policy=policy, experiment=experiment)["conditions"]
    assert memory["passed"] is True and memory["value"] == pytest.approx(4500.0)


def test_a_condition_may_name_the_held_out_evaluation_of_a_recipe_with_an_evaluator() -> None:
    policy = make_policy(
        "promote_on_eval",
        PolicyKind.AUTO_PROMOTE,
        [{"kind": "metric", "metric": "eval/macro_f1", "operator": ">", "threshold": 0.9}],
        [{"kind": "promote"}],
        scope_recipes=["digits"],
    )
    assert [c.metric for c in policy.conditions.all()] == ["eval/macro_f1"]
    with pytest.raises(ValidationError):
        # charlm's evaluation measures perplexity, not F1.
        make_policy(
            "charlm_on_eval",
            PolicyKind.AUTO_PROMOTE,
            [{"kind": "metric", "metric": "eval/macro_f1", "operator": ">", "threshold": 0.9}],
            [{"kind": "promote"}],
            scope_recipes=["charlm"],
        )
