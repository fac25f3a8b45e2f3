"""bench/canary.py in --quick mode: one bad and one good version really rolled out, and the baseline.

--quick measures nothing worth quoting; it proves that the script still drives the real
path end to end: trained checkpoints, the promote hook, in-process serving with feedback,
canary_sweep on the simulated clock, and the rollback carried out by a Celery worker.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(
        os.getenv("DATABASE_URL", "").startswith("postgres"),
        reason="bench scripts use their own SQLite database; run once, in the SQLite pass",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
FIGURES = [
    "canary_bad_caught_share",
    "canary_good_deployed_share",
    "canary_detect_requests",
    "canary_detect_sim_s",
]
FIGURE_KEYS = {
    "figure", "unit", "median", "min", "max", "repetitions", "baseline", "ratio", "goal", "meets_goal",
    "machine", "date",
}  # fmt: skip


def test_the_canary_bench_rolls_back_the_bad_version_and_prints_every_figure() -> None:
    from bench.canary import ALPHA, BETA, MIN_REQUESTS
    from bench.common import run_bounded

    code, out, err = run_bounded(
        [sys.executable, str(ROOT / "bench" / "canary.py"), "--quick"], timeout=240, env={**os.environ}
    )

    assert code == 0, err[-3000:]
    lines = {line["figure"]: line for line in map(json.loads, out.splitlines()) if line}
    assert list(lines) == FIGURES, err[-2000:]
    for line in lines.values():
        assert set(line) >= FIGURE_KEYS, f"{line['figure']} lacks {FIGURE_KEYS - set(line)}"
        assert line["quick"] is True and line["meets_goal"] is None
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
