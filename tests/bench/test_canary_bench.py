"""bench/canary.py in --quick mode: one bad and one good version really rolled out, and the baseline.

--quick measures nothing worth quoting; it proves that the script still drives the real
path end to end: trained checkpoints, the promote hook, in-process serving with feedback,
canary_sweep on the simulated clock, and the rollback carried out by a Celery worker.
"""

from __future__ import annotations

import os

import pytest

from tests.bench.helpers import quick_figures

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(
        os.getenv("DATABASE_URL", "").startswith("postgres"),
        reason="bench scripts use their own SQLite database; run once, in the SQLite pass",
    ),
]

FIGURES = [
    "canary_bad_caught_share",
    "canary_good_deployed_share",
    "canary_detect_requests",
    "canary_detect_sim_s",
]


def test_the_canary_bench_rolls_back_the_bad_version_and_prints_every_figure() -> None:
    from bench.canary import ALPHA, BETA, MIN_REQUESTS

    lines = quick_figures("canary.py", FIGURES, timeout=240)
    caught = lines["canary_bad_caught_share"]
    # The quick bad version fails half of its predictions: both policies must roll it back.
    assert (caught["bad_versions"], caught["caught"], caught["median"]) == (1, 1, 1.0)
    assert caught["baseline"]["median"] == 1.0
    # Two rollbacks (canary, all at once) decided, and both carried out by the worker.
    assert caught["rollback_actions"] == {"succeeded": 2}
    assert lines["canary_good_deployed_share"]["good_versions"] == 1
    detect = lines["canary_detect_requests"]
    # The sequential test rolls a failing version back once it is sure, at any request count; a
    # 10% canary gets there having served fewer requests than an all-at-once deploy.
    assert 0 < detect["median"] < detect["baseline"]["median"]
    policy = caught["policy"]
    assert (policy["alpha"], policy["beta"], policy["min_requests"]) == (ALPHA, BETA, MIN_REQUESTS)
    assert lines["canary_detect_sim_s"]["median"] > lines["canary_detect_sim_s"]["baseline"]["median"] > 0
