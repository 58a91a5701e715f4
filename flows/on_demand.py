"""Entry points for the on-demand deployments (infra/prefect.yaml): plain parameters that the
Prefect UI can fill in, each delegating to the same sub-flows the nightly retrain uses."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.nightly_retrain import build_dataset, evaluate_model, promote_model
from flows.resolution import resolve_pipeline
from tasks.adapters.ops.config_files import PIPELINE_CONFIG, load_framework, load_pipeline_config, resolve_evaluation
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import PipelineConfig
from tasks.stages.evaluate import Evaluation


@flow(name="build-dataset-on-demand")
def build_dataset_on_demand(config_path: str = PIPELINE_CONFIG, overrides: dict[str, Any] | None = None,
                            force: bool = False) -> dict:
    """Build (or reuse) the dataset the pipeline config describes; returns where it lies."""
    return build_dataset(resolve_pipeline(load_pipeline_config(config_path, overrides)), force).to_dict()


def evaluate_registered(config: PipelineConfig, model_uri: str, tracking: Tracking,
                        eval_path: str | None = None) -> Evaluation:
    """Evaluate a registered version by the framework it was trained on (recorded on the version),
    with the configured probes and that domain's held-out questions."""
    framework_path = tracking.registry.resolve(model_uri).tags.get("framework") or config.framework
    spec = resolve_evaluation(config, load_framework(framework_path))
    return evaluate_model(spec, model_uri, tracking, eval_path)


@flow(name="evaluate-on-demand")
def evaluate_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, eval_path: str | None = None) -> dict:
    """Evaluate a registered version against the champion; logs to its MLflow run, promotes nothing."""
    return evaluate_registered(load_pipeline_config(config_path), model_uri, Tracking.configured(), eval_path).to_dict()


@flow(name="promote-on-demand")
def promote_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, manual: bool = False,
                      reason: str = "") -> dict:
    """Put a registered version through the promotion gate (evaluating it against the champion
    first), or with `manual` promote it by hand, recorded with `reason`."""
    from tasks.stages.promote import manual_promote

    config, tracking = load_pipeline_config(config_path), Tracking.configured()
    if manual:
        version = tracking.registry.resolve(model_uri)
        return manual_promote(version.name, version.version, tracking, reason).to_dict()
    return promote_model(config, evaluate_registered(config, model_uri, tracking), tracking).to_dict()
