"""The nightly retrain, as a table of contents:

    build-dataset -> validate-dataset -> [train-reward-model] -> [unchanged? stop] -> [build-preferences]
        -> train-adapter -> [refine-preferences] -> register-adapter -> evaluate-model -> promote-model

The bracketed preference stages run where the profile's `refine.enabled` (or `--refine`) says so:
the pairs are built and validated before any training, and DPO refines the SFT adapter after it.
The process reward model (`reward.enabled`) trains first, only when its step labels or settings
changed; its champion then scores the held-out answers in evaluate-model.

Each stage is a sub-flow; a failed stage stops the run before anything later is trained,
registered or promoted (a registered version whose evaluation fails is tagged and never promoted).
Unchanged input (same dataset bytes and training config as a registered, evaluated version)
trains nothing unless `force`. `last-run.json` says `running` from the start and, at the end,
`succeeded`, `unchanged`, `failed` or `interrupted` (Ctrl-C or SIGTERM); a summary artifact is written
whatever happens, and a failure also leaves a `nightly-retrain-failure` artifact and, if configured,
a webhook call. Each run first marks KILLED the MLflow runs a killed earlier attempt left RUNNING."""
from __future__ import annotations

import functools
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.resolution import resolve_pipeline
from tasks.adapters.data.dataset_store import DatasetRef
from tasks.adapters.data.gx_runner import ValidationReport
from tasks.adapters.ops.config_files import PIPELINE_CONFIG, load_pipeline_config
from tasks.adapters.ops.prefect_admin import deployment_exists, run_deployment_runs
from tasks.adapters.ops.run_record import write_run_record
from tasks.adapters.ops.settings import paths, resolve_path
from tasks.adapters.ops.signals import interruption, raise_if_stop_requested, stop_signals_interrupt
from tasks.adapters.tracking.runs import Tracking
from tasks.dataset_tasks import (
    expand_dataset_task,
    generate_blueprint_task,
    import_dataset_task,
    publish_dataset_task,
    validate_dataset_task,
    write_dataset_card_task,
)
from tasks.domain.config import PipelineConfig
from tasks.domain.errors import DataValidationError, first_line
from tasks.domain.report import RunRecord
from tasks.domain.run_spec import EvaluationSpec, RunSpec
from tasks.eval_tasks import evaluate_model_task, promote_model_task, publish_evaluation_task, publish_promotion_task
from tasks.model_tasks import (
    build_preferences_task,
    build_step_data_task,
    domain_slot,
    export_model_task,
    find_reward_model_task,
    find_trained_version_task,
    prepare_base_model_task,
    reconcile_interrupted_runs_task,
    refine_adapter_task,
    register_adapter_task,
    register_reward_model_task,
    sample_on_policy_task,
    train_adapter_task,
    train_reward_model_task,
)
from tasks.report_tasks import publish_validation_task, record_failure, write_run_record_task
from tasks.stages.build_dataset import require_valid
from tasks.stages.build_preferences import PreferenceSet, require_valid_pairs
from tasks.stages.evaluate import Evaluation
from tasks.stages.promote import Promotion
from tasks.stages.reward import RewardModel, require_valid_steps
from tasks.stages.train import Registration, TrainedAdapter


def stage(name: str):
    """A pipeline stage: a Prefect subflow that does not start once this run was told to stop.
    Prefect drops a Ctrl-C or SIGTERM that lands while the previous stage's subflow is being wrapped
    up; without this check the run went on (seen: Ctrl-C during the evaluation subflow's wrap-up,
    and the run promoted and exited 0)."""
    def decorate(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            raise_if_stop_requested()
            return fn(*args, **kwargs)
        return flow(name=name)(checked)
    return decorate


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@stage("build-dataset")
def build_dataset(spec: RunSpec, force: bool = False) -> DatasetRef:
    config, framework = spec.config, spec.framework
    if config.dataset.source:  # the user's own rows: imported, not generated
        return import_dataset_task(framework, config, str(paths().datasets))
    blueprint = generate_blueprint_task.with_options(refresh_cache=force)(framework, config)
    dataset = expand_dataset_task.with_options(refresh_cache=force)(framework, blueprint, config, str(paths().datasets))
    if not (Path(dataset.train_path).exists() and Path(dataset.eval_path).exists()):  # cached, then deleted
        dataset = expand_dataset_task.with_options(refresh_cache=True)(framework, blueprint, config, str(paths().datasets))
    return dataset


@stage("validate-dataset")
def validate_dataset(spec: RunSpec, dataset: DatasetRef, force: bool = False) -> ValidationReport:
    config, framework = spec.config, spec.framework
    out_dir = f"{dataset.directory}/validation"
    heldout = spec.evaluation.heldout  # decontamination: no row may contain a held-out question
    report = validate_dataset_task.with_options(refresh_cache=force)(dataset, framework, config, out_dir, heldout)
    if report.result_path and not Path(report.result_path).exists():  # cached, then deleted
        report = validate_dataset_task.with_options(refresh_cache=True)(dataset, framework, config, out_dir, heldout)
    publish_validation_task(report)
    write_dataset_card_task(dataset, report, config)  # pass or fail: a rejected dataset's card says why
    require_valid(report)
    return report


@stage("train-adapter")
def train_adapter(spec: RunSpec, dataset: DatasetRef, report: ValidationReport, tracking: Tracking,
                  base_override: str | None = None, measure_eval_loss: bool = True) -> TrainedAdapter:
    base_model = prepare_base_model_task(spec, dataset, base_override)
    return train_adapter_task(spec, dataset, report, base_model, tracking, measure_eval_loss)


@stage("train-reward-model")
def reward_model(spec: RunSpec, dataset: DatasetRef, tracking: Tracking, base_override: str | None = None,
                 force: bool = False) -> RewardModel:
    """Step labels built and validated (a failed check stops the run here), then the process
    reward model trained, measured and put through its own gate, unless a version with the same
    step data and settings is registered already."""
    on_policy = sample_on_policy_task(spec, dataset, tracking) if spec.reward.on_policy_rows else None
    steps = build_step_data_task(spec, dataset, on_policy)
    publish_validation_task(steps.report, "step labels")
    require_valid_steps(steps.report)
    key, previous = find_reward_model_task(spec, dataset, steps, base_override, tracking)
    if previous and not force:
        return previous
    base_model = prepare_base_model_task(spec, dataset, base_override)
    trained = train_reward_model_task(spec, dataset, steps, base_model, tracking)
    return register_reward_model_task(spec, dataset, trained, tracking, key)


@stage("build-preferences")
def build_preferences(spec: RunSpec, dataset: DatasetRef) -> PreferenceSet:
    """Preference pairs from the dataset, validated as read back from their file: a failed check
    stops the run here, before anything is trained."""
    preferences = build_preferences_task(spec, dataset)
    publish_validation_task(preferences.report, "preference pairs")
    require_valid_pairs(preferences.report)
    return preferences


@stage("refine-preferences")
def refine_preferences(spec: RunSpec, dataset: DatasetRef, trained: TrainedAdapter, preferences: PreferenceSet,
                       tracking: Tracking) -> TrainedAdapter:
    """DPO on top of the SFT adapter, tracked as a run nested under its training run."""
    return refine_adapter_task(spec, dataset, trained, preferences, tracking)


@stage("register-adapter")
def register_adapter(spec: RunSpec, dataset: DatasetRef, trained: TrainedAdapter, tracking: Tracking,
                     training_key: str = "") -> Registration:
    return register_adapter_task(spec, dataset, trained, tracking, training_key)


@stage("evaluate-model")
def evaluate_model(spec: EvaluationSpec, model_uri: str, tracking: Tracking, eval_path: str | None = None) -> Evaluation:
    evaluation = evaluate_model_task(model_uri, spec, tracking, eval_path)
    publish_evaluation_task(evaluation)
    return evaluation


@stage("promote-model")
def promote_model(config: PipelineConfig, evaluation: Evaluation, tracking: Tracking) -> Promotion:
    promotion = promote_model_task(config, evaluation, tracking)
    publish_promotion_task(promotion)
    return promotion


def _train_register_promote(spec: RunSpec, dataset: DatasetRef, report: ValidationReport, tracking: Tracking,
                            base_model: str | None, key: str, record: RunRecord) -> None:
    preferences = build_preferences(spec, dataset) if spec.refine.enabled else None
    # evaluate-model measures the held-out loss on the same split (token-weighted), so the trainer's
    # own pass over it would be wasted: about 10% of training time on the default run.
    trained = train_adapter(spec, dataset, report, tracking, base_model, measure_eval_loss=False)
    if preferences:
        record.update({"sft_adapter_dir": trained.adapter_dir, "sft_run_id": trained.run_id,
                       "preferences_path": preferences.train_path})
        trained = refine_preferences(spec, dataset, trained, preferences, tracking)
    record.update({"base_model_dir": trained.base_model, "base_model_provenance": trained.base_provenance,
                   "adapter_dir": trained.adapter_dir, "training": trained.summary, "mlflow_run_id": trained.run_id,
                   "mlflow_experiment": trained.experiment})
    registration = register_adapter(spec, dataset, trained, tracking, key)
    record.update({"registered_model": registration.name, "model_version": registration.version,
                   "aliases": registration.aliases, "model_uri": registration.model_uri})
    evaluate_and_promote(spec, registration.name, registration.version, tracking, record)


def evaluate_and_promote(spec: RunSpec, name: str, version: str, tracking: Tracking, record: RunRecord) -> None:
    evaluation = evaluate_model(spec.evaluation, f"models:/{name}/{version}", tracking)
    record.update({"evaluation": {
        "metrics": evaluation.metrics, "champion_version": evaluation.champion_version,
        "champion_metrics": evaluation.champion_metrics, "eval_path": evaluation.eval_path,
        "report_dir": evaluation.report_dir}})
    promotion = promote_model(spec.config, evaluation, tracking)
    aliases = sorted({"challenger", *(alias for alias, v in promotion.aliases.items() if v == version)})
    record.update({"promotion": {"verdict": promotion.verdict, **promotion.decision}, "aliases": aliases})
    if spec.config.export.on_promotion and "champion" in aliases:
        record.update({"export": export_champion(spec, f"models:/{name}/{version}", tracking)})
    record.update({"status": "succeeded"})


@stage("export-model")
def export_champion(spec: RunSpec, model_uri: str, tracking: Tracking) -> dict:
    """The `export` deployment's work on promotion: the configured formats, checked and recorded."""
    report = export_model_task(spec, model_uri, spec.config.export.formats_to_write(), tracking)
    return {k: report[k] for k in ("out_dir", "formats", "seconds", "ollama_command")}


@flow(name="nightly-retrain", on_failure=[record_failure])
def nightly_retrain(config_path: str = PIPELINE_CONFIG, overrides: dict[str, Any] | None = None,
                    base_model: str | None = None, force: bool = False, force_reward: bool = False) -> dict:
    """Build, validate, train, register, evaluate against the champion and promote if the gate passes.
    `overrides` use dotted keys over the pipeline YAML (e.g. {"training_overrides": {"max_steps": 10}});
    `base_model` replaces a pretrained profile's source; `force` retrains the chat adapter even when
    nothing changed, `force_reward` the reward model (each keeps the other's registered version)."""
    config = load_pipeline_config(config_path, overrides)
    tracking = Tracking.configured()  # one MLflow store for every stage of the run
    record = RunRecord(started_at=utc_now(), profile=config.profile, framework_path=str(resolve_path(config.framework)),
                       mlflow_tracking_uri=tracking.uri, prefect_flow_run_id=str(flow_run.get_id() or ""),
                       pid=os.getpid())
    write_run_record(record, paths().last_run)  # `running` from the start: a killed run never shows the last success
    try:
        with stop_signals_interrupt(), domain_slot(config.device_slot, Path(config.framework).stem):
            _run_stages(config, tracking, record, base_model, force, force_reward)
    except BaseException as error:
        stopped = interruption(error)
        record.update({"status": "interrupted" if stopped else "failed", "error": stopped or first_line(error)})
        raise
    finally:
        record.update({"finished_at": utc_now()})
        if record.status == "interrupted":  # Prefect is shutting down: no more tasks, just the file
            write_run_record(record, paths().last_run)
        else:
            write_run_record_task(record, str(paths().last_run))
    return record.model_dump(mode="json")


RETRAIN_DEPLOYMENT = "nightly-retrain/nightly-retrain"  # infra/prefect.yaml, registered by `make deploy`


@flow(name="nightly-domains")
def nightly_domains(frameworks: list[str], config_path: str = PIPELINE_CONFIG,
                    overrides: dict[str, Any] | None = None, force: bool = False,
                    deployment: str = RETRAIN_DEPLOYMENT) -> dict[str, dict]:
    """Retrain several domains: each is its own nightly-retrain flow run (named after its
    framework) with its own registered model. Where the `nightly-retrain` deployment exists
    (`make deploy`), every domain is started at once as a run of it (`run_deployment`), so the
    work pool's workers, on every machine, share them; each trains in its machine's device slot,
    and a domain runs at most once at a time (its `domain:<name>` slot). Without the deployment
    (a run by hand, no stack) they run here in turn. One domain's failure does not stop the
    others; this run fails at the end, naming every failed domain."""
    per_domain = {framework: {**(overrides or {}), "framework": framework} for framework in frameworks}
    if deployment_exists(deployment):
        results = started_as_deployment_runs(deployment, per_domain, config_path, force)
    else:
        results = {framework: _retrain_here(framework, config_path, domain_overrides, force)
                   for framework, domain_overrides in per_domain.items()}
    failed = [name for name, result in results.items() if result["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(frameworks)} domains failed: "
                           + "; ".join(f"{name}: {results[name]['error']}" for name in failed))
    return results


def started_as_deployment_runs(deployment: str, per_domain: dict[str, dict[str, Any]], config_path: str,
                               force: bool) -> dict[str, dict]:
    ended = run_deployment_runs(deployment, {framework: (_retrain_name(framework), {
        "config_path": config_path, "overrides": domain_overrides, "force": force})
        for framework, domain_overrides in per_domain.items()})
    return {framework: {"status": "succeeded" if run["state"] == "COMPLETED" else "failed",
                        "error": run["message"], "flow_run": run["flow_run"], "flow_run_id": run["flow_run_id"]}
            for framework, run in ended.items()}


def _retrain_name(framework: str) -> str:
    return f"nightly-retrain-{Path(framework).stem}"


def _retrain_here(framework: str, config_path: str, overrides: dict[str, Any], force: bool) -> dict:
    retrain = nightly_retrain.with_options(flow_run_name=_retrain_name(framework))
    try:
        record = retrain(config_path=config_path, overrides=overrides, force=force)
    except Exception as error:  # Ctrl-C and SIGTERM are not Exceptions: they stop every domain
        return {"status": "failed", "error": first_line(error)}
    return {key: record.get(key) for key in ("status", "domain", "registered_model", "model_version", "aliases")}


def _run_stages(config: PipelineConfig, tracking: Tracking, record: RunRecord, base_model: str | None,
                force: bool, force_reward: bool = False) -> None:
    spec = resolve_pipeline(config)  # every config file read once: all stages get these objects
    record.update({"framework_path": spec.framework_path})
    record.update({"reconciled_runs": reconcile_interrupted_runs_task(tracking, config.tracking.experiment(
        spec.framework.domain))})
    dataset = build_dataset(spec, force)
    record.update({"domain": dataset.domain, "dataset_path": dataset.train_path, "eval_dataset_path": dataset.eval_path,
                   "dataset_sha256": dataset.sha256, "blueprint_hash": dataset.blueprint_hash})
    try:
        report = validate_dataset(spec, dataset, force)
    except DataValidationError as error:
        record.update({"validation_success": False, "validation_failures": error.failures,
                       "data_docs": error.data_docs})
        raise
    record.update({"validation_success": True, "data_docs": report.data_docs_index})
    if config.storage.backend == "s3":
        record.update({"dataset_uri": publish_dataset_task(dataset, config)})
    if spec.reward.enabled:
        reward = reward_model(spec, dataset, tracking, base_model, force_reward)
        record.update({"reward_model": reward.to_dict()})
        spec = spec.scored_by(reward.champion_uri)
    key, previous = find_trained_version_task(spec, dataset, base_model, tracking)
    record.update({"training_key": key})
    if previous and previous["pending_evaluation"] and not force:  # trained and registered, then stopped
        record.update({"registered_model": previous["name"], "model_version": previous["version"],
                       "mlflow_run_id": previous["run_id"], "resumed_evaluation": True})
        evaluate_and_promote(spec, previous["name"], previous["version"], tracking, record)
    elif previous and not force:
        record.update({"status": "unchanged", "unchanged_version": previous, "registered_model": previous["name"],
                       "model_version": previous["version"], "mlflow_run_id": previous["run_id"],
                       "aliases": previous["aliases"]})
    else:
        _train_register_promote(spec, dataset, report, tracking, base_model, key, record)
