"""The JSON API under schemathesis: generated requests, every check, never a server error or a schema breach."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from axes.utils import reset as axes_reset
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from crucible_ui.api import api
from experiments.api.tokens import api_token_create

# Few cases per operation, always the same ones: a regression shows up on every run, and the
# suite stays quick on a busy machine.
MAX_EXAMPLES = 12


@pytest.fixture
def api_token(db: Any) -> str:
    """A token of a superuser: every operation runs its real code, not just its permission check."""
    user = User.objects.create_superuser("fuzz", email="")
    return api_token_create(user=user, name="fuzzing")[1]


@pytest.fixture
def _connection_kept(db: Any) -> Iterator[None]:
    """Keep the database connection open across requests to the WSGI application.

    A WSGI handler closes it after each request; like Django's test client, keep it, or the
    test's transaction (SQLite or PostgreSQL) would go with it.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


# The schema the app serves at /api/openapi.json (that it is served to a bearer token is
# tested in test_api_errors.py); requests go to the project's WSGI application in process.
# Every check runs on every operation. Where the API deliberately checks more than a JSON
# schema can say, a schema-valid request may be refused with the documented status: a
# recipe's config (422 naming the parameter), an unknown event (400 listing the known ones),
# hand-parsed metric query parameters (400 naming the field), an external run's config and keys,
# a dependency that would close a cycle.
_ACCEPTED = ["2xx", "401", "403", "404", "409"]
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                "include-operation-id": "experiments_api_routes_experiment_create_view",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "422"]}},
            },
            # External runs: a recipe's config (422 naming the parameter), parameter and tag keys
            # (at most 250 characters, 422 naming the key), metric names under the reserved sys/.
            *(
                {
                    "include-operation-id": f"experiments_api_runs_{name}",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "422"]}},
                }
                for name in ("run_start_view", "run_params_view", "run_tags_view", "run_metrics_view")
            ),
            # A dependency that would close a cycle, or on an experiment past waiting (422 on depends_on).
            {
                "include-operation-id": "experiments_api_routes_dependency_add_view",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "422"]}},
            },
            {
                "include-operation-id": "experiments_api_routes_experiment_action",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
            },
            {
                "include-operation-id": "experiments_live_api_experiment_metrics",
                "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, "400"]}},
            },
        ]
    }
)
schema = schemathesis.openapi.from_dict(api.get_openapi_schema(), config=CONFIG)
schema.app = get_wsgi_application()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.usefixtures("_connection_kept")
def test_the_api_answers_every_generated_request_within_its_schema(case: Any, api_token: str) -> None:
    # The auth check sends wrong tokens on purpose; across many cases they would lock this
    # address out (429, tested in test_login_tokens.py) and hide every later answer.
    axes_reset()
    case.call_and_validate(headers={"Authorization": f"Bearer {api_token}"})
