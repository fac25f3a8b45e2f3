"""The Celery app: broker and queues come from Django settings (CELERY_*)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crucible_ui.settings")

app = Celery("crucible_ui")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Tasks live in the sub-packages of the control app, not in an app-level tasks module.
app.autodiscover_tasks(["control.scheduling", "control.policies", "control.canary"])
