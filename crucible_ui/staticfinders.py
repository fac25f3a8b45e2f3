"""A staticfiles finder that serves plotly.min.js straight from the installed plotly package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_NAME = "vendor/plotly.min.js"


def plotly_js_path() -> Path:
    """Return the path of plotly.min.js inside the installed plotly package."""
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class PlotlyFinder(BaseFinder):
    """Expose the plotly package's bundled plotly.min.js as static/vendor/plotly.min.js."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=str(plotly_js_path().parent))
        self.storage.prefix = "vendor"  # type: ignore[attr-defined]

    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:  # type: ignore[override]
        if path != PLOTLY_STATIC_NAME:
            return [] if find_all else ""
        match = str(plotly_js_path())
        return [match] if find_all else match

    def list(self, ignore_patterns: Any) -> Any:
        yield "plotly.min.js", self.storage
