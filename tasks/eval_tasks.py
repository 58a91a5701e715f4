"""Prefect tasks for evaluation and promotion, plus the artifacts users read in the Prefect UI."""
from __future__ import annotations

import base64
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.adapters.ops.settings import paths
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import PipelineConfig
from tasks.domain.run_spec import EvaluationSpec
from tasks.model_tasks import registry_slot, training_slot
from tasks.retry_policy import SERVICE_RETRIES
from tasks.stages import evaluate, promote


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model_task(model_uri: str, spec: EvaluationSpec, tracking: Tracking,
                        eval_path: str | None = None) -> evaluate.Evaluation:
    # Evaluation runs models on the same device as training: one at a time.
    with training_slot(spec.slot):
        return evaluate.evaluate_version(model_uri, spec, paths(), tracking, eval_path)


@task(name="promote-model", cache_policy=NO_CACHE, **SERVICE_RETRIES)
def promote_model_task(config: PipelineConfig, evaluation: evaluate.Evaluation,
                       tracking: Tracking) -> promote.Promotion:
    with registry_slot(config.device_slot, evaluation.name):
        return promote.promote_challenger(config, evaluation, tracking)


def _inline_png(path: str) -> str:
    """Prefect artifacts hold text only: a PNG goes in as a data URI so the UI shows the picture."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{Path(path).stem}](data:image/png;base64,{data})"


@task(name="publish-evaluation", cache_policy=NO_CACHE)
def publish_evaluation_task(evaluation: evaluate.Evaluation) -> None:
    lines = [f"# Evaluation of {evaluation.name} v{evaluation.version}", "",
             f"Eval set `{evaluation.eval_path}` (sha256 `{evaluation.eval_sha256[:12]}`), "
             f"MLflow run `{evaluation.run_id}`.", "", evaluation.markdown()]
    if evaluation.champion_error:
        lines += [f"**Champion v{evaluation.champion_version} could not be evaluated:** {evaluation.champion_error}", ""]
    lines += [_inline_png(p) for p in evaluation.plots if Path(p).exists()]
    create_markdown_artifact(key="model-evaluation", markdown="\n".join(lines),
                             description=f"{evaluation.name} v{evaluation.version} vs champion")
    if evaluation.heldout_markdown:
        create_markdown_artifact(key="base-vs-tuned", markdown=evaluation.heldout_markdown,
                                 description=f"{evaluation.name} v{evaluation.version}: held-out answers, base vs tuned")


@task(name="publish-promotion", cache_policy=NO_CACHE)
def publish_promotion_task(promotion: promote.Promotion) -> None:
    aliases = ", ".join(f"@{k} = v{v}" for k, v in promotion.aliases.items() if v) or "none"
    create_markdown_artifact(key="promotion-decision", markdown=f"{promotion.markdown}\nAliases now: {aliases}\n",
                             description=f"{promotion.name} v{promotion.version}: {promotion.verdict}")
