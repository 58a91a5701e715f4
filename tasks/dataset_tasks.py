"""Prefect tasks for the dataset stages: thin wrappers over `tasks.stages.build_dataset`.

Blueprint, expansion and validation are cached by content (Prefect result persistence under
PREFECT_HOME/storage): an unchanged framework, generator and dataset config reuse the previous
blueprint and dataset; an unchanged dataset reuses its validation. `force` refreshes them."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.adapters.data.dataset_store import DatasetRef, file_sha256
from tasks.adapters.data.gx_runner import ValidationReport
from tasks.adapters.ops.settings import paths
from tasks.domain.blueprint import Blueprint
from tasks.domain.config import HeldOutSet, PipelineConfig
from tasks.domain.framework import Framework
from tasks.domain.hashing import content_hash
from tasks.domain.llm_blueprint import PROMPT_VERSION as LLM_PROMPT_VERSION
from tasks.retry_policy import SERVICE_RETRIES
from tasks.stages import build_dataset as stage

CACHED = {"persist_result": True, "cache_expiration": None}


def blueprint_key(context, parameters) -> str:
    """Framework content + generator (+ its LLM settings): what a blueprint is a function of."""
    config: PipelineConfig = parameters["config"]
    generator = config.dataset.generator
    return "blueprint-" + content_hash({
        "framework": parameters["framework"].model_dump(mode="json"), "generator": generator,
        "llm": None if generator == "offline" else config.llm.model_dump(), "prompt": LLM_PROMPT_VERSION})


def dataset_key(context, parameters) -> str:
    """Blueprint digest + dataset config + seed (+ framework, which names the domain and style)."""
    config: PipelineConfig = parameters["config"]
    return "dataset-" + content_hash({"blueprint": parameters["blueprint"].digest(),
                                      "framework": parameters["framework"].model_dump(mode="json"),
                                      "dataset": config.dataset.model_dump(), "seed": config.seed,
                                      "root": parameters["root"]})


def validation_key(context, parameters) -> str:
    """Both files' bytes + the suite's inputs: the same data under the same rules."""
    dataset: DatasetRef = parameters["dataset"]
    config: PipelineConfig = parameters["config"]
    return "validation-" + content_hash({
        "train": file_sha256(dataset.train_path), "eval": file_sha256(dataset.eval_path),
        "suite": repr(stage.suite_spec(parameters["framework"], config.validation, parameters.get("heldout"))),
        "out": parameters["out_dir"]})


@task(name="generate-blueprint", cache_key_fn=blueprint_key, **CACHED)
def generate_blueprint_task(framework: Framework, config: PipelineConfig) -> Blueprint:
    return stage.generate_blueprint(framework, config, paths())


@task(name="expand-dataset", cache_key_fn=dataset_key, **CACHED, **SERVICE_RETRIES)
def expand_dataset_task(framework: Framework, blueprint: Blueprint, config: PipelineConfig, root: str) -> DatasetRef:
    return stage.expand_dataset(framework, blueprint, config, Path(root))


@task(name="import-dataset", cache_policy=NO_CACHE)
def import_dataset_task(framework: Framework, config: PipelineConfig, root: str) -> DatasetRef:
    """A user's own dataset (`dataset.source`); an identical import reuses its directory."""
    return stage.import_dataset(framework, config, Path(root))


@task(name="validate-dataset", cache_key_fn=validation_key, **CACHED)
def validate_dataset_task(dataset: DatasetRef, framework: Framework, config: PipelineConfig, out_dir: str,
                          heldout: HeldOutSet | None = None) -> ValidationReport:
    return stage.validate_files([dataset.train_path, dataset.eval_path], framework, config.validation, Path(out_dir),
                                heldout)


@task(name="write-dataset-card", cache_policy=NO_CACHE)
def write_dataset_card_task(dataset: DatasetRef, report: ValidationReport, config: PipelineConfig) -> str:
    return stage.write_card(dataset, report, config)


@task(name="publish-dataset", cache_policy=NO_CACHE)
def publish_dataset_task(dataset: DatasetRef, config: PipelineConfig) -> str:
    """Upload a validated dataset to S3 (a no-op when already there); returns its s3:// URI.
    botocore retries each call with backoff; after that the run stops with the local copy intact."""
    from tasks.adapters.data.s3_store import S3DatasetStore

    return S3DatasetStore(config.storage).upload(dataset).uri
