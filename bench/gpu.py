"""Figure 8 — GPU: charlm tokens/s under the worker path vs a bare training loop of the same model and batch.

Never part of CI: without CUDA it prints a skipped line. On a GPU machine with the
project installed:
- bare: `experiments.recipes.charlm.bare_train_loop` — the same model, batches and
  optimiser step with nothing around it;
- worker path: `experiments.runs.execution.run_execute` on a run leased to cuda:0 — the code a
  Celery worker runs (DB run context, metric reporter and its flusher thread, heartbeat
  monitor, cancel checks, checkpoints, evaluations), against a fresh SQLite database and a
  private Redis; tokens/s as the recipe logs it per evaluation segment (evaluation time
  excluded), the first segment (warm-up) left out.
Goal: >= 0.95x the bare loop. Also the model FLOPs utilisation against the card's dense
bf16 peak where the card is known.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Goal, base_parser, bench_env, emit, emit_failure, figure, note, skipped

FIGURE = "gpu_charlm_tokens_per_s"
# Dense bf16 peak FLOP/s (no sparsity) of the cards we meet; others get no MFU figure.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def model_config(quick: bool) -> dict[str, Any]:
    """Return the charlm config both loops train (a 25M-parameter byte-level GPT unless quick)."""
    if quick:
        return {"steps": 40, "batch_size": 16, "context": 128, "d_model": 128, "n_layers": 2, "n_heads": 4,
                "eval_every": 10, "eval_batches": 2}  # fmt: skip
    return {"steps": 400, "batch_size": 64, "context": 256, "d_model": 512, "n_layers": 8, "n_heads": 8,
            "eval_every": 100, "eval_batches": 4}  # fmt: skip


def flops_per_token(config: dict[str, Any], params: int) -> float:
    """Return training FLOPs per token: 6 x parameters plus the attention score/value matmuls."""
    return 6.0 * params + 12.0 * int(config["n_layers"]) * int(config["d_model"]) * int(config["context"])


def worker_path_tokens_per_s(config: dict[str, Any]) -> float:
    """Train one run through run_execute on cuda:0; return the median logged tokens/s after the first segment."""
    from experiments.actors import Actor
    from experiments.models import MetricPoint
    from experiments.runs.execution import run_execute
    from experiments.runs.services import run_create
    from experiments.services import experiment_create, experiment_transition

    actor = Actor.system("bench")
    experiment = experiment_create(name="bench gpu", recipe="charlm", config=config, gpus=1)
    experiment_transition(experiment_id=experiment.pk, event="queue", actor=actor)
    run = run_create(experiment=experiment, worker="bench@gpu", device="cuda:0", task_id="bench")
    experiment_transition(experiment_id=experiment.pk, event="start", actor=actor)
    status = run_execute(run_id=run.pk, worker="bench@gpu")
    if status != "succeeded":
        raise RuntimeError(f"the worker-path run ended {status}")
    values = list(
        MetricPoint.objects.filter(run=run, name="tokens_per_s")
        .order_by("step")
        .values_list("value", flat=True)
    )
    kept = [v for v in values[1:] if v] or [v for v in values if v]
    if not kept:
        raise RuntimeError("the recipe logged no tokens_per_s")
    return float(statistics.median(kept))


def main() -> None:
    """Measure both loops on the GPU and print the figure (or why it was skipped)."""
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else None)
    args = parser.parse_args()
    if not Path("/dev/nvidiactl").exists() and not Path("/proc/driver/nvidia").exists():
        # No NVIDIA driver at all: say so without the seconds it takes to import torch.
        emit(skipped(FIGURE, "no CUDA device on this machine: run it on a GPU worker (never in CI)"))
        return
    import torch

    if not torch.cuda.is_available():
        emit(skipped(FIGURE, "no CUDA device on this machine: run it on a GPU worker (never in CI)"))
        return
    repetitions = args.repetitions or (2 if args.quick else 3)
    config = model_config(args.quick)
    card = torch.cuda.get_device_name(0)
    with bench_env() as _env:
        from experiments.recipes.charlm import SPEC, bare_train_loop, build_model

        cleaned = SPEC.clean(config)
        params = sum(p.numel() for p in build_model(cleaned, torch.device("cpu")).parameters())
        note(f"gpu: {params / 1e6:.1f}M parameters on {card}")
        bare: list[float] = []
        worker: list[float] = []
        for _ in range(repetitions):  # interleaved, so drift hits both alike
            bare.append(bare_train_loop(cleaned, "cuda", steps=int(config["steps"]) // 2))
            worker.append(worker_path_tokens_per_s(config))
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in card), None)
    fpt = flops_per_token(cleaned, params)
    line = figure(
        name=FIGURE,
        unit="tokens/s",
        samples=worker,
        goal=Goal(">= 0.95x the bare loop", ratio_min=0.95),
        higher_is_better=True,
        baseline_name="bare training loop, same model, batch and step",
        baseline_samples=bare,
        extra={
            "card": card,
            "parameters": params,
            "config": config,
            "mfu_worker": None if peak is None else round(statistics.median(worker) * fpt / peak, 4),
            "mfu_bare": None if peak is None else round(statistics.median(bare) * fpt / peak, 4),
            "peak_flops_assumed": peak,
        },
    )
    emit(line)


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a broken figure still prints a line saying why
        emit_failure([FIGURE], exc)
        raise
