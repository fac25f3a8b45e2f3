"""The GPU page: every worker and device, what runs where, the queue; live numbers over /ws/gpus/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from control.scheduling.selectors import scheduler_queue, workers_with_devices
from experiments.permissions import requires_permission
from experiments.recipes import RECIPES


@requires_permission("control.view_device")
@login_required
@permission_required("control.view_device", raise_exception=True)
def gpus(request: HttpRequest) -> HttpResponse:
    """Show the worker inventory, leases and the scheduler queue."""
    return render(
        request,
        "control/gpus.html",
        {
            "workers": workers_with_devices(user=request.user),
            "queue": scheduler_queue(user=request.user),
            # A refused plug-in is the reason a team's recipe is missing from the Start form.
            "recipe_problems": RECIPES.problems(),
        },
    )


@requires_permission("control.view_device")
@login_required
@permission_required("control.view_device", raise_exception=True)
def gpu_rows(request: HttpRequest) -> HttpResponse:
    """Return the device rows alone (the page reloads them when a new device appears)."""
    return render(request, "control/_gpu_rows.html", {"workers": workers_with_devices(user=request.user)})
