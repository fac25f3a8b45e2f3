"""Forms of the experiment pages; validation of the config itself stays in the model/service."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments.choices import PriorityClass
from experiments.models import After, OnUpstreamFailure, Project
from experiments.projects import creatable_projects, default_project_for
from experiments.recipes import RECIPES

DEFAULT_RECIPE = "digits"


def recipe_defaults(name: str) -> dict[str, Any]:
    """Return a recipe's parameters with their defaults, as the config example."""
    spec = RECIPES.get(name)
    return {p.name: p.default for p in spec.params} if spec else {}


def recipe_example_json(name: str) -> str:
    """Return the config example of a recipe as indented JSON."""
    return json.dumps(recipe_defaults(name), indent=2)


class ExperimentCreateForm(forms.Form):
    """The fields a person fills in to create an experiment."""

    name = forms.CharField(max_length=200, help_text="A short name people will recognise in the list.")
    description = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What this experiment tries out (optional).",
    )
    recipe = forms.ChoiceField(
        choices=[(name, f"{name} — {spec.summary}") for name, spec in RECIPES.items()],
        initial=DEFAULT_RECIPE,
        help_text="The training recipe; its parameters are listed below.",
    )
    config = forms.CharField(
        required=False,
        label="Parameters (JSON)",
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "class": "mono"}),
        help_text="A JSON object of the recipe's parameters; leave one out to take its default.",
    )
    priority_class = forms.ChoiceField(
        choices=PriorityClass.choices,
        initial=PriorityClass.BATCH,
        help_text="Realtime runs before interactive, before batch, before offline.",
    )
    priority = forms.IntegerField(
        min_value=0, max_value=10, initial=5, help_text="0-10 within the class; higher runs first."
    )
    gpus = forms.IntegerField(
        min_value=0, max_value=8, initial=0, label="GPUs", help_text="0 runs on a CPU slot."
    )
    gpu_type = forms.CharField(
        required=False, max_length=64, label="GPU type", help_text="e.g. H100; blank takes any."
    )
    memory_gb = forms.FloatField(
        min_value=0.0, initial=0.0, label="GPU memory (GiB)", help_text="Memory the run needs on its GPU."
    )
    cpu_cores = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1024,
        label="CPU cores",
        help_text="Cores a run needs on its worker; blank takes the recipe's default.",
    )
    host_memory_gb = forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=65536.0,
        label="Host memory (GiB)",
        help_text="Memory a run needs on its worker; blank takes the recipe's default.",
    )
    max_attempts = forms.IntegerField(
        min_value=1, max_value=20, initial=3, help_text="A failed run is retried until this many attempts."
    )
    timeout_seconds = forms.IntegerField(
        min_value=1,
        max_value=7 * 24 * 3600,
        initial=3600,
        label="Timeout (seconds)",
        help_text="A run taking longer is stopped and failed.",
    )
    tags = forms.CharField(
        required=False, max_length=500, help_text="Comma separated, e.g. baseline, sweep-3."
    )
    depends_on = forms.CharField(
        required=False,
        max_length=500,
        label="Depends on",
        help_text="Experiment ids, comma separated: started, it waits for them and then queues by itself. "
        "A distill experiment takes a digits upstream as its teacher.",
    )
    depends_after = forms.ChoiceField(
        choices=After.choices, initial=After.SUCCEEDED, label="Waits until each", required=False
    )
    on_upstream_failure = forms.ChoiceField(
        choices=OnUpstreamFailure.choices,
        initial=OnUpstreamFailure.CANCEL,
        label="If one fails or is cancelled",
        required=False,
    )

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        required=False,
        empty_label=None,
        help_text="Its members see and drive it; its quotas and budget apply.",
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        # Only the projects where this person may create; the first is preselected.
        choices = creatable_projects(user) if user is not None else Project.objects.none()
        self.fields["project"].queryset = choices  # type: ignore[attr-defined]
        if not self.is_bound and user is not None:
            self.initial.setdefault("project", default_project_for(user))
        if not self.is_bound and "config" not in self.initial:
            recipe = str(self.initial.get("recipe", DEFAULT_RECIPE))
            self.initial["config"] = recipe_example_json(recipe)

    def clean_config(self) -> dict[str, Any]:
        """Return the parsed JSON object; the recipe's schema is checked by the service."""
        raw = (self.cleaned_data.get("config") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).", code="json"
            ) from None
        if not isinstance(value, dict):
            raise ValidationError('Must be a JSON object, e.g. {"epochs": 10}.', code="not_object")
        return value

    def clean_depends_on(self) -> list[int]:
        """Return the upstream experiment ids (whether they exist is the service's to say)."""
        raw = self.cleaned_data.get("depends_on") or ""
        ids: list[int] = []
        for part in raw.replace(";", ",").split(","):
            text = part.strip().lstrip("#")
            if not text:
                continue
            if not text.isdigit() or not 0 < int(text) < 2**31:
                raise ValidationError(f"{part.strip()!r} is not an experiment id (a whole number, e.g. 12).")
            if int(text) not in ids:
                ids.append(int(text))
        return ids

    def clean_project(self) -> Project:
        """Return the chosen project, or the person's only or first one when none is chosen."""
        project = self.cleaned_data.get("project")
        if project is None:
            project = default_project_for(self.user) if self.user is not None else None
        if project is None:
            raise ValidationError("You may not create experiments in any project.", code="no_project")
        return project

    def clean_tags(self) -> list[str]:
        """Return the comma-separated tags as a list, blanks and repeats dropped."""
        raw = self.cleaned_data.get("tags") or ""
        tags: list[str] = []
        for part in raw.split(","):
            tag = part.strip()
            if tag and tag not in tags:
                tags.append(tag)
        return tags

    def add_service_errors(self, error: ValidationError) -> None:
        """Show a service's ValidationError next to the fields it names (others on top)."""
        if not hasattr(error, "error_dict"):
            self.add_error(None, error)
            return
        for field, messages in error.message_dict.items():
            if field in self.fields:
                for message in messages:
                    self.add_error(field, message)
            else:
                for message in messages:
                    self.add_error(None, f"{field}: {message}")
