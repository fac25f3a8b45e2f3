"""Figure — the experiment page in a real browser: from navigation to the first chart point drawn, warm and cold.

Chromium (/usr/bin/chromium, driven by Playwright) opens /experiments/<id>/ of an
experiment with 20,000 logged points, served as `make run` serves it: WEB_CONCURRENCY
Daphne processes, static files collected (hashed names, gzip) and served by WhiteNoise.
The page records, in its own clock (performance.now(), from navigation start), the first
animation frame in which its loss chart holds a point.
- cold: a fresh browser profile each time (nothing cached: plotly.js is downloaded);
- warm: the same page loaded again in that profile (plotly.js comes from the cache).
Baseline, in the same run: the cold load with compression and caching off (identity
encoding, cache disabled), i.e. what the page cost before static files were compressed
and cached.
Goals: warm <= 1 s, cold <= 2 s.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Goal,
    base_parser,
    bench_env,
    emit,
    emit_failure,
    emit_latency,
    make_user,
    note,
    session_cookie,
    skipped,
    time_for,
)

FIGURES = ("page_first_point_warm_ms", "page_first_point_cold_ms")
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
POINTS = 20_000
# Runs in the page before its own scripts: the first frame whose loss chart holds a point.
FIRST_POINT_PROBE = """
(() => {
  const look = () => {
    const live = window.crucibleLive;
    if (live && live.traceLength("loss") > 0) { window.__firstPointMs = performance.now(); return; }
    requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
})();
"""


# Where the time went, in the page's clock: the HTML received, the deferred scripts (plotly.js,
# live.js) run (DOMContentLoaded), plotly.js's own download.
PHASES = """
(() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const plotly = performance.getEntriesByType("resource").find((r) => r.name.includes("plotly"));
  return {
    html_ms: nav.responseEnd,
    scripts_run_ms: nav.domContentLoadedEventEnd,
    plotly_download_ms: plotly ? plotly.responseEnd - plotly.startTime : null,
    plotly_bytes: plotly ? plotly.transferSize : null,
  };
})()
"""


def first_point_ms(page: Any, url: str, phases: list[dict[str, Any]] | None = None) -> float:
    """Navigate to url and return the page's own time to its first drawn chart point (ms)."""
    page.goto(url, wait_until="commit")
    page.wait_for_function("window.__firstPointMs !== undefined", timeout=60_000)
    if phases is not None:
        phases.append(page.evaluate(PHASES))
    return float(page.evaluate("window.__firstPointMs"))


def median_phases(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the median of each phase over the loads (None where the browser gave none)."""
    out: dict[str, Any] = {}
    for key in rows[0] if rows else ():
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    return out


def main() -> None:
    """Load the page cold and warm (and the uncompressed, uncached baseline); print the two figures."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    args = parser.parse_args()
    repetitions = args.repetitions or (2 if args.quick else 5)
    if not CHROMIUM.exists():
        for name in FIGURES:
            emit(skipped(name, f"{CHROMIUM} is not installed (apt-get install -y chromium)"))
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        for name in FIGURES:
            emit(skipped(name, "playwright is not installed (a dev dependency)"))
        return
    from crucible_ui.launcher import web_concurrency

    processes = web_concurrency(dict(os.environ))
    # The ORM is done before Playwright's loop starts in this thread; its clean-up runs after.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with bench_env(SERVE_STATIC="true") as env:
        from django.core.management import call_command
        from django.db import connection

        from experiments.choices import RunStatus
        from experiments.models import MetricPoint, Run
        from experiments.runs.rollups import rollups_rebuild
        from experiments.services import experiment_create

        call_command("collectstatic", "--noinput", verbosity=0)
        user = make_user("bench-viewer", permissions=["experiments.view_experiment"])
        cookies = session_cookie(user)
        experiment = experiment_create(name="bench page", recipe="digits")
        run = Run.objects.create(experiment=experiment, attempt=1, status=RunStatus.SUCCEEDED)
        MetricPoint.objects.bulk_create(
            MetricPoint(run=run, experiment=experiment, name=name, step=step, value=1.0 / step, wall_time=0.0)
            for name in ("loss", "val_loss")
            for step in range(1, POINTS // 2 + 1)
        )
        # Charts read the roll-ups that metrics_write keeps: build them as a retried batch does.
        with connection.cursor() as cursor:
            for name in ("loss", "val_loss"):
                rollups_rebuild(cursor, run_id=run.pk, name=name)
        with env.web_processes(processes=processes) as port, sync_playwright() as playwright:
            base = f"http://127.0.0.1:{port}"
            url = f"{base}/experiments/{experiment.pk}/"
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            jar = [{"name": k, "value": v, "url": base} for k, v in cookies.items()]
            cold: list[float] = []
            warm: list[float] = []
            plain: list[float] = []
            cold_phases: list[dict[str, Any]] = []
            warm_phases: list[dict[str, Any]] = []
            try:
                note(
                    f"page_load: {repetitions} cold, warm and uncompressed loads ({processes} web processes)"
                )
                for i in range(repetitions + 1):  # the first of each is a warm-up of the servers
                    context = browser.new_context()
                    context.add_cookies(jar)  # type: ignore[arg-type]
                    context.add_init_script(FIRST_POINT_PROBE)
                    page = context.new_page()
                    cold_ms = first_point_ms(page, url, cold_phases if i else None)
                    warm_ms = first_point_ms(page, url, warm_phases if i else None)
                    context.close()

                    context = browser.new_context(extra_http_headers={"Accept-Encoding": "identity"})
                    context.add_cookies(jar)  # type: ignore[arg-type]
                    context.add_init_script(FIRST_POINT_PROBE)
                    page = context.new_page()
                    page.context.new_cdp_session(page).send(
                        "Network.setCacheDisabled", {"cacheDisabled": True}
                    )
                    plain_ms = first_point_ms(page, url)
                    context.close()
                    if i:
                        cold.append(cold_ms)
                        warm.append(warm_ms)
                        plain.append(plain_ms)
                    if i >= 2 and not time_for(30.0):
                        note("page_load: stopping early to stay within the script's budget")
                        break
            finally:
                browser.close()

    extra = {
        "points_logged": POINTS,
        "web_processes": processes,
        "browser": "Chromium (Playwright), headless, 127.0.0.1",
        "static": "collectstatic: hashed names, gzip; WhiteNoise (Cache-Control immutable, 1 year)",
    }
    baseline = "cold load with compression and caching off (identity encoding, cache disabled)"
    measured = (
        (
            FIGURES[0],
            warm,
            warm_phases,
            Goal("<= 1 s from navigation to the first chart point (warm)", median_max=1000.0),
        ),
        (
            FIGURES[1],
            cold,
            cold_phases,
            Goal("<= 2 s from navigation to the first chart point (cold)", median_max=2000.0),
        ),
    )
    for name, samples, phases, goal in measured:
        emit_latency(
            name=name,
            samples=samples,
            goal=goal,
            baseline_name=baseline,
            baseline_samples=plain,
            extra={**extra, "phases_median": median_phases(phases)},
        )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure(FIGURES, exc)
        raise
