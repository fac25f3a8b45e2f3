"""`manage.py traffic --model digits --rps N --duration S`: real HTTP traffic to a served model, with feedback."""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import replace
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from crucible_ui.launcher import demo_credentials
from experiments.models import ApiToken
from experiments.registry.traffic import (
    DEFAULT_WAIT_SECONDS,
    TrafficError,
    TrafficGenerator,
    TrafficPlan,
    default_url,
    held_out_digits,
    traffic_token_create,
)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(0)


class Command(BaseCommand):
    """Send held-out digits to /serve/<model>/predict at a steady rate; print progress and a summary as JSON."""

    help = (
        "Send held-out digits (optionally shifted: drift) to a served model over HTTP at --rps for "
        "--duration seconds, post the true label as feedback, print one JSON line per second and a summary."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", default="digits", help="Served model name (default digits).")
        parser.add_argument("--rps", type=float, required=True, help="Requests per second.")
        parser.add_argument("--duration", type=float, required=True, help="Seconds to send for.")
        parser.add_argument(
            "--shift",
            type=float,
            default=0.0,
            help="Brighten inputs by this share of the 0-16 range (drift).",
        )
        parser.add_argument(
            "--url",
            default="",
            help=f"The server (default {default_url()}: HOST and PORT, as `make run` reads them).",
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=DEFAULT_WAIT_SECONDS,
            help="Seconds the first request keeps trying while the server starts or warms up "
            f"(unreachable, 502-504); inf: no limit (default {DEFAULT_WAIT_SECONDS:g}).",
        )
        parser.add_argument(
            "--progress-every", type=float, default=1.0, help="Seconds between progress lines (default 1)."
        )
        parser.add_argument(
            "--wait-for-model",
            action="store_true",
            help="Also wait while the model is unknown (nothing registered yet), e.g. beside a fresh `make run`.",
        )
        parser.add_argument("--token", default="", help="API token; without it one is minted for --user.")
        parser.add_argument(
            "--user", default="", help="Who the minted token belongs to (default: the demo user)."
        )
        parser.add_argument(
            "--feedback-rate", type=float, default=1.0, help="Share of answers whose true label is posted."
        )
        parser.add_argument("--seed", type=int, default=0, help="Which digits are sent, in which order.")
        parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at most.")

    def handle(self, *args: Any, **options: Any) -> None:
        """Check the options, mint a token when none is given, send the traffic, print the summary."""
        minted: ApiToken | None = None
        # Stopped by `make run` (DEMO_TRAFFIC) or kill: unwind, so the minted token is revoked.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            plan = TrafficPlan(
                model=options["model"],
                rps=options["rps"],
                duration_s=options["duration"],
                token=options["token"],
                url=options["url"] or default_url(),
                wait_s=options["wait"],
                wait_for_model=options["wait_for_model"],
                progress_every_s=options["progress_every"],
                shift=options["shift"],
                feedback_rate=options["feedback_rate"],
                seed=options["seed"],
                concurrency=options["concurrency"],
            )
            plan.validate()
            if not options["token"]:
                username = options["user"] or demo_credentials()[0]
                minted, raw = traffic_token_create(username=username)
                plan = replace(plan, token=raw)
                self.stderr.write(
                    f"Minted API token {minted.prefix}… for {username!r}; it is revoked when the run ends."
                )
            data = held_out_digits(model_name=plan.model)
            generator = TrafficGenerator(
                plan, data=data, on_progress=self._line, on_wait=lambda text: self.stderr.write(text)
            )
            summary = generator.run()
        except TrafficError as exc:
            raise CommandError(exc.message) from None
        finally:
            if minted is not None:
                minted.delete()
        self._line(summary)

    def _line(self, line: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(line))
        self.stdout.flush()
