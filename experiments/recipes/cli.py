"""`python -m experiments.recipes`: run a recipe with nothing but torch (and sklearn) installed.

    python -m experiments.recipes list [--json]
    python -m experiments.recipes run digits --device auto --seed 0 --set epochs=5 --checkpoint-dir ck/

`run` prints one JSON object per metric point, then `{"summary": {...}}`. With --checkpoint-dir an
interrupted run (Ctrl-C, SIGTERM) saves a checkpoint there, and running the same command again
resumes from it. Bad arguments exit with status 2 and a message on stderr naming the parameter.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from types import FrameType
from typing import Any, TextIO

from .catalog import RECIPES, get_spec
from .schema import ConfigError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recipes", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print the recipes and their parameters")
    listing.add_argument("--json", action="store_true", help="print one JSON object per recipe")
    run = sub.add_parser("run", help="train a recipe, printing metric points as JSON lines")
    run.add_argument("recipe", help=f"one of: {', '.join(sorted(RECIPES))}")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    run.add_argument("--seed", type=int, default=None, help="random seed (same as --set seed=N)")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one parameter; repeatable",
    )  # fmt: skip
    run.add_argument(
        "--checkpoint-dir", default=None, help="save checkpoints here and resume from the newest"
    )
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _list(as_json: bool, out: TextIO) -> int:
    for spec in RECIPES.values():
        if as_json:
            described = {
                "name": spec.name,
                "summary": spec.summary,
                "params": [p.describe() for p in spec.params],
            }
            out.write(json.dumps(described) + "\n")
            continue
        out.write(f"{spec.name}: {spec.summary}\n")
        for p in spec.params:
            bounds = ""
            if p.minimum is not None or p.maximum is not None:
                bounds = f" [{_num(p.minimum)}..{_num(p.maximum)}]"
            out.write(f"  {p.name} ({p.type.__name__}, default {p.default}){bounds}: {p.help}\n")
    return 0


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        spec = get_spec(args.recipe)
    except ConfigError as exc:
        return _fail(exc.errors["recipe"])
    raw: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return _fail(f"--set {item!r}: expected KEY=VALUE")
        raw[key.strip()] = value
    if args.seed is not None:
        raw["seed"] = args.seed
    try:
        config = spec.clean(raw)
    except ConfigError as exc:
        return _fail("; ".join(f"parameter {key!r}: {msg}" for key, msg in exc.errors.items()))

    # torch only now: `list` and argument errors stay fast.
    from .local import LocalRunContext
    from .runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        return _fail(f"--device: {exc}")

    ctx = LocalRunContext(
        device=str(device), seed=int(config["seed"]), checkpoint_dir=args.checkpoint_dir, out=out
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        ctx.request_stop()  # the loop checkpoints and returns at its next step

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.perf_counter()
    try:
        result = spec.load().train(ctx, config)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary: dict[str, Any] = {
        "recipe": spec.name,
        "device": str(device),
        "steps": result.steps,
        "stopped": result.stopped,
        "seconds": round(time.perf_counter() - started, 3),
        "final_metrics": result.final_metrics,
        "config": config,
    }
    if "tokens_per_s" in result.final_metrics:
        summary["tokens_per_s"] = result.final_metrics["tokens_per_s"]
    if device.type == "cuda":
        import torch

        summary["gpu"] = torch.cuda.get_device_name(device)
        summary["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    out.write(json.dumps({"summary": _json_safe(summary)}) + "\n")
    out.flush()
    return 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if args.command == "list":
        return _list(args.json, stream)
    return _run(args, stream)
