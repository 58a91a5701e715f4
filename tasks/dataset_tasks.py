"""Prefect tasks for the dataset stages: thin wrappers over `tasks.adapters.stages`."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.adapters import stages
from tasks.adapters.configs import load_framework
from tasks.adapters.dataset_store import DatasetRef
from tasks.adapters.gx_runner import ValidationReport
from tasks.domain.blueprint import Blueprint
from tasks.domain.config import PipelineConfig
from tasks.domain.framework import Framework

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10]}


@task(name="load-framework", cache_policy=NO_CACHE, **IO_RETRIES)
def load_framework_task(path: str) -> Framework:
    return load_framework(path)


@task(name="generate-blueprint", cache_policy=NO_CACHE)
def generate_blueprint_task(framework: Framework, generator: str) -> Blueprint:
    return stages.generate_blueprint(framework, generator)


@task(name="expand-dataset", cache_policy=NO_CACHE, **IO_RETRIES)
def expand_dataset_task(framework: Framework, blueprint: Blueprint, config: PipelineConfig, root: str) -> DatasetRef:
    return stages.expand_dataset(framework, blueprint, config, Path(root))


@task(name="validate-dataset", cache_policy=NO_CACHE)
def validate_dataset_task(dataset: DatasetRef, framework: Framework, config: PipelineConfig, out_dir: str) -> ValidationReport:
    return stages.validate_files([dataset.train_path, dataset.eval_path], framework, config.validation, Path(out_dir))
