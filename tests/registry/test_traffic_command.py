"""`manage.py traffic`: real HTTP requests to a live server serving a really trained digits checkpoint."""

from __future__ import annotations

import json
import socket
import threading
import time
from io import StringIO
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from experiments.actors import Actor
from experiments.models import ApiToken, Experiment, ModelStage, ModelVersion, ServedRequest
from experiments.recipes.classify import raw_split
from experiments.registry.services import (
    model_version_promote,
    model_version_register,
    model_version_set_stage,
)
from tests.registry.conftest import MakeExperiment

ALICE = Actor.system("alice")


@pytest.fixture
def production(make_experiment: MakeExperiment) -> ModelVersion:
    """digits v1 in production, from the session's trained checkpoint."""
    version = model_version_register(experiment_id=make_experiment().pk)
    return model_version_promote(version_id=version.pk, actor=ALICE)


def traffic(*args: str) -> tuple[list[dict[str, Any]], str]:
    """Run the command; return its JSON lines (progress..., summary) and what it said on stderr."""
    out, err = StringIO(), StringIO()
    call_command("traffic", *args, stdout=out, stderr=err)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()], err.getvalue()


def closed_port() -> int:
    """Return a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_it_sends_held_out_digits_that_the_server_records_with_their_labels(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    lines, _ = traffic(
        "--model", "digits", "--rps", "30", "--duration", "1.5", "--url", live_server.url, "--token", token
    )

    summary = lines[-1]
    assert summary["event"] == "summary"
    # A loaded machine may fall behind the schedule: what is due after the run ended is not
    # sent (and counted as such). Count what was sent, never how much fits in 1.5 s.
    assert summary["planned"] == 45
    sent = summary["sent"]
    assert 1 <= sent <= 45
    assert summary["not_sent"] == 45 - sent
    assert summary["errors"] == 0, summary["last_error"]
    assert summary["answered"] == sent
    assert summary["versions"] == {"1": {"answered": sent, "accuracy": summary["accuracy"]}}
    assert summary["accuracy"] > 0.8
    assert [line["event"] for line in lines[:-1]] == ["progress"] * (len(lines) - 1)
    assert len(lines) - 1 >= 1  # at least one progress line in 1.5 s

    served = ServedRequest.objects.filter(version=production)
    assert served.count() == sent
    assert served.filter(label__isnull=True).count() == 0
    # The server's own tally of the feedback agrees with what the generator saw.
    assert served.filter(correct=True).count() == round(summary["accuracy"] * sent)
    assert summary["feedback"] == sent


def test_the_digits_come_from_the_validation_split_named_by_the_production_experiment(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    Experiment.objects.filter(pk=production.experiment_id).update(
        config={"hidden": 32, "epochs": 8, "seed": 3, "val_fraction": 0.3}
    )

    lines, _ = traffic("--rps", "40", "--duration", "0.5", "--url", live_server.url, "--token", token)

    assert lines[-1]["data"] == {
        "source": f"digits v1 (experiment #{production.experiment_id})",
        "seed": 3,
        "val_fraction": 0.3,
        "shift": 0.0,
    }
    held_out = {tuple(row) for row in raw_split(3, 0.3)[2].tolist()}
    sent = [tuple(inputs[0]) for inputs in ServedRequest.objects.values_list("inputs", flat=True)]
    assert len(sent) == lines[-1]["sent"] >= 1
    assert all(row in held_out for row in sent)


def test_it_counts_the_answers_of_each_version_while_a_canary_takes_a_share(
    production: ModelVersion, make_experiment: MakeExperiment, live_server: Any, token: str
) -> None:
    canary = model_version_register(experiment_id=make_experiment("candidate").pk)
    model_version_set_stage(version_id=canary.pk, stage=ModelStage.CANARY, actor=ALICE)
    ModelVersion.objects.filter(pk=canary.pk).update(traffic_pct=50.0)

    lines, _ = traffic("--rps", "40", "--duration", "1", "--url", live_server.url, "--token", token)

    versions = lines[-1]["versions"]
    assert set(versions) == {"1", "2"}
    assert versions["1"]["answered"] == ServedRequest.objects.filter(version=production).count()
    assert versions["2"]["answered"] == ServedRequest.objects.filter(version=canary).count()
    assert versions["1"]["answered"] + versions["2"]["answered"] == lines[-1]["sent"]


def test_a_shift_brightens_the_inputs_and_lowers_accuracy(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    common = ["--rps", "40", "--duration", "0.5", "--url", live_server.url, "--token", token]
    plain, _ = traffic(*common)
    plain_ids = set(ServedRequest.objects.values_list("pk", flat=True))
    shifted, _ = traffic(*common, "--shift", "0.5")

    plain_inputs = np.array(
        [r[0] for r in ServedRequest.objects.filter(pk__in=plain_ids).values_list("inputs", flat=True)]
    )
    shifted_inputs = np.array(
        [r[0] for r in ServedRequest.objects.exclude(pk__in=plain_ids).values_list("inputs", flat=True)]
    )
    assert len(plain_inputs) == plain[-1]["sent"] >= 10
    assert len(shifted_inputs) == shifted[-1]["sent"] >= 10
    # Same seed, same digits: each pixel is 8 levels brighter, up to the 16 ceiling.
    assert shifted_inputs.mean() > plain_inputs.mean() + 4
    assert shifted_inputs.max() <= 16.0
    assert plain[-1]["accuracy"] > 0.8
    assert shifted[-1]["accuracy"] < plain[-1]["accuracy"] - 0.3


def test_a_feedback_rate_of_zero_sends_no_labels(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    lines, _ = traffic(
        "--rps", "40", "--duration", "0.5", "--feedback-rate", "0", "--url", live_server.url, "--token", token
    )

    assert lines[-1]["answered"] == lines[-1]["sent"] >= 1
    assert lines[-1]["feedback"] == 0
    assert ServedRequest.objects.count() == lines[-1]["sent"]
    assert ServedRequest.objects.filter(label__isnull=False).count() == 0


def test_without_a_token_it_mints_one_for_the_user_and_revokes_it_after(
    production: ModelVersion, live_server: Any, viewer: User
) -> None:
    lines, err = traffic(
        "--rps", "20", "--duration", "0.5", "--url", live_server.url, "--user", viewer.username
    )

    assert lines[-1]["answered"] == lines[-1]["sent"] >= 1
    assert f"for {viewer.username!r}" in err
    assert not ApiToken.objects.filter(user=viewer).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", "0"], "--rps: must be above 0"),
        (["--rps", "-3"], "--rps: must be above 0"),
        (["--duration", "0"], "--duration: must be above 0"),
        (["--shift", "2"], "--shift: must be between -1 and 1"),
        (["--feedback-rate", "1.5"], "--feedback-rate: must be between 0 and 1"),
        (["--concurrency", "0"], "--concurrency: must be 1 to"),
        (["--url", "127.0.0.1:8000"], "--url: must be an http(s) address"),
    ],
)
def test_bad_options_are_refused_naming_the_option(db: Any, args: list[str], message: str) -> None:
    base = {"--rps": "10", "--duration": "1", "--token": "cru_unused"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("traffic", *[part for pair in base.items() for part in pair])
    assert not ServedRequest.objects.exists()


def test_an_unknown_model_is_refused_with_the_servers_message(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    with pytest.raises(CommandError, match=r"answered 404: Unknown model 'nope'"):
        traffic(
            "--model", "nope", "--rps", "10", "--duration", "1", "--url", live_server.url, "--token", token
        )


def test_a_bad_token_is_refused_with_the_servers_message(production: ModelVersion, live_server: Any) -> None:
    with pytest.raises(CommandError, match="answered 401: Authorization: invalid or revoked API token"):
        traffic("--rps", "10", "--duration", "1", "--url", live_server.url, "--token", "cru_wrong")


def test_an_unreachable_server_is_named(db: Any, token: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(CommandError, match=f"cannot reach {url}"):
        traffic("--rps", "10", "--duration", "1", "--url", url, "--token", token, "--wait", "0")


def test_the_default_server_is_the_one_make_run_starts_from_host_and_port(
    db: Any, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", str(port))

    with pytest.raises(CommandError, match=rf"cannot reach http://127\.0\.0\.1:{port} "):
        traffic("--rps", "10", "--duration", "1", "--token", token, "--wait", "0")


def test_a_negative_wait_is_refused(db: Any) -> None:
    with pytest.raises(CommandError, match="--wait: must be 0 or more seconds"):
        traffic("--rps", "10", "--duration", "1", "--token", "cru_unused", "--wait", "-1")


def test_it_waits_while_the_model_is_not_servable_yet_then_sends(
    make_experiment: MakeExperiment, live_server: Any, token: str
) -> None:
    # Registered, not served: the server answers 503 until the version goes to production.
    version = model_version_register(experiment_id=make_experiment().pk)
    out, err = StringIO(), StringIO()

    def promote_once_it_waits() -> None:
        for _ in range(600):
            if "answered 503" in err.getvalue():
                model_version_promote(version_id=version.pk, actor=ALICE)
                return
            time.sleep(0.05)

    promoter = threading.Thread(target=promote_once_it_waits)
    promoter.start()
    call_command(
        "traffic",
        *("--rps", "10", "--duration", "0.5", "--url", live_server.url, "--token", token, "--wait", "60"),
        stdout=out,
        stderr=err,
    )
    promoter.join(5)
    summary = json.loads(out.getvalue().splitlines()[-1])
    assert "answered 503: Model 'digits' has no servable production version" in err.getvalue()
    assert summary["errors"] == 0, summary["last_error"]
    assert summary["answered"] == summary["sent"] >= 1
    assert ServedRequest.objects.filter(version=version).count() == summary["sent"]


def test_an_unknown_model_is_waited_for_only_when_asked(
    production: ModelVersion, live_server: Any, token: str
) -> None:
    with pytest.raises(CommandError, match=r"answered 404: Unknown model 'nope'"):
        traffic(
            *("--model", "nope", "--rps", "10", "--duration", "1", "--url", live_server.url),
            *("--token", token, "--wait", "1", "--wait-for-model"),
        )


def test_an_unknown_user_is_refused(db: Any) -> None:
    with pytest.raises(CommandError, match="--user: no user 'ghost'"):
        traffic("--rps", "10", "--duration", "1", "--user", "ghost")


def test_a_user_who_may_not_use_served_models_is_refused(db: Any) -> None:
    User.objects.create_user("nobody")

    with pytest.raises(CommandError, match="'nobody' may not use served models"):
        traffic("--rps", "10", "--duration", "1", "--user", "nobody")
