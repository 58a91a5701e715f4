"""The adapter as an MLflow pyfunc model: `mlflow.pyfunc.load_model("models:/NAME@champion")`
returns something whose `predict` answers prompts with base + adapter."""
from __future__ import annotations

import mlflow.models
import mlflow.pyfunc


class ReasoningAdapterModel(mlflow.pyfunc.PythonModel):
    """Artifacts: `adapter` (PEFT directory) and, for small bases, `base_model`. Otherwise the
    base is the model config's `base_model` (hub id or path) and only the adapter is stored."""

    def load_context(self, context):
        from tasks.adapters.model.inference import DEFAULT_MAX_NEW_TOKENS, load_generator
        from tasks.domain.grounding import recorded_grounding

        config = context.model_config or {}
        base = context.artifacts.get("base_model") or config["base_model"]
        self.generator = load_generator(base, context.artifacts["adapter"], config.get("system_prompt", ""),
                                        device=config.get("device", "auto"), grounding=recorded_grounding(config))
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))

    def predict(self, context, model_input, params=None):
        if hasattr(model_input, "columns"):
            prompts = [str(p) for p in model_input["prompt"]]
        elif isinstance(model_input, str):
            prompts = [model_input]
        else:
            prompts = [str(p) for p in model_input]
        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        return self.generator.reply(prompts, max_new_tokens=max_new)


# Logged as code, not pickled: MLflow copies this file into the model and runs it on load, so no
# registry artifact holds a pickle (MLflow's "models from code").
mlflow.models.set_model(ReasoningAdapterModel())
