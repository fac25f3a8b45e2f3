"""The lifecycle state graph as inline SVG, drawn from the transitions the FSM declares."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from experiments.choices import State
from experiments.models import Experiment

NODE_W = 104
NODE_H = 34
WIDTH = 1110
COL = 165
MAIN_Y = 170
PARALLEL_GAP = 12

# Where each state sits: the happy path left to right, the ways out of it around it.
# Only placement lives here; which edges exist is read from the model's transitions.
_LAYOUT: dict[str, tuple[float, float]] = {
    State.PENDING: (60, MAIN_Y),
    State.WAITING: (60 + 0.5 * COL, 30),
    State.QUEUED: (60 + COL, MAIN_Y),
    State.RUNNING: (60 + 2 * COL, MAIN_Y),
    State.EVALUATING: (60 + 3 * COL, MAIN_Y),
    State.COMPLETED: (60 + 4 * COL, MAIN_Y),
    State.PROMOTING: (60 + 5 * COL, MAIN_Y),
    State.DEPLOYED: (60 + 6 * COL, MAIN_Y),
    State.CANCELLED: (60 + 3 * COL, 30),
    State.FAILED: (60 + 2.5 * COL, MAIN_Y + 120),
    State.ROLLED_BACK: (60 + 5.5 * COL, MAIN_Y + 120),
    State.RETIRED: (60 + 6 * COL, 30),
}
# Edges between states on the same row that skip a node or go backwards bend around
# the row: +1 below it, -1 above it (chosen so that no edge crosses a node).
_BEND: dict[tuple[str, str], int] = {
    (State.RUNNING, State.QUEUED): -1,
    (State.EVALUATING, State.PROMOTING): 1,
    (State.PROMOTING, State.COMPLETED): -1,
    # adopt (an A/B test's winner): from the held-for-review side below the row, clear of
    # evaluating → promoting's arc; from cancelled over the top, clear of promoting's edges.
    (State.EVALUATING, State.DEPLOYED): 2,
    (State.CANCELLED, State.DEPLOYED): -1,
}


@dataclass(frozen=True)
class Edge:
    """One declared transition between two concrete states."""

    event: str
    source: str
    target: str


@dataclass(frozen=True)
class StateGraph:
    """The lifecycle read from the model: its edges and the events that keep the state as it is."""

    edges: tuple[Edge, ...]
    # event -> source states, for transitions whose target is decided at run time
    # (retrain leaves the experiment where it is and creates a child).
    loops: tuple[tuple[str, tuple[str, ...]], ...]


@cache
def state_graph() -> StateGraph:
    """Return the lifecycle's edges, introspected from Experiment's FSM field."""
    field = Experiment._meta.get_field("state")
    edges: list[Edge] = []
    loops: dict[str, list[str]] = defaultdict(list)
    for t in field.get_all_transitions(Experiment):  # type: ignore[attr-defined]
        source, target = str(t.source), t.target
        if isinstance(target, str) and target in State.values and target != source:
            edges.append(Edge(event=t.name, source=source, target=str(target)))
        else:
            loops[t.name].append(source)
    order = {value: i for i, value in enumerate(State.values)}
    edges.sort(key=lambda e: (order.get(e.source, 99), order.get(e.target, 99), e.event))
    return StateGraph(
        edges=tuple(edges),
        loops=tuple(
            (event, tuple(sorted(sources, key=lambda s: order.get(s, 99))))
            for event, sources in loops.items()
        ),
    )


def _positions(states: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Return node centres; a state the layout does not know goes on an extra bottom row."""
    pos = {s: _LAYOUT[s] for s in states if s in _LAYOUT}
    extra = [s for s in states if s not in pos]
    for i, s in enumerate(extra):
        pos[s] = (60 + i * COL, MAIN_Y + 200)
    return pos


def _clip(cx: float, cy: float, tx: float, ty: float, gap: float = 3.0) -> tuple[float, float]:
    """Return where the line from a node's centre towards (tx, ty) leaves its box."""
    dx, dy = tx - cx, ty - cy
    if dx == 0 and dy == 0:
        return cx, cy
    hw, hh = NODE_W / 2 + gap, NODE_H / 2 + gap
    scale = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
    return cx + dx * scale, cy + dy * scale


def _label(state: str) -> str:
    return state.replace("_", " ")


def render_state_graph(*, current: str = "", visited: Iterable[str] = ()) -> SafeString:
    """Return the lifecycle as an SVG: the current state filled, visited ones marked, next steps bold."""
    graph = state_graph()
    states = [s for s in State.values]
    pos = _positions(states)
    visited_set = set(visited)
    height = max(y for _, y in pos.values()) + NODE_H
    parts: list[str] = [
        f'<svg class="state-graph" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'aria-labelledby="state-graph-title" xmlns="http://www.w3.org/2000/svg">',
        '<title id="state-graph-title">Experiment lifecycle'
        + (f", now {escape(_label(current))}" if current else "")
        + "</title>",
        "<defs>",
        '<marker id="sg-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="sg-arrowhead"/></marker>',
        '<marker id="sg-arrow-next" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="sg-arrowhead next"/></marker>',
        "</defs>",
    ]

    # Label each (event, target) group once, on its shortest edge: six "cancel" labels would be noise.
    groups: dict[tuple[str, str], list[Edge]] = defaultdict(list)
    for edge in graph.edges:
        groups[(edge.event, edge.target)].append(edge)

    def length(e: Edge) -> float:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        return math.hypot(x2 - x1, y2 - y1)

    labelled = {min(group, key=length) for group in groups.values()}

    # Edges between the same two states (retire, reinstate and adopt between deployed and
    # retired) are drawn side by side, PARALLEL_GAP apart, not on top of each other.
    def bend_of(e: Edge) -> int | None:
        (sx, sy), (tx, ty) = pos[e.source], pos[e.target]
        bend = _BEND.get((e.source, e.target))
        if bend is None and sy == ty and abs(tx - sx) > COL + 1:
            bend = 1
        return bend

    between: dict[frozenset[str], list[Edge]] = defaultdict(list)
    for edge in graph.edges:
        if not bend_of(edge):
            between[frozenset((edge.source, edge.target))].append(edge)

    edge_parts: list[str] = []
    label_parts: list[str] = []
    for edge in graph.edges:
        (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
        is_next = edge.source == current
        cls = "sg-edge next" if is_next else "sg-edge"
        marker = "sg-arrow-next" if is_next else "sg-arrow"
        bend = bend_of(edge)
        anchor = "middle"
        if bend:
            # A quadratic curve around the row; its control point sits off the midpoint.
            mx, my = (sx + tx) / 2, (sy + ty) / 2
            cx, cy = mx, my + bend * (NODE_H + 40)
            x1, y1 = _clip(sx, sy, cx, cy)
            x2, y2 = _clip(tx, ty, cx, cy)
            d = f"M{x1:.1f},{y1:.1f} Q{cx:.1f},{cy:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2
            # The label sits inside the arc, between it and the row, clear of other edges.
            ly += -6 if bend > 0 else 14
        else:
            siblings = between[frozenset((edge.source, edge.target))]
            index, spread = siblings.index(edge), (len(siblings) - 1) / 2
            # Shifted across the line, the same way whichever direction the edge points.
            (ax, ay), (bx, by) = sorted((pos[edge.source], pos[edge.target]))
            norm = math.hypot(bx - ax, by - ay) or 1.0
            shift = (index - spread) * PARALLEL_GAP
            ox, oy = shift * (by - ay) / norm, -shift * (bx - ax) / norm
            x1, y1 = _clip(sx + ox, sy + oy, tx + ox, ty + oy)
            x2, y2 = _clip(tx + ox, ty + oy, sx + ox, sy + oy)
            d = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2
            if y1 == y2:
                ly -= 6
            else:
                # Beside the outermost of its siblings, one line of text per sibling; on the left
                # near the right edge, where the text would be cut off.
                outside = (spread * PARALLEL_GAP - abs(shift)) * abs(by - ay) / norm + 6
                left = lx + 80 > WIDTH
                lx, anchor = (lx - outside - 2 * abs(shift), "end") if left else (lx + outside, "start")
                ly += (index - spread) * 14
        edge_parts.append(
            f'<path class="{cls}" d="{d}" marker-end="url(#{marker})" data-event="{escape(edge.event)}">'
            f"<title>{escape(edge.event)}: {escape(_label(edge.source))} → {escape(_label(edge.target))}</title>"
            "</path>"
        )
        if edge in labelled:
            label_parts.append(
                f'<text class="sg-edge-label{" next" if is_next else ""}" x="{lx:.1f}" y="{ly:.1f}" '
                f'text-anchor="{anchor}">{escape(edge.event)}</text>'
            )
    parts.extend(edge_parts)
    parts.extend(label_parts)

    for state in states:
        x, y = pos[state]
        classes = ["sg-node", f"state-{state}"]
        if state == current:
            classes.append("current")
        elif state in visited_set:
            classes.append("visited")
        parts.append(
            f'<g class="{" ".join(classes)}" data-state="{escape(state)}">'
            f"<title>{escape(State(state).label)}</title>"
            f'<rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{NODE_W}" height="{NODE_H}" rx="18"/>'
            f'<text x="{x:.1f}" y="{y + 5:.1f}" text-anchor="middle">{escape(_label(state))}</text>'
            "</g>"
        )
    parts.append("</svg>")
    # Every interpolated value above is escaped.
    return mark_safe("".join(parts))


def loop_notes() -> list[str]:
    """Return a sentence per event that keeps the state (retrain), for the caption under the graph."""
    notes = []
    for event, sources in state_graph().loops:
        notes.append(f"{event} (from {', '.join(_label(s) for s in sources)}) leaves the state as it is")
    return notes
