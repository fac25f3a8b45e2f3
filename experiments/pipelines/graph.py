"""An experiment's pipeline as inline SVG: what it waits for on the left, what waits for it on the right."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

NODE_W = 210
NODE_H = 46
ROW = 64
GAP = 150
WIDTH = 3 * NODE_W + 2 * GAP


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(*, x: float, y: float, experiment_id: int, name: str, state: str, current: bool) -> str:
    cls = "pl-node current" if current else "pl-node"
    body = (
        f'<g class="{cls} state-{escape(state)}" data-experiment-id="{experiment_id}" data-state="{escape(state)}">'
        f"<title>#{experiment_id} {escape(name)}: {escape(state)}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="8"/>'
        f'<text class="pl-name" x="{x + 10:.0f}" y="{y + 19:.0f}">#{experiment_id} {escape(_short(name))}</text>'
        f'<text class="pl-state" x="{x + 10:.0f}" y="{y + 36:.0f}">{escape(state.replace("_", " "))}</text>'
        "</g>"
    )
    if current:
        return body
    url = reverse("experiments:detail", args=[experiment_id])
    return f'<a href="{escape(url)}">{body}</a>'


def _edge(*, x1: float, y1: float, x2: float, y2: float, edge: dict[str, Any]) -> str:
    cls = "pl-edge met" if edge["met"] else "pl-edge"
    label = f"after {edge['after']} · on failure {edge['on_upstream_failure']}"
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    return (
        f'<path class="{cls}" d="M{x1:.0f},{y1:.0f} L{x2:.0f},{y2:.0f}" marker-end="url(#pl-arrow)" '
        f'data-edge-id="{int(edge["edge_id"])}"><title>{escape(label)}</title></path>'
        f'<text class="pl-edge-label" x="{mx:.0f}" y="{my - 5:.0f}" text-anchor="middle">'
        f"{escape(edge['after'])}{' ✓' if edge['met'] else ''}</text>"
        f'<text class="pl-edge-label" x="{mx:.0f}" y="{my + 12:.0f}" text-anchor="middle">'
        f"fail: {escape(edge['on_upstream_failure'])}</text>"
    )


def render_pipeline_graph(
    *, experiment_id: int, name: str, state: str, pipeline: dict[str, Any]
) -> SafeString:
    """Return the pipeline around one experiment: upstreams → it → downstreams, edges labelled with their conditions."""
    upstream, downstream = pipeline["upstream"], pipeline["downstream"]
    rows = max(len(upstream), len(downstream), 1)
    height = rows * ROW + 10
    mid_y = (height - NODE_H) / 2
    left_x, mid_x, right_x = 0, NODE_W + GAP, 2 * (NODE_W + GAP)
    parts = [
        f'<svg class="pipeline-graph" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="Pipeline of #{experiment_id}" xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="pl-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="pl-arrowhead"/></marker></defs>',
    ]

    def top(index: int, count: int) -> float:
        return (height - count * ROW) / 2 + index * ROW + (ROW - NODE_H) / 2

    for i, edge in enumerate(upstream):
        y = top(i, len(upstream))
        parts.append(_edge(x1=left_x + NODE_W, y1=y + NODE_H / 2, x2=mid_x, y2=mid_y + NODE_H / 2, edge=edge))
        parts.append(
            _node(
                x=left_x,
                y=y,
                experiment_id=edge["experiment_id"],
                name=edge["name"],
                state=edge["state"],
                current=False,
            )
        )
    for i, edge in enumerate(downstream):
        y = top(i, len(downstream))
        parts.append(
            _edge(x1=mid_x + NODE_W, y1=mid_y + NODE_H / 2, x2=right_x, y2=y + NODE_H / 2, edge=edge)
        )
        parts.append(
            _node(
                x=right_x,
                y=y,
                experiment_id=edge["experiment_id"],
                name=edge["name"],
                state=edge["state"],
                current=False,
            )
        )
    parts.append(_node(x=mid_x, y=mid_y, experiment_id=experiment_id, name=name, state=state, current=True))
    parts.append("</svg>")
    # Every interpolated value above is escaped or a number.
    return mark_safe("".join(parts))
