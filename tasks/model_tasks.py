"""Prefect tasks for the model stages: base model, LoRA training (tracked), registration."""
from __future__ import annotations

from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.adapters.data.dataset_store import DatasetRef
from tasks.adapters.data.gx_runner import ValidationReport
from tasks.adapters.ops.settings import paths
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import DeviceSlotConfig
from tasks.domain.run_spec import RunSpec
from tasks.retry_policy import SERVICE_RETRIES
from tasks.stages import refine as refine_stage
from tasks.stages import reward as reward_stage
from tasks.stages import train as stage
from tasks.stages.build_preferences import PreferenceSet, build_preferences


@contextmanager
def named_slot(policy: DeviceSlotConfig, name: str | None = None):
    """A slot held by this flow run: this machine's device (no name), or a fleet-wide one of its own
    (see `device_slot`)."""
    from prefect.runtime import flow_run

    from tasks.adapters.ops.prefect_admin import device_slot

    with device_slot(policy, flow_run.get_id(), get_run_logger().info, name=name):
        yield


def training_slot(policy: DeviceSlotConfig):
    """The device, held for this flow run."""
    return named_slot(policy)


def registry_slot(policy: DeviceSlotConfig, model_name: str):
    """One registration or alias move of `model_name` at a time, across every machine sharing the
    Prefect server: MLflow numbers a new version max(version) + 1, so two at once can collide, and
    two promotions at once could each see the other's champion as current. A slot of its own,
    `registry:<model>`, held only for the registry calls (seconds), never for a training."""
    return named_slot(policy, f"registry:{model_name}")


def domain_slot(policy: DeviceSlotConfig, domain: str):
    """One nightly-retrain run per domain at a time, fleet-wide (`domain:<name>`): runs of one
    deployment fanned out to several workers may overlap only across domains."""
    return named_slot(policy, f"domain:{domain}")


@task(name="prepare-base-model", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_jitter_factor=0.5)
def prepare_base_model_task(spec: RunSpec, dataset: DatasetRef, base_override: str | None = None) -> str:
    return stage.prepare_base_model(spec, dataset, paths(), base_override)


@task(name="train-adapter", cache_policy=NO_CACHE)
def train_adapter_task(spec: RunSpec, dataset: DatasetRef, report: ValidationReport, base_model: str,
                       tracking: Tracking, measure_eval_loss: bool = True) -> stage.TrainedAdapter:
    with training_slot(spec.config.device_slot):
        return stage.train_and_track(spec, dataset, report, base_model, paths(), tracking, measure_eval_loss)


@task(name="register-adapter", cache_policy=NO_CACHE, **SERVICE_RETRIES)
def register_adapter_task(spec: RunSpec, dataset: DatasetRef, trained: stage.TrainedAdapter,
                          tracking: Tracking, key: str = "") -> stage.Registration:
    with registry_slot(spec.config.device_slot, spec.config.tracking.registered_model(dataset.domain)):
        return stage.register_adapter(spec, dataset, trained, tracking, key)


@task(name="find-trained-version", cache_policy=NO_CACHE, **SERVICE_RETRIES)
def find_trained_version_task(spec: RunSpec, dataset: DatasetRef, base_override: str | None,
                              tracking: Tracking) -> tuple[str, dict | None]:
    """The training key, and the registered version already trained with it (None: train)."""
    key = stage.training_key(spec, dataset, base_override)
    return key, stage.find_trained_version(spec, dataset, key, tracking)


@task(name="reconcile-interrupted-runs", cache_policy=NO_CACHE, **SERVICE_RETRIES)
def reconcile_interrupted_runs_task(tracking: Tracking, experiment: str) -> list[str]:
    """The tracking server answers (else the run stops here, in one line); MLflow runs that an
    earlier, killed attempt left RUNNING are marked KILLED, with the reason."""
    tracking.check_reachable()
    killed = tracking.reconcile_dead_runs(experiment)
    for run_id in killed:
        get_run_logger().warning(f"MLflow run {run_id} was left RUNNING by a process that is gone: marked KILLED")
    return killed


@task(name="build-preferences", cache_policy=NO_CACHE)
def build_preferences_task(spec: RunSpec, dataset: DatasetRef) -> PreferenceSet:
    return build_preferences(dataset, spec.framework, spec.config, paths().preferences, spec.evaluation.heldout)


@task(name="refine-adapter", cache_policy=NO_CACHE)
def refine_adapter_task(spec: RunSpec, dataset: DatasetRef, trained: stage.TrainedAdapter, preferences: PreferenceSet,
                        tracking: Tracking) -> stage.TrainedAdapter:
    with training_slot(spec.config.device_slot):
        return refine_stage.refine_and_track(spec, dataset, trained, preferences, paths(), tracking)


@task(name="sample-on-policy-answers", cache_policy=NO_CACHE)
def sample_on_policy_task(spec: RunSpec, dataset: DatasetRef, tracking: Tracking) -> reward_stage.OnPolicyAnswers | None:
    with training_slot(spec.config.device_slot):  # generation holds the device as training does
        return reward_stage.sample_on_policy(spec, dataset, tracking, paths().registry_cache, get_run_logger().info)


@task(name="build-step-labels", cache_policy=NO_CACHE)
def build_step_data_task(spec: RunSpec, dataset: DatasetRef,
                         on_policy: reward_stage.OnPolicyAnswers | None = None) -> reward_stage.StepSet:
    return reward_stage.build_step_data(dataset, spec.config, spec.reward, spec.framework, paths().step_labels,
                                        spec.evaluation.heldout, borrowed=spec.borrowed_frameworks, on_policy=on_policy)


@task(name="find-reward-model", cache_policy=NO_CACHE, **SERVICE_RETRIES)
def find_reward_model_task(spec: RunSpec, dataset: DatasetRef, steps: reward_stage.StepSet, base_override: str | None,
                           tracking: Tracking) -> tuple[str, reward_stage.RewardModel | None]:
    """The reward model's key, and the registered version already trained with it (None: train)."""
    key = reward_stage.reward_key(spec, steps, base_override)
    return key, reward_stage.find_reward_model(spec, dataset.domain, key, tracking)


@task(name="train-reward-model", cache_policy=NO_CACHE)
def train_reward_model_task(spec: RunSpec, dataset: DatasetRef, steps: reward_stage.StepSet, base_model: str,
                            tracking: Tracking) -> reward_stage.TrainedReward:
    with training_slot(spec.config.device_slot):
        return reward_stage.train_and_measure(spec, dataset, steps, base_model, paths(), tracking, get_run_logger().info)


@task(name="register-reward-model", cache_policy=NO_CACHE)
def register_reward_model_task(spec: RunSpec, dataset: DatasetRef, trained: reward_stage.TrainedReward,
                               tracking: Tracking, key: str) -> reward_stage.RewardModel:
    with registry_slot(spec.config.device_slot, spec.config.tracking.reward_model(dataset.domain)):
        return reward_stage.register_and_gate(spec, dataset, trained, tracking, key)


@task(name="export-model", cache_policy=NO_CACHE)
def export_model_task(spec: RunSpec, model_uri: str, formats: list[str], tracking: Tracking) -> dict:
    """Merge, GGUF and Modelfile for a registered version, each checked; holds the device slot
    (merging and answering the check questions use the whole CPU)."""
    from tasks.stages.export import export_version

    with training_slot(spec.config.device_slot):
        return export_version(spec, model_uri, formats, None, paths(), tracking).to_dict()
