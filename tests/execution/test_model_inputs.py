"""The worker hands a recipe another experiment's model only inside its project, as tensors and plain data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from experiments.choices import RunStatus
from experiments.models import Dependency, Experiment, Project, Run
from experiments.runs.execution import DbRunContext, checkpoint_dir, file_sha256
from experiments.services import experiment_create

pytestmark = pytest.mark.django_db

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"crucible-unpickled-{os.getpid()}"


class RunsCodeWhenUnpickled:
    """What a script run could leave as its "checkpoint": unpickling it calls Path.touch(MARKER)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (MARKER,))


def _context(experiment: Experiment) -> DbRunContext:
    run = Run.objects.create(experiment=experiment, attempt=1, config=experiment.config)
    return DbRunContext(run=run, reporter=None, timeout_seconds=60)  # type: ignore[arg-type]


def _finished_upstream(project: Project, state: Any) -> Experiment:
    """Return an experiment with a succeeded run whose recorded checkpoint holds state."""
    upstream = experiment_create(name="upstream", recipe="digits", project=project)
    run = Run.objects.create(experiment=upstream, attempt=1, status=RunStatus.SUCCEEDED)
    folder = checkpoint_dir(experiment_id=upstream.pk, run_id=run.pk)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "step-000000001.pt"
    torch.save(state, path)
    Run.objects.filter(pk=run.pk).update(
        checkpoint_path=str(path), checkpoint_sha256=file_sha256(path), checkpoint_size=path.stat().st_size
    )
    return upstream


def _downstream_of(upstream: Experiment, project: Project) -> DbRunContext:
    downstream = experiment_create(name="downstream", recipe="distill", project=project)
    # Written past the checks, like an edge made before edges across projects were refused.
    Dependency.objects.create(upstream=upstream, downstream=downstream)
    return _context(downstream)


def test_an_upstream_checkpoint_is_read_as_tensors_and_plain_data_only() -> None:
    project = Project.objects.create(name="Vision", slug="vision")
    state = {
        "recipe": "digits",
        "arch": {"hidden": 8},
        "model": {"w": torch.ones(2)},
        "rng": (3, (1, 2), None),
    }
    ctx = _downstream_of(_finished_upstream(project, state), project)
    loaded = ctx.upstream_checkpoint(Dependency.objects.get().upstream_id)
    assert loaded["arch"] == {"hidden": 8} and torch.equal(loaded["model"]["w"], torch.ones(2))

    MARKER.unlink(missing_ok=True)
    hostile = _finished_upstream(project, {"recipe": "digits", "model": RunsCodeWhenUnpickled()})
    ctx = _downstream_of(hostile, project)
    try:
        with pytest.raises(ValueError, match="holds more than tensors and plain data"):
            ctx.upstream_checkpoint(hostile.pk)
        assert not MARKER.exists()  # nothing of the file ran
    finally:
        MARKER.unlink(missing_ok=True)


def test_an_upstream_of_another_project_hands_nothing_over() -> None:
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    upstream = _finished_upstream(nlp, {"recipe": "digits", "model": {"w": torch.ones(2)}})
    ctx = _downstream_of(upstream, vision)
    with pytest.raises(ValueError, match=f"experiment #{upstream.pk} is not a dependency of this experiment"):
        ctx.upstream_checkpoint(upstream.pk)


def test_a_base_run_of_another_project_answers_as_a_missing_run_on_the_worker() -> None:
    vision = Project.objects.create(name="Vision", slug="vision")
    nlp = Project.objects.create(name="Nlp", slug="nlp")
    foreign = Run.objects.create(
        experiment=experiment_create(name="theirs", recipe="charlm", project=nlp), attempt=1
    )
    own = Run.objects.create(
        experiment=experiment_create(name="ours", recipe="charlm", project=vision), attempt=1
    )
    dpo = experiment_create(name="dpo", recipe="dpo", project=vision)
    # Written past the creation check, as the admin's raw config field or an old row could.
    Experiment.objects.filter(pk=dpo.pk).update(config={**dpo.config, "base_run": foreign.pk})
    ctx = _context(Experiment.objects.get(pk=dpo.pk))
    with pytest.raises(ValueError, match=f"run #{foreign.pk} does not exist in this experiment's project"):
        ctx.run_checkpoint_path(foreign.pk)
    with pytest.raises(ValueError, match=f"run #{own.pk} saved no checkpoint"):
        ctx.run_checkpoint_path(own.pk)  # its own project's run gets past the boundary
