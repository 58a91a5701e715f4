"""Prefect tasks for the model stages: base model, LoRA training (tracked), registration."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from tasks.adapters import stages
from tasks.adapters.dataset_store import DatasetRef
from tasks.adapters.gx_runner import ValidationReport
from tasks.adapters.settings import paths
from tasks.domain.config import PipelineConfig

TRAINING_SLOT = "training"  # global concurrency limit name: one training on the device at a time


@task(name="prepare-base-model", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def prepare_base_model_task(config: PipelineConfig, dataset: DatasetRef, base_override: str | None = None) -> str:
    return stages.prepare_base_model(config, dataset, paths(), base_override)


@task(name="train-adapter", cache_policy=NO_CACHE)
def train_adapter_task(config: PipelineConfig, dataset: DatasetRef, report: ValidationReport, base_model: str,
                       tracking_uri: str) -> stages.TrainedAdapter:
    # Non-strict: without a configured limit (a plain `make run`) this only logs; `make up` creates it.
    with concurrency(TRAINING_SLOT, occupy=1, strict=False):
        return stages.train_and_track(config, dataset, report, base_model, paths(), tracking_uri)


@task(name="register-adapter", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def register_adapter_task(config: PipelineConfig, dataset: DatasetRef, trained: stages.TrainedAdapter,
                          tracking_uri: str) -> stages.Registration:
    return stages.register_adapter(config, dataset, trained, paths(), tracking_uri)
