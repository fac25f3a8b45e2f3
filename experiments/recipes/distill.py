"""distill: train a digits teacher, then a smaller student on its temperature-softened logits.

With teacher_experiment set (a pipeline: this experiment depends on a digits experiment), the
teacher is that experiment's final checkpoint and only the student trains.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from .base import CheckpointEvaluation, Recipe, RecipeResult, RunContext, UpstreamModels
from .catalog import get_spec
from .classify import (
    MLP,
    NUM_CLASSES,
    DigitsData,
    Position,
    arch_of,
    cross_entropy_loss,
    digits_scaler,
    evaluate,
    evaluate_on_held_out,
    load_digits_split,
    run_epochs,
    steps_per_epoch,
)
from .outputs import completed_stages, stage
from .runtime import (
    CheckpointMismatchError,
    autocast,
    make_optimizer,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    start_run,
)
from .schema import ParamValue

SPEC = get_spec("distill")
ARCH = ("teacher_hidden", "student_hidden", "val_fraction", "seed")
TEACHER, STUDENT = "teacher", "student"


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, data: DigitsData, device: torch.device) -> torch.Tensor:
    """Return the teacher's float32 logits for every training example."""
    teacher.eval()
    with autocast(device):
        logits = teacher(data.x_train)
    return logits.float()


def distillation_loss(
    student_logits: torch.Tensor,
    soft_targets: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Return alpha·T²·KL(teacher_T ‖ student_T) + (1-alpha)·CE(student, labels) (Hinton et al.)."""
    student_logits = student_logits.float()
    # T² keeps the soft term's gradients on the same scale as the hard one's as T changes.
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(soft_targets / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def upstream_id(config: dict[str, ParamValue]) -> int:
    """Return the experiment the teacher comes from (0: none, the recipe trains its own)."""
    return int(config["teacher_experiment"])


def upstream_teacher(ctx: RunContext, experiment_id: int) -> dict[str, Any] | None:
    """Return the digits checkpoint of the upstream teacher experiment, or None when there is none."""
    if not experiment_id:
        return None
    if not isinstance(ctx, UpstreamModels):
        raise ValueError(
            f"teacher_experiment {experiment_id}: this runner cannot hand over another experiment's model"
        )
    state = ctx.upstream_checkpoint(experiment_id)
    if state.get("recipe") != "digits" or "model" not in state:
        raise CheckpointMismatchError(
            f"teacher_experiment {experiment_id}: its checkpoint is from recipe {state.get('recipe')!r}, not 'digits'"
        )
    return state


class DistillRecipe:
    """Knowledge distillation on digits; resumable at any step of either phase."""

    name = SPEC.name
    summary = SPEC.summary
    params = SPEC.params

    def train(self, ctx: RunContext, config: dict[str, ParamValue]) -> RecipeResult:
        """Train (or resume) teacher then student, logging `teacher_*` and the student's metrics."""
        config, device, seed = start_run(SPEC, ctx, config)
        done_stages = completed_stages(ctx)
        # The data lives in memory only: a resumed attempt loads it again (recorded once).
        with stage(ctx, "load_data") as loading:
            data = load_digits_split(seed, float(config["val_fraction"]), device)
            if "load_data" in done_stages:
                loading.abandon()
        n_in = data.x_train.shape[1]
        arch = arch_of(config, ARCH)
        upstream = upstream_teacher(ctx, int(config["teacher_experiment"]))
        if upstream is not None:
            # The teacher's shape is the upstream's, whatever teacher_hidden says.
            arch = {
                **arch,
                "teacher_hidden": int(upstream["arch"]["hidden"]),
                "teacher_experiment": upstream_id(config),
            }
        teacher = MLP(n_in, int(arch["teacher_hidden"]), NUM_CLASSES).to(device)
        student = MLP(n_in, int(config["student_hidden"]), NUM_CLASSES).to(device)
        lr = float(config["lr"])
        t_opt = make_optimizer(teacher.parameters(), lr=lr, weight_decay=0.0, device=device)
        s_opt = make_optimizer(student.parameters(), lr=lr, weight_decay=0.0, device=device)
        phase = TEACHER
        if upstream is not None:
            teacher.load_state_dict(upstream["model"])
            phase = STUDENT
        pos = Position()

        metrics: dict[str, float] = {}  # the latest value of each metric, kept across attempts
        resumed = resume_checkpoint(
            ctx,
            recipe=self.name,
            arch=arch,
            device=device,
            models={"teacher": teacher, "student": student},
            optimizers={"teacher_optimizer": t_opt, "student_optimizer": s_opt},
            lr=lr,
            weight_decay=0.0,
            metrics=metrics,
        )
        if resumed is not None:
            phase = resumed["phase"]
            pos = Position(**resumed["position"])

        per_epoch = steps_per_epoch(data.x_train.shape[0], int(config["batch_size"]))
        teacher_epochs, student_epochs = int(config["teacher_epochs"]), int(config["epochs"])
        teacher_steps = teacher_epochs * per_epoch
        total = teacher_steps + student_epochs * per_epoch

        def checkpoint() -> None:
            state: dict[str, Any] = {
                "recipe": self.name,
                "arch": arch,
                "phase": phase,
                "teacher": teacher.state_dict(),
                "student": student.state_dict(),
                "teacher_optimizer": t_opt.state_dict(),
                "student_optimizer": s_opt.state_dict(),
                "position": pos.as_state(),
                "rng": rng_state(device),
                "metrics": dict(metrics),
            }
            save_checkpoint(ctx, pos.step, state, teacher, student)

        common: dict[str, Any] = {
            "ctx": ctx,
            "config": config,
            "data": data,
            "pos": pos,
            "metrics": metrics,
            "checkpoint": checkpoint,
            "progress": lambda step: min(1.0, step / total),
        }
        if phase == TEACHER:
            # The checkpoint's phase says where a resumed attempt stands: a finished teacher is skipped.
            with stage(ctx, "train_teacher") as teaching:
                stopped = run_epochs(
                    model=teacher,
                    optimizer=t_opt,
                    loss_fn=cross_entropy_loss,
                    epochs=teacher_epochs,
                    salt=2,
                    prefix="teacher_",
                    **common,
                )
                if stopped:
                    teaching.abandon()
            if stopped:
                return self._result(metrics, teacher, student, data, device, pos, stopped=True)
            phase = STUDENT
            # The student's epochs count from 0; the global step keeps counting.
            pos.epoch, pos.batch = 0, 0

        temperature, alpha = float(config["temperature"]), float(config["alpha"])
        soft = teacher_logits(teacher, data, device)

        def student_loss(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return distillation_loss(logits, soft[idx], labels, temperature=temperature, alpha=alpha)

        with stage(ctx, "train_student") as learning:
            stopped = run_epochs(
                model=student,
                optimizer=s_opt,
                loss_fn=student_loss,
                epochs=student_epochs,
                salt=3,
                prefix="",
                **common,
            )
            if stopped or "train_student" in done_stages:
                learning.abandon()
        if not stopped:
            ctx.progress(1.0)
        return self._result(metrics, teacher, student, data, device, pos, stopped=stopped)

    def _result(
        self,
        metrics: dict[str, float],
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        data: DigitsData,
        device: torch.device,
        pos: Position,
        *,
        stopped: bool,
    ) -> RecipeResult:
        """Return the result, evaluating whichever model has no figures yet in this attempt."""
        for prefix, model in (("teacher_", teacher), ("", student)):
            if f"{prefix}val_loss" not in metrics:
                for name, value in evaluate(model, data.x_val, data.y_val, device).items():
                    metrics[f"{prefix}{name}"] = value
        return RecipeResult(final_metrics=metrics, steps=pos.step, stopped=stopped)


RECIPE: Recipe = DistillRecipe()  # annotated so that mypy checks the protocol


def evaluate_checkpoint(path: str) -> CheckpointEvaluation:
    """Load a distill checkpoint and return its student's metrics on the digits held-out set.

    The student is what the recipe delivers; the teacher only taught it.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("recipe") != SPEC.name:
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not {SPEC.name!r}")
    if state.get("phase") != STUDENT:
        raise ValueError("checkpoint is from the teacher phase: the student was never trained")
    arch = state["arch"]
    seed, val_fraction = int(arch["seed"]), float(arch["val_fraction"])
    model = MLP(int(digits_scaler(seed, val_fraction)[0].shape[0]), int(arch["student_hidden"]), NUM_CLASSES)
    model.load_state_dict(state["student"])
    return evaluate_on_held_out(model, seed=seed, val_fraction=val_fraction)
