"""Every model of the experiments app, for Django and for importers.

The lifecycle (experiments, their audit log, runs, metric points, API tokens) lives in
`experiment.py`; the model registry (versions, served requests, curated datasets, drift
checks) in `registry.py`; what the MLflow tracking API adds (experiment groups, run ids) in
`mlflow.py`. Both are the bottom layer of the app: they import no service.
"""

from experiments.models.dependency import After, Dependency, OnUpstreamFailure, unmet_dependencies
from experiments.models.experiment import (
    CONFIRM_EVENTS,
    EVENT_LABELS,
    EVENT_PERMISSIONS,
    ApiToken,
    Experiment,
    MetricPoint,
    Run,
    TransitionLog,
)
from experiments.models.experiment import (
    _default_tags as _default_tags,  # referenced by migration 0001
)
from experiments.models.mlflow import (
    MlflowExperiment,
    MlflowLifecycle,
    MlflowRun,
    MlflowRunStatus,
)
from experiments.models.outputs import (
    EVALUATION_PENDING,
    ArtifactKind,
    EvaluationStatus,
    RunArtifact,
    RunEvaluation,
    RunStage,
    artifact_name_error,
)
from experiments.models.project import (
    DEFAULT_PROJECT_SLUG,
    ROLE_PERMISSIONS,
    Membership,
    Project,
    Role,
    default_project,
    default_project_id,
)
from experiments.models.registry import (
    DatasetFileError,
    DatasetVersion,
    DriftCheck,
    ModelStage,
    ModelVersion,
    ServedRequest,
    ServingStats,
    VersionEvaluation,
    VersionEvaluationStatus,
)
from experiments.models.rollup import ROLLUP_WIDTHS, MetricRollup
from experiments.models.runlog import RunLog

__all__ = [
    "CONFIRM_EVENTS",
    "DEFAULT_PROJECT_SLUG",
    "EVALUATION_PENDING",
    "EVENT_LABELS",
    "EVENT_PERMISSIONS",
    "ROLE_PERMISSIONS",
    "ROLLUP_WIDTHS",
    "After",
    "ApiToken",
    "ArtifactKind",
    "DatasetFileError",
    "DatasetVersion",
    "Dependency",
    "DriftCheck",
    "EvaluationStatus",
    "Experiment",
    "Membership",
    "MetricPoint",
    "MetricRollup",
    "MlflowExperiment",
    "MlflowLifecycle",
    "MlflowRun",
    "MlflowRunStatus",
    "ModelStage",
    "ModelVersion",
    "OnUpstreamFailure",
    "Project",
    "Role",
    "Run",
    "RunArtifact",
    "RunEvaluation",
    "RunLog",
    "RunStage",
    "ServedRequest",
    "ServingStats",
    "TransitionLog",
    "VersionEvaluation",
    "VersionEvaluationStatus",
    "artifact_name_error",
    "default_project",
    "default_project_id",
    "unmet_dependencies",
]
