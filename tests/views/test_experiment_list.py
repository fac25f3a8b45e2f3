"""The list page: state chips with counts, search by name, sort, pages."""

from __future__ import annotations

import re
from collections.abc import Callable

from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import Experiment
from experiments.views import PAGE_SIZE


def _names(html: str) -> list[str]:
    """Return the experiment names in table order."""
    return re.findall(r'<a class="strong" href="/experiments/\d+/">([^<]+)</a>', html)


def _chip_count(html: str, state: str) -> int:
    match = re.search(rf'data-state="{state}"[^>]*>.*?<span class="count">(\d+)</span>', html, re.S)
    assert match, f"no chip for {state}"
    return int(match.group(1))


def test_list_shows_every_experiment_with_recipe_state_and_owner(
    researcher_client: Client, researcher: object, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("alpha", owner=researcher)
    make_experiment("beta", state="running", recipe="charlm")
    html = researcher_client.get(reverse("experiments:list")).content.decode()
    assert set(_names(html)) == {"alpha", "beta"}
    assert "<code>charlm</code>" in html
    assert 'class="badge state-running"' in html
    assert ">ana<" in html


def test_state_chips_count_experiments_per_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("a")
    make_experiment("b")
    make_experiment("c", state="queued")
    make_experiment("d", state="failed")
    html = researcher_client.get(reverse("experiments:list")).content.decode()
    assert _chip_count(html, "pending") == 2
    assert _chip_count(html, "queued") == 1
    assert _chip_count(html, "failed") == 1
    assert _chip_count(html, "deployed") == 0


def test_filter_by_state_shows_only_that_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("waiting")
    make_experiment("in queue", state="queued")
    html = researcher_client.get(reverse("experiments:list"), {"state": "queued"}).content.decode()
    assert _names(html) == ["in queue"]


def test_unknown_state_filter_is_ignored_not_an_error(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("one")
    response = researcher_client.get(
        reverse("experiments:list"), {"state": "bogus", "sort": "nope", "page": "x"}
    )
    assert response.status_code == 200
    assert _names(response.content.decode()) == ["one"]


def test_search_by_name_narrows_the_list_and_its_counts(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("digits baseline")
    make_experiment("digits wide", state="queued")
    make_experiment("charlm small", recipe="charlm")
    html = researcher_client.get(reverse("experiments:list"), {"q": "DIGITS"}).content.decode()
    assert set(_names(html)) == {"digits baseline", "digits wide"}
    assert _chip_count(html, "pending") == 1
    assert _chip_count(html, "queued") == 1


def test_sort_by_name_priority_and_state(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment("b-offline", priority_class="offline", priority=9)
    make_experiment("c-realtime-low", state="failed", priority_class="realtime", priority=1)
    make_experiment("a-realtime-high", state="queued", priority_class="realtime", priority=8)
    url = reverse("experiments:list")
    assert _names(researcher_client.get(url, {"sort": "name"}).content.decode()) == [
        "a-realtime-high",
        "b-offline",
        "c-realtime-low",
    ]
    assert _names(researcher_client.get(url, {"sort": "priority"}).content.decode()) == [
        "a-realtime-high",
        "c-realtime-low",
        "b-offline",
    ]
    # Lifecycle order: pending, queued, ..., failed.
    assert _names(researcher_client.get(url, {"sort": "state"}).content.decode()) == [
        "b-offline",
        "a-realtime-high",
        "c-realtime-low",
    ]
    # Newest first is the default.
    assert _names(researcher_client.get(url).content.decode())[0] == "a-realtime-high"


def test_long_lists_are_split_into_pages(
    researcher_client: Client, make_experiment: Callable[..., Experiment]
) -> None:
    for i in range(PAGE_SIZE + 3):
        make_experiment(f"exp {i:02d}")
    first = researcher_client.get(reverse("experiments:list"), {"sort": "name"}).content.decode()
    second = researcher_client.get(
        reverse("experiments:list"), {"sort": "name", "page": "2"}
    ).content.decode()
    assert len(_names(first)) == PAGE_SIZE
    assert _names(second) == [f"exp {i:02d}" for i in range(PAGE_SIZE, PAGE_SIZE + 3)]
    assert "Page 1 of 2" in first


def test_new_experiment_button_only_for_people_who_may_create(
    client: Client, researcher: object, viewer: object
) -> None:
    client.login(username="ana", password="pw-ana-123")
    assert reverse("experiments:create") in client.get(reverse("experiments:list")).content.decode()
    client.login(username="vic", password="pw-vic-123")
    assert reverse("experiments:create") not in client.get(reverse("experiments:list")).content.decode()


def test_list_page_queries_do_not_grow_with_the_number_of_rows(
    researcher_client: Client, researcher: User, make_experiment: Callable[..., Experiment]
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert researcher_client.get(reverse("experiments:list")).status_code == 200
        return len(ctx.captured_queries)

    make_experiment("first", owner=researcher)
    few = queries()
    for i in range(10):
        make_experiment(f"more {i}", owner=researcher, tags=["t"])
    assert queries() == few
