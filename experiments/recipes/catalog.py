"""Every recipe's name, summary and declared parameters, importable without torch.

The catalog is the built-ins below plus the plug-ins (see plugins.py), merged on first use. The
web process, the workers and the CLI build it the same way, from the same installed packages and
the same CRUCIBLE_RECIPES, so all three see the same recipes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping

from .plugins import ENV_VAR, PluginProblem, declared_entry_points, declared_refs, merge, parse_refs
from .schema import ConfigError, DatasetParam, Metric, Param, ParamValue
from .script import SCRIPT_CONSTRAINTS, SCRIPT_PARAMS
from .spec import Constraint, RecipeSpec, Resources, metric_fields, with_evaluation

__all__ = ["BUILTINS", "RECIPES", "Catalog", "Constraint", "RecipeSpec", "get_spec"]

logger = logging.getLogger(__name__)

COMMON_PARAMS: tuple[Param, ...] = (
    Param(
        "seed", int, 0, "Random seed: the same seed on the same device gives the same losses.", 0, 2**31 - 1
    ),
    Param(
        "step_delay_ms",
        float,
        0.0,
        "Pause after each optimiser step, to make a short demo run watchable live.",
        0,
        5000,
    ),
    Param(
        "inject_nan_at_step",
        int,
        -1,
        "Make the loss NaN from this step on (-1: never). Exercises the early-stop policy.",
        -1,
        10_000_000,
    ),
)


LOSS = Metric("loss", "lower", "Training loss of the last step.")
VAL_LOSS = Metric("val_loss", "lower", "Loss on the validation split.")
ACCURACY = Metric("accuracy", "higher", "Share of the validation split classified right.")
F1 = Metric("f1", "higher", "Macro F1 on the validation split.")

# What the classification evaluators (digits, distill) measure on the held-out set.
CLASSIFICATION_EVAL = (
    Metric("accuracy", "higher", "Share of the held-out set classified right."),
    Metric("macro_f1", "higher", "Macro-averaged F1 on the held-out set."),
    Metric("auc_ovr", "higher", "ROC AUC of each class against the rest, averaged."),
    Metric("ece", "lower", "Expected calibration error (15 equal-width confidence bins)."),
    Metric("val_loss", "lower", "Cross-entropy on the held-out set."),
    *(Metric(f"recall_class_{c}", "higher", f"Recall of digit {c}.") for c in range(10)),
)
LM_EVAL = (
    Metric("perplexity", "lower", "exp(mean next-byte cross-entropy) on the held-out text."),
    Metric("val_loss", "lower", "Mean next-byte cross-entropy on the held-out text."),
)

# What dpo's evaluator measures on held-out bracket pairs from charlm's validation split.
DPO_EVAL = (
    Metric("preference_accuracy", "higher", "Share of held-out pairs whose chosen completion wins."),
    Metric("reward_margin", "higher", "Implicit reward of chosen minus rejected, held-out pairs."),
    Metric("kl", "lower", "Per-byte KL of the policy from its reference on held-out completions."),
)
# What grpo's evaluator measures with greedy answers to the held-out prompts.
GRPO_EVAL = (
    Metric("mean_return", "higher", "Mean reward (share of digits right) of greedy held-out answers."),
    Metric("solved", "higher", "Share of held-out prompts whose greedy answer is entirely right."),
)


def _heads_divide_width(config: dict[str, ParamValue]) -> dict[str, str]:
    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    if d_model % n_heads:
        return {"n_heads": f"must divide d_model ({d_model})"}
    return {}


def _completion_fits_context(config: dict[str, ParamValue]) -> dict[str, str]:
    context, completion = int(config["context"]), int(config["completion"])
    if completion > context // 2:
        return {
            "completion": f"must be at most half the context ({context // 2}), to leave room for a prompt"
        }
    return {}


def _one_base_model(config: dict[str, ParamValue]) -> dict[str, str]:
    if int(config["base_run"]) and int(config["base_experiment"]):
        return {"base_experiment": "name one starting model: base_run or base_experiment, not both"}
    return {}


BUILTINS: dict[str, RecipeSpec] = {
    spec.name: spec
    for spec in (
        RecipeSpec(
            name="digits",
            summary="MLP classifier on scikit-learn's bundled 8x8 digits (loss, val_loss, accuracy, f1).",
            params=(
                Param("epochs", int, 30, "Passes over the training split.", 1, 500),
                Param("batch_size", int, 64, "Examples per optimiser step.", 8, 2048),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param("hidden", int, 128, "Width of the hidden layers.", 8, 4096),
                Param("weight_decay", float, 0.0, "AdamW weight decay.", 0.0, 1.0),
                Param("val_fraction", float, 0.2, "Share of the data held out for validation.", 0.05, 0.5),
                DatasetParam(
                    "extra_data",
                    help="Id of a curated dataset version whose rows join the training split (0: none).",
                ),
                Param(
                    "serve_error_rate",
                    float,
                    0.0,
                    "Share of prediction requests the served model fails (to rehearse a canary rollback).",
                    0.0,
                    1.0,
                ),
                Param(
                    "serve_delay_ms",
                    float,
                    0.0,
                    "Extra latency of every served prediction (to rehearse a latency rollback).",
                    0,
                    5000,
                ),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.digits:RECIPE",
            **with_evaluation(metric_fields(LOSS, VAL_LOSS, ACCURACY, F1), *CLASSIFICATION_EVAL),
            evaluator="experiments.recipes.digits:evaluate_checkpoint",
            stages=("load_data", "train", "export", "evaluate"),
            # Served by experiments/registry/serving.py's own loader (curated data, rehearsed faults).
            servable=True,
        ),
        RecipeSpec(
            name="charlm",
            summary="Byte-level transformer language model on text shipped with Python (offline).",
            params=(
                Param("steps", int, 300, "Optimiser steps.", 1, 1_000_000),
                Param("batch_size", int, 16, "Sequences per step.", 1, 1024),
                Param("context", int, 64, "Bytes of context per sequence.", 8, 4096),
                Param("d_model", int, 64, "Model width.", 16, 4096),
                Param("n_layers", int, 2, "Transformer blocks.", 1, 64),
                Param("n_heads", int, 4, "Attention heads (must divide d_model).", 1, 64),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param(
                    "eval_every", int, 50, "Steps between validation losses (and checkpoints).", 1, 100_000
                ),
                Param("eval_batches", int, 4, "Validation batches per evaluation.", 1, 1000),
                Param("weight_decay", float, 0.0, "AdamW weight decay.", 0.0, 1.0),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.charlm:RECIPE",
            # A transformer's batches use more cores and memory than the MLPs.
            resources=Resources(cpu_cores=2, host_memory_gb=2.0),
            constraints=(_heads_divide_width,),
            **with_evaluation(
                metric_fields(LOSS, VAL_LOSS, Metric("tokens_per_s", "higher", "Training throughput.")),
                *LM_EVAL,
            ),
            evaluator="experiments.recipes.charlm:evaluate_checkpoint",
            stages=("load_data", "train", "export", "evaluate"),
        ),
        RecipeSpec(
            name="distill",
            summary="Knowledge distillation: a small student learns a digits teacher's soft labels.",
            params=(
                Param("teacher_epochs", int, 20, "Epochs to train the teacher first.", 1, 500),
                Param(
                    "teacher_experiment",
                    int,
                    0,
                    "A digits experiment whose final checkpoint is the teacher (its id; 0 trains a "
                    "teacher first). Set when this experiment depends on a digits experiment.",
                    0,
                    2**31 - 1,
                ),
                Param("epochs", int, 30, "Epochs to train the student.", 1, 500),
                Param("teacher_hidden", int, 256, "Teacher hidden width.", 8, 4096),
                Param("student_hidden", int, 32, "Student hidden width.", 4, 4096),
                Param("temperature", float, 4.0, "Softmax temperature of the soft labels.", 0.1, 100.0),
                Param(
                    "alpha", float, 0.7, "Weight of the distillation loss against the hard labels.", 0.0, 1.0
                ),
                Param("batch_size", int, 64, "Examples per optimiser step.", 8, 2048),
                Param("lr", float, 0.003, "AdamW learning rate.", 1e-6, 1.0),
                Param("val_fraction", float, 0.2, "Share of the data held out for validation.", 0.05, 0.5),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.distill:RECIPE",
            **with_evaluation(
                metric_fields(
                    LOSS,
                    VAL_LOSS,
                    ACCURACY,
                    F1,
                    *(
                        Metric(f"teacher_{m.name}", m.better, f"The teacher's {m.name}.")
                        for m in (LOSS, VAL_LOSS, ACCURACY, F1)
                    ),
                ),
                *CLASSIFICATION_EVAL,
            ),
            evaluator="experiments.recipes.distill:evaluate_checkpoint",
            stages=("load_data", "train_teacher", "train_student", "evaluate"),
        ),
        RecipeSpec(
            name="dpo",
            summary=(
                "Preference tuning (DPO) of a byte-level LM: prefer code whose brackets balance over the"
                " same code with a mismatched closing bracket (dpo_loss, reward_accuracy, kl)."
            ),
            params=(
                Param(
                    "base_run",
                    int,
                    0,
                    "Id of a charlm run whose last checkpoint is the starting model (0: pre-train one here first).",
                    0,
                    2**31 - 1,
                ),
                Param(
                    "base_experiment",
                    int,
                    0,
                    "A charlm experiment whose final checkpoint is the starting model (its id; 0: none). "
                    "Set when this experiment depends on a charlm experiment and names no base_run.",
                    0,
                    2**31 - 1,
                ),
                Param(
                    "pretrain_steps",
                    int,
                    300,
                    "Language-model steps on the corpus before DPO, when no base model is given.",
                    1,
                    1_000_000,
                ),
                Param("steps", int, 150, "DPO optimiser steps.", 1, 1_000_000),
                Param("batch_size", int, 16, "Preference pairs (or LM sequences) per step.", 1, 1024),
                Param("context", int, 64, "Bytes per sequence: prompt plus completion.", 16, 4096),
                Param(
                    "completion", int, 8, "Bytes of each completion, starting at its closing bracket.", 1, 256
                ),
                Param("d_model", int, 64, "Model width.", 16, 4096),
                Param("n_layers", int, 2, "Transformer blocks.", 1, 64),
                Param("n_heads", int, 4, "Attention heads (must divide d_model).", 1, 64),
                Param(
                    "beta",
                    float,
                    0.1,
                    "DPO temperature: how far from the reference the policy may move.",
                    1e-4,
                    10.0,
                ),
                Param("lr", float, 0.001, "AdamW learning rate of the DPO phase.", 1e-6, 1.0),
                Param(
                    "pretrain_lr", float, 0.003, "AdamW learning rate of the pre-training phase.", 1e-6, 1.0
                ),
                Param(
                    "eval_every", int, 50, "Steps between held-out evaluations (and checkpoints).", 1, 100_000
                ),
                Param("eval_pairs", int, 256, "Held-out preference pairs per evaluation.", 8, 100_000),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.dpo:RECIPE",
            constraints=(_heads_divide_width, _completion_fits_context, _one_base_model),
            **with_evaluation(
                metric_fields(
                    Metric("pretrain_loss", "lower", "Next-byte loss while pre-training the base model."),
                    Metric("dpo_loss", "lower", "DPO loss of the last step."),
                    Metric(
                        "reward_margin", "higher", "Implicit reward of chosen minus rejected completions."
                    ),
                    Metric(
                        "reward_accuracy", "higher", "Share of the step's pairs whose chosen completion wins."
                    ),
                    Metric(
                        "kl",
                        "lower",
                        "Per-byte KL of the policy from the frozen reference on the completions.",
                    ),
                    Metric(
                        "val_reward_accuracy", "higher", "reward_accuracy on held-out pairs never trained on."
                    ),
                ),
                *DPO_EVAL,
            ),
            evaluator="experiments.recipes.dpo:evaluate_checkpoint",
            # pretrain is skipped when a base model is given (base_run or base_experiment).
            stages=("load_data", "pretrain", "train", "export", "evaluate"),
        ),
        RecipeSpec(
            name="grpo",
            summary=(
                "Reinforcement learning (GRPO): a tiny transformer learns to reverse digit strings from a"
                " reward alone (reward_mean, kl, entropy)."
            ),
            params=(
                Param(
                    "steps",
                    int,
                    200,
                    "Policy updates (each on a fresh batch of sampled groups).",
                    1,
                    1_000_000,
                ),
                Param("length", int, 3, "Digits per prompt (and per answer).", 2, 12),
                Param("prompts", int, 32, "Prompts per step.", 1, 4096),
                Param(
                    "group_size",
                    int,
                    8,
                    "Answers sampled per prompt; advantages are normalised within it.",
                    2,
                    256,
                ),
                Param("ppo_epochs", int, 2, "Optimiser steps on each batch of samples.", 1, 32),
                Param("clip", float, 0.2, "PPO clip range of the probability ratio.", 0.01, 1.0),
                Param("beta", float, 0.01, "Weight of the KL penalty to the frozen reference.", 0.0, 10.0),
                Param("temperature", float, 1.0, "Sampling temperature.", 0.05, 10.0),
                Param("d_model", int, 64, "Model width.", 16, 4096),
                Param("n_layers", int, 2, "Transformer blocks.", 1, 64),
                Param("n_heads", int, 4, "Attention heads (must divide d_model).", 1, 64),
                Param("lr", float, 0.001, "AdamW learning rate.", 1e-6, 1.0),
                Param(
                    "eval_every", int, 50, "Steps between held-out evaluations (and checkpoints).", 1, 100_000
                ),
                *COMMON_PARAMS,
            ),
            entry="experiments.recipes.grpo:RECIPE",
            constraints=(_heads_divide_width,),
            **with_evaluation(
                metric_fields(
                    Metric(
                        "reward_mean", "higher", "Mean reward of the step's samples (share of digits right)."
                    ),
                    Metric(
                        "reward_std", "higher", "Spread of the step's rewards: the learning signal (0: none)."
                    ),
                    Metric("kl", "lower", "KL of the policy from the frozen reference on its samples."),
                    Metric(
                        "entropy", "higher", "Mean per-digit entropy of the policy (0: it stopped exploring)."
                    ),
                    Metric("loss", "lower", "Clipped policy loss plus the KL penalty, last optimiser step."),
                    Metric(
                        "mean_return",
                        "higher",
                        "Greedy answers' reward on held-out prompts never trained on.",
                    ),
                ),
                *GRPO_EVAL,
            ),
            evaluator="experiments.recipes.grpo:evaluate_checkpoint",
            stages=("train", "export", "evaluate"),
        ),
        RecipeSpec(
            name="script",
            summary="Run an existing training script unchanged (argv, a folder under SCRIPT_ROOTS, env).",
            params=SCRIPT_PARAMS,
            entry="experiments.recipes.script:RECIPE",
            constraints=SCRIPT_CONSTRAINTS,
        ),
    )
}


class Catalog(Mapping[str, RecipeSpec]):
    """The built-in recipes and the plug-ins, merged the first time anyone reads it.

    Lazy on purpose: a plug-in module imports `experiments.recipes` (for Param, RecipeResult), so
    the catalog cannot import plug-ins while that package is still being imported. A plug-in that
    reads the catalog while it is being built sees the built-ins.
    """

    def __init__(self, builtins: Mapping[str, RecipeSpec]) -> None:
        self._builtins = dict(builtins)
        self._specs: dict[str, RecipeSpec] | None = None
        self._problems: list[PluginProblem] = []
        self._refs: list[str] | None = None  # None: read CRUCIBLE_RECIPES from the environment
        self._lock = threading.RLock()
        self._loading = False

    def _loaded(self) -> dict[str, RecipeSpec]:
        specs = self._specs
        if specs is not None:
            return specs
        with self._lock:
            if self._specs is not None:
                return self._specs
            if self._loading:
                return self._builtins
            self._loading = True
            try:
                refs = self._refs if self._refs is not None else parse_refs(os.environ.get(ENV_VAR, ""))
                specs, problems = merge(self._builtins, [*declared_entry_points(), *declared_refs(refs)])
            finally:
                self._loading = False
            for problem in problems:
                logger.warning("recipe plug-in refused: %s", problem)
            self._specs, self._problems = specs, problems
            return specs

    def __getitem__(self, name: str) -> RecipeSpec:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def problems(self) -> list[PluginProblem]:
        """Return the plug-ins that were refused, each with a message naming it."""
        self._loaded()
        return list(self._problems)

    def configure(self, refs: str | Iterable[str] | None) -> None:
        """Use these CRUCIBLE_RECIPES references (None: the environment's) and build the catalog again."""
        with self._lock:
            self._refs = None if refs is None else parse_refs(refs)
            self._specs = None
            self._problems = []

    def reload(self) -> None:
        """Forget what was discovered: the next read looks at installed packages again."""
        with self._lock:
            self._specs = None
            self._problems = []


RECIPES = Catalog(BUILTINS)


def get_spec(name: str) -> RecipeSpec:
    """Return the catalog entry for a recipe name, or raise ConfigError on the recipe field."""
    try:
        return RECIPES[name]
    except KeyError:
        pass
    refused = [p for p in RECIPES.problems() if p.name == name]
    if refused:
        raise ConfigError({"recipe": f"recipe {name!r} is not available: {refused[0]}"})
    raise ConfigError({"recipe": f"unknown recipe {name!r} (known: {', '.join(sorted(RECIPES))})"})
