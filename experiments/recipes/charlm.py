"""charlm: a byte-level causal transformer language model on Python standard library source text.

The corpus is always on disk (no download): a fixed, sorted list of stdlib modules found via
`sysconfig.get_paths()["stdlib"]`, concatenated; the last tenth is the validation split.
`build_model`, `batch_iterator` and `bare_train_loop` let a bench time the same model and batch
without the recipe's logging, evaluation and checkpoints around it.
"""

from __future__ import annotations

import math
import sysconfig
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import CheckpointEvaluation, Recipe, RecipeResult, RunContext
from .catalog import get_spec
from .outputs import completed_stages, save_artifact, stage
from .runtime import (
    autocast,
    inject_nan,
    make_optimizer,
    params_finite,
    resolve_device,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    start_run,
    step_delay,
)
from .schema import ParamValue

SPEC = get_spec("charlm")
ARCH = ("d_model", "n_layers", "n_heads", "context")
VOCAB = 256  # bytes
VAL_FRACTION = 0.1
GRAD_CLIP = 1.0

# Present (as .py source) from Python 3.11 on; sorted so the corpus is the same on every run.
CORPUS_MODULES: tuple[str, ...] = tuple(
    sorted(
        (
            "abc.py", "argparse.py", "ast.py", "bisect.py", "calendar.py", "collections/__init__.py",
            "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
            "fractions.py", "functools.py", "heapq.py", "inspect.py", "json/decoder.py",
            "json/encoder.py", "logging/__init__.py", "os.py", "random.py", "shutil.py",
            "statistics.py", "string.py", "textwrap.py", "threading.py", "typing.py", "uuid.py",
        )
    )
)  # fmt: skip


@lru_cache(maxsize=1)
def load_corpus() -> bytes:
    """Return the stdlib source files of CORPUS_MODULES that exist here, joined in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / name).read_bytes() for name in CORPUS_MODULES if (root / name).is_file()]
    if not parts:
        raise RuntimeError(f"no corpus: none of the stdlib modules was found under {root}")
    return b"\n\n".join(parts)


def corpus_split(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, val) byte tensors on device; val is the corpus's last tenth (no overlap)."""
    data = torch.frombuffer(bytearray(load_corpus()), dtype=torch.uint8)
    cut = int(len(data) * (1 - VAL_FRACTION))
    return data[:cut].to(device), data[cut:].to(device)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and earlier ones."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return attention output, shape (batch, time, d_model)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        # Flash/memory-efficient kernels on CUDA; the causal mask is built in.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, t, c))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: attention then a 4x GELU MLP, each with a residual."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output."""
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class ByteTransformer(nn.Module):
    """A small GPT over bytes: token + learned position embeddings, blocks, tied output head."""

    def __init__(self, *, d_model: int, n_layers: int, n_heads: int, context: int) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # tied: fewer parameters, better small-model loss
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Return next-byte logits, shape (batch, time, 256)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(self.ln_f(x))
        return out


def build_model(config: dict[str, ParamValue], device: torch.device) -> ByteTransformer:
    """Return the recipe's model for config, on device."""
    return ByteTransformer(
        d_model=int(config["d_model"]),
        n_layers=int(config["n_layers"]),
        n_heads=int(config["n_heads"]),
        context=int(config["context"]),
    ).to(device)


def get_batch(
    data: torch.Tensor, *, batch_size: int, context: int, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (inputs, next-byte targets) of one step: random windows, a function of (seed, step).

    Drawing from a generator seeded per step (not a running one) makes any step reproducible,
    which is what lets a resumed run see exactly the batches an uninterrupted one would.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(data) - context - 1, (batch_size,), generator=gen)
    if data.device.type == "cuda":
        # From pinned memory the copy is asynchronous: a plain one would wait for the GPU every step.
        starts = starts.pin_memory().to(data.device, non_blocking=True)
    window = starts[:, None] + torch.arange(context + 1, device=data.device)
    chunk = data[window].long()
    return chunk[:, :-1], chunk[:, 1:]


def batch_iterator(
    data: torch.Tensor, *, batch_size: int, context: int, seed: int, start_step: int = 1
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, inputs, targets) from start_step on, forever."""
    step = start_step
    while True:
        x, y = get_batch(data, batch_size=batch_size, context=context, seed=seed, step=step)
        yield step, x, y
        step += 1


def val_batches(
    val: torch.Tensor, *, batch_size: int, context: int, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return fixed validation batches: windows spread evenly over the split (seed-independent)."""
    n = batch_size * count
    starts = torch.linspace(0, len(val) - context - 2, n, device=val.device).long()
    window = starts[:, None] + torch.arange(context + 1, device=val.device)
    chunk = val[window].long()
    return [(c[:, :-1], c[:, 1:]) for c in chunk.split(batch_size)]


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Return mean next-byte cross-entropy (computed in float32 even under bf16 autocast)."""
    with autocast(device):
        logits = model(x)
    return F.cross_entropy(logits.float().view(-1, VOCAB), y.reshape(-1))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    *,
    step: int,
    config: dict[str, ParamValue],
) -> torch.Tensor:
    """Run one optimiser step and return the (detached) loss without syncing the device."""
    loss = inject_nan(lm_loss(model, x, y, device), step, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> float:
    """Return the mean validation loss over the fixed batches."""
    model.eval()
    total = torch.zeros((), device=device)
    for x, y in batches:
        total += lm_loss(model, x, y, device)
    model.train()
    return float(total.item()) / len(batches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_train_loop(config: dict[str, Any], device: torch.device | str, steps: int, warmup: int = 5) -> float:
    """Return tokens/s of a bare loop (same model, batches, step) with nothing else around it."""
    config = SPEC.clean({**config, "inject_nan_at_step": -1})
    device = resolve_device(device) if isinstance(device, str) else device
    seed_everything(int(config["seed"]), device)
    train, _ = corpus_split(device)
    model = build_model(config, device)
    optimizer = make_optimizer(
        model.parameters(), lr=float(config["lr"]), weight_decay=float(config["weight_decay"]), device=device
    )
    batch_size, context = int(config["batch_size"]), int(config["context"])
    batches = batch_iterator(train, batch_size=batch_size, context=context, seed=int(config["seed"]))
    started = 0.0
    for step, x, y in batches:
        if step == warmup + 1:
            _sync(device)
            started = time.perf_counter()
        train_step(model, optimizer, x, y, device, step=step, config=config)
        if step == warmup + steps:
            break
    _sync(device)
    return steps * batch_size * context / (time.perf_counter() - started)


class CharLMRecipe:
    """Byte-level language modelling; resumable at any step, checkpointed at every evaluation."""

    name = SPEC.name
    summary = SPEC.summary
    params = SPEC.params

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Train (or resume) the LM, logging loss each step, val_loss and tokens_per_s each eval."""
        config, device, seed = start_run(SPEC, ctx, config)
        done_stages = completed_stages(ctx)
        # The corpus lives in memory only: a resumed attempt reads it again (recorded once).
        with stage(ctx, "load_data") as loading:
            train, val = corpus_split(device)
            if "load_data" in done_stages:
                loading.abandon()
        model = build_model(config, device)
        lr, wd = float(config["lr"]), float(config["weight_decay"])
        optimizer = make_optimizer(model.parameters(), lr=lr, weight_decay=wd, device=device)
        arch = {k: config[k] for k in ARCH}
        done = 0  # optimiser steps finished, across attempts

        metrics: dict[str, float] = {}  # the latest value of each metric, kept across attempts
        resumed = resume_checkpoint(
            ctx,
            recipe=self.name,
            arch=arch,
            device=device,
            models={"model": model},
            optimizers={"optimizer": optimizer},
            lr=lr,
            weight_decay=wd,
            metrics=metrics,
        )
        if resumed is not None:
            done = int(resumed["step"])

        steps, eval_every = int(config["steps"]), int(config["eval_every"])
        batch_size, context = int(config["batch_size"]), int(config["context"])
        tokens_per_step = batch_size * context
        evals = val_batches(val, batch_size=batch_size, context=context, count=int(config["eval_batches"]))
        pending: list[tuple[int, torch.Tensor]] = []
        last_flush = time.monotonic()

        def flush() -> None:
            # Losses stay on the device until a batch of them is read at once: a per-step .item()
            # would stall a GPU every step.
            nonlocal last_flush
            if pending:
                values = torch.stack([loss for _, loss in pending]).tolist()
                for (step, _), value in zip(pending, values, strict=True):
                    ctx.log("loss", step, value)
                metrics["loss"] = values[-1]
                pending.clear()
            last_flush = time.monotonic()

        def checkpoint() -> None:
            state: dict[str, Any] = {
                "recipe": self.name,
                "arch": arch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": done,
                "rng": rng_state(device),
                "metrics": dict(metrics),
            }
            save_checkpoint(ctx, done, state, model)

        with stage(ctx, "train") as mark:
            train_seconds = 0.0  # this attempt's time in training steps (evaluation excluded)
            trained_steps = 0
            segment_start, segment_steps = time.perf_counter(), 0
            stopped = False
            batches = batch_iterator(
                train, batch_size=batch_size, context=context, seed=seed, start_step=done + 1
            )
            while done < steps:
                if ctx.should_stop():
                    stopped = True
                    break
                step, x, y = next(batches)
                pending.append((step, train_step(model, optimizer, x, y, device, step=step, config=config)))
                done = step
                segment_steps += 1
                if len(pending) >= 32 or time.monotonic() - last_flush >= 0.2:
                    flush()
                step_delay(config)
                ctx.progress(done / steps)
                if done % eval_every == 0 or done == steps:
                    flush()
                    _sync(device)
                    elapsed = time.perf_counter() - segment_start
                    train_seconds += elapsed
                    trained_steps += segment_steps
                    tokens_per_s = segment_steps * tokens_per_step / elapsed if elapsed > 0 else 0.0
                    metrics["val_loss"] = evaluate(model, evals, device)
                    metrics["tokens_per_s"] = tokens_per_s
                    ctx.log("val_loss", done, metrics["val_loss"])
                    ctx.log("tokens_per_s", done, tokens_per_s)
                    checkpoint()
                    segment_start, segment_steps = time.perf_counter(), 0
            flush()
            if stopped:
                checkpoint()
                mark.abandon()
            elif "train" in done_stages:
                mark.abandon()  # an earlier attempt finished it; this one only resumed past the end
        # NaN weights (a diverged run) sample nothing: such a run exports no samples.
        if not stopped and "export" not in done_stages and params_finite(model):
            with stage(ctx, "export"):
                save_artifact(ctx, "samples.txt", sample_text(model, seed=seed), kind="samples")
        if "val_loss" not in metrics:
            metrics["val_loss"] = evaluate(model, evals, device)
        if trained_steps:
            # The attempt's mean, over every segment that ended at an evaluation.
            metrics["tokens_per_s"] = trained_steps * tokens_per_step / train_seconds
        if not stopped:
            ctx.progress(1.0)
        return RecipeResult(final_metrics=metrics, steps=done, stopped=stopped)


RECIPE: Recipe = CharLMRecipe()  # annotated so that mypy checks the protocol

SAMPLE_PROMPTS = (b"def ", b"class ", b"import ")
SAMPLE_BYTES = 60
HELD_OUT_SET = f"charlm corpus, last {VAL_FRACTION:.0%} (never trained on)"
# Windows of held-out text scored per evaluation: enough for a steady number, cheap on a CPU.
EVAL_WINDOWS = 128


@torch.no_grad()
def sample_text(model: ByteTransformer, *, seed: int, length: int = SAMPLE_BYTES) -> str:
    """Return a sampled continuation of each prompt (temperature 1, seeded), as readable text."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for prompt in SAMPLE_PROMPTS:
        idx = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        for _ in range(length):
            logits = model(idx[:, -model.context :])[:, -1, :].float().cpu()
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen).to(device)
            idx = torch.cat([idx, nxt], dim=1)
        text = bytes(idx[0].tolist()).decode("utf-8", errors="replace")
        parts.append(f"--- prompt {prompt.decode()!r} ---\n{text}\n")
    model.train()
    return "\n".join(parts)


@torch.no_grad()
def held_out_loss(model: ByteTransformer, val: torch.Tensor, *, windows: int = EVAL_WINDOWS) -> float:
    """Return the mean next-byte cross-entropy over windows spread evenly across the held-out text."""
    model.eval()
    context = model.context
    count = max(1, min(windows, (len(val) - 1) // context))
    starts = torch.linspace(0, len(val) - context - 1, count).long()
    chunk = val[starts[:, None] + torch.arange(context + 1)].long()
    total = 0.0
    for part in chunk.split(64):
        logits = model(part[:, :-1]).float()
        total += float(F.cross_entropy(logits.reshape(-1, VOCAB), part[:, 1:].reshape(-1), reduction="sum"))
    return total / (chunk.shape[0] * context)


def evaluate_checkpoint(path: str) -> CheckpointEvaluation:
    """Load a charlm checkpoint and return its perplexity (and mean loss) on the held-out text."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("recipe") != SPEC.name:
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {SPEC.name!r}")
    arch = state["arch"]
    model = build_model(arch, torch.device("cpu"))
    model.load_state_dict(state["model"])
    _, val = corpus_split(torch.device("cpu"))
    loss = held_out_loss(model, val)
    metrics = {"val_loss": loss, "perplexity": float(math.exp(min(loss, 50.0)))}
    # The samples are the run's own (its export stage); the evaluation adds only numbers.
    return CheckpointEvaluation(metrics=metrics, eval_set=HELD_OUT_SET)
