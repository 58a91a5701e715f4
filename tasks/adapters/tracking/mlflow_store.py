"""MLflow's fluent API keeps the store URI process-wide; `bind_store` is the one place that sets it,
called on entry to each run and before each fluent-only registry call."""
from __future__ import annotations


def bind_store(uri: str) -> None:
    """Point MLflow's process-wide fluent API at `uri` (tracking and registry alike)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
