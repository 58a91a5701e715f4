"""Entry points for the on-demand deployments (infra/prefect.yaml): plain parameters that the
Prefect UI can fill in, each delegating to the same sub-flows the nightly retrain uses."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.nightly_retrain import build_dataset, evaluate_model, promote_model
from tasks.adapters.configs import PIPELINE_CONFIG, load_pipeline_config


@flow(name="build-dataset-on-demand")
def build_dataset_on_demand(config_path: str = PIPELINE_CONFIG, overrides: dict[str, Any] | None = None,
                            force: bool = False) -> dict:
    """Build (or reuse) the dataset the pipeline config describes; returns where it lies."""
    return build_dataset(load_pipeline_config(config_path, overrides), force).to_dict()


@flow(name="evaluate-on-demand")
def evaluate_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, eval_path: str | None = None) -> dict:
    """Evaluate a registered version against the champion; logs to its MLflow run, promotes nothing."""
    return evaluate_model(load_pipeline_config(config_path), model_uri, eval_path).to_dict()


@flow(name="promote-on-demand")
def promote_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, manual: bool = False,
                      reason: str = "") -> dict:
    """Put a registered version through the promotion gate (evaluating it against the champion
    first), or with `manual` promote it by hand, recorded with `reason`."""
    from tasks.adapters.registry import resolve
    from tasks.adapters.settings import tracking_uri
    from tasks.adapters.tracking import use_store
    from tasks.stages.promote import manual_promote

    config = load_pipeline_config(config_path)
    if manual:
        use_store(tracking_uri())
        version = resolve(model_uri)
        return manual_promote(version.name, version.version, tracking_uri(), reason).to_dict()
    return promote_model(config, evaluate_model(config, model_uri)).to_dict()
