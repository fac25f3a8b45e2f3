"""Serving of registered model versions: load (sha256-verified, cached per version) and predict."""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import F

from experiments.models import DatasetVersion, ModelStage, ModelVersion, ServedRequest, ServingStats
from experiments.recipes import RECIPES, Predictor, ServableRecipe
from experiments.runs.execution import file_sha256

# More instances in one request than this is a batch job, not a prediction call.
MAX_INSTANCES = 256
# Recent requests kept per version (latency percentiles, feedback, drift windows).
KEEP_REQUESTS = 5000
PRUNE_CHANCE = 1 / 200
LATENCY_SAMPLE = 1000
# Inputs are pixel intensities (0-16 for digits); far beyond this is not an input but an
# attack on float32 (inf, then NaN probabilities that no JSON parser accepts).
MAX_ABS_FEATURE = 1e6
# Rows of a request's inputs kept for drift checks: a big batch must not bloat the window.
STORED_ROWS = 32


class ServingError(Exception):
    """A request that cannot be answered, with the HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InjectedFault(RuntimeError):
    """A failure the model was trained to rehearse (serve_error_rate): counts as a served error."""


@dataclass
class LoadedModel:
    """A version ready to predict: n_features inputs in, class probabilities out.

    `reference` holds the raw inputs it was trained on: the distribution drift is measured against.
    """

    version_id: int
    version: int
    n_features: int
    predict_proba: Callable[[np.ndarray], np.ndarray]
    reference: np.ndarray | None = None
    # Feedback labels must name one of these classes (0 .. n_classes-1).
    n_classes: int = 0


def _load_digits(version: ModelVersion, state: dict[str, Any]) -> LoadedModel:
    # torch (and the recipe that needs it) load when a model is first served: the web
    # process starts, and serves every page, without them.
    import torch

    from experiments.recipes.classify import MLP, NUM_CLASSES, digits_scaler, training_inputs

    if state.get("recipe") != "digits":
        raise ValueError(f"checkpoint is from recipe {state.get('recipe')!r}, not 'digits'")
    arch = state["arch"]
    seed, val_fraction = int(arch["seed"]), float(arch["val_fraction"])
    mean, std = digits_scaler(seed, val_fraction)
    n_features = int(mean.shape[0])
    model = MLP(n_features, int(arch["hidden"]), NUM_CLASSES)
    model.load_state_dict(state["model"])
    model.eval()
    behaviour = state.get("serving") or {}
    error_rate = float(behaviour.get("error_rate", 0.0))
    delay_s = float(behaviour.get("delay_ms", 0.0)) / 1000
    # A slow load rehearsed by the checkpoint (a big model, a cold disk): what warm-up is for.
    load_delay_s = float(behaviour.get("load_delay_ms", 0.0)) / 1000
    if load_delay_s:
        time.sleep(load_delay_s)
    try:
        reference: np.ndarray | None = training_inputs(
            seed, val_fraction, _dataset_file(behaviour.get("extra_data"))
        )
    except ValueError:
        # The curated file is gone: still serve, measured against the recipe's own data.
        reference = training_inputs(seed, val_fraction)

    def predict_proba(x: np.ndarray) -> np.ndarray:
        if delay_s:
            time.sleep(delay_s)
        if error_rate and random.random() < error_rate:
            raise InjectedFault("injected serving fault (serve_error_rate)")
        with torch.no_grad():
            logits = model(torch.from_numpy(((x - mean) / std).astype(np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()

    return LoadedModel(version.pk, version.version, n_features, predict_proba, reference, NUM_CLASSES)


def _dataset_file(ref: Any) -> str:
    """Return the file of the curated dataset a checkpoint was trained with ("" for none).

    Checkpoints name it by id, resolved under DATASETS_ROOT only. An older checkpoint that
    recorded a file path gets no curated rows: a path is never opened as given.
    """
    if isinstance(ref, bool) or not isinstance(ref, int) or ref <= 0:
        return ""
    dataset = DatasetVersion.objects.filter(pk=ref).first()
    return str(dataset.file_path()) if dataset is not None else ""


def _load_plugin(version: ModelVersion, state: dict[str, Any]) -> LoadedModel:
    """Build a predictor with the recipe's own load_predictor (the serving protocol of plug-ins)."""
    spec = RECIPES.get(version.recipe)
    if spec is None:
        raise ValueError(f"recipe {version.recipe!r} is not in the catalog (a plug-in no longer installed?)")
    if not spec.servable:
        raise ValueError(spec.not_servable_reason())
    recipe = spec.load()
    if not isinstance(recipe, ServableRecipe):
        raise ValueError(spec.not_servable_reason())
    predictor = recipe.load_predictor(state)
    if not isinstance(predictor, Predictor):
        raise ValueError(
            f"load_predictor of {spec.name!r} returned a {type(predictor).__name__}, not a Predictor"
        )
    n_features, n_classes = predictor.n_features, predictor.n_classes
    if not (isinstance(n_features, int) and n_features > 0 and isinstance(n_classes, int) and n_classes > 1):
        raise ValueError(
            f"load_predictor of {spec.name!r}: n_features must be positive and n_classes at least 2 "
            f"(got {n_features!r}, {n_classes!r})"
        )
    own = predictor.predict_proba

    def predict_proba(x: np.ndarray) -> np.ndarray:
        # Someone else's code: an answer of the wrong shape is its failure, said plainly,
        # rather than a wrong label or a NaN confidence passed on to the caller.
        probs = np.asarray(own(x), dtype=np.float64)
        if probs.shape != (x.shape[0], n_classes):
            raise ValueError(
                f"predict_proba returned shape {probs.shape}, expected {(x.shape[0], n_classes)}"
            )
        if (
            not np.isfinite(probs).all()
            or (probs < 0).any()
            or not np.allclose(probs.sum(axis=1), 1, atol=1e-3)
        ):
            raise ValueError("predict_proba returned rows that are not probabilities (finite, >= 0, sum 1)")
        return probs

    reference = predictor.reference
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 2 or reference.shape[1] != n_features:
            reference = None  # drift is then not measured for this version; serving goes on
    return LoadedModel(version.pk, version.version, n_features, predict_proba, reference, n_classes)


# How each built-in recipe's checkpoint becomes a predictor; plug-ins bring load_predictor.
LOADERS: dict[str, Callable[[ModelVersion, dict[str, Any]], LoadedModel]] = {"digits": _load_digits}

_cache: dict[int, LoadedModel] = {}
_cache_lock = threading.Lock()


def _verify_and_load(version: ModelVersion) -> LoadedModel:
    import torch  # see _load_digits: only once a model is served

    loader = LOADERS.get(version.recipe, _load_plugin)
    path = Path(version.checkpoint_path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is missing")
    if version.checkpoint_size is not None and path.stat().st_size != version.checkpoint_size:
        raise ValueError(
            f"checkpoint {path} has {path.stat().st_size} bytes, registered {version.checkpoint_size}"
        )
    if file_sha256(path) != version.checkpoint_sha256:
        raise ValueError(f"checkpoint {path} does not match its registered sha256")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return loader(version, state)


def load_version(version: ModelVersion) -> LoadedModel:
    """Return the version's predictor, loading it once; a failure marks the version unservable."""
    return _load(version)[0]


def _load(version: ModelVersion) -> tuple[LoadedModel, bool]:
    """Return the version's predictor and whether this call had to load it (a cold request)."""
    loaded = _cache.get(version.pk)
    if loaded is not None:
        return loaded, False
    with _cache_lock:
        loaded = _cache.get(version.pk)
        if loaded is not None:
            return loaded, False
        try:
            loaded = _verify_and_load(version)
        except Exception as exc:
            message = str(exc) or exc.__class__.__name__
            # Recorded on the row, so every process stops routing to it, and people see why.
            ModelVersion.objects.filter(pk=version.pk).update(serve_error=message[:2000])
            raise ServingError(
                503, f"{version.model_name} v{version.version} cannot be served: {message}"
            ) from None
        _cache[version.pk] = loaded
        return loaded, True


def clear_cache() -> None:
    """Forget every loaded model (tests; a process that wants to reload)."""
    with _cache_lock:
        _cache.clear()


def version_warm(version: ModelVersion) -> float:
    """Load the version (checkpoint verified) and answer one warm-up prediction; return the ms it took.

    Run before a version gets traffic, so that no judged request waits for the load. A load
    failure is a ServingError (and marks the version unservable, as load_version does).
    """
    started = time.perf_counter()
    loaded = load_version(version)
    row = (
        loaded.reference[:1]
        if loaded.reference is not None and len(loaded.reference)
        else np.zeros((1, loaded.n_features))
    )
    for _ in range(5):
        try:
            loaded.predict_proba(np.asarray(row, dtype=np.float32))
            break
        except InjectedFault:
            continue  # a rehearsed per-request fault, not a broken model: warm again
        except Exception as exc:
            message = f"warm-up prediction failed: {exc}"
            ModelVersion.objects.filter(pk=version.pk).update(serve_error=message[:2000])
            raise ServingError(
                503, f"{version.model_name} v{version.version} cannot be served: {message}"
            ) from None
    return (time.perf_counter() - started) * 1000


def route(model_name: str, *, draw: float | None = None) -> ModelVersion:
    """Return the version that answers this request: the canaries by their traffic shares, else production.

    draw (0-100, random when None) decides the split: canaries with traffic take consecutive
    slices of 0-100 (oldest first: one canary, or the arms of an A/B test), production the
    rest. With no servable production, the servable canaries share every request.
    """
    candidates = list(
        ModelVersion.objects.filter(
            model_name=model_name, stage__in=[ModelStage.PRODUCTION, ModelStage.CANARY], serve_error=""
        ).order_by("-promoted_at", "-id")
    )
    production = next((v for v in candidates if v.stage == ModelStage.PRODUCTION), None)
    canaries = sorted(
        (v for v in candidates if v.stage == ModelStage.CANARY and v.traffic_pct > 0), key=lambda v: v.pk
    )
    if canaries:
        roll = random.uniform(0, 100) if draw is None else draw
        if production is None:
            # Nothing takes the rest: scale the shares up to all the traffic.
            roll *= sum(v.traffic_pct for v in canaries) / 100
        edge = 0.0
        for canary in canaries:
            edge += canary.traffic_pct
            if roll < edge:
                return canary
        if production is None:
            return canaries[-1]
    if production is not None:
        return production
    if not ModelVersion.objects.filter(model_name=model_name).exists():
        raise ServingError(404, f"Unknown model {model_name!r}.")
    raise ServingError(503, f"Model {model_name!r} has no servable production version.")


def _routed_and_loaded(model_name: str, draw: float | None) -> tuple[ModelVersion, LoadedModel, bool]:
    """Route, and load (True when this request waited for the load); a canary that fails to load
    gives the request to production instead."""
    version = route(model_name, draw=draw)
    try:
        return version, *_load(version)
    except ServingError:
        if version.stage != ModelStage.CANARY:
            raise
        # load_version marked it unservable: routing now skips it.
        version = route(model_name)
        return version, *_load(version)


def parse_body(body: bytes) -> dict[str, Any]:
    """Return the JSON object of a request body, or a 400 naming what is wrong."""
    try:
        payload = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise ServingError(400, "body: not valid JSON") from None
    except RecursionError:
        raise ServingError(400, "body: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise ServingError(400, "body: must be a JSON object")
    return payload


def _finite(v: int | float) -> bool:
    """Return True for a number a float can hold (an integer like 10**400 cannot: not finite)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _row(value: Any, field: str, n_features: int) -> list[float]:
    if not isinstance(value, list):
        raise ServingError(400, f"{field}: must be a list of {n_features} numbers")
    if len(value) != n_features:
        raise ServingError(400, f"{field}: must have {n_features} numbers, got {len(value)}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v):
            raise ServingError(400, f"{field}[{i}]: must be a finite number, got {json.dumps(v)[:40]}")
        if abs(v) > MAX_ABS_FEATURE:
            raise ServingError(
                400, f"{field}[{i}]: must be between -{MAX_ABS_FEATURE:g} and {MAX_ABS_FEATURE:g}"
            )
    return [float(v) for v in value]


def parse_instances(payload: dict[str, Any], n_features: int) -> tuple[list[list[float]], bool]:
    """Return the instances of a predict payload and whether it was a single `features` row."""
    if "features" in payload and "instances" in payload:
        raise ServingError(400, "features: send either features or instances, not both")
    if "features" in payload:
        return [_row(payload["features"], "features", n_features)], True
    if "instances" not in payload:
        raise ServingError(400, f"features: required (a list of {n_features} numbers), or instances")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "instances: must be a non-empty list of rows")
    if len(instances) > MAX_INSTANCES:
        raise ServingError(400, f"instances: at most {MAX_INSTANCES} rows per request")
    return [_row(row, f"instances[{i}]", n_features) for i, row in enumerate(instances)], False


def _record(version: ModelVersion, *, ok: bool, latency_ms: float, **fields: Any) -> ServedRequest:
    ServingStats.objects.filter(version_id=version.pk).update(
        request_count=F("request_count") + 1, error_count=F("error_count") + (0 if ok else 1)
    )
    served = ServedRequest.objects.create(version=version, ok=ok, latency_ms=latency_ms, **fields)
    if random.random() < PRUNE_CHANCE:
        _prune(version.pk)
    return served


def _prune(version_id: int) -> None:
    """Keep only the newest KEEP_REQUESTS served requests of a version."""
    cutoff = (
        ServedRequest.objects.filter(version_id=version_id)
        .order_by("-created_at", "-id")
        .values_list("id", flat=True)[KEEP_REQUESTS : KEEP_REQUESTS + 1]
    )
    last = list(cutoff)
    if last:
        ServedRequest.objects.filter(version_id=version_id, id__lte=last[0]).delete()


def predict(*, model_name: str, payload: dict[str, Any], draw: float | None = None) -> dict[str, Any]:
    """Answer one predict request with its routed version; record its count and latency.

    draw: the routing draw (see route); random when None, given by simulations that decide it.
    """
    started = time.perf_counter()
    version, loaded, cold = _routed_and_loaded(model_name, draw)
    rows, _single = parse_instances(payload, loaded.n_features)
    try:
        probs = loaded.predict_proba(np.asarray(rows, dtype=np.float32))
        predictions = [int(p) for p in probs.argmax(axis=1)]
    except Exception as exc:
        _record(
            version,
            ok=False,
            latency_ms=(time.perf_counter() - started) * 1000,
            instances=len(rows),
            cold=cold,
        )
        raise ServingError(503, f"{model_name} v{version.version} failed to predict: {exc}") from None
    latency_ms = (time.perf_counter() - started) * 1000
    served = _record(
        version,
        ok=True,
        latency_ms=latency_ms,
        instances=len(rows),
        predictions=predictions,
        confidence=float(probs.max(axis=1).min()),
        inputs=rows[:STORED_ROWS],
        cold=cold,
    )
    return {
        "request_id": str(served.request_id),
        "model": model_name,
        "version": version.version,
        "predictions": predictions,
        "probabilities": [[round(float(p), 6) for p in row] for row in probs],
        "latency_ms": round(latency_ms, 3),
    }


@dataclass(frozen=True)
class FeedbackSource:
    """Who sent a feedback label, and whether that sender's labels may count."""

    label: str
    trusted: bool


# Code of this project calling feedback() in process (tests, benchmarks): no outside caller.
SYSTEM_FEEDBACK = FeedbackSource("system", trusted=True)


def feedback(
    *, model_name: str, payload: dict[str, Any], source: FeedbackSource = SYSTEM_FEEDBACK
) -> dict[str, Any]:
    """Record the true label of a served single-row request, with its sender.

    Only trusted labels count toward the version's accuracy (canary judging, curated datasets);
    an untrusted one is kept apart and counted as such. The first trusted label of a request
    is final; a trusted label replaces an untrusted one, so that nobody can block the real
    label by sending a wrong one first.
    """
    raw_id = payload.get("request_id")
    if not isinstance(raw_id, str):
        raise ServingError(400, "request_id: required (the request_id a prediction answered with)")
    try:
        request_id = uuid.UUID(raw_id)
    except ValueError:
        raise ServingError(400, "request_id: not a valid request id") from None
    label = payload.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise ServingError(400, "label: must be a non-negative integer class")
    served = (
        ServedRequest.objects.select_related("version")
        .filter(request_id=request_id, version__model_name=model_name)
        .first()
    )
    if served is None:
        raise ServingError(404, f"request_id: no served request {raw_id} of model {model_name!r}")
    if len(served.predictions) != 1:
        raise ServingError(400, "request_id: feedback takes a single-row (features) request")
    # Labels steer canary accuracy and curated retraining sets: only a class the model has counts.
    n_classes = load_version(served.version).n_classes
    if label >= n_classes:
        raise ServingError(400, f"label: must be a class of model {model_name!r}, 0 to {n_classes - 1}")
    correct = served.predictions[0] == label
    recorded = _label_record(served.pk, served.version_id, label=label, correct=correct, source=source)
    return {
        "request_id": raw_id,
        "version": served.version.version,
        "correct": correct,
        "counted": recorded and source.trusted,
        "trusted": source.trusted,
    }


def _label_record(pk: int, version_id: int, *, label: int, correct: bool, source: FeedbackSource) -> bool:
    """Store the label unless the request already has one that outranks it; return whether stored."""
    with transaction.atomic():
        # Locked: two labels of one request at once must not both adjust the counters.
        row = ServedRequest.objects.select_for_update().get(pk=pk)
        if row.label is not None and (row.label_trusted or not source.trusted):
            return False
        replaces_untrusted = row.label is not None
        ServedRequest.objects.filter(pk=pk).update(
            label=label, correct=correct, label_source=source.label[:200], label_trusted=source.trusted
        )
        if source.trusted:
            ServingStats.objects.filter(version_id=version_id).update(
                feedback_count=F("feedback_count") + 1,
                feedback_correct=F("feedback_correct") + (1 if correct else 0),
                feedback_untrusted=F("feedback_untrusted") - (1 if replaces_untrusted else 0),
            )
        else:
            ServingStats.objects.filter(version_id=version_id).update(
                feedback_untrusted=F("feedback_untrusted") + 1
            )
    return True


def version_summary(version: ModelVersion) -> dict[str, Any]:
    """Return a version's request and error counts, latency p50/p99 (ms) and trusted feedback accuracy."""
    stats = ServingStats.objects.filter(version=version).first()
    latencies = list(
        ServedRequest.objects.filter(version=version, ok=True)
        .order_by("-created_at")
        .values_list("latency_ms", flat=True)[:LATENCY_SAMPLE]
    )
    p50 = float(np.percentile(latencies, 50)) if latencies else None
    p99 = float(np.percentile(latencies, 99)) if latencies else None
    requests = stats.request_count if stats else 0
    errors = stats.error_count if stats else 0
    fb = stats.feedback_count if stats else 0
    return {
        "feedback_untrusted": stats.feedback_untrusted if stats else 0,
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "p50_ms": p50,
        "p99_ms": p99,
        "feedback": fb,
        "accuracy": (stats.feedback_correct / fb) if stats and fb else None,
    }


# z of a two-sided 95% interval (one-sided 97.5%).
Z_95 = 1.959964


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion hits/n (sound for small n and rates near 0)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def last_request_id() -> int:
    """Return the id of the newest served request: a window starting now takes larger ids."""
    return ServedRequest.objects.order_by("-id").values_list("id", flat=True).first() or 0


def window_stats(version: ModelVersion, *, after_request: int = 0) -> dict[str, float | None]:
    """Return the version's served traffic after a request id: what canary conditions are judged on.

    requests, error_rate, latency_p50_ms / latency_p99_ms (answered warm requests: one that
    waited for its process to load the model says nothing of the model's speed), and accuracy
    over the requests that got a trusted feedback label (None where there is nothing to
    measure), with the 95% Wilson bounds error_rate_lower_95 and accuracy_upper_95.
    feedback_untrusted counts the labels left out because their sender is not trusted.
    """
    rows = list(
        ServedRequest.objects.filter(version=version, id__gt=after_request).values_list(
            "ok", "latency_ms", "correct", "label_trusted", "cold"
        )
    )
    requests = len(rows)
    errors = sum(1 for ok, *_ in rows if not ok)
    latencies = [lat for ok, lat, _, _, cold in rows if ok and not cold]
    # One viewer's labels must not steer a rollout: only trusted ones are judged.
    judged = [c for _, _, c, trusted, _ in rows if c is not None and trusted]
    untrusted = sum(1 for _, _, c, trusted, _ in rows if c is not None and not trusted)
    return {
        "requests": float(requests),
        "errors": float(errors),
        "error_rate": errors / requests if requests else None,
        # Bounds that a few unlucky requests cannot push past a threshold: a rollback condition
        # on them fires only once the window makes the breach statistically clear.
        "error_rate_lower_95": wilson_interval(errors, requests)[0] if requests else None,
        "accuracy_upper_95": wilson_interval(sum(judged), len(judged))[1] if judged else None,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "feedback": float(len(judged)),
        "feedback_untrusted": float(untrusted),
        "accuracy": sum(judged) / len(judged) if judged else None,
        "wrong": float(len(judged) - sum(judged)),
        "cold_requests": float(sum(1 for *_, cold in rows if cold)),
    }


def window_outcomes(version: ModelVersion, *, after_request: int, metric: str) -> list[bool]:
    """Return the version's served outcomes after a request id, oldest first: what an A/B test pairs.

    accuracy: whether each labelled answer was right; error_rate: whether each request was
    answered (True is the good outcome either way).
    """
    served = ServedRequest.objects.filter(version=version, id__gt=after_request).order_by("id")
    if metric == "accuracy":
        # Only trusted labels decide (as in window_stats): a viewer's labels steer nothing.
        labelled = served.filter(correct__isnull=False, label_trusted=True)
        return [bool(c) for c in labelled.values_list("correct", flat=True)]
    if metric == "error_rate":
        return list(served.values_list("ok", flat=True))
    raise ValueError(f"an A/B test compares accuracy or error_rate, not {metric!r}")
