"""The MLflow tracking REST API (/api/2.0/mlflow/): an unchanged MLflow script logs into Crucible.

See docs/mlflow.md for what is offered and how MLflow's experiments and runs map onto ours.
"""
