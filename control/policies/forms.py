"""The policy page's forms: the policy's fields, its conditions and actions as rows, the preview's experiment.

The rows are model forms of PolicyCondition and PolicyAction, so they are validated by the
models' own clean() (the registries' validate), the same code the admin's inlines run.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.forms.models import inlineformset_factory

from control.policies.models import Policy, PolicyAction, PolicyCondition
from experiments.models import Experiment
from experiments.projects import visible_experiments


class PolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    """The fields of a policy a person tunes; canary, A/B and cost settings stay in the admin."""

    class Meta:
        model = Policy
        fields = (
            "name",
            "kind",
            "mode",
            "enabled",
            "order",
            "scope_recipes",
            "scope_tags",
            "cooldown_seconds",
            "max_fires_per_hour",
            "description",
        )
        labels = {"description": "Notes"}
        help_texts = {
            "description": "Free text for people; what the policy checks is generated from its rows."
        }
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "scope_recipes": forms.TextInput(),
            "scope_tags": forms.TextInput(),
        }


ConditionFormSet = inlineformset_factory(
    Policy,
    PolicyCondition,
    fields=("role", "kind", "metric", "aggregate", "window", "operator", "threshold", "better"),
    extra=0,
    can_delete=True,
)

ActionFormSet = inlineformset_factory(
    Policy,
    PolicyAction,
    fields=("role", "kind", "params", "enabled"),
    extra=0,
    can_delete=True,
    widgets={"params": forms.TextInput()},
)


class PreviewForm(forms.Form):
    """The experiment to dry-run the unsaved policy against."""

    experiment = forms.ModelChoiceField(
        queryset=Experiment.objects.order_by("-created_at"),
        error_messages={"invalid_choice": "no such experiment", "required": "choose an experiment"},
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if user is not None:
            # Another project's experiment is "no such experiment", as a missing one.
            self.fields["experiment"].queryset = visible_experiments(user).order_by("-created_at")  # type: ignore[attr-defined]
