"""The checks every JSON endpoint makes on a request body before reading it: its type and size."""

from __future__ import annotations

import re

from django.http import HttpRequest

# A predict call of MAX_INSTANCES rows of 64 numbers is ~350 kB; an experiment ~2 kB.
MAX_JSON_BODY_BYTES = 1 << 20
# A batch of 10,000 metric points of an external run (up to ~200 bytes each with long names):
# Django's own bound on a body read into memory (DATA_UPLOAD_MAX_MEMORY_SIZE's default).
MAX_METRICS_BODY_BYTES = 2_621_440
_METRICS_PATH = re.compile(r"^/api/runs/\d+/metrics$")
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def json_body_refusal(
    request: HttpRequest, *, max_bytes: int = MAX_JSON_BODY_BYTES
) -> tuple[int, str] | None:
    """Return (status, message) when the body is too big (413) or not JSON (415); None when it may be read.

    Decided from the headers alone, so a 10 MB upload is refused without being read.
    """
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 400, "Content-Length: not a number"
    if length > max_bytes:
        return 413, f"body: at most {max_bytes} bytes, got {length}"
    if length > 0 and request.method in _UNSAFE:
        content_type = (request.content_type or "").lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            shown = content_type or "none"
            return 415, f"Content-Type: must be application/json, got {shown}"
    return None


def max_body_bytes(path: str) -> int:
    """Return the largest body an API path takes: metric batches are bigger than the rest."""
    return MAX_METRICS_BODY_BYTES if _METRICS_PATH.match(path) else MAX_JSON_BODY_BYTES
