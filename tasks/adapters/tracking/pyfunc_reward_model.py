"""The process reward model as an MLflow pyfunc model: `predict` takes rows of `question` and
`answer` and returns, per row, the JSON of its steps' scores and the answer's score (the lowest)."""
from __future__ import annotations

import json

import mlflow.models
import mlflow.pyfunc


class StepRewardModel(mlflow.pyfunc.PythonModel):
    """Artifacts: `adapter` (PEFT directory with the token head) and, for small bases, `base_model`."""

    def load_context(self, context):
        from tasks.adapters.model.reward_model import load_reward_scorer

        config = context.model_config or {}
        base = context.artifacts.get("base_model") or config["base_model"]
        self.scorer = load_reward_scorer(base, context.artifacts["adapter"], config.get("system_prompt", ""),
                                         device=config.get("device", "auto"))

    def predict(self, context, model_input, params=None):
        questions = [str(q) for q in model_input["question"]]
        answers = [str(a) for a in model_input["answer"]]
        return [json.dumps(s.to_dict()) for s in self.scorer.score(questions, answers)]


# Logged as code, not pickled (MLflow's "models from code"), like the chat model.
mlflow.models.set_model(StepRewardModel())
