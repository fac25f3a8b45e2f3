"""Light pages: hashed, gzipped static files cached for a year; charts' first points in the page; no write per request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.db import connection
from django.templatetags.static import static
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from crucible_ui.staticfinders import plotly_js_path
from experiments.live.initial import TAIL_POINTS
from experiments.models import Experiment
from tests.live.helpers import log_points, run_for

WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def _writes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if WRITE.match(q["sql"])]


def test_collected_static_files_are_linked_by_hashed_name_and_served_gzipped_for_a_year(
    settings: Any, tmp_path: Path
) -> None:
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)

    url = static("vendor/plotly.min.js")
    assert re.fullmatch(r"/static/vendor/plotly\.min\.[0-9a-f]{12}\.js", url), url
    response = Client().get(url, HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
    assert int(re.search(r"max-age=(\d+)", response["Cache-Control"]).group(1)) >= 365 * 24 * 3600  # type: ignore[union-attr]
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert len(body) < plotly_js_path().stat().st_size / 2

    # Our own files too, and a client that takes no gzip gets the plain file.
    css = static("css/app.css")
    assert re.fullmatch(r"/static/css/app\.[0-9a-f]{12}\.css", css), css
    plain = Client().get(css)
    assert plain.status_code == 200 and "Content-Encoding" not in plain


def test_after_collectstatic_the_experiment_page_links_only_hashed_static_files(
    settings: Any, tmp_path: Path, researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)
    experiment = make_experiment("hashed", state="pending")

    html = researcher_client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()
    linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    names = {Path(url).name for url in linked}
    # The live view's script, its stylesheet, plotly.js and the history prefetch among them.
    for stem, ext in (("live.", ".js"), ("live.", ".css"), ("live_prefetch.", ".js"), ("plotly.min.", ".js")):
        assert any(name.startswith(stem) and name.endswith(ext) for name in names), (stem, ext, names)
    unhashed = [url for url in linked if not re.search(r"\.[0-9a-f]{12}\.\w+$", url)]
    assert unhashed == [], unhashed


def test_a_name_no_finder_has_is_no_match_not_an_empty_path() -> None:
    # WhiteNoise (in DEBUG) asks the finders for every hashed name it is sent; a "" match
    # from the plotly finder made those requests fail with a 500.
    assert finders.find("vendor/plotly.min.0123456789ab.js") is None
    assert finders.find("vendor/plotly.min.js") == str(plotly_js_path())


def test_without_collectstatic_pages_link_plain_names_that_are_still_served(
    settings: Any, tmp_path: Path
) -> None:
    settings.STATIC_ROOT = tmp_path / "nothing-collected"
    url = static("vendor/plotly.min.js")
    assert url == "/static/vendor/plotly.min.js"
    response = Client().get(url)
    assert response.status_code == 200


def test_the_experiment_page_holds_the_newest_points_and_asks_for_history_before_plotly(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment("curves", state="running")
    run = run_for(experiment)
    log_points(run, "loss", [(step, 1.0 / step) for step in range(1, TAIL_POINTS + 51)])
    log_points(run, "accuracy", [(10, 0.5), (20, None)])

    html = researcher_client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()
    data = re.search(r'<script id="live-initial-series" type="application/json">(.*?)</script>', html, re.S)
    assert data, "the page carries no initial series"
    initial = json.loads(data.group(1))
    loss = initial["series"]["loss"]
    assert loss["steps"] == list(range(51, TAIL_POINTS + 51))  # the newest, in order
    assert loss["values"][-1] == pytest.approx(1.0 / (TAIL_POINTS + 50))
    assert initial["series"]["accuracy"] == {"steps": [10, 20], "values": [0.5, None]}
    assert initial["last_step"] == TAIL_POINTS + 50
    # The history request is started by an async script before the deferred plotly.js.
    prefetch = html.index("js/live_prefetch")
    assert prefetch < html.index("vendor/plotly.min")
    assert re.search(r'<script src="[^"]*js/live_prefetch[^"]*" async>', html)


def test_the_hot_pages_write_nothing_for_sessions_users_or_permissions(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    experiment = make_experiment("hot", state="pending")
    log_points(run_for(experiment), "loss", [(1, 0.5)])
    researcher_client.get(reverse("experiments:list"))  # the session's first request is behind us

    for url in (
        reverse("experiments:list"),
        reverse("experiments:detail", args=[experiment.pk]),
        f"/api/experiments/{experiment.pk}/metrics",
    ):
        with CaptureQueriesContext(connection) as queries:
            assert researcher_client.get(url).status_code == 200
        assert _writes(queries) == [], url

    with CaptureQueriesContext(connection) as queries:
        response = researcher_client.post(reverse("experiments:action", args=[experiment.pk, "queue"]))
    assert response.status_code in {200, 302}
    touched = " ".join(_writes(queries))
    assert "experiments_experiment" in touched  # the transition itself is written ...
    for table in ("django_session", "auth_user", "axes_"):  # ... and nothing for who asked
        assert table not in touched, f"{table} written by an action: {touched}"
