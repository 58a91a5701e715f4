"""Resolving what a run is about, in one place for the flows and the CLI. No Prefect import here:
the CLI resolves (and fails on a bad file) before any server starts."""
from __future__ import annotations

from tasks.adapters.ops.config_files import resolve_run
from tasks.adapters.ops.settings import paths
from tasks.domain.config import PipelineConfig
from tasks.domain.run_spec import RunSpec
from tasks.stages.build_dataset import imported_framework_for


def resolve_pipeline(config: PipelineConfig) -> RunSpec:
    """The run's spec with the config's framework or, for a user's own dataset (`dataset.source`),
    the stand-in framework built from it and the config's `dataset.imported` settings."""
    if not config.dataset.source:
        return resolve_run(config)
    framework, path = imported_framework_for(config.dataset.source, config.dataset.imported, paths())
    return resolve_run(config, framework, path)
