"""Entry points for the on-demand deployments (infra/prefect.yaml): plain parameters that the
Prefect UI can fill in, each delegating to the same sub-flows the nightly retrain uses."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.nightly_retrain import (
    build_dataset,
    build_preferences,
    evaluate_and_promote,
    evaluate_model,
    promote_model,
    refine_preferences,
    register_adapter,
    utc_now,
)
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


@flow(name="refine-on-demand")
def refine_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, overrides: dict[str, Any] | None = None) -> dict:
    """DPO on top of a registered version (`models:/NAME@champion`): pairs from the dataset it was
    trained on, validated; the refined adapter registered as a new version tagged with its parent,
    evaluated against the champion and put through the gate, which also holds it to its parent's
    held-out style. `overrides` as for the nightly run (e.g. {"refine_overrides": {"max_steps": 40}})."""
    from tasks.adapters.ops.settings import paths
    from tasks.domain.report import RunRecord
    from tasks.stages.refine import parent_config, sft_version

    tracking = Tracking.configured()
    info = tracking.registry.resolve(model_uri)
    config = parent_config(info, load_pipeline_config(config_path, overrides))
    spec = resolve_pipeline(config)
    dataset, parent = sft_version(info, config, tracking, paths())
    record = RunRecord(started_at=utc_now(), profile=spec.profile.name, framework_path=spec.framework_path,
                       domain=dataset.domain, dataset_path=dataset.train_path, sft_adapter_dir=parent.adapter_dir,
                       sft_run_id=parent.run_id, mlflow_tracking_uri=tracking.uri)
    preferences = build_preferences(spec, dataset)
    record.update({"preferences_path": preferences.train_path})
    refined = refine_preferences(spec, dataset, parent, preferences, tracking)
    record.update({"adapter_dir": refined.adapter_dir, "mlflow_run_id": refined.run_id, "training": refined.summary})
    registration = register_adapter(spec, dataset, refined, tracking)
    record.update({"registered_model": registration.name, "model_version": registration.version,
                   "model_uri": registration.model_uri})
    evaluate_and_promote(spec, registration.name, registration.version, tracking, record)
    record.update({"finished_at": utc_now()})
    return record.model_dump(mode="json")


@flow(name="export-on-demand")
def export_on_demand(model_uri: str, config_path: str = PIPELINE_CONFIG, formats: str = "") -> dict:
    """Merge a registered version, write its GGUF files and Modelfile (`formats`, default
    export.formats), each read back and checked; recorded on the version."""
    from tasks.model_tasks import export_model_task

    config = load_pipeline_config(config_path)
    return export_model_task(resolve_pipeline(config), model_uri, config.export.formats_to_write(formats),
                             Tracking.configured())
