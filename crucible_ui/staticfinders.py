"""Static files: a finder that serves plotly.min.js from the installed plotly package, and the storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage

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
            # No match is [] either way, as Django's own finders answer: anything else (an empty
            # string) would be collected by finders.find() as a match named "".
            return []
        match = str(plotly_js_path())
        return [match] if find_all else match

    def list(self, ignore_patterns: Any) -> Any:
        yield "plotly.min.js", self.storage


class HashedCompressedStaticStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's hashed and gzipped storage, linking hashed names whenever collectstatic made them.

    Django links plain names while DEBUG is on; here the manifest decides, so `make run`
    (DEBUG, after its collectstatic) serves the same cacheable files as production. A name
    the manifest lacks (nothing collected yet: tests, a fresh checkout) links its plain
    name, which the finders serve, instead of failing the page.
    """

    manifest_strict = False

    def url(self, name: str | None, force: bool = False) -> str:
        if name and self.hashed_files.get(self.hash_key(self.clean_name(name))):
            return super().url(name, force=True)
        return FileSystemStorage.url(self, name)
