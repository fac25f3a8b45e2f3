"""Stream a training run into Crucible Control from anywhere: a notebook, a Slurm job, a cloud GPU box.

Standard library only; nothing of Django or the dashboard is imported::

    from crucible_client import Run

    with Run.start("http://crucible:8000", token, experiment="resnet sweep", config={"lr": 0.1}) as run:
        for step in range(steps):
            loss = train_step()
            run.log("loss", loss, step)
            if run.should_stop():
                break

See docs/client.md.
"""

from __future__ import annotations

from crucible_client.run import CrucibleError, Run

__all__ = ["CrucibleError", "Run"]
