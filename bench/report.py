"""Render a results file of run_all (JSON lines) as the Markdown table of BENCHMARKS.md.

.venv/bin/python bench/report.py var/bench/results-<UTC time>.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def render(lines: list[dict[str, Any]]) -> str:
    """Return the Markdown table of the figures, with the machine and date of the run."""
    rows = [
        "| figure | median (min-max) | baseline median | ratio | goal | meets |",
        "|---|---|---|---|---|---|",
    ]
    machine: dict[str, Any] = {}
    dates: list[str] = []
    for line in lines:
        machine = line.get("machine", machine)
        dates.append(str(line.get("date", "")))
        name = f"`{line['figure']}`"
        if "skipped" in line:
            rows.append(f"| {name} | skipped: {line['skipped']} | | | | |")
            continue
        unit = line["unit"]
        ours = f"{_number(line['median'])} {unit} ({_number(line['min'])}-{_number(line['max'])}, n={line['repetitions']})"
        base = line.get("baseline")
        base_text = f"{_number(base['median'])} {base['unit']} — {base['name']}" if base else "—"
        met = line.get("meets_goal")
        verdict = "yes" if met else "not judged" if met is None else "**no**"
        rows.append(
            f"| {name} | {ours} | {base_text} | {_number(line.get('ratio'))} | {line['goal']} | {verdict} |"
        )
    when = f"{min(dates)} - {max(dates)}" if dates else "?"
    head = (
        f"Run of {when} (UTC) on {machine.get('cpu_count')} CPUs, Python {machine.get('python')}, "
        f"{machine.get('platform')}; load average at the end {machine.get('load_average')}."
    )
    return head + "\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    """Print the table of the results file given as the only argument."""
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    lines = [json.loads(raw) for raw in Path(sys.argv[1]).read_text().splitlines() if raw.strip()]
    sys.stdout.write(render(lines))


if __name__ == "__main__":
    main()
