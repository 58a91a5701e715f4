"""Load YAML into typed configs; every error names the file and the offending key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tasks.adapters.ops.settings import REPO_ROOT, resolve_path
from tasks.domain.config import (
    EvaluationConfig,
    HeldOutSet,
    ModelProfile,
    PipelineConfig,
    ProbeSet,
    StepProbeSet,
    apply_overrides,
)
from tasks.domain.errors import ConfigError
from tasks.domain.framework import Framework
from tasks.domain.run_spec import EvaluationSpec, RunSpec

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


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors())


def _validate(model: type[Model], data: dict[str, Any], source: Path) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_problems(error)}") from None


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


def resolve_run(config: PipelineConfig, framework: Framework | None = None,
                framework_path: str | Path | None = None) -> RunSpec:
    """Read every file the config names (framework, profile, probes, held-out questions), once,
    for a whole run. A `framework` given (with the file it was written to) replaces the config's:
    the stand-in for a user's own dataset."""
    if framework is None:
        framework_path = resolve_path(config.framework)
        framework = load_framework(framework_path)
    spec = RunSpec(config=config, framework=framework, framework_path=str(framework_path),
                   profile=load_profile(config.profile), evaluation=resolve_evaluation(config, framework))
    try:  # the profile's training section with the run's overrides: checked now, not at step 0
        spec.training  # noqa: B018 - evaluated for its validation
    except ValidationError as error:
        raise ConfigError(f"training ({spec.profile.name} profile + training_overrides): {_problems(error)}") from None
    try:  # ... and its refine section, so `--refine` with a bad override fails before the SFT hour
        spec.refine  # noqa: B018 - evaluated for its validation
    except ValidationError as error:
        raise ConfigError(f"refine ({spec.profile.name} profile + refine_overrides): {_problems(error)}") from None
    # one profile may list every framework: a domain does not borrow its own answers
    borrowed = [load_framework(path) for path in spec.reward.borrowed_frameworks]
    return spec.model_copy(update={"borrowed_frameworks": [b for b in borrowed if b.domain != framework.domain]})


def resolve_evaluation(config: PipelineConfig, framework: Framework) -> EvaluationSpec:
    """The evaluation settings with the probes and the framework domain's held-out questions."""
    return EvaluationSpec(settings=config.evaluation, framework=framework,
                          probes=load_model(ProbeSet, config.evaluation.probes),
                          heldout=load_heldout(config.evaluation, framework.domain),
                          step_probes=load_step_probes(config.evaluation, framework.domain), slot=config.device_slot)


def _domain_file(directory: str, domain: str, model, what: str):
    """`<directory>/<domain>.yaml` read as `model`, or None when the domain has none."""
    path = resolve_path(directory) / f"{domain}.yaml"
    if not path.is_file():
        return None
    loaded = load_model(model, path)
    if loaded.domain != domain:
        raise ConfigError(f"{path}: {what} is for domain {loaded.domain!r}, not {domain!r}")
    return loaded


def load_heldout(cfg: EvaluationConfig, domain: str) -> HeldOutSet | None:
    """The domain's held-out questions (`<heldout_dir>/<domain>.yaml`), or None when it has none."""
    return _domain_file(cfg.heldout_dir, domain, HeldOutSet, "held-out set")


def load_step_probes(cfg: EvaluationConfig, domain: str) -> StepProbeSet | None:
    """The domain's hand-written step checks (`<step_probes_dir>/<domain>.yaml`), or None."""
    return _domain_file(cfg.step_probes_dir, domain, StepProbeSet, "step probe set")


def load_profile(name_or_path: str) -> ModelProfile:
    """A profile by name (configs/profiles/NAME.yaml) or by path."""
    candidate = PROFILES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return load_model(ModelProfile, candidate)
    if not resolve_path(name_or_path).is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown profile {name_or_path!r}: known profiles are {known} (or give a YAML path)")
    return load_model(ModelProfile, name_or_path)
