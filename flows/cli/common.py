"""What the command groups share: the pipeline config options, environment set-up, and how a
command finds the model it should answer with."""
from __future__ import annotations

import click

DEFAULT_CONFIG = "configs/pipeline.yaml"


def run_overrides(framework: str | None, profile: str | None, max_steps: int | None, max_samples: int | None,
               device: str | None) -> dict:
    overrides: dict = {}
    if framework:
        overrides["framework"] = framework
    if profile:
        overrides["profile"] = profile
    if max_samples is not None:
        overrides["dataset.max_samples"] = max_samples
    training = {}
    if max_steps is not None:
        training["max_steps"] = max_steps
    if device:
        training["device"] = device
    if training:
        overrides["training_overrides"] = training
    return overrides


def setup() -> None:
    from flows.environment import quiet_offline_defaults

    quiet_offline_defaults()


config_option = click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                             help="Pipeline YAML (configs/pipeline.yaml).")


framework_option = click.option("--framework", help="Framework YAML; overrides the config's `framework`.")


profile_option = click.option("--profile", help="Model profile: smollm2-135m | tiny | mistral-7b-instruct | a YAML path.")


max_steps_option = click.option("--max-steps", type=int, help="Optimizer steps (overrides the profile).")


max_samples_option = click.option("--max-samples", type=int, help="Cap on dataset rows (0 = all).")


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Training device.")


def registered_generator(model_uri: str):
    """Base + adapter of a registered version, from the configured MLflow store."""
    from tasks.adapters import tracking
    from tasks.adapters.inference import load_registered_generator
    from tasks.adapters.settings import paths, tracking_uri

    tracking.use_store(tracking_uri())
    return load_registered_generator(model_uri, paths().registry_cache)


def champion_uri(config_path: str) -> str:
    """The configured domain's champion: what `chat` and `serve` answer with when not told otherwise."""
    from tasks.adapters import registry, tracking
    from tasks.adapters.settings import tracking_uri
    from tasks.domain.errors import RslmError

    name = model_name(None, config_path)
    tracking.use_store(tracking_uri())
    if registry.version_for_alias(name, registry.CHAMPION) is None:
        raise RslmError(f"{name} has no @champion yet: run `make run` (or `rslm pipeline`), or pass --model/--adapter")
    return f"models:/{name}@{registry.CHAMPION}"


def model_name(name: str | None, config_path: str) -> str:
    """NAME as given, else the registered model of the configured framework's domain."""
    if name:
        return name
    from tasks.adapters.configs import load_framework, load_pipeline_config

    config = load_pipeline_config(config_path)
    return config.tracking.registered_model(load_framework(config.framework).domain)
