"""The OpenAPI schema and the Swagger page: behind login, complete, and served without the internet."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client

PAGE_ASSETS = re.compile(r'(?:src|href)="([^"]+)"')


def test_the_docs_page_loads_and_names_no_external_host(api: Client) -> None:
    response = api.get("/api/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assets = PAGE_ASSETS.findall(html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert all(a.startswith(settings.STATIC_URL) for a in assets), assets
    assert "http://" not in html and "https://" not in html and "//cdn" not in html


@pytest.mark.skipif(
    "ninja" not in settings.INSTALLED_APPS, reason="assets are served once 'ninja' is an installed app"
)
def test_the_docs_page_assets_are_served_from_the_installed_package(api: Client) -> None:
    html = api.get("/api/docs").content.decode()
    for asset in PAGE_ASSETS.findall(html):
        assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset


@pytest.mark.django_db
def test_the_docs_and_the_schema_need_a_login() -> None:
    for url in ("/api/docs", "/api/openapi.json"):
        response = Client().get(url)
        assert response.status_code == 302 and "/login/" in response["Location"], url


def test_the_openapi_schema_lists_every_endpoint_and_both_auth_schemes(api: Client) -> None:
    response = api.get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    assert set(paths["/api/experiments"]) == {"get", "post"}
    assert "get" in paths["/api/experiments/{experiment_id}"]
    assert "post" in paths["/api/experiments/{experiment_id}/actions/{event}"]
    schemes = schema["components"]["securitySchemes"]
    assert {scheme["type"] for scheme in schemes.values()} == {"http", "apiKey"}
    action = paths["/api/experiments/{experiment_id}/actions/{event}"]["post"]
    assert {"200", "201", "400", "401", "403", "404", "409", "422"} <= set(action["responses"])
