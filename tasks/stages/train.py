"""Stage: base model -> LoRA adapter (one tracked MLflow run) -> registered version. Also the
training key that lets an unchanged nightly skip all of it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.adapters.data.dataset_store import DatasetRef, read_dataset_files
from tasks.adapters.data.gx_runner import ValidationReport
from tasks.adapters.model.base_models import base_model_source, base_provenance
from tasks.adapters.model.training import CHECKPOINTS, TrainingSummary, train_lora
from tasks.adapters.ops.atomic_files import publish_directory, staging_dir
from tasks.adapters.ops.settings import Paths
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import flatten_params
from tasks.domain.hashing import content_hash
from tasks.domain.records import Row, require_metadata, training_corpus
from tasks.domain.run_spec import RunSpec


def prepare_base_model(spec: RunSpec, dataset: DatasetRef, paths: Paths, base_override: str | None = None) -> str:
    rows = [row for _, _, row in read_dataset_files([dataset.train_path, dataset.eval_path])]
    return str(base_model_source(spec.profile, training_corpus(rows), paths.models, base_override))


@dataclass
class TrainedAdapter:
    run_id: str
    experiment: str
    adapter_dir: str
    base_model: str
    summary: dict
    base_provenance: dict
    lineage: dict[str, str] = field(default_factory=dict)  # what the registered version is tagged with (its SFT parent)

    def to_dict(self) -> dict:
        return asdict(self)


def _dataset_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame([{"id": r.id, "prompt": "\n".join(r.turns("user")), "answer": r.turns("assistant")[-1],
                          "principle": "/".join(r.metadata.principle_path)} for r in rows])


def train_and_track(spec: RunSpec, dataset: DatasetRef, report: ValidationReport, base_model: str,
                    paths: Paths, tracking: Tracking, measure_eval_loss: bool = True) -> TrainedAdapter:
    """One MLflow run: params from the configs, dataset inputs, the GX result, per-step loss, then
    the trained adapter's summary and loss curve. `measure_eval_loss=False` skips the trainer's
    pass over the eval split, for callers that evaluate the model on that split anyway."""
    from tasks.adapters.tracking.plots import loss_curve

    config, profile, training, framework = spec.config, spec.profile, spec.training, spec.framework
    located = read_dataset_files([dataset.train_path, dataset.eval_path])
    require_metadata(located, "training")
    train_rows = [r for file, _, r in located if file == dataset.train_path]
    eval_rows = [r for file, _, r in located if file == dataset.eval_path]
    adapter_dir = paths.adapters / dataset.domain / f"{dataset.sha256[:12]}-{content_hash(training.model_dump())[:8]}"
    # trained in a staging directory keyed like the adapter: a killed attempt's checkpoints are
    # picked up by the next attempt with the same data and settings, and by nothing else
    work_dir = staging_dir(adapter_dir)
    experiment = config.tracking.experiment(dataset.domain)
    tags = {"profile": profile.name, "domain": dataset.domain}
    if config.storage.backend == "s3":
        from tasks.adapters.data.s3_store import location

        tags["dataset.uri"] = location(config.storage, dataset.domain, dataset.sha256).uri
    with tracking.run(experiment, run_name=f"{dataset.domain}-{profile.name}", tags=tags) as run:
        run.log_params({**flatten_params("training", training), **flatten_params("dataset", config.dataset),
                             **flatten_params("model", profile.model_dump(exclude={"training"})),
                             "seed": str(config.seed), "framework": Path(spec.framework_path).name,
                             "framework.final_principles": str(len(framework.principles))})
        run.log_dataset(_dataset_frame(train_rows), source=dataset.train_path, sha256=dataset.sha256,
                             name=f"{dataset.domain}-{dataset.sha256[:12]}", context="training")
        run.log_dataset(_dataset_frame(eval_rows), source=dataset.eval_path, sha256=dataset.sha256,
                             name=f"{dataset.domain}-{dataset.sha256[:12]}-eval", context="eval")
        run.log_validation(Path(report.result_path).parent)
        run.log_metrics({f"validation/{k}": v for k, v in report.contamination.items()})
        run.log_params({f"base.{k}": str(v) for k, v in base_provenance(base_model).items()})
        run.log_blueprint_provenance(Path(dataset.blueprint_path))
        summary: TrainingSummary = train_lora(base_model, train_rows, eval_rows if measure_eval_loss else [],
                                              training, work_dir, sink=run.metrics_sink(),
                                              chat_format=profile.chat_format)
        run.log_metrics({f"final/{k}": v for k, v in summary.metrics().items()})
        run.log_dict({k: v for k, v in asdict(summary).items() if k != "history"}, "training_summary.json")
        run.log_image(loss_curve(summary.history, work_dir / "loss_curve.png",
                                 f"{dataset.domain} / {profile.name}: LoRA loss"))
        publish_directory(work_dir, adapter_dir, leave_out=(CHECKPOINTS,))
    summary_dict = {k: v for k, v in asdict(summary).items() if k != "history"}
    return TrainedAdapter(run_id=run.run_id, experiment=experiment, adapter_dir=str(adapter_dir),
                          base_model=base_model, summary=summary_dict, base_provenance=base_provenance(base_model))


def training_key(spec: RunSpec, dataset: DatasetRef, base_override: str | None = None) -> str:
    """What a trained adapter is a function of: the training data and every training/model
    setting. Equal keys mean retraining would reproduce the same adapter."""
    refine = spec.refine
    refinement = {"refine": refine.model_dump(), "preferences": spec.config.preferences.model_dump()} if refine.enabled else {}
    return content_hash({"dataset_sha256": dataset.sha256, "training": spec.training.model_dump(),
                         "model": spec.profile.model_dump(exclude={"training", "refine"}), "base_override": base_override,
                         **refinement})


TRAINING_KEY_TAG = "training_key"


def find_trained_version(spec: RunSpec, dataset: DatasetRef, key: str, tracking: Tracking) -> dict | None:
    """The newest registered version already trained with `key` whose evaluation succeeded or
    never finished (`pending_evaluation`: the run that registered it was stopped while evaluating,
    so the next run evaluates it instead of training it again). None: train."""
    registry = tracking.registry
    found = registry.find_by_tag(spec.config.tracking.registered_model(dataset.domain), TRAINING_KEY_TAG, key)
    usable = [v for v in found if v.tags.get("evaluation.status") in ("succeeded", None)]
    if not usable:
        return None
    newest = registry.resolve(max(usable, key=lambda v: int(v.version)).uri)  # search results lack aliases
    return {"name": newest.name, "version": newest.version, "run_id": newest.run_id,
            "aliases": sorted(newest.aliases), "training_key": key,
            "pending_evaluation": newest.tags.get("evaluation.status") is None}


@dataclass
class Registration:
    name: str
    version: str
    aliases: list[str]
    model_uri: str


def register_adapter(spec: RunSpec, dataset: DatasetRef, trained: TrainedAdapter, tracking: Tracking,
                     key: str = "") -> Registration:
    """Log the adapter as a pyfunc model in the training run and register it."""
    profile = spec.profile
    with tracking.resume(trained.run_id) as run:
        model_uri = run.log_adapter_model(Path(trained.adapter_dir), base_source=trained.base_model,
                                               log_base=profile.log_base_model, system_prompt=spec.framework.system_prompt,
                                               grounding=spec.grounding)
    name = spec.config.tracking.registered_model(dataset.domain)
    version, aliases = tracking.registry.register(model_uri, name, tags={
        "dataset_sha256": dataset.sha256, "dataset.eval_path": dataset.eval_path, "run_id": trained.run_id,
        "profile": profile.name, "framework": spec.framework_path, TRAINING_KEY_TAG: key, **trained.lineage})
    return Registration(name=name, version=version, aliases=aliases, model_uri=model_uri)
