"""The deployment page shows a running A/B test: its arms, their shares and requests, the effect's interval.

The arms are really trained digits checkpoints (one of them fails half its requests) answering
real predictions routed by serving; what the page says is checked against the served rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

import experiments.registry.serving as serving
from control.canary.ab import ab_test_start
from control.canary.sequential import paired_comparison
from control.policies.authoring import policy_create
from experiments.models import ModelVersion, ServedRequest
from experiments.registry.services import model_version_register
from tests.digits_models import FEATURES, SYSTEM, evaluating_digits_experiment, train_digits
from tests.views.conftest import Finished

PAGE = "/registry/digits/"
ALPHA = 0.05
MARGIN = 0.05


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> Iterator[None]:
    # Row ids are reused after a test's rollback: a cached model must not outlive its row.
    serving.clear_cache()
    yield
    serving.clear_cache()


@pytest.fixture(scope="session")
def flaky_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits model that fails half the requests it serves (the recipe's serve_error_rate)."""
    path, _ = train_digits(
        tmp_path_factory.mktemp("ab-flaky"), epochs=2, hidden=16, seed=0, serve_error_rate=0.5
    )
    return path


@pytest.fixture
def arms(
    in_production: ModelVersion, finished: Finished, flaky_checkpoint: Path
) -> tuple[ModelVersion, ModelVersion]:
    """digits v2 (sound) and v3 (flaky) in an A/B test on error rate; production v1 is not an arm."""
    good = model_version_register(experiment_id=finished("good").pk)
    flaky = model_version_register(experiment_id=evaluating_digits_experiment("flaky", flaky_checkpoint).pk)
    policy = policy_create(
        name="digits-ab",
        kind="ab_test",
        ab_metric="error_rate",
        canary_min_requests=1000,  # the sweep must not end it while the page is looked at
        canary_alpha=ALPHA,
        canary_margin=MARGIN,
    )
    ab_test_start(model_name="digits", version_ids=[good.pk, flaky.pk], policy=policy, actor=SYSTEM)
    return good, flaky


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _outcomes(version: ModelVersion) -> list[bool]:
    return list(ServedRequest.objects.filter(version=version).order_by("id").values_list("ok", flat=True))


def test_a_running_ab_test_shows_arms_shares_requests_and_the_current_interval(
    viewer: User, arms: tuple[ModelVersion, ModelVersion]
) -> None:
    good, flaky = arms
    # Draws below 50 go to the first arm, the rest to the second: 24 and 16 requests.
    for i in range(40):
        # The flaky arm's failures are recorded (and raised): they are what the test compares.
        with contextlib.suppress(serving.ServingError):
            serving.predict(model_name="digits", payload=FEATURES, draw=10.0 if i % 5 < 3 else 60.0)

    html = _client(viewer).get(PAGE).content.decode()

    assert 'id="ab-test"' in html and 'id="ab-test-status">Running<' in html
    for version, served in ((good, 24), (flaky, 16)):
        assert ServedRequest.objects.filter(version=version).count() == served
        row = (
            f'<tr data-version="{version.version}"><td>v{version.version}</td><td>Canary</td>'
            f"<td>50%</td><td>{served}</td><td>{served}</td></tr>"
        )
        assert row in html
    assert "<td>v1</td><td>Production (not an arm)</td><td>0%</td>" in html
    assert 'id="split-production" data-pct="0"' in html  # the split bar agrees: the arms take it all
    expected = paired_comparison(a=_outcomes(good), b=_outcomes(flaky), alpha=ALPHA, margin=MARGIN)
    assert expected.pairs == 16 and expected.effect > 0  # the sound arm answered more of the pairs
    shown = (
        f"v{good.version} &minus; v{flaky.version}: <strong>{expected.effect:.4f}</strong> "
        f"in [{expected.low:.4f}, {expected.high:.4f}] over 16 pairs"
    )
    assert shown in html
    assert "ab-test-start" not in html  # starting one is for staff with the add permission


def test_staff_who_may_start_one_get_a_link_to_the_admin_form(
    make_user: Callable[..., User], in_production: ModelVersion, viewer: User
) -> None:
    staff = make_user("stan", ["view_experiment"])
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    staff.user_permissions.add(
        Permission.objects.get(content_type__app_label="control", codename="add_abtest")
    )

    html = _client(staff).get(PAGE).content.decode()
    assert 'id="ab-test-start" href="/admin/control/abtest/add/?model_name=digits"' in html
    # Someone who may only look sees no A/B card at all while no test runs.
    assert 'id="ab-test"' not in _client(viewer).get(PAGE).content.decode()
