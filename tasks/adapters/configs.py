"""Load YAML into typed configs; every error names the file and the offending key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.adapters.settings import REPO_ROOT, resolve_path
from tasks.domain.config import ModelProfile, PipelineConfig, apply_overrides
from tasks.domain.errors import ConfigError
from tasks.domain.framework import Framework
from tasks.domain.run_spec import RunSpec

Model = TypeVar("Model", bound=BaseModel)
PIPELINE_CONFIG = "configs/pipeline.yaml"
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _validate(model: type[Model], data: dict[str, Any], source: Path) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{source}: {problems}") from None


def load_model(model: type[Model], path: str | Path, overrides: dict[str, Any] | None = None) -> Model:
    source = resolve_path(path)
    return _validate(model, apply_overrides(read_yaml(source), overrides or {}), source)


def load_framework(path: str | Path) -> Framework:
    return load_model(Framework, path)


STORAGE_ENV = {"RSLM_S3_BUCKET": "storage.bucket", "RSLM_S3_PREFIX": "storage.prefix",
               "RSLM_S3_ENDPOINT_URL": "storage.endpoint_url", "RSLM_S3_REGION": "storage.region"}


def environment_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """RSLM_S3_* variables; setting the bucket alone switches storage to S3.

    >>> environment_overrides({"RSLM_S3_BUCKET": "b", "HOME": "/root"})
    {'storage.bucket': 'b', 'storage.backend': 's3'}
    """
    found: dict[str, Any] = {key: environ[var] for var, key in STORAGE_ENV.items() if environ.get(var)}
    if "storage.bucket" in found:
        found["storage.backend"] = "s3"
    return found


def load_pipeline_config(path: str | Path = PIPELINE_CONFIG, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """defaults < YAML < RSLM_S3_* environment < `overrides` (CLI flags, flow parameters)."""
    return load_model(PipelineConfig, path, {**environment_overrides(dict(os.environ)), **(overrides or {})})


def resolve_run(config: PipelineConfig) -> RunSpec:
    """Read the framework and profile the config names, once, for a whole run."""
    framework_path = resolve_path(config.framework)
    return RunSpec(config=config, framework=load_framework(framework_path), framework_path=str(framework_path),
                   profile=load_profile(config.profile))


def load_profile(name_or_path: str) -> ModelProfile:
    """A profile by name (configs/profiles/NAME.yaml) or by path."""
    candidate = PROFILES_DIR / f"{name_or_path}.yaml"
    return load_model(ModelProfile, candidate if candidate.is_file() else name_or_path)
