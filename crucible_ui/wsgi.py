"""WSGI entry point (HTTP only; the dashboard's websockets need the ASGI app)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crucible_ui.settings")
application = get_wsgi_application()
