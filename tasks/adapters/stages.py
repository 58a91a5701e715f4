"""The pipeline's stages as plain functions over the domain and adapters. Prefect tasks wrap these
(`tasks/*_tasks.py`); single-stage CLI commands call them directly."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from expectations.reasoning_dataset import SuiteSpec, flatten_rows
from tasks.adapters import registry, tracking
from tasks.adapters.configs import load_framework, load_profile
from tasks.adapters.dataset_store import DatasetRef, read_rows, write_dataset
from tasks.adapters.gx_runner import ValidationReport, validate_frame
from tasks.adapters.models import base_model_source, base_provenance
from tasks.adapters.progress import tqdm_progress
from tasks.adapters.settings import Paths, resolve_path
from tasks.adapters.training import TrainingSummary, train_lora
from tasks.domain.blueprint import Blueprint
from tasks.domain.config import PipelineConfig, ValidationConfig, effective_training, flatten_params
from tasks.domain.errors import DataValidationError
from tasks.domain.expansion import build_dataset
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.records import Row


def generate_blueprint(framework: Framework, config: PipelineConfig, paths: Paths) -> Blueprint:
    """The configured generator's blueprint (LLM answers come from, and go to, the disk cache)."""
    from tasks.adapters.llm import blueprint_generator

    generator = blueprint_generator(config.dataset.generator, config.llm, paths.llm_cache, paths.registry_cache,
                                    tqdm_progress("blueprint (principles)", unit="principle"))
    return generator.generate(framework)


def expand_dataset(framework: Framework, blueprint: Blueprint, config: PipelineConfig, root: Path) -> DatasetRef:
    """Expand, dedup, split and write; the config hash covers everything that shapes the rows."""
    build = build_dataset(blueprint, seed=config.seed, eval_fraction=config.dataset.eval_fraction,
                          max_samples=config.dataset.max_samples, progress=tqdm_progress("expanding patterns"))
    config_hash = content_hash({"framework": framework.model_dump(mode="json"),
                                "dataset": config.dataset.model_dump(), "seed": config.seed})
    return write_dataset(build, blueprint, config_hash=config_hash, seed=config.seed, root=root)


def suite_spec(framework: Framework, validation: ValidationConfig) -> SuiteSpec:
    return SuiteSpec(max_answer_words=framework.style.max_answer_words,
                     min_answer_words=framework.style.min_answer_words,
                     banned_phrases=tuple(framework.style.banned_phrases),
                     final_principles=tuple(framework.final_principle_ids()), validation=validation)


def read_dataset_files(files: list[str]) -> list[tuple[str, int, Row]]:
    """Rows of every file with their file and line; malformed lines fail here, by line number."""
    return [(str(f), line, row) for f in files for line, row in read_rows(f)]


def validate_files(files: list[str], framework: Framework, validation: ValidationConfig, out_dir: Path) -> ValidationReport:
    """Validate train and eval files together (so a prompt in both counts as a duplicate)."""
    frame = flatten_rows(read_dataset_files(files))
    return validate_frame(frame, suite_spec(framework, validation), out_dir)


def require_valid(report: ValidationReport) -> None:
    if not report.success:
        docs = f" (Data Docs: {report.data_docs_index})" if report.data_docs_index else ""
        raise DataValidationError(f"dataset validation failed: {report.summary()}{docs}",
                                  report.failures, report.data_docs_index)


def training_corpus(rows: list[Row]) -> list[str]:
    """Text the tiny tokenizer learns from: every message of the dataset."""
    return [m.content for row in rows for m in row.messages]


def prepare_base_model(config: PipelineConfig, dataset: DatasetRef, paths: Paths, base_override: str | None = None) -> str:
    profile = load_profile(config.profile)
    rows = [row for _, _, row in read_dataset_files([dataset.train_path, dataset.eval_path])]
    return str(base_model_source(profile, training_corpus(rows), paths.models, base_override))


@dataclass
class TrainedAdapter:
    run_id: str
    experiment: str
    adapter_dir: str
    base_model: str
    summary: dict
    base_provenance: dict

    def to_dict(self) -> dict:
        return asdict(self)


def experiment_name(config: PipelineConfig, domain: str) -> str:
    return f"{config.tracking.experiment_prefix}-{domain}"


def registered_model_name(config: PipelineConfig, domain: str) -> str:
    return f"{config.tracking.registered_model_prefix}-{domain}"


def _dataset_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([{"id": r.id, "prompt": "\n".join(r.turns("user")), "answer": r.turns("assistant")[-1],
                          "principle": "/".join(r.metadata.principle_path)} for r in rows])


def train_and_track(config: PipelineConfig, dataset: DatasetRef, report: ValidationReport, base_model: str,
                    paths: Paths, tracking_uri: str, measure_eval_loss: bool = True) -> TrainedAdapter:
    """One MLflow run: params from the configs, dataset inputs, the GX result, per-step loss, then
    the trained adapter's summary and loss curve. `measure_eval_loss=False` skips the trainer's
    pass over the eval split, for callers that evaluate the model on that split anyway."""
    from tasks.adapters.plots import loss_curve

    profile = load_profile(config.profile)
    training = effective_training(profile, config)
    framework = load_framework(config.framework)
    train_rows = [r for _, _, r in read_dataset_files([dataset.train_path])]
    eval_rows = [r for _, _, r in read_dataset_files([dataset.eval_path])]
    adapter_dir = paths.adapters / dataset.domain / f"{dataset.sha256[:12]}-{content_hash(training.model_dump())[:8]}"
    tracking.use_store(tracking_uri)
    experiment = experiment_name(config, dataset.domain)
    tags = {"profile": profile.name, "domain": dataset.domain}
    if config.storage.backend == "s3":
        from tasks.adapters.s3_store import location

        tags["dataset.uri"] = location(config.storage, dataset.domain, dataset.sha256).uri
    with tracking.tracked_run(experiment, paths.mlflow_artifacts, run_name=f"{dataset.domain}-{profile.name}",
                              tags=tags) as run_id:
        tracking.log_params({**flatten_params("training", training), **flatten_params("dataset", config.dataset),
                             **flatten_params("model", profile.model_dump(exclude={"training"})),
                             "seed": str(config.seed), "framework": str(resolve_path(config.framework).name),
                             "framework.final_principles": str(len(framework.principles))})
        tracking.log_dataset(_dataset_frame(train_rows), source=dataset.train_path, sha256=dataset.sha256,
                             name=f"{dataset.domain}-{dataset.sha256[:12]}", context="training")
        tracking.log_dataset(_dataset_frame(eval_rows), source=dataset.eval_path, sha256=dataset.sha256,
                             name=f"{dataset.domain}-{dataset.sha256[:12]}-eval", context="eval")
        tracking.log_validation(Path(report.result_path).parent)
        tracking.log_params({f"base.{k}": str(v) for k, v in base_provenance(base_model).items()})
        tracking.log_blueprint_provenance(Path(dataset.blueprint_path))
        summary: TrainingSummary = train_lora(base_model, train_rows, eval_rows if measure_eval_loss else [],
                                              training, adapter_dir, sink=tracking.metrics_sink(),
                                              chat_format=profile.chat_format)
        tracking.log_metrics({f"final/{k}": v for k, v in summary.metrics().items()})
        tracking.log_dict({k: v for k, v in asdict(summary).items() if k != "history"}, "training_summary.json")
        tracking.log_image(loss_curve(summary.history, adapter_dir / "loss_curve.png",
                                      f"{dataset.domain} / {profile.name}: LoRA loss"))
    summary_dict = {k: v for k, v in asdict(summary).items() if k != "history"}
    return TrainedAdapter(run_id=run_id, experiment=experiment, adapter_dir=str(adapter_dir),
                          base_model=base_model, summary=summary_dict, base_provenance=base_provenance(base_model))


def training_key(config: PipelineConfig, dataset: DatasetRef, base_override: str | None = None) -> str:
    """What a trained adapter is a function of: the training data and every training/model
    setting. Equal keys mean retraining would reproduce the same adapter."""
    profile = load_profile(config.profile)
    return content_hash({"dataset_sha256": dataset.sha256, "training": effective_training(profile, config).model_dump(),
                         "model": profile.model_dump(exclude={"training"}), "base_override": base_override})


def find_trained_version(config: PipelineConfig, dataset: DatasetRef, key: str, tracking_uri: str) -> dict | None:
    """A registered version already trained with `key` whose evaluation succeeded, if any."""
    tracking.use_store(tracking_uri)
    found = registry.find_by_tag(registered_model_name(config, dataset.domain), TRAINING_KEY_TAG, key)
    usable = [v for v in found if v.tags.get("evaluation.status") == "succeeded"]
    if not usable:
        return None
    newest = registry.resolve(max(usable, key=lambda v: int(v.version)).uri)  # search results lack aliases
    return {"name": newest.name, "version": newest.version, "run_id": newest.run_id,
            "aliases": sorted(newest.aliases), "training_key": key}


@dataclass
class Registration:
    name: str
    version: str
    aliases: list[str]
    model_uri: str


TRAINING_KEY_TAG = "training_key"


def register_adapter(config: PipelineConfig, dataset: DatasetRef, trained: TrainedAdapter, paths: Paths,
                     tracking_uri: str, key: str = "") -> Registration:
    """Log the adapter as a pyfunc model in the training run and register it."""
    profile = load_profile(config.profile)
    framework = load_framework(config.framework)
    tracking.use_store(tracking_uri)
    with tracking.tracked_run(trained.experiment, paths.mlflow_artifacts, run_id=trained.run_id):
        model_uri = tracking.log_adapter_model(Path(trained.adapter_dir), base_source=trained.base_model,
                                               log_base=profile.log_base_model, system_prompt=framework.system_prompt)
    name = registered_model_name(config, dataset.domain)
    version, aliases = registry.register(model_uri, name, tags={
        "dataset_sha256": dataset.sha256, "dataset.eval_path": dataset.eval_path, "run_id": trained.run_id,
        "profile": profile.name, "framework": str(resolve_path(config.framework)), TRAINING_KEY_TAG: key})
    return Registration(name=name, version=version, aliases=aliases, model_uri=model_uri)
