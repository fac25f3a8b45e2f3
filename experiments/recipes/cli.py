"""`python -m experiments.recipes`: run a recipe with nothing but torch (and sklearn) installed.

    python -m experiments.recipes list [--json]
    python -m experiments.recipes run digits --device auto --seed 0 --set epochs=5 --checkpoint-dir ck/
    python -m experiments.recipes run dpo --set base_run=1 --run-checkpoint 1=ck/step-000000300.pt
    python -m experiments.recipes bench --device cuda --set d_model=512 --set n_layers=8

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
from typing import TYPE_CHECKING, Any, TextIO

from .catalog import RECIPES, RecipeSpec, get_spec
from .schema import ConfigError, ParamValue

if TYPE_CHECKING:
    import torch

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
    run.add_argument(
        "--dataset", dest="datasets", action="append", default=[], metavar="ID=PATH",
        help="the .npz file of curated dataset ID (configs name datasets by id); repeatable",
    )  # fmt: skip
    run.add_argument(
        "--run-checkpoint", dest="run_checkpoints", action="append", default=[], metavar="ID=PATH",
        help="the checkpoint file of run ID (dpo's base_run names a run by id); repeatable",
    )  # fmt: skip
    bench = sub.add_parser(
        "bench", help="charlm's tokens/s in the recipe against a bare loop of the same model and batch"
    )
    bench.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    bench.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one charlm parameter; repeatable",
    )  # fmt: skip
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
                "source": spec.source,
                "servable": spec.servable,
                "metrics": [{"name": m, "better": spec.better.get(m)} for m in spec.metrics],
                "params": [p.describe() for p in spec.params],
            }
            out.write(json.dumps(described) + "\n")
            continue
        out.write(f"{spec.name} [{spec.source}]: {spec.summary}\n")
        for p in spec.params:
            bounds = ""
            if p.minimum is not None or p.maximum is not None:
                bounds = f" [{_num(p.minimum)}..{_num(p.maximum)}]"
            out.write(f"  {p.name} ({p.type.__name__}, default {p.default}){bounds}: {p.help}\n")
        if spec.metrics:
            shown = (f"{m} ({spec.better[m]} is better)" if m in spec.better else m for m in spec.metrics)
            out.write(f"  metrics: {', '.join(shown)}\n")
        out.write(f"  serving: {'yes' if spec.servable else 'no (trained and compared, not promoted)'}\n")
    # A refused plug-in is listed, never fatal: the other recipes stay usable.
    for problem in RECIPES.problems():
        if as_json:
            refused = {"source": problem.source, "ref": problem.ref, "name": problem.name}
            out.write(json.dumps({"problem": {**refused, "message": problem.message}}) + "\n")
        else:
            out.write(f"REFUSED {problem}\n")
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


class UsageError(Exception):
    """A command-line argument was refused; the message names it."""


def _config(spec: RecipeSpec, overrides: list[str], seed: int | None) -> dict[str, ParamValue]:
    """Return the spec's config with --set/--seed applied, or raise UsageError naming the key."""
    raw: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        raw[key.strip()] = value
    if seed is not None:
        raw["seed"] = seed
    try:
        return spec.clean(raw)
    except ConfigError as exc:
        raise UsageError("; ".join(f"parameter {key!r}: {msg}" for key, msg in exc.errors.items())) from None


def _datasets(items: list[str], config: dict[str, ParamValue]) -> dict[int, str]:
    """Return the --dataset ID=PATH files, or raise UsageError; the config's dataset id needs one."""
    files: dict[int, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key.strip().isdigit() or not path:
            raise UsageError(f"--dataset {item!r}: expected ID=PATH")
        files[int(key)] = path
    wanted = int(config.get("extra_data", 0) or 0)
    if wanted and wanted not in files:
        raise UsageError(f"parameter 'extra_data': dataset {wanted} needs --dataset {wanted}=PATH")
    return files


def _run_checkpoints(items: list[str], config: dict[str, ParamValue]) -> dict[int, str]:
    """Return the --run-checkpoint ID=PATH files, or raise UsageError; the config's base_run needs one."""
    files: dict[int, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key.strip().isdigit() or not path:
            raise UsageError(f"--run-checkpoint {item!r}: expected ID=PATH")
        files[int(key)] = path
    wanted = int(config.get("base_run", 0) or 0)
    if wanted and wanted not in files:
        raise UsageError(f"parameter 'base_run': run {wanted} needs --run-checkpoint {wanted}=PATH")
    return files


def _device(name: str) -> torch.device:
    # torch only now: `list` and argument errors stay fast.
    from .runtime import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"--device: {exc}") from None


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        spec = get_spec(args.recipe)
    except ConfigError as exc:
        return _fail(exc.errors["recipe"])
    try:
        config = _config(spec, args.overrides, args.seed)
        datasets = _datasets(args.datasets, config)
        run_checkpoints = _run_checkpoints(args.run_checkpoints, config)
        device = _device(args.device)
    except UsageError as exc:
        return _fail(str(exc))
    from .local import LocalRunContext

    ctx = LocalRunContext(
        device=str(device),
        seed=int(config["seed"]),
        checkpoint_dir=args.checkpoint_dir,
        out=out,
        datasets=datasets,
        run_checkpoints=run_checkpoints,
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


def _bench(args: argparse.Namespace, out: TextIO) -> int:
    """Print the recipe's steady tokens/s (after its first evaluation) and a bare loop's."""
    try:
        config = _config(get_spec("charlm"), args.overrides, None)
        device = _device(args.device)
    except UsageError as exc:
        return _fail(str(exc))
    from .charlm import RECIPE, bare_train_loop
    from .local import LocalRunContext

    # No pauses and no NaN: both loops must do the same work.
    config = {**config, "step_delay_ms": 0.0, "inject_nan_at_step": -1}
    ctx = LocalRunContext(device=str(device), seed=int(config["seed"]))
    result = RECIPE.train(ctx, config)
    segments = ctx.values("tokens_per_s")
    # The first segment pays for start-up (allocator, kernel selection); the bare loop warms up too.
    steady = segments[1:] or segments
    recipe_tps = sum(steady) / len(steady)
    steps = int(config["steps"])
    bare_tps = bare_train_loop(config, device, steps=steps, warmup=min(10, steps))
    figures: dict[str, Any] = {
        "device": str(device),
        "steps": result.steps,
        "tokens_per_step": int(config["batch_size"]) * int(config["context"]),
        "recipe_tokens_per_s": round(recipe_tps, 1),
        "bare_tokens_per_s": round(bare_tps, 1),
        "recipe_vs_bare": round(recipe_tps / bare_tps, 3),
        "final_loss": result.final_metrics.get("loss"),
        "config": config,
    }
    if device.type == "cuda":
        import torch

        figures["gpu"] = torch.cuda.get_device_name(device)
    out.write(json.dumps({"bench": _json_safe(figures)}) + "\n")
    return 0


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if args.command == "list":
        return _list(args.json, stream)
    if args.command == "bench":
        return _bench(args, stream)
    return _run(args, stream)
