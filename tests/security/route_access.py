"""Who may reach each route: the expected answer of every page, API operation, serving endpoint and socket.

One row per route of the URL resolver (by name) and per websocket route (by pattern), with what each
of four people gets:

- anonymous: nobody logged in;
- nobody: logged in, without any permission;
- viewer: may look at experiments (experiments.view_experiment), nothing else;
- operator: the demo's Researchers group (create, start, cancel, promote, roll back, retrain...)
  plus the control pages (GPUs, Triggers), deciding on triggers, and seeing and editing policies.

A route added without a row here fails tests/security/test_route_access.py, which names the row to add.
Summarised for people in SECURITY.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("anonymous", "nobody", "viewer", "operator")

# Permissions of the roles beyond the Researchers group ("app_label.codename").
VIEWER_PERMISSIONS = ("experiments.view_experiment",)
OPERATOR_EXTRA_PERMISSIONS = (
    "control.view_device",
    "control.view_triggerevent",
    "control.change_triggerevent",
    "control.view_policy",
    "control.change_policy",
    "control.add_policy",
)

# HTTP outcomes.
ALLOWED = "allowed"  # past the access check: the view answered (2xx, 3xx but the login page, 400, 409...)
LOGIN = "login redirect"  # 302 to the login page with ?next=
UNAUTHORIZED = "401 JSON"  # programs: log in or send a bearer token
FORBIDDEN = "403"  # refused, naming no object
HIDDEN = "404"  # answered as for a missing object
ADMIN_LOGIN = "admin login redirect"  # the admin site's own login page

# Websocket outcomes: accepted, or closed at once with the code the page reads.
ACCEPTED = "accepted"
CLOSE_4401 = "close 4401"  # not logged in
CLOSE_4403 = "close 4403"  # no permission


@dataclass(frozen=True)
class Route:
    """The method a route is tried with, what each role gets, and the body of a POST."""

    method: str
    anonymous: str
    nobody: str
    viewer: str
    operator: str
    json: dict[str, Any] | None = None  # sent as application/json
    data: dict[str, Any] = field(default_factory=dict)  # sent as a form
    raw: str | None = None  # sent as is, as application/json
    # URL parameters that take another object than the default: parameter -> key of the objects.
    url_values: dict[str, str] = field(default_factory=dict)

    def expected(self, role: str) -> str:
        """Return the outcome this role should get."""
        return str(getattr(self, role))


# Values of the URL parameters, by name: objects the test creates (see test_route_access.py).
# "event" and "decision" are ones the operator may fire; the others refuse before they matter.
URL_VALUES = {
    "event": "queue",
    "decision": "reject",
    "model_name": "digits",
    "rest": "list",
    "name": "report.json",
}

ROUTES: dict[str, Route] = {
    # --- pages: experiments ---------------------------------------------------------------
    "experiments:list": Route("GET", LOGIN, FORBIDDEN, ALLOWED, ALLOWED),
    "experiments:create": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "experiments:detail": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED),
    "experiments:actions_fragment": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED),
    "experiments:action": Route("POST", LOGIN, HIDDEN, FORBIDDEN, ALLOWED),
    # Start pipeline: each start is the person's own queue event (its permission).
    "experiments:pipeline_start": Route("POST", LOGIN, HIDDEN, FORBIDDEN, ALLOWED),
    # A run's artifact: the experiment's view permission, like its page.
    "experiments:artifact_download": Route(
        "GET", LOGIN, HIDDEN, ALLOWED, ALLOWED, url_values={"run_id": "worker_run_id"}
    ),
    # --- pages: live view -----------------------------------------------------------------
    "live:fleet": Route("GET", LOGIN, FORBIDDEN, ALLOWED, ALLOWED),
    "live:fleet_rows": Route("GET", LOGIN, FORBIDDEN, ALLOWED, ALLOWED),
    "live:compare": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED),
    # run_id: a worker run of the experiment (the default run_id is an external run's, for /api/runs).
    "live:run_log": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED, url_values={"run_id": "worker_run_id"}),
    # --- pages: control -------------------------------------------------------------------
    "control:gpus": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "control:gpu_rows": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "triggers:list": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "triggers:rows": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "triggers:decide": Route("POST", LOGIN, HIDDEN, HIDDEN, ALLOWED),
    # --- pages: policies ------------------------------------------------------------------
    "policies:list": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "policies:new": Route("GET", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    "policies:edit": Route("GET", LOGIN, HIDDEN, HIDDEN, ALLOWED),
    # The preview's body names no experiment: a 422 past the access check.
    "policies:preview": Route("POST", LOGIN, FORBIDDEN, FORBIDDEN, ALLOWED),
    # --- registry, deployments ------------------------------------------------------------
    "registry:index": Route("GET", LOGIN, FORBIDDEN, ALLOWED, ALLOWED),
    "registry:rollback": Route("POST", LOGIN, HIDDEN, FORBIDDEN, ALLOWED),
    "deployments:model": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED),
    "deployments:live": Route("GET", LOGIN, HIDDEN, ALLOWED, ALLOWED),
    "deployments:promote": Route("POST", LOGIN, HIDDEN, FORBIDDEN, ALLOWED),
    "deployments:canary_rollback": Route("POST", LOGIN, HIDDEN, FORBIDDEN, ALLOWED),
    # Cancelling an A/B test needs control.change_abtest, which no role here holds.
    "deployments:ab_cancel": Route("POST", LOGIN, HIDDEN, FORBIDDEN, FORBIDDEN),
    # --- serving (programs; bearer tokens too): a body that is not JSON is a 400 once admitted ---
    "registry:predict": Route("POST", UNAUTHORIZED, FORBIDDEN, ALLOWED, ALLOWED, raw="not json"),
    "registry:feedback": Route("POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, raw="not json"),
    # --- the JSON API ---------------------------------------------------------------------
    # /api/ itself has nothing to show (ninja's docs live at /api/docs): 404 once logged in.
    "api:api-root": Route("GET", LOGIN, HIDDEN, HIDDEN, HIDDEN),
    "api:openapi-json": Route("GET", LOGIN, ALLOWED, ALLOWED, ALLOWED),
    "api:openapi-view": Route("GET", LOGIN, ALLOWED, ALLOWED, ALLOWED),
    "api:experiment_list": Route("GET", UNAUTHORIZED, FORBIDDEN, ALLOWED, ALLOWED),
    "api:experiment_create_view": Route(
        "POST",
        UNAUTHORIZED,
        FORBIDDEN,
        FORBIDDEN,
        ALLOWED,
        json={"name": "made by the access test", "recipe": "digits"},
    ),
    "api:experiment_detail": Route("GET", UNAUTHORIZED, HIDDEN, ALLOWED, ALLOWED),
    "api:experiment_action": Route(
        "POST", UNAUTHORIZED, HIDDEN, FORBIDDEN, ALLOWED, json={"reason": "tried by the access test"}
    ),
    "api:experiment_metrics": Route("GET", UNAUTHORIZED, HIDDEN, ALLOWED, ALLOWED),
    # Pipelines: editing edges is creating experiments' permission; starting one, the queue permission.
    "api:dependency_add_view": Route(
        "POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"experiment_id": 1, "after": "finished"}
    ),
    "api:dependency_remove_view": Route(
        "DELETE", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, url_values={"experiment_id": "student_id"}
    ),
    "api:pipeline_start_view": Route("POST", UNAUTHORIZED, HIDDEN, FORBIDDEN, ALLOWED, json={}),
    "api:experiment_step_times": Route("GET", UNAUTHORIZED, HIDDEN, ALLOWED, ALLOWED),
    # External runs: starting and writing to runs is the Start button's permission (queue_experiment).
    "api:run_start_view": Route(
        "POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"experiment": "made by the access test"}
    ),
    "api:run_detail_view": Route("GET", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED),
    "api:run_metrics_view": Route("POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"points": []}),
    "api:run_heartbeat_view": Route("POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={}),
    "api:run_finish_view": Route(
        "POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"status": "completed"}
    ),
    "api:run_params_view": Route("POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"params": {}}),
    "api:run_tags_view": Route("POST", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED, json={"tags": {}}),
    "api:queue": Route("GET", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED),
    "api:gpus": Route("GET", UNAUTHORIZED, FORBIDDEN, FORBIDDEN, ALLOWED),
    # --- the MLflow tracking API (programs): a bearer token or HTTP basic credentials, never the
    # session cookie (its routes skip CSRF), so every role of this table is refused alike; the
    # permissions behind the credentials: tests/mlflow/test_mlflow_api.py ---
    "mlflow:experiments_create": Route(
        "POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}
    ),
    "mlflow:experiments_get": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:experiments_get_by_name": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:experiments_search": Route(
        "POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}
    ),
    "mlflow:experiments_set_tag": Route(
        "POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}
    ),
    "mlflow:runs_create": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:runs_get": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:runs_update": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:runs_search": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:runs_log_metric": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:runs_log_batch": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:runs_log_parameter": Route(
        "POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}
    ),
    "mlflow:runs_set_tag": Route("POST", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, json={}),
    "mlflow:metrics_get_history": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:artifacts_list": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:artifacts": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    "mlflow:not_offered": Route("GET", UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED),
    # --- open to all ----------------------------------------------------------------------
    "healthz": Route("GET", ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    "login": Route("GET", ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    "logout": Route("POST", ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    "favicon": Route("GET", ALLOWED, ALLOWED, ALLOWED, ALLOWED),
}

# The admin site keeps its own checks (active staff, then model permissions): none of the four is
# staff, so each is sent to the admin's login page. Every admin route is checked to be the admin's.
ADMIN_SAMPLES: dict[str, Route] = {
    "admin:index": Route("GET", ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN),
    "admin:experiments_experiment_changelist": Route(
        "GET", ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN
    ),
}

# Websocket routes of crucible_ui/routing.py, by pattern.
WEBSOCKETS: dict[str, Route] = {
    "ws/experiments/<int:experiment_id>/": Route("WS", CLOSE_4401, CLOSE_4403, ACCEPTED, ACCEPTED),
    "ws/fleet/": Route("WS", CLOSE_4401, CLOSE_4403, ACCEPTED, ACCEPTED),
    "ws/gpus/": Route("WS", CLOSE_4401, CLOSE_4403, CLOSE_4403, ACCEPTED),
    "ws/triggers/": Route("WS", CLOSE_4401, CLOSE_4403, CLOSE_4403, ACCEPTED),
}
