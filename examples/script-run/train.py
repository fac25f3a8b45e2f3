"""A plain PyTorch training script that knows nothing of Crucible Control but its conventions.

    python train.py --lr 0.01

trains a small MLP to classify points of two interleaved spirals it generates itself (no download),
and prints one JSON line per metric point on stdout: {"name": "loss", "step": 3, "value": 0.41}.
Anything else it prints is ordinary output. Run by the `script` recipe it also:

- saves a checkpoint into $CRUCIBLE_CHECKPOINT_DIR every --checkpoint-every steps and when it
  receives SIGTERM (cancel, early stop, worker shutdown), then exits;
- resumes from $CRUCIBLE_RESUME_FROM when that names a checkpoint of an earlier attempt.

Without those variables (run by hand) it just trains.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

stop_requested = False


def on_sigterm(signum: int, frame: object) -> None:
    global stop_requested
    stop_requested = True


def emit(name: str, step: int, value: float) -> None:
    # JSON has no NaN: a diverged loss is written as null (what `python -m experiments.recipes` does).
    print(
        json.dumps({"name": name, "step": step, "value": value if math.isfinite(value) else None}), flush=True
    )


def spirals(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.rand(n, generator=generator) * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=generator)
    sign = label.float() * 2 - 1
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / (3 * math.pi)
    return x + 0.03 * torch.randn(x.shape, generator=generator), label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds to sleep per step (a watchable demo)"
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CRUCIBLE_SEED", "0")))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    torch.manual_seed(args.seed)
    # The GPU the worker leased (CUDA_VISIBLE_DEVICES shows only that one), or the CPU on a CPU slot.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = spirals(2048, generator)
    x_val, y_val = spirals(512, generator)
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))
    model = nn.Sequential(
        nn.Linear(2, args.hidden),
        nn.Tanh(),
        nn.Linear(args.hidden, args.hidden),
        nn.Tanh(),
        nn.Linear(args.hidden, 2),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    checkpoint_dir = os.environ.get("CRUCIBLE_CHECKPOINT_DIR", "")
    start = 1

    resume = os.environ.get("CRUCIBLE_RESUME_FROM", "")
    if resume:
        state = torch.load(resume, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"]) + 1
        print(f"resumed from {resume} at step {start}")

    def save(step: int) -> None:
        if not checkpoint_dir:
            return
        path = Path(checkpoint_dir) / f"step-{step:06d}.pt"
        tmp = path.with_name("." + path.name)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
        tmp.replace(path)
        print(f"checkpoint {path.name}")

    print(
        f"training {sum(p.numel() for p in model.parameters())} parameters, lr {args.lr}, steps {args.steps}"
    )
    for step in range(start, args.steps + 1):
        index = torch.randint(0, len(x_train), (args.batch_size,), generator=generator).to(device)
        loss = loss_fn(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        emit("loss", step, float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                logits = model(x_val)
                emit("val_loss", step, float(loss_fn(logits, y_val)))
                emit("accuracy", step, float((logits.argmax(1) == y_val).float().mean()))
        if not math.isfinite(float(loss.detach())):
            print(f"warning: the loss is {float(loss.detach())} at step {step}", file=sys.stderr, flush=True)
        if step % args.checkpoint_every == 0:
            save(step)
        if stop_requested:
            save(step)
            print(f"stopped at step {step} on SIGTERM")
            return 0
        if args.step_delay:
            time.sleep(args.step_delay)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
