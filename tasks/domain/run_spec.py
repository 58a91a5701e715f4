"""What one pipeline run is about, resolved once at the start of the flow and passed to every
stage. Stages never re-read a YAML file by name, so a framework or profile edited during a
long run cannot make registration disagree with training (a different system prompt, say)."""
from __future__ import annotations

from pydantic import Field

from tasks.domain.config import (
    DeviceSlotConfig,
    EvaluationConfig,
    HeldOutSet,
    ModelProfile,
    PipelineConfig,
    ProbeSet,
    RefineConfig,
    RewardConfig,
    StepProbeSet,
    TrainingConfig,
    effective_refine,
    effective_reward,
    effective_training,
)
from tasks.domain.framework import Framework
from tasks.domain.frozen import Frozen
from tasks.domain.grounding import Grounding, framework_grounding


class EvaluationSpec(Frozen):
    """What a version is measured with: the evaluation settings, the framework its answers are
    judged by, the drift probes and the domain's held-out questions (None: the domain has none)."""

    settings: EvaluationConfig
    framework: Framework
    probes: ProbeSet
    heldout: HeldOutSet | None = None
    step_probes: StepProbeSet | None = None  # hand-written step checks for the reward model (None: the domain has none)
    slot: DeviceSlotConfig = DeviceSlotConfig()  # evaluation runs models on the device too
    # The process reward model that scores the held-out answers' steps (`models:/NAME/VERSION`);
    # None: no step reward is measured.
    reward_model: str | None = None


class RunSpec(Frozen):
    config: PipelineConfig
    framework: Framework
    framework_path: str  # as resolved: recorded on the registered version
    profile: ModelProfile
    evaluation: EvaluationSpec  # read with the rest, so a missing probe file fails the run before training
    # The reward model's `borrowed_frameworks` other than this run's own domain, read with the rest.
    borrowed_frameworks: list[Framework] = Field(default_factory=list)

    @property
    def training(self) -> TrainingConfig:
        """The profile's training section with its overrides for this domain and the run's applied."""
        return effective_training(self.profile, self.config, self.framework.domain)

    @property
    def refine(self) -> RefineConfig:
        """The profile's preference-refinement (DPO) section with the run's overrides applied."""
        return effective_refine(self.profile, self.config)

    @property
    def grounding(self) -> Grounding | None:
        """How the run's rows are asked, and so how its model must be: grounded in the framework's
        principles, or closed-book (None; always for a user's imported rows, which keep their turns)."""
        if self.config.dataset.source:
            return None
        return framework_grounding(self.framework, self.config.dataset.grounding_passages)

    def scored_by(self, reward_model: str | None) -> RunSpec:
        """This spec with held-out answers scored by `reward_model` in evaluation."""
        return self.model_copy(update={"evaluation": self.evaluation.model_copy(update={"reward_model": reward_model})})

    @property
    def reward(self) -> RewardConfig:
        """The profile's process-reward-model section with the run's overrides applied."""
        return effective_reward(self.profile, self.config)
