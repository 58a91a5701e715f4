"""What the command groups share: the pipeline config options, environment set-up, and how a
command finds the model it should answer with."""
from __future__ import annotations

import click

DEFAULT_CONFIG = "configs/pipeline.yaml"


def run_overrides(framework: str | None, profile: str | None, max_steps: int | None, max_samples: int | None,
               device: str | None, nproc_per_node: int | None = None) -> dict:
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
    if nproc_per_node is not None:
        training["distributed"] = {"nproc_per_node": nproc_per_node}
    if training:
        overrides["training_overrides"] = training
    return overrides


def setup(flows: bool = False) -> None:
    """Environment defaults; `flows` for the commands that run Prefect flows (see `start_flows`)."""
    from flows.environment import quiet_offline_defaults

    quiet_offline_defaults()
    if flows:
        start_flows()


def start_flows() -> None:
    """Before a command runs flows: stop the Prefect servers killed runs left behind, start this
    command's own (unless a stack runs), and keep console errors to one line."""
    from flows.environment import brief_console_errors, stop_leftover_servers, temporary_prefect_server

    stop_leftover_servers()
    temporary_prefect_server()
    brief_console_errors()


config_option = click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
                             help="Pipeline YAML (configs/pipeline.yaml).")


framework_option = click.option("--framework", help="Framework YAML; overrides the config's `framework`.")


profile_option = click.option("--profile", help="Model profile: smollm2-135m | tiny | mistral-7b-instruct | a YAML path.")


max_steps_option = click.option("--max-steps", type=int, help="Optimizer steps (overrides the profile).")


max_samples_option = click.option("--max-samples", type=int, help="Cap on dataset rows (0 = all).")


nproc_option = click.option(
    "--nproc-per-node", type=click.IntRange(min=1),
    help="Training processes on this machine (DDP through torchrun: one per GPU, or CPU ranks on gloo); "
         "overrides training.distributed.nproc_per_node. The global batch grows with it.")


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Training device.")


def registered_generator(model_uri: str):
    """Base + adapter of a registered version, from the configured MLflow store."""
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.tracking.runs import Tracking

    return Tracking.configured().registry.load_generator(model_uri, paths().registry_cache)


def champion_uri(config_path: str) -> str:
    """The configured domain's champion: what `chat` and `serve` answer with when not told otherwise."""
    from tasks.adapters.tracking.registry import CHAMPION
    from tasks.adapters.tracking.runs import Tracking
    from tasks.domain.errors import RslmError

    name = model_name(None, config_path)
    if Tracking.configured().registry.version_for_alias(name, CHAMPION) is None:
        raise RslmError(f"{name} has no @champion yet: run `make run` (or `rslm pipeline`), or pass --model/--adapter")
    return f"models:/{name}@{CHAMPION}"


def model_name(name: str | None, config_path: str) -> str:
    """NAME as given, else the registered model of the configured framework's domain."""
    if name:
        return name
    from tasks.adapters.ops.config_files import load_framework, load_pipeline_config

    config = load_pipeline_config(config_path)
    return config.tracking.registered_model(load_framework(config.framework).domain)


def reward_model_uri(config_path: str, given: str | None = None) -> str:
    """The process reward model to score with: as given, else the configured domain's champion."""
    if given:
        return given
    from tasks.adapters.ops.config_files import load_framework, load_pipeline_config
    from tasks.adapters.tracking.registry import CHAMPION
    from tasks.adapters.tracking.runs import Tracking
    from tasks.domain.errors import RslmError

    config = load_pipeline_config(config_path)
    name = config.tracking.reward_model(load_framework(config.framework).domain)
    if Tracking.configured().registry.version_for_alias(name, CHAMPION) is None:
        raise RslmError(f"{name} has no @champion yet: the pipeline trains one where the profile's reward.enabled "
                        "is true (pass --reward-model to name another)")
    return f"models:/{name}@{CHAMPION}"


def registered_scorer(model_uri: str):
    """A registered process reward model, from the configured MLflow store."""
    from tasks.adapters.ops.settings import paths
    from tasks.adapters.tracking.runs import Tracking

    return Tracking.configured().registry.load_reward_scorer(model_uri, paths().registry_cache)
