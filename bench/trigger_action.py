"""Figure 6 — trigger -> action: a metric crossing a policy threshold until the action has executed, p50/p99.

Measurable once the control engine is consulted on every flushed metric batch (an
`experiments.reporting.on_metrics_flushed` hook). Until then this prints a skipped line
that says what is missing. Goal: p99 <= 1 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import base_parser, bench_env, emit, emit_failure, skipped

FIGURE = "trigger_action_p99_ms"


def engine_hooked() -> str | None:
    """Return None when the engine evaluates policies on metric flushes, else why it does not."""
    try:
        from control import engine  # noqa: F401
    except ImportError:
        return "the policies engine (control.engine) does not exist yet"
    from experiments import reporting

    if not reporting._flushed_hooks:
        return (
            "the policies engine exists but is not wired to metric flushes yet "
            "(no experiments.reporting.on_metrics_flushed hook is registered)"
        )
    return None


def main() -> None:
    """Print the figure, or why it cannot be measured yet."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args()
    with bench_env():
        why = engine_hooked()
    emit(skipped(FIGURE, why or "the engine is wired, but this figure's measurement is not written yet"))


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure([FIGURE], exc)
        raise
