"""Every run's stdout/stderr: a bounded, rotated file under RUN_LOGS_ROOT, and a live tail for the page.

The writer never blocks the training thread on the network: lines go to the file at once (a
local append) and into a buffer that a background thread publishes to the experiment's group
as `run.log` frames every LIVE_FLUSH_SECONDS. A page that opens later reads the file's tail.

A recipe that trains inside the worker prints through sys.stdout/sys.stderr; while its run lasts
those are wrapped (RunOutputCapture) so that what the training thread prints also lands in its
run's log. A script's output is fed line by line by the script recipe.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict

from django.conf import settings
from django.db import connection

from experiments.events import experiment_group, send_messages
from experiments.models import RunLog

logger = logging.getLogger(__name__)

LIVE_FLUSH_SECONDS = 0.25
# Frames stay far below Daphne's 1 MiB limit; a line is cut at MAX_LIVE_LINE_CHARS for the page.
MAX_LINES_PER_FRAME = 500
MAX_LIVE_LINE_CHARS = 2000
# A run printing faster than the page can follow: older unsent lines are dropped from the live
# view (the file keeps them) and the frame says how many.
MAX_PENDING_LIVE_LINES = 5000
# The counters on the RunLog row are brought up to date this often (and at the end).
COUNTERS_SECONDS = 2.0
TAIL_LINES = 200

Stream = Literal["stdout", "stderr"]


class LogLine(TypedDict):
    """One line of a run's output as the page receives it."""

    stream: str
    line: str


class RunLogFrame(TypedDict):
    """New lines of a run's output (experiment page's live tail)."""

    type: Literal["run.log"]
    experiment_id: int
    run_id: int
    first_line: int  # number of the first line of this frame in the run's log (1-based)
    skipped: int  # lines not sent live because the run printed faster than the page follows
    lines: list[LogLine]


def run_log_path(*, experiment_id: int, run_id: int) -> Path:
    """Return the current log file of one run under RUN_LOGS_ROOT."""
    return Path(settings.RUN_LOGS_ROOT) / f"experiment-{experiment_id}" / f"run-{run_id}.log"


def run_log_files(path: Path) -> list[Path]:
    """Return the log's files, oldest first: the rotated ones (.N … .1), then the current one."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, *([path] if path.exists() else [])]


def run_log_chunks(path: Path, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """Yield the whole log (every file, oldest first) in chunks, for a download."""
    for file in run_log_files(path):
        try:
            with file.open("rb") as fh:
                while data := fh.read(chunk):
                    yield data
        except FileNotFoundError:  # rotated away while we read: the next file has the newer lines
            continue


def run_log_tail(path: Path, *, lines: int = TAIL_LINES) -> list[str]:
    """Return the last lines of the log (from the current file, and the previous one if it is short)."""
    found: list[str] = []
    for file in reversed(run_log_files(path)):
        try:
            with file.open("rb") as fh:
                fh.seek(0, io.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 256 * 1024))
                text = fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            continue
        found = text.splitlines()[-(lines - len(found)) :] + found
        if len(found) >= lines:
            break
    return found[-lines:]


class RunLogWriter:
    """Append one run's output lines to its rotated file and publish them live."""

    def __init__(
        self,
        *,
        experiment_id: int,
        run_id: int,
        max_bytes: int | None = None,
        backups: int | None = None,
        publish: bool = True,
    ) -> None:
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.path = run_log_path(experiment_id=experiment_id, run_id=run_id)
        self.max_bytes = max(1024, int(settings.RUN_LOG_MAX_BYTES if max_bytes is None else max_bytes))
        self.backups = max(0, int(settings.RUN_LOG_BACKUPS if backups is None else backups))
        self.publish = publish
        self.lines = 0
        self.bytes_written = 0
        self.rotations = 0
        self.malformed_lines = 0
        self._size = 0
        self._file: Any = None
        self._lock = threading.Lock()
        self._pending: deque[LogLine] = deque()
        self._skipped = 0
        self._sent = 0  # line number of the last line published
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RunLogWriter:
        """Open the file (appending: a run's log survives a restart of its worker) and start publishing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        log, _ = RunLog.objects.get_or_create(run_id=self.run_id, defaults={"path": str(self.path)})
        self.lines, self.bytes_written, self.rotations = log.lines, log.bytes_written, log.rotations
        self.malformed_lines = log.malformed_lines
        self._sent = self.lines
        self._thread = threading.Thread(target=self._loop, name=f"runlog-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def write(self, stream: str, line: str) -> None:
        """Append one line (without its newline); safe from any thread."""
        data = (line + "\n").encode("utf-8", errors="replace")
        with self._lock:
            if self._file is None:
                return
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
            self.lines += 1
            self.bytes_written += len(data)
            if self.publish:
                self._pending.append({"stream": stream, "line": line[:MAX_LIVE_LINE_CHARS]})
                if len(self._pending) > MAX_PENDING_LIVE_LINES:
                    self._pending.popleft()
                    self._skipped += 1

    def _rotate(self) -> None:
        """Shift run.log → run.log.1 → … → run.log.<backups>; the oldest goes (the file stays bounded)."""
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            self.path.with_name(f"{self.path.name}.{self.backups}").unlink(missing_ok=True)
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0
        self.rotations += 1

    def close(self, *, malformed_lines: int | None = None) -> None:
        """Publish what is left, record the counters and close the file (before the run is marked ended)."""
        if malformed_lines is not None:
            self.malformed_lines += malformed_lines
        self._closing.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._publish_pending()
        self._save_counters()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _loop(self) -> None:
        since_counters = 0.0
        try:
            while not self._closing.wait(LIVE_FLUSH_SECONDS):
                try:
                    self._publish_pending()
                    since_counters += LIVE_FLUSH_SECONDS
                    if since_counters >= COUNTERS_SECONDS:
                        since_counters = 0.0
                        self._save_counters()
                except Exception:  # the log must never take the run down
                    logger.warning("run log of run %s: publish failed", self.run_id, exc_info=True)
        finally:
            connection.close()

    def _publish_pending(self) -> None:
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            skipped, self._skipped = self._skipped, 0
            first = self.lines - len(batch) + 1
        if not batch or not self.publish:
            return
        group = experiment_group(self.experiment_id)
        messages: list[tuple[str, dict[str, Any]]] = []
        for start in range(0, len(batch), MAX_LINES_PER_FRAME):
            frame: RunLogFrame = {
                "type": "run.log",
                "experiment_id": self.experiment_id,
                "run_id": self.run_id,
                "first_line": first + start,
                "skipped": skipped if start == 0 else 0,
                "lines": batch[start : start + MAX_LINES_PER_FRAME],
            }
            messages.append((group, dict(frame)))
        send_messages(messages)

    def _save_counters(self) -> None:
        RunLog.objects.filter(run_id=self.run_id).update(
            lines=self.lines,
            bytes_written=self.bytes_written,
            rotations=self.rotations,
            malformed_lines=self.malformed_lines,
        )


class _TeeStream(io.TextIOBase):
    """Pass writes through to the original stream; lines the training thread writes also go to the run log."""

    def __init__(self, original: TextIO, writer: RunLogWriter, stream: Stream, thread_id: int) -> None:
        self.original = original
        self.writer = writer
        self.stream = stream
        self.thread_id = thread_id
        self._partial = ""

    def write(self, text: str) -> int:
        """Write text through, and its complete lines to the run log when the training thread wrote them."""
        self.original.write(text)
        if threading.get_ident() == self.thread_id:
            self._partial += text
            *complete, self._partial = self._partial.split("\n")
            for line in complete:
                self.writer.write(self.stream, line)
        return len(text)

    def flush(self) -> None:
        """Flush the original stream."""
        self.original.flush()

    # Code that inspects the stream (progress bars, faulthandler) sees the original's answers.
    @property
    def encoding(self) -> str:  # type: ignore[override]
        """Return the original stream's encoding."""
        return str(getattr(self.original, "encoding", None) or "utf-8")

    def isatty(self) -> bool:
        """Return whether the original stream is a terminal."""
        return bool(self.original.isatty())

    def fileno(self) -> int:
        """Return the original stream's file descriptor (raises where it has none)."""
        return self.original.fileno()

    def finish(self) -> None:
        """Write a last line that had no newline."""
        if self._partial:
            self.writer.write(self.stream, self._partial)
            self._partial = ""


class RunOutputCapture:
    """While inside, what this thread prints to stdout/stderr also goes to the run's log."""

    def __init__(self, writer: RunLogWriter) -> None:
        self.writer = writer
        self._saved: tuple[TextIO, TextIO] | None = None
        self._tees: list[_TeeStream] = []

    def __enter__(self) -> RunOutputCapture:
        ident = threading.get_ident()
        self._saved = (sys.stdout, sys.stderr)
        out = _TeeStream(sys.stdout, self.writer, "stdout", ident)
        err = _TeeStream(sys.stderr, self.writer, "stderr", ident)
        self._tees = [out, err]
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        for tee in self._tees:
            tee.finish()
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
