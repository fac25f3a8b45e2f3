"""The detail page: state badge, config, lineage, history, graph, and only the buttons one may press now."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from experiments.actors import Actor
from experiments.models import Experiment
from experiments.services import experiment_retrain, experiment_transition


def _buttons(html: str) -> set[str]:
    """Return the events offered as buttons in the actions block."""
    return set(re.findall(r'<button [^>]*data-event="(\w+)"', html))


def _detail(client: Client, experiment: Experiment) -> str:
    response = client.get(reverse("experiments:detail", args=[experiment.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_detail_shows_state_badge_config_and_resources(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(
        "digits wide", state="queued", config={"hidden": 512}, gpus=2, gpu_type="H100", tags=["wide"]
    )
    html = _detail(researcher_client, experiment)
    assert re.search(
        r'<span id="state-badge" class="badge state-queued" data-state="queued">Queued</span>', html
    )
    assert re.search(r"<code[^>]*>hidden</code>", html) and "<code>512</code>" in html
    assert 'class="changed"' in html  # hidden differs from its default
    assert "2 \u00d7 H100" in html
    assert '<span class="tag">wide</span>' in html
    assert f'data-ws-path="/ws/experiments/{experiment.pk}/"' in html


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("pending", {"queue", "cancel"}),
        ("queued", {"cancel"}),
        ("running", {"cancel"}),
        ("evaluating", {"promote", "hold", "cancel"}),
        ("completed", {"promote", "cancel", "retrain"}),
        ("promoting", {"rollback", "cancel", "deploy"}),
        ("deployed", {"rollback", "retrain"}),
        ("failed", {"retry", "retrain"}),
        ("cancelled", {"retrain"}),
    ],
)
def test_researcher_sees_the_buttons_of_the_current_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment], state: str, expected: set[str]
) -> None:
    html = _detail(researcher_client, make_experiment(state=state))
    assert _buttons(html) == expected


def test_scheduler_events_are_never_buttons_even_for_a_superuser(
    client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    client.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    html = _detail(client, make_experiment(state="running"))
    assert _buttons(html) == {"cancel"}


def test_person_without_promote_permission_sees_no_promote(
    client: Client, make_user: Callable[..., User], make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="evaluating")
    client.force_login(make_user("cat", perms=["view_experiment", "cancel_experiment"]))
    assert _buttons(_detail(client, experiment)) == {"cancel"}
    client.force_login(make_user("pam", perms=["view_experiment", "promote_experiment"]))
    assert _buttons(_detail(client, experiment)) == {"promote", "hold"}


def test_person_without_any_permission_sees_no_buttons(
    client: Client, viewer: User, make_experiment: Callable[..., Experiment]
) -> None:
    client.force_login(viewer)
    html = _detail(client, make_experiment())
    assert _buttons(html) == set()
    assert "Nothing to do here right now" in html


def test_cancel_and_rollback_ask_for_confirmation_in_a_dialog(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment(state="promoting")
    html = _detail(researcher_client, experiment)
    for event in ("cancel", "rollback"):
        dialog_id = f"confirm-{event}-{experiment.pk}"
        assert f'data-dialog-open="{dialog_id}"' in html
        dialog = html[html.index(f'<dialog id="{dialog_id}"') :]
        dialog = dialog[: dialog.index("</dialog>")]
        assert f'action="{reverse("experiments:action", args=[experiment.pk, event])}"' in dialog
        assert "csrfmiddlewaretoken" in dialog
        assert 'name="reason"' in dialog
    # Deploy does not need one: a plain POST form.
    assert 'data-dialog-open="confirm-deploy' not in html


def test_history_lists_each_transition_with_actor_and_reason(
    researcher_client: Client, researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    experiment_transition(
        experiment_id=experiment.pk, event="queue", actor=Actor.for_user(researcher), reason="ready to go"
    )
    experiment_transition(experiment_id=experiment.pk, event="cancel", actor=Actor.policy("budget"))
    html = _detail(researcher_client, experiment)
    history = html[html.index('id="history-table"') :]
    rows = re.findall(r'<tr data-event="(\w+)">', history)
    assert rows == ["queue", "cancel"]
    assert "user:ana" in history and "ready to go" in history and "policy:budget" in history


def test_lineage_links_parent_and_children(
    researcher_client: Client, researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    parent = make_experiment("base", state="failed")
    child = experiment_retrain(experiment_id=parent.pk, actor=Actor.for_user(researcher))
    parent_html = _detail(researcher_client, parent)
    child_html = _detail(researcher_client, child)
    assert f'href="{child.get_absolute_url()}"' in parent_html
    assert f'href="{parent.get_absolute_url()}"' in child_html


def test_state_graph_highlights_the_current_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    html = _detail(researcher_client, make_experiment(state="running"))
    assert '<svg class="state-graph"' in html
    assert re.search(r'<g class="sg-node state-running current" data-state="running">', html)
    assert re.search(r'<g class="sg-node state-queued visited" data-state="queued">', html)


def test_actions_fragment_returns_only_the_buttons(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment()
    response = researcher_client.get(reverse("experiments:actions_fragment", args=[experiment.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div class="actions" id="experiment-actions"')
    assert "<html" not in html
    assert _buttons(html) == {"queue", "cancel"}


def test_missing_experiment_is_a_404(researcher_client: Client) -> None:
    assert researcher_client.get(reverse("experiments:detail", args=[999])).status_code == 404
    assert researcher_client.get(reverse("experiments:actions_fragment", args=[999])).status_code == 404


def test_the_step_forward_is_the_prominent_first_button_and_cancel_comes_last(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    html = _detail(researcher_client, make_experiment(state="evaluating"))
    order = re.findall(r'<button [^>]*class="btn btn-(\w+)( btn-primary)?"', html)
    actions = [(event, bool(primary)) for event, primary in order if event in {"promote", "hold", "cancel"}]
    assert actions == [("promote", True), ("hold", False), ("cancel", False)]


def test_lineage_names_the_curated_dataset_and_the_registered_model_versions(
    researcher_client: Client, researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    from experiments.models import DatasetVersion, ModelStage, ModelVersion

    parent = make_experiment("base", state="failed")
    dataset = DatasetVersion.objects.create(
        model_name="digits", version=3, strategy="hard_examples", path="d.npz", sha256="0" * 64,
        size=10, row_count=42, created_by="policy:drift_retrain",
    )  # fmt: skip
    child = experiment_retrain(
        experiment_id=parent.pk, actor=Actor.for_user(researcher), dataset_version=dataset
    )
    ModelVersion.objects.create(
        model_name="digits", version=7, recipe="digits", experiment=child, checkpoint_path="/c.pt",
        checkpoint_sha256="1" * 64, stage=ModelStage.CANARY, dataset_version=dataset,
    )  # fmt: skip
    html = _detail(researcher_client, child)
    assert "digits dataset v3" in html and "42 curated hard_examples rows" in html
    assert 'href="/registry/digits/"' in html and "digits v7" in html
    assert child.config["extra_data"] == dataset.pk
    assert "none: promoting registers its checkpoint" in _detail(researcher_client, parent)


def _next_step(html: str) -> str:
    match = re.search(r'<p class="next-step[^"]*" id="next-step"[^>]*>(.*?)</p>', html, re.S)
    assert match, "the actions block has no next-step line"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("pending", "<em>Start</em> queues it"),
        ("queued", "it waits for a free worker slot"),
        ("running", "it is training on a worker"),
        ("evaluating", "<em>Promote</em> registers its checkpoint as a new version of"),
        ("completed", "it is held for review"),
        ("promoting", "each stage is judged once it has lasted its time and served enough requests"),
        ("deployed", "it is in production"),
        ("failed", "<em>Retry</em> queues it again"),
        ("cancelled", "it stopped for good"),
        ("rolled_back", "previous production version restored"),
    ],
)
def test_every_state_says_what_happens_next(
    researcher_client: Client, make_experiment: Callable[..., Experiment], state: str, says: str
) -> None:
    assert says in _next_step(_detail(researcher_client, make_experiment(state=state)))


def test_a_canary_under_way_links_its_deployment_page_and_deploy_is_not_the_prominent_button(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    html = _detail(researcher_client, make_experiment(state="promoting"))
    assert f'href="{reverse("deployments:model", args=["digits"])}" id="next-step-deployment"' in html
    # Waiting for the canary is the step forward; Deploy skips its stages, so it is not the default.
    assert re.search(r'class="btn btn-deploy"', html)
    assert "btn-deploy btn-primary" not in html
