"""The live page's stream protocol (static/js/live.js), in Python: for tests that play the browser.

A page holds, per metric, the points it drew. Each metrics.batch frame says per metric
which step it follows (ranges[name].after); a frame that follows a step the page does not
hold reveals missed frames, and the page fetches the hole from the history endpoint
(since_step = the lowest step it holds of those metrics) before drawing the frame. A
{"type": "resync"} frame, a reconnect, or the run leaving "running" makes it fetch
everything after what it holds. live.js's holesIn() and fillGap() are the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# history(params) -> the JSON body of GET /api/experiments/<id>/metrics?params
History = Callable[[dict[str, str]], dict[str, Any]]


class StreamMirror:
    """What a live page holds, and the catch-ups it made."""

    def __init__(self) -> None:
        self.points: dict[str, dict[int, float | None]] = {}
        self.catch_ups = 0
        self.holes_seen = 0

    def last_step(self, name: str) -> int | None:
        """Return the highest step held of a metric (None: none yet)."""
        steps = self.points.get(name)
        return max(steps) if steps else None

    def holes(self, frame: dict[str, Any]) -> list[str]:
        """Return the metrics of a metrics.batch frame whose steps do not follow what is held."""
        missing = []
        for name, span in (frame.get("ranges") or {}).items():
            have = self.last_step(name)
            after = span.get("after")
            if after is None:
                if have is not None and span["first"] > have + 1:
                    missing.append(name)
            elif have is None or after > have:
                missing.append(name)
        return missing

    def draw(self, frame: dict[str, Any]) -> None:
        """Add a frame's points (a step already held is kept as it is)."""
        for point in frame.get("points", []):
            self.points.setdefault(point["name"], {}).setdefault(point["step"], point["value"])

    def catch_up(self, history: History, names: Iterable[str] | None = None) -> None:
        """Fetch what is missing after the held steps (of names, or of every metric) and add it."""
        wanted = list(names) if names is not None else list(self.points)
        params: dict[str, str] = {"max_points": "1000000"}
        if names is not None:
            params["names"] = ",".join(wanted)
        held = [self.last_step(n) for n in wanted]
        if held and all(step is not None for step in held):
            params["since_step"] = str(min(step for step in held if step is not None))
        body = history(params)
        for name, series in body["series"].items():
            assert not series["downsampled"], "a full-resolution catch-up was asked for"
            for step, value in zip(series["steps"], series["values"], strict=True):
                self.points.setdefault(name, {}).setdefault(step, value)
        self.catch_ups += 1

    def receive(self, frame: dict[str, Any], history: History) -> None:
        """Handle one frame the way the page does."""
        kind = frame.get("type")
        if kind == "metrics.batch":
            holes = self.holes(frame)
            if holes:
                self.holes_seen += 1
                self.catch_up(history, holes)
            self.draw(frame)
        elif kind == "resync" or (kind == "state.changed" and frame.get("source") == "running"):
            self.catch_up(history)
