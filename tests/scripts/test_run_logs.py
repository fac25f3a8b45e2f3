"""Run logs: bounded rotated files, the download and tail route, output capture."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings

from experiments.models import Run, RunLog
from experiments.runs.logs import RunLogWriter, RunOutputCapture, run_log_files, run_log_tail
from experiments.services import experiment_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    with override_settings(RUN_LOGS_ROOT=tmp_path / "runlogs"):
        experiment = experiment_create(name="logged", recipe="digits")
        yield Run.objects.create(experiment=experiment, attempt=1)


def _writer(run: Run, **kwargs: Any) -> RunLogWriter:
    return RunLogWriter(experiment_id=run.experiment_id, run_id=run.pk, publish=False, **kwargs).start()


def test_a_log_is_rotated_and_stays_bounded(run: Run) -> None:
    writer = _writer(run, max_bytes=4096, backups=2)
    for i in range(1000):
        writer.write("stdout", f"line {i:04d} " + "x" * 40)
    writer.close(malformed_lines=2)

    files = run_log_files(writer.path)
    assert [f.name for f in files] == [f"run-{run.pk}.log.2", f"run-{run.pk}.log.1", f"run-{run.pk}.log"]
    assert all(f.stat().st_size <= 4096 for f in files)
    text = "".join(f.read_text() for f in files)
    # The newest lines are kept in order; the oldest were rotated away.
    assert text.endswith("line 0999 " + "x" * 40 + "\n")
    assert "line 0000 " not in text
    kept = [int(line.split()[1]) for line in text.splitlines()]
    assert kept == list(range(kept[0], 1000))
    record = RunLog.objects.get(run=run)
    assert record.lines == 1000 and record.rotations > 0 and record.malformed_lines == 2
    assert record.bytes_written == 1000 * len("line 0000 " + "x" * 40 + "\n")


def test_the_tail_reads_across_a_rotation(run: Run) -> None:
    writer = _writer(run, max_bytes=1024, backups=1)
    for i in range(40):
        writer.write("stdout", f"line {i:02d} padding padding")
    writer.close()
    tail = run_log_tail(writer.path, lines=25)
    assert tail == [f"line {i:02d} padding padding" for i in range(15, 40)]


def test_what_the_training_thread_prints_lands_in_its_run_log(run: Run) -> None:
    writer = _writer(run)
    with RunOutputCapture(writer):
        print("epoch 1 done")
        print("a warning", file=sys.stderr)
        other = threading.Thread(target=lambda: print("another thread's line"))
        other.start()
        other.join()
        sys.stdout.write("no newline at the end")
    writer.close()
    assert writer.path.read_text().splitlines() == ["epoch 1 done", "a warning", "no newline at the end"]


def _viewer() -> Client:
    user = User.objects.create_user("vic")
    user.user_permissions.set(Permission.objects.filter(codename="view_experiment"))
    client = Client()
    client.force_login(user)
    return client


def test_the_whole_log_downloads_oldest_first_and_the_tail_answers_as_text(run: Run) -> None:
    writer = _writer(run, max_bytes=2048, backups=3)
    for i in range(100):
        writer.write("stderr" if i % 2 else "stdout", f"line {i:03d} of the run")
    writer.close()
    client = _viewer()
    url = f"/experiments/{run.experiment_id}/runs/{run.pk}/log/"

    response = client.get(url)
    assert response.status_code == 200
    assert (
        response["Content-Disposition"] == f'attachment; filename="experiment-{run.experiment_id}-run-1.log"'
    )
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    assert body.splitlines() == [f"line {i:03d} of the run" for i in range(100)]

    tail = client.get(url + "?tail=3")
    assert tail.content.decode() == "line 097 of the run\nline 098 of the run\nline 099 of the run\n"
    assert client.get(url + "?tail=many").status_code == 400
    # A run of another experiment is not reachable under this one.
    other = experiment_create(name="other", recipe="digits")
    assert client.get(f"/experiments/{other.pk}/runs/{run.pk}/log/").status_code == 404


def test_the_page_shows_malformed_lines_and_the_whole_stderr_of_a_failed_script(run: Run) -> None:
    RunLog.objects.create(run=run, path="unused", malformed_lines=3)
    stderr_tail = "\n".join(f"Traceback line {i}" for i in range(50))
    Run.objects.filter(pk=run.pk).update(error=f"ScriptError: the script exited with status 1; {stderr_tail}")
    response = _viewer().get(f"/experiments/{run.experiment_id}/")
    page = response.content.decode()
    assert "3 malformed metric lines" in page
    assert "Traceback line 49" in page  # the whole message, not only the first 120 characters
    assert f'href="/experiments/{run.experiment_id}/runs/{run.pk}/log/"' in page
