"""DEMO_TRAFFIC=1: `make run` also starts the traffic command against its own web server."""

from __future__ import annotations

import math

from crucible_ui.launcher import demo_traffic_argv
from crucible_ui.management.commands.traffic import Command

MANAGE = ["python", "manage.py"]


def test_without_demo_traffic_nothing_is_sent() -> None:
    assert demo_traffic_argv({}, MANAGE, host="127.0.0.1", port=8000) is None
    assert demo_traffic_argv({"DEMO_TRAFFIC": "0"}, MANAGE, host="127.0.0.1", port=8000) is None


def test_demo_traffic_targets_the_web_server_make_run_starts_and_waits_for_a_model() -> None:
    argv = demo_traffic_argv({"DEMO_TRAFFIC": "1"}, MANAGE, host="0.0.0.0", port=8123)
    assert argv is not None and argv[:3] == ["python", "manage.py", "traffic"]

    # The command itself accepts what the launcher passes, as it will parse it.
    options = Command().create_parser("manage.py", "traffic").parse_args(argv[3:])
    assert options.url == "http://127.0.0.1:8123"
    assert options.model == "digits"
    assert math.isinf(options.wait)
    assert options.wait_for_model is True
    assert options.rps > 0
    # One progress line a minute: the launcher's output stays readable.
    assert options.progress_every == 60
