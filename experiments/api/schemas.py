"""Shapes of the experiments JSON API (ninja Schemas): what comes in, what goes out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from ninja import Field, Schema
from pydantic import ConfigDict, StrictBool, StrictStr

from experiments.choices import PriorityClass, State
from experiments.models import Experiment
from experiments.recipes import RECIPES

# The recipe names, as an enum in the schema: clients (and fuzzers) see what is accepted.
_RECIPE_ENUM: dict[str, Any] = {"enum": sorted(RECIPES)}
# Ids are database integers: the schema says so, so that clients (and fuzzers) keep to them.
MAX_ID = 2_147_483_647

Ordering = Literal[
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "state_changed_at",
    "-state_changed_at",
    "name",
    "-name",
    "priority",
    "-priority",
    "state",
    "-state",
    "id",
    "-id",
]
ORDERINGS: tuple[str, ...] = get_args(Ordering)


class DependencyIn(Schema):
    """One experiment the new (or this) experiment waits for, and on what condition."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: int = Field(..., ge=1, le=MAX_ID, description="The upstream experiment.")
    after: Literal["succeeded", "deployed", "finished"] = Field(
        "succeeded", description="What the upstream must reach before this one queues."
    )
    on_upstream_failure: Literal["cancel", "hold"] = Field(
        "cancel", description="When the upstream fails or is cancelled: cancel this one, or hold it waiting."
    )


class DependencyOut(Schema):
    """One edge of a pipeline, seen from one of its ends."""

    edge_id: int
    experiment_id: int
    name: str
    state: str
    after: str
    on_upstream_failure: str
    met: bool


class PipelineOut(Schema):
    """What an experiment waits for (upstream) and what waits for it (downstream)."""

    upstream: list[DependencyOut]
    downstream: list[DependencyOut]


class ExperimentIn(Schema):
    """A new experiment; config is checked against the recipe's declared parameters."""

    # Strict numbers and strings: a JSON API that reads "5" or true as a priority hides
    # client bugs; unknown fields are refused rather than silently dropped.
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(..., min_length=1, max_length=200)
    recipe: StrictStr = Field(
        ...,
        description="Recipe name: digits, charlm or distill.",
        json_schema_extra=_RECIPE_ENUM,
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Recipe hyper-parameters; omitted ones take their defaults."
    )
    description: StrictStr = ""
    priority_class: PriorityClass = PriorityClass.BATCH
    priority: int = Field(5, strict=True, ge=0, le=10, description="0-10 within the class; higher first.")
    gpus: int = Field(0, strict=True, ge=0, le=8, description="GPUs wanted; 0 runs on a CPU slot.")
    gpu_type: StrictStr = Field("", max_length=64, description="e.g. H100; empty takes any.")
    memory_gb: float = Field(0.0, strict=True, ge=0.0, le=4096.0, description="GPU memory needed, in GiB.")
    cpu_cores: int | None = Field(
        None, strict=True, ge=1, le=1024, description="CPU cores a run needs; omitted: the recipe's default."
    )
    host_memory_gb: float | None = Field(
        None,
        strict=True,
        ge=0.0,
        le=65536.0,
        description="Host memory a run needs, GiB; omitted: the recipe's default.",
    )
    max_attempts: int = Field(3, strict=True, ge=1, le=20)
    timeout_seconds: int = Field(3600, strict=True, ge=1, le=7 * 24 * 3600)
    tags: list[StrictStr] = Field(default_factory=list)
    depends_on: list[DependencyIn] = Field(
        default_factory=list,
        description="Experiments this one waits for: started, it waits until each gets where its edge "
        "asks, then queues by itself. A cycle is refused at body.depends_on.",
    )
    project: StrictStr | None = Field(
        None,
        max_length=50,
        description="Slug of the project it joins (one where the caller may create); "
        "omitted: the caller's only or first such project.",
    )


class ActionIn(Schema):
    """Optional body of an action: why it was taken (written to the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: StrictStr = Field("", max_length=2000)
    override: StrictBool = Field(
        False,
        description="Promote what a policy held: confirms the override (a reason is then required; "
        'the audit says "override of <policy>: <reason>").',
    )


class ExperimentFilters(Schema):
    """Query parameters of the experiment list."""

    state: list[State] = Field(default_factory=list, description="Repeat to match any of several states.")
    recipe: str | None = None
    q: str | None = Field(None, description="Case-insensitive search in the name.")
    ordering: Ordering = "-created_at"
    limit: int = Field(50, ge=1, le=200)
    # Bounded so the database never sees an OFFSET it cannot represent (a 64-bit overflow was a 500).
    offset: int = Field(0, ge=0, le=2_147_483_647)


class TransitionOut(Schema):
    """One audited transition."""

    event: str
    source_state: str
    target_state: str
    actor: str
    reason: str
    created_at: datetime


class ExperimentSummary(Schema):
    """An experiment as the list shows it."""

    id: int
    name: str
    recipe: str
    executor: str
    state: str
    priority_class: str
    priority: int
    gpus: int
    gpu_type: str
    owner: str | None
    project: str
    parent_id: int | None
    tags: list[str]
    created_at: datetime
    state_changed_at: datetime

    @staticmethod
    def resolve_owner(obj: Experiment) -> str | None:
        """Return the owner's username (None for system-made experiments)."""
        return obj.owner.get_username() if obj.owner else None

    @staticmethod
    def resolve_project(obj: Experiment) -> str:
        """Return the slug of the experiment's project."""
        return obj.project.slug


class ExperimentDetail(ExperimentSummary):
    """One experiment with everything a client needs to decide its next action."""

    description: str
    config: dict[str, Any]
    memory_gb: float
    cpu_cores: int
    host_memory_gb: float
    max_attempts: int
    timeout_seconds: int
    queued_at: datetime | None
    updated_at: datetime
    children_ids: list[int]
    pipeline: PipelineOut = Field(..., description="Dependency edges both ways, with states and conditions.")
    available_events: list[str] = Field(..., description="Events the requesting user may fire now.")
    transitions: list[TransitionOut] = Field(..., description="Audited transitions, oldest first.")

    @staticmethod
    def resolve_available_events(obj: Experiment) -> list[str]:
        """Return the events computed for the requesting user (the API view sets them)."""
        events: list[str] = obj.available_events_now  # type: ignore[attr-defined]
        return events


class ExperimentList(Schema):
    """One page of experiments, with the total and the counts per state."""

    count: int = Field(..., description="Experiments matching all filters.")
    limit: int
    offset: int
    counts: dict[str, int] = Field(
        ..., description="Per state, experiments matching the other filters (recipe, q)."
    )
    items: list[ExperimentSummary]


class FieldError(Schema):
    """One refused input, located by its path (e.g. ["body", "config", "epochs"])."""

    loc: list[str | int]
    msg: str
    type: str = "value_error"


class ValidationErrorOut(Schema):
    """422: the request was well-formed but some fields were refused."""

    detail: list[FieldError]


class ErrorOut(Schema):
    """Any other error: a sentence a person can act on."""

    detail: str


class TransitionRefusedOut(Schema):
    """409: the event cannot fire from the current state (or another request fired first)."""

    detail: str
    state: str


class VerdictOut(Schema):
    """The policy decision a promote would override."""

    policy: str
    verdict: str


class OverrideRequiredOut(Schema):
    """409: a policy held the experiment; promote again with `override` and a reason."""

    detail: str
    state: str
    override_required: bool
    held_by: VerdictOut


class UnknownEventOut(Schema):
    """400: no such event."""

    detail: str
    known_events: list[str]


__all__ = [
    "ORDERINGS",
    "ActionIn",
    "ErrorOut",
    "ExperimentDetail",
    "ExperimentFilters",
    "ExperimentIn",
    "ExperimentList",
    "ExperimentSummary",
    "FieldError",
    "OverrideRequiredOut",
    "TransitionOut",
    "TransitionRefusedOut",
    "UnknownEventOut",
    "ValidationErrorOut",
    "VerdictOut",
]
