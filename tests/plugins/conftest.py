"""Plug-in tests: each gets a clean catalog and a folder on sys.path; the catalog is put back after."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from experiments.recipes import RECIPES

from .helpers import install_example


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for plug-in modules and dist-info; the catalog reads it afresh."""
    folder = tmp_path / "site"
    folder.mkdir()
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(folder))
    RECIPES.configure([])
    yield folder
    monkeypatch.undo()
    for name in set(sys.modules) - before:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(folder)):
            del sys.modules[name]
    RECIPES.configure(settings.CRUCIBLE_RECIPES)


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with examples/recipe-plugin pip-installed into it (once per session)."""
    target = tmp_path_factory.mktemp("example-site")
    install_example(target, tmp_path_factory.mktemp("example-build"))
    return target
