"""Stages and artifacts for recipes (see base.RunOutputs): helpers that work on any run context.

No torch and no Django: the worker's context and the local one store artifacts with the same
function, so names are checked and files written the same way everywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One path segment: no separators, no hidden files, nothing a URL or a shell reads differently.
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ARTIFACT_KINDS = ("file", "report", "table", "samples", "model")


def artifact_name_error(name: Any) -> str:
    """Return why name cannot be an artifact's name, or "" when it can."""
    if not isinstance(name, str) or not _ARTIFACT_NAME.match(name) or ".." in name:
        return (
            f"artifact name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
            "start with a letter or digit and contain no '..'"
        )
    return ""


def stage_name_error(name: Any) -> str:
    """Return why name cannot be a stage's name, or "" when it can."""
    if not isinstance(name, str) or not _STAGE_NAME.match(name):
        return f"stage name {name!r} must be 1-40 lowercase letters, digits or '_', starting with a letter"
    return ""


@dataclass(frozen=True)
class StoredArtifact:
    """Where an artifact was written, and what was written."""

    path: Path
    size: int
    sha256: str


def artifact_write(
    folder: Path, name: str, data: bytes | str | os.PathLike[str], kind: str
) -> StoredArtifact:
    """Write data (bytes, text, or a copy of the file at a path) to folder/name atomically; raise ValueError on a bad name or kind."""
    problem = artifact_name_error(name)
    if problem:
        raise ValueError(problem)
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"artifact kind {kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.tmp"
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    elif isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        source = Path(data)
        if not source.is_file():
            raise ValueError(f"artifact {name!r}: {source} is not a file")
        shutil.copyfile(source, tmp)
    digest = hashlib.sha256()
    with tmp.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    tmp.replace(final)
    return StoredArtifact(path=final, size=final.stat().st_size, sha256=digest.hexdigest())


def completed_stages(ctx: Any) -> frozenset[str]:
    """Return the stages ctx says are completed (none on a context without stages)."""
    method = getattr(ctx, "completed_stages", None)
    return frozenset(method()) if callable(method) else frozenset()


def stage_completed(ctx: Any, name: str) -> bool:
    """Return True when stage name was completed by this attempt or an earlier one (skip it then)."""
    return name in completed_stages(ctx)


class StageMark:
    """The handle `stage` yields: abandon() when the block stopped before its work was done."""

    def __init__(self) -> None:
        self.complete = True

    def abandon(self) -> None:
        """Do not record the stage (the run was asked to stop half-way)."""
        self.complete = False


@contextmanager
def stage(ctx: Any, name: str) -> Iterator[StageMark]:
    """Time the block and record stage name on ctx when it ends without an exception.

    A block that returns early because the run was asked to stop calls `mark.abandon()`, so that
    the resumed attempt runs the stage again.
    """
    problem = stage_name_error(name)
    if problem:
        raise ValueError(problem)
    mark = StageMark()
    started = time.monotonic()
    yield mark
    record = getattr(ctx, "stage_done", None)
    if mark.complete and callable(record):
        record(name, time.monotonic() - started)


def save_artifact(ctx: Any, name: str, data: bytes | str | os.PathLike[str], kind: str = "file") -> bool:
    """Store an artifact through ctx; return False (storing nothing) on a context without artifacts."""
    method = getattr(ctx, "save_artifact", None)
    if not callable(method):
        return False
    method(name, data, kind=kind)
    return True
