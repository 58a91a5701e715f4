"""What one pipeline run is about, resolved once at the start of the flow and passed to every
training stage. Stages never re-read a YAML file by name, so a framework or profile edited during a
long run cannot make registration disagree with training (a different system prompt, say)."""
from __future__ import annotations

from tasks.domain.config import ModelProfile, PipelineConfig, TrainingConfig, effective_training
from tasks.domain.framework import Framework
from tasks.domain.frozen import Frozen


class RunSpec(Frozen):
    config: PipelineConfig
    framework: Framework
    framework_path: str  # as resolved: recorded on the registered version
    profile: ModelProfile

    @property
    def training(self) -> TrainingConfig:
        """The profile's training section with the run's overrides applied."""
        return effective_training(self.profile, self.config)
