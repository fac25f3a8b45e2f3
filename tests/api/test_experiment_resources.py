"""The API takes CPU cores and host memory per experiment; left out, the recipe's defaults apply."""

from __future__ import annotations

from django.test import Client

from experiments.recipes import RECIPES
from tests.api.conftest import post_json

URL = "/api/experiments"


def test_resources_default_to_the_recipe_and_can_be_overridden(api: Client) -> None:
    default = post_json(api, URL, {"name": "lm", "recipe": "charlm"})
    assert default.status_code == 201, default.content
    wanted = RECIPES["charlm"].resources
    assert (default.json()["cpu_cores"], default.json()["host_memory_gb"]) == (
        wanted.cpu_cores,
        wanted.host_memory_gb,
    )
    given = post_json(api, URL, {"name": "lm big", "recipe": "charlm", "cpu_cores": 8, "host_memory_gb": 24})
    assert (given.json()["cpu_cores"], given.json()["host_memory_gb"]) == (8, 24.0)


def test_zero_cores_is_a_field_error(api: Client) -> None:
    response = post_json(api, URL, {"name": "x", "recipe": "digits", "cpu_cores": 0})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "cpu_cores" and "greater than or equal to 1" in error["msg"]
