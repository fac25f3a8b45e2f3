"""A stop request reaches the training loop: SIGTERM in a training process, read once per step."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments.recipes import get_spec
from experiments.recipes.local import LocalRunContext
from experiments.recipes.stop import stop_clear, stop_on_signals, stop_reason


class _StopAware(LocalRunContext):
    """The local context, honouring the process-wide stop request as the worker's context does."""

    def should_stop(self) -> bool:
        return stop_reason() is not None or super().should_stop()


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    stop_clear()
    yield
    stop_clear()


def test_sigterm_while_training_asks_for_a_stop_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)

    with stop_on_signals(signal.SIGTERM, reason="the worker is shutting down") as installed:
        assert installed
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_reason() == "the worker is shutting down (SIGTERM)"

    assert signal.getsignal(signal.SIGTERM) == before


def test_a_loop_asked_to_stop_checkpoints_at_the_step_it_is_at_and_resumes_from_there(tmp_path: Path) -> None:
    config = {"epochs": 2, "batch_size": 64}
    ctx = _StopAware(checkpoint_dir=tmp_path)
    log = ctx.log

    def log_and_stop_at_step_30(name: str, step: int, value: float) -> None:
        log(name, step, value)
        if name == "loss" and step == 30:
            os.kill(os.getpid(), signal.SIGTERM)  # what the worker's parent forwards

    ctx.log = log_and_stop_at_step_30  # type: ignore[method-assign]
    recipe = get_spec("digits").load()
    with stop_on_signals(signal.SIGTERM, reason="stop"):
        result = recipe.train(ctx, dict(config))

    assert result.stopped and result.steps == 30
    assert ctx.saved_steps[-1] == 30  # not only the epoch-end checkpoint at 23
    stop_clear()
    resumed = _StopAware(checkpoint_dir=tmp_path)  # the next attempt finds the same checkpoints
    second = recipe.train(resumed, dict(config))
    assert not second.stopped
    assert [p.step for p in resumed.points if p.name == "loss"] == list(range(31, 47))
