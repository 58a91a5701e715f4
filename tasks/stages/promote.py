"""Stage: the gate's decision, written to the registry (tags + description) and the run; only a
passing decision moves `champion` (the old one becomes `previous-champion`). Also the manual
overrides behind `rslm promote`, `rollback` and `models`."""
from __future__ import annotations

import getpass
from dataclasses import asdict, dataclass

from tasks.adapters.tracking.registry import CHAMPION, ModelRegistry, VersionInfo, recorded_decision
from tasks.adapters.tracking.runs import Tracking
from tasks.domain.config import PipelineConfig
from tasks.domain.errors import RslmError
from tasks.domain.promotion import Check, Decision, comparison_markdown, decide, eligibility
from tasks.stages.evaluate import EVALUATION_STATUS, Evaluation
from tasks.stages.refine import PARENT_RUN_TAG, sft_parent_metrics
from tasks.stages.reward import REWARD_KEY_TAG


@dataclass
class Promotion:
    name: str
    version: str
    verdict: str
    decision: dict
    aliases: dict[str, str | None]
    markdown: str

    def to_dict(self) -> dict:
        return asdict(self)


def _preconditions(info: VersionInfo, evaluation: Evaluation, registry: ModelRegistry) -> list[Check]:
    checks = eligibility(info.run_status, info.tags.get(EVALUATION_STATUS))
    current = registry.version_for_alias(info.name, CHAMPION)
    if current == info.version:
        checks.append(Check(name="not already champion", passed=False, detail=f"v{info.version} is the champion"))
    elif current != evaluation.champion_version:
        checks.append(Check(name="champion unchanged since evaluation", passed=False,
                            detail=f"evaluated against v{evaluation.champion_version}, champion is now v{current}"))
    if evaluation.champion_version and evaluation.champion_metrics is None:
        checks.append(Check(name="champion measured on the same eval set", passed=False,
                            detail=evaluation.champion_error or "no metrics"))
    return checks


def _sft_parent(info: VersionInfo) -> dict[str, float] | None:
    """A refined version's SFT parent, as measured before refinement; an empty record where the
    version says it was refined but the figures are gone, so the gate fails it rather than skip."""
    if PARENT_RUN_TAG not in info.tags:
        return None
    return sft_parent_metrics(info.metrics) or {}


def promote_challenger(config: PipelineConfig, evaluation: Evaluation, tracking: Tracking) -> Promotion:
    """Decide by the configured gate; record the decision; move aliases only when it passes.
    Idempotent: a retry after a partial failure (aliases moved, logging failed) finishes the
    decision already recorded for this evaluation, rather than deciding again and finding the
    version "already champion"."""
    registry = tracking.registry
    info = registry.resolve(f"models:/{evaluation.name}/{evaluation.version}", with_run=True)
    earlier = recorded_decision(info)
    if earlier and earlier.kind == "gate" and earlier.champion_version == evaluation.champion_version:
        decision = earlier
    else:
        decision = decide(evaluation.metrics, evaluation.champion_metrics, config.promotion,
                          challenger_version=evaluation.version, champion_version=evaluation.champion_version,
                          preconditions=_preconditions(info, evaluation, registry), sft_parent=_sft_parent(info))
    return _record(info, decision, evaluation.metrics, evaluation.champion_metrics, tracking)


def _record(info: VersionInfo, decision: Decision, metrics: dict, champion_metrics: dict | None,
            tracking: Tracking) -> Promotion:
    registry = tracking.registry
    registry.record_decision(info.name, decision)
    aliases = registry.promote(info.name, info.version) if decision.promote else registry.aliases_now(info.name)
    markdown = comparison_markdown(metrics, champion_metrics, decision)
    with tracking.resume(info.run_id) as run:
        run.set_tags({"promotion.decision": decision.verdict})
        run.log_dict(decision.model_dump(mode="json"), "promotion/decision.json")
        run.log_text(markdown, "promotion/decision.md")
    return Promotion(name=info.name, version=info.version, verdict=decision.verdict, decision=decision.model_dump(mode="json"),
                     aliases=aliases, markdown=markdown)


def manual_promote(name: str, version: str, tracking: Tracking, reason: str = "") -> Promotion:
    """`rslm promote`: a person overrides the gate, but never for a version whose training or
    evaluation failed. Recorded like a gate decision, with who and why."""
    registry = tracking.registry
    info = registry.resolve(f"models:/{name}/{version}", with_run=True)
    checks = eligibility(info.run_status, info.tags.get(EVALUATION_STATUS))
    failed = [c for c in checks if not c.passed]
    if failed:
        hint = f" (evaluate it first: rslm evaluate --model {info.uri})" if failed[-1].name.startswith("evaluation") else ""
        raise RslmError(f"{info.uri} cannot be promoted: " + "; ".join(c.detail for c in failed) + hint)
    champion = registry.version_for_alias(name, CHAMPION)
    note = f"by {getpass.getuser()}" + (f": {reason}" if reason else "")
    decision = Decision(promote=True, kind="manual", challenger_version=info.version, champion_version=champion,
                        checks=checks, note=note)
    return _record(info, decision, {k.removeprefix("eval/"): v for k, v in info.metrics.items() if k.startswith("eval/")},
                   None, tracking)


def rollback(name: str, tracking: Tracking) -> dict[str, str | None]:
    return tracking.registry.rollback(name)


def model_table(name: str, tracking: Tracking) -> list[dict]:
    """`rslm models`: one row per version with its aliases, key metrics and decision."""
    rows = []
    for v in tracking.registry.versions(name):
        if REWARD_KEY_TAG in v.tags:  # a process reward model: its held-out step figures
            figures = {"bad_step_found": v.metrics.get("prm/heldout/bad_step_found"),
                       "auroc": v.metrics.get("prm/heldout/auroc"),
                       "step_accuracy": v.metrics.get("prm/heldout/step_accuracy"),
                       # the hand-written answers outside the framework (issue 30 part 6), with the
                       # F1's 95% interval over their questions: 20 questions leave it wide
                       "out_of_framework_f1": v.metrics.get("prm/heldout/out_of_framework/f1"),
                       "out_of_framework_f1_low": v.metrics.get("prm/heldout/out_of_framework/f1_low"),
                       "out_of_framework_f1_high": v.metrics.get("prm/heldout/out_of_framework/f1_high")}
        else:
            figures = {"eval_loss": v.metrics.get("eval/loss"), "style": v.metrics.get("eval/style_adherence"),
                       "consistency": v.metrics.get("eval/consistency"), "drift_kl": v.metrics.get("eval/drift_kl"),
                       # content (issue 30): the reference picked on held-out questions, by the version and
                       # by its base, and the shares of its held-out answers with a pasted and a stock reason
                       "choice": v.metrics.get("eval/heldout/choice_accuracy"),
                       "base_choice": v.metrics.get("eval/heldout/base_choice_accuracy"),
                       "pasted": v.metrics.get("eval/heldout/pasted"),
                       "stock": v.metrics.get("eval/heldout/stock")}
        rows.append({"version": v.version, "aliases": ",".join(sorted(v.aliases)) or "-", **figures,
                     "evaluation": v.tags.get(EVALUATION_STATUS, "-"), "decision": v.tags.get("promotion.decision", "-"),
                     "run": v.run_status})
    return rows
