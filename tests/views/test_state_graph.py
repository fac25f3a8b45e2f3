"""The lifecycle graph is drawn from the FSM's declared transitions."""

from __future__ import annotations

import re

from experiments.choices import State
from experiments.graph import render_state_graph, state_graph
from experiments.models import Experiment


def test_graph_has_an_edge_for_every_declared_transition_between_states() -> None:
    declared = {
        (t.name, str(t.source), t.target)
        for t in Experiment._meta.get_field("state").get_all_transitions(Experiment)  # type: ignore[attr-defined]
        if isinstance(t.target, str) and t.target != t.source
    }
    drawn = {(e.event, e.source, e.target) for e in state_graph().edges}
    assert drawn == declared
    assert ("cancel", "running", "cancelled") in drawn
    svg = str(render_state_graph())
    assert len(re.findall(r'<path class="sg-edge[^"]*" d=', svg)) == len(declared)


def test_every_state_is_a_node_and_only_the_current_one_is_highlighted() -> None:
    svg = str(render_state_graph(current="promoting", visited={"pending", "queued"}))
    for state in State.values:
        assert f'data-state="{state}"' in svg
    assert re.findall(r'class="sg-node state-(\w+) current"', svg) == ["promoting"]
    assert set(re.findall(r'class="sg-node state-(\w+) visited"', svg)) == {"pending", "queued"}
    # The ways out of the current state stand out.
    assert set(re.findall(r'<path class="sg-edge next"[^>]*data-event="(\w+)"', svg)) == {
        "deploy",
        "rollback",
        "cancel",
        "withdraw",
    }


def test_retrain_which_keeps_the_state_is_explained_not_drawn_as_an_edge() -> None:
    loops = dict(state_graph().loops)
    assert set(loops["retrain"]) == {"completed", "deployed", "rolled_back", "failed", "cancelled", "retired"}
    assert all(e.event != "retrain" for e in state_graph().edges)
