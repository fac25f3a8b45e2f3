"""Points that do not fit in memory wait in a local file (JSON lines) until the server takes them.

The file is appended by the training thread and read from the front by the sender; once the
sender has read (and the server acknowledged) everything, the file is emptied. Points never
leave the file before the server has them: a reader takes a batch, and only `ack` moves past it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

Point = tuple[str, int, float | None, float]


class Spool:
    """A file-backed queue of points, bounded only by the disk."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, name: str = "run") -> None:
        folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"crucible-{name}-", suffix=".jsonl", dir=folder)
        os.close(fd)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._read_offset = 0  # bytes already acknowledged
        self._pending_offset = 0  # bytes handed out by `take`, not acknowledged yet
        self._written = 0  # bytes appended
        self.count = 0  # points in the file not acknowledged yet

    def append(self, points: list[Point]) -> None:
        """Append points to the file (durable once the OS has them; flushed on every call)."""
        if not points:
            return
        data = "".join(json.dumps(p, separators=(",", ":")) + "\n" for p in points).encode()
        with self._lock, self.path.open("ab") as fh:
            fh.write(data)
            self._written += len(data)
            self.count += len(points)

    def take(self, limit: int) -> list[Point]:
        """Return up to `limit` points from the front, not yet acknowledged (call ack after sending)."""
        with self._lock:
            if self._read_offset >= self._written:
                return []
            out: list[Point] = []
            with self.path.open("rb") as fh:
                fh.seek(self._read_offset)
                offset = self._read_offset
                while len(out) < limit and offset < self._written:
                    line = fh.readline()
                    if not line:
                        break
                    offset += len(line)
                    name, step, value, wall_time = json.loads(line)
                    out.append((name, int(step), value, float(wall_time)))
            self._pending_offset = offset
            return out

    def ack(self, taken: int) -> None:
        """The server has the points of the last `take`: move past them (and empty the file at the end)."""
        with self._lock:
            self._read_offset = self._pending_offset
            self.count = max(0, self.count - taken)
            if self._read_offset >= self._written:
                # Everything is delivered: start the file over so it never grows past one backlog.
                with self.path.open("wb"):
                    pass
                self._read_offset = self._pending_offset = self._written = 0
                self.count = 0

    def remove(self) -> None:
        """Delete the file (only when it holds nothing undelivered)."""
        with self._lock:
            if self.count == 0:
                self.path.unlink(missing_ok=True)
