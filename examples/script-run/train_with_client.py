"""The spirals script of train.py, logging through crucible_client instead of printing JSON lines.

    python train_with_client.py --lr 0.01 --steps 200

Run by the `script` recipe on a Crucible worker, `Run.from_env()` attaches to the worker's run
(the worker passes CRUCIBLE_API_URL, CRUCIBLE_TOKEN and CRUCIBLE_RUN_ID): `run.log()` returns at
once and a background thread sends the points in batches to /api/runs/<id>/metrics, where they
take the path of every other metric point (history, live charts, policies). `run.should_stop()`
turns true on a cancel or an early stop; the worker also sends SIGTERM. Either way the script
stops at the next step; the points logged so far are delivered at exit.

It needs crucible_client importable: installed with the project, or the repository on PYTHONPATH
(the experiment's `env`). Without a worker's variables it refuses to start (use train.py by hand).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

import torch
from torch import nn

from crucible_client import Run

stop_requested = False


def on_sigterm(signum: int, frame: object) -> None:
    global stop_requested
    stop_requested = True


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
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = spirals(2048, generator)
    x_val, y_val = spirals(512, generator)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    run = Run.from_env()
    print(f"attached to run {run.id}; logging through crucible_client", flush=True)
    step = 0
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(x_train), (args.batch_size,), generator=generator)
        loss = loss_fn(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.log("loss", float(loss.detach()), step)
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                logits = model(x_val)
                run.log("val_loss", float(loss_fn(logits, y_val)), step)
                run.log("accuracy", float((logits.argmax(1) == y_val).float().mean()), step)
        if run.should_stop() or stop_requested:
            # Deliver what was logged, then ask the server why: should_stop() agrees with the
            # worker's SIGTERM whichever of the two came first.
            run.flush(timeout=10)
            print(
                f"stopping at step {step}: should_stop={run.should_stop(refresh=True)} sigterm={stop_requested} "
                f"reason={run.stop_reason}",
                flush=True,
            )
            break
        if args.step_delay:
            time.sleep(args.step_delay)
    else:
        print("done", flush=True)
    run.finish()  # delivers every point; the worker ends the run from the exit status
    return 0


if __name__ == "__main__":
    sys.exit(main())
