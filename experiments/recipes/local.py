"""A RunContext for running recipes outside Django: JSON lines on a stream, checkpoints as files."""

from __future__ import annotations

import io
import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from .outputs import StoredArtifact, artifact_name_error, artifact_write, stage_name_error

_CKPT = re.compile(r"^step-(\d{9})\.pt$")


@dataclass(frozen=True)
class MetricPoint:
    """One logged value."""

    name: str
    step: int
    value: float


def metric_json(name: str, step: int, value: float) -> str:
    """Return one metric point as a JSON line; NaN/inf become null plus a `nonfinite` note."""
    point: dict[str, Any] = {"name": name, "step": step, "value": value}
    if not math.isfinite(value):
        point["value"] = None
        point["nonfinite"] = str(value)  # "nan", "inf" or "-inf"
    return json.dumps(point)


class LocalRunContext:
    """Run context of the CLI and the tests: keeps points, echoes JSON lines, saves checkpoints.

    Curated datasets (config extra_data: an id) are read from the files given as datasets={id: path},
    and other runs' checkpoints (dpo's base_run: an id) from run_checkpoints={id: path}.
    Curated datasets (config extra_data: an id) are read from the files given as datasets={id: path};
    an upstream's model (distill's teacher_experiment) from upstreams={experiment id: checkpoint}.
    With checkpoint_dir, checkpoints are torch.save files `step-NNNNNNNNN.pt` (the newest `keep`
    are kept) and load_checkpoint() resumes from the newest; without it they stay in memory.
    Completed stages go to `stages.json` beside them (so a rerun on the same folder skips them);
    artifacts to artifact_dir (default: checkpoint_dir/artifacts), or stay in memory without either.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        out: TextIO | None = None,
        keep: int = 2,
        datasets: Mapping[int, str | os.PathLike[str]] | None = None,
        run_checkpoints: Mapping[int, str | os.PathLike[str]] | None = None,
        artifact_dir: str | os.PathLike[str] | None = None,
        upstreams: Mapping[int, str | os.PathLike[str]] | None = None,
    ) -> None:
        self.device = device
        self.seed = seed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.out = out
        self.keep = max(1, keep)
        self.datasets = {int(k): str(v) for k, v in (datasets or {}).items()}
        self.run_checkpoints = {int(k): str(v) for k, v in (run_checkpoints or {}).items()}
        self.upstreams = {int(k): str(v) for k, v in (upstreams or {}).items()}
        self.points: list[MetricPoint] = []
        self.fraction = 0.0
        self.saved_steps: list[int] = []
        self._memory: tuple[int, bytes] | None = None
        self._stop = threading.Event()
        if artifact_dir is not None:
            self.artifact_dir: Path | None = Path(artifact_dir)
        else:
            self.artifact_dir = self.checkpoint_dir / "artifacts" if self.checkpoint_dir is not None else None
        self.stages: dict[str, float] = self._read_stages()
        self.artifacts: dict[str, StoredArtifact | bytes] = {}

    # --- RunContext protocol ---

    def log(self, name: str, step: int, value: float) -> None:
        """Keep the point and echo it as a JSON line when a stream was given."""
        self.points.append(MetricPoint(name, step, float(value)))
        if self.out is not None:
            self.out.write(metric_json(name, step, float(value)) + "\n")
            self.out.flush()

    def progress(self, fraction: float) -> None:
        """Remember how far the run has come."""
        self.fraction = fraction

    def should_stop(self) -> bool:
        """Return True once request_stop() was called (a signal handler, a test)."""
        return self._stop.is_set()

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Write state now (it references live tensors, so it is serialised before returning)."""
        self.saved_steps.append(step)
        if self.checkpoint_dir is None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self._memory = (step, buffer.getvalue())
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_dir / f"step-{step:09d}.pt"
        tmp = final.with_suffix(".tmp")
        torch.save(state, tmp)
        # Atomic: a crash mid-write never leaves a truncated newest checkpoint behind.
        os.replace(tmp, final)
        for old in self._checkpoint_files()[: -self.keep]:
            old.unlink(missing_ok=True)

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """Return (step, state) of the newest checkpoint, or None."""
        if self.checkpoint_dir is None:
            if self._memory is None:
                return None
            step, blob = self._memory
            return step, torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        files = self._checkpoint_files()
        if not files:
            return None
        newest = files[-1]
        match = _CKPT.match(newest.name)
        assert match is not None
        return int(match.group(1)), torch.load(newest, map_location="cpu", weights_only=True)

    def dataset_path(self, dataset_id: int) -> str:
        """Return the file the caller gave for this dataset id."""
        if dataset_id not in self.datasets:
            raise ValueError(f"dataset #{dataset_id}: no file given for it to this run")
        return self.datasets[dataset_id]

    # --- for recipes that start from another run's model (dpo.CheckpointHost) ---

    def run_checkpoint_path(self, run_id: int) -> str:
        """Return the checkpoint file the caller gave for this run id."""
        if run_id not in self.run_checkpoints:
            raise ValueError(f"run #{run_id}: no checkpoint file given for it to this run")
        return self.run_checkpoints[run_id]

    # --- stages and artifacts (base.RunOutputs) ---

    def stage_done(self, name: str, seconds: float) -> None:
        """Record the stage (in stages.json when there is a checkpoint folder)."""
        problem = stage_name_error(name)
        if problem:
            raise ValueError(problem)
        self.stages[name] = float(seconds)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint_dir / ".stages.json.tmp"
            tmp.write_text(json.dumps(self.stages, indent=2))
            os.replace(tmp, self.checkpoint_dir / "stages.json")

    def completed_stages(self) -> frozenset[str]:
        """Return the stages completed on this context (and, from stages.json, by earlier runs on its folder)."""
        return frozenset(self.stages)

    def save_artifact(self, name: str, data: bytes | str | os.PathLike[str], kind: str = "file") -> None:
        """Write the artifact to artifact_dir, or keep its bytes in memory without one."""
        if self.artifact_dir is not None:
            self.artifacts[name] = artifact_write(self.artifact_dir, name, data, kind)
            return
        problem = artifact_name_error(name)
        if problem:
            raise ValueError(problem)
        if isinstance(data, str):
            self.artifacts[name] = data.encode("utf-8")
        elif isinstance(data, bytes):
            self.artifacts[name] = data
        else:
            self.artifacts[name] = Path(data).read_bytes()

    def _read_stages(self) -> dict[str, float]:
        if self.checkpoint_dir is None:
            return {}
        path = self.checkpoint_dir / "stages.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def upstream_checkpoint(self, experiment_id: int) -> dict[str, Any]:
        """Return the checkpoint file the caller gave for this upstream experiment id."""
        if experiment_id not in self.upstreams:
            raise ValueError(f"experiment #{experiment_id}: no checkpoint given for it to this run")
        state: dict[str, Any] = torch.load(
            self.upstreams[experiment_id], map_location="cpu", weights_only=True
        )
        return state

    # --- helpers for callers ---

    def request_stop(self) -> None:
        """Ask the running loop to checkpoint and stop at its next step."""
        self._stop.set()

    def values(self, name: str) -> list[float]:
        """Return the logged values of one metric, in order."""
        return [p.value for p in self.points if p.name == name]

    def _checkpoint_files(self) -> list[Path]:
        assert self.checkpoint_dir is not None
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.iterdir() if _CKPT.match(p.name))
