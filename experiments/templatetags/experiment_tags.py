"""Template helpers of the experiment pages: state badges, the state graph, live-view scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django import template
from django.contrib.staticfiles import finders
from django.templatetags.static import static
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from experiments.choices import State
from experiments.graph import render_state_graph, state_graph

register = template.Library()

LIVE_SCRIPT = "js/live.js"
PLOTLY_SCRIPT = "vendor/plotly.min.js"


@register.simple_tag
def state_badge(state: str, element_id: str = "") -> SafeString:
    """Return a coloured badge for a state (with an id, when the live view updates it)."""
    try:
        label = State(state).label
    except ValueError:
        label = state
    if element_id:
        return format_html(
            '<span id="{}" class="badge state-{}" data-state="{}">{}</span>', element_id, state, state, label
        )
    return format_html('<span class="badge state-{}" data-state="{}">{}</span>', state, state, label)


@register.simple_tag
def state_graph_svg(current: str = "", visited: Iterable[str] = ()) -> SafeString:
    """Return the lifecycle graph with the current state highlighted."""
    return render_state_graph(current=current, visited=visited)


@register.simple_tag
def state_graph_loops() -> list[dict[str, Any]]:
    """Return the events that keep the state (retrain) and the states they fire from."""
    return [
        {"event": event, "sources": [s.replace("_", " ") for s in sources]}
        for event, sources in state_graph().loops
    ]


@register.filter
def as_json(value: Any) -> str:
    """Return a config value as JSON (true, 0.003, "adamw"), the way it was written."""
    return json.dumps(value)


@register.filter
def duration(value: timedelta | None) -> str:
    """Return a run's duration as "42 s", "3 min 5 s" or "2 h 10 min" ("" when unknown)."""
    if value is None:
        return ""
    seconds = max(0, int(value.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@register.filter
def ago(value: datetime | None) -> str:
    """Return "just now" or "5 minutes ago" (the largest unit only)."""
    if value is None:
        return ""
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value, depth=1)} ago"


@register.simple_tag
def live_scripts() -> SafeString:
    """Return the live view's script tags once its script exists; nothing before that."""
    if not finders.find(LIVE_SCRIPT):
        return SafeString("")
    return format_html_join(
        "\n", '<script src="{}" defer></script>', ((static(PLOTLY_SCRIPT),), (static(LIVE_SCRIPT),))
    )
