"""The promotion gate and the champion's history, as pure functions.

A challenger becomes champion only when every check passes against the champion's metrics
measured on the *same* eval set. The registry keeps a champion history so `rollback` can step
back more than once: aliases are derived from it (last = champion, one before = previous-champion).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.domain.errors import RslmError
from tasks.domain.frozen import Frozen
from tasks.domain.numbers import fmt as _fmt

Metrics = Mapping[str, float]

# Metric names shared by evaluation, the gate and the reports.
LOSS = "loss"
PERPLEXITY = "perplexity"
STYLE = "style_adherence"
CONSISTENCY = "consistency"
DRIFT = "drift_kl"
STYLE_STD = "stability/style_adherence_std"
STRUCTURED = "structured"
DEGENERATE = "degenerate"
NUMBERS_RIGHT = "numbers_right"
HELDOUT_STRUCTURED = "heldout/structured"
HELDOUT_BASE_STRUCTURED = "heldout/base_structured"
HELDOUT_GAIN = "heldout/structured_gain"
HELDOUT_STYLE = "heldout/style"
HELDOUT_STEP_REWARD = "heldout/step_reward"  # the process reward model's mean step score on held-out answers
# ... and whether it scores the reasons the content checks flag (pasted, stock) below the others (AUROC)
HELDOUT_STEP_REWARD_FLAG_AUROC = "heldout/step_reward_flag_auroc"
# ... and whether it scores the hand-written references' steps above the tuned answers' (AUROC)
HELDOUT_STEP_REWARD_REFERENCE_AUROC = "heldout/step_reward_reference_auroc"
# Content (issue 30): the reference answer picked among same-shaped distractors by the model's own
# likelihood, on held-out questions (tuned and base) and on the eval split; the share of held-out
# answers with a reason pasted from another pattern's training answer, and with a stock reason (one
# the model also gave, nearly word for word, to another held-out question: its own filler).
HELDOUT_CHOICE = "heldout/choice_accuracy"
HELDOUT_BASE_CHOICE = "heldout/base_choice_accuracy"
HELDOUT_CHOICE_GAIN = "heldout/choice_gain"
HELDOUT_PASTED = "heldout/pasted"
HELDOUT_STOCK = "heldout/stock"
HELDOUT_RELEVANCE = "heldout/relevance"
CHOICE = "choice_accuracy"
BAD_STEP_FOUND = "bad_step_found"  # a reward model's: how often the corrupted step scores lowest
OUT_OF_FRAMEWORK_F1 = "out_of_framework/f1"  # ... and its ProcessBench F1 on hand-written answers outside the framework
# What the comparison table and chart show, in order, and which direction is better.
KEY_METRICS: dict[str, Literal["lower", "higher"]] = {
    LOSS: "lower", PERPLEXITY: "lower", STYLE: "higher", "within_word_cap": "higher",
    "key_term_coverage": "higher", "no_hedging": "higher", STRUCTURED: "higher", DEGENERATE: "lower", NUMBERS_RIGHT: "higher",
    CONSISTENCY: "higher", DRIFT: "lower", HELDOUT_STRUCTURED: "higher", HELDOUT_GAIN: "higher", HELDOUT_STYLE: "higher",
    HELDOUT_STEP_REWARD: "higher", CHOICE: "higher", HELDOUT_CHOICE: "higher", HELDOUT_BASE_CHOICE: "higher",
    HELDOUT_PASTED: "lower", HELDOUT_STOCK: "lower", HELDOUT_RELEVANCE: "higher",
}


class PromotionGate(Frozen):
    """Bounds a challenger must meet. `None` switches a check off."""

    min_eval_loss_improvement: float = Field(default=0.01, ge=0, lt=1)
    max_style_adherence_drop: float = Field(default=0.0, ge=0, le=1)
    min_style_adherence: float | None = Field(default=None, ge=0, le=1)
    min_consistency: float | None = Field(default=None, ge=0, le=1)
    max_drift_kl: float | None = Field(default=None, gt=0)
    max_stability_std: float | None = Field(default=None, ge=0)
    # What tells reasoning from number salad: share of answers in the trained shape, share of
    # looping/empty answers, and the shape on held-out questions, also against the model's own base.
    min_structured: float | None = Field(default=None, ge=0, le=1)
    max_degenerate: float | None = Field(default=None, ge=0, le=1)
    min_heldout_structured: float | None = Field(default=None, ge=0, le=1)
    min_heldout_gain: float | None = Field(default=None, ge=-1, le=1)
    # Content, not form: share of eval answers whose numbers are the reference's (none missing,
    # none invented). A well-shaped answer with the wrong arithmetic fails it.
    min_numbers_right: float | None = Field(default=None, ge=0, le=1)
    # A preference-refined (DPO) version against its own SFT parent, measured the same way on the
    # held-out questions: refinement that costs style is refused. `None` switches it off.
    max_refined_heldout_style_drop: float | None = Field(default=0.0, ge=0, le=1)
    # The process reward model's judgement of the held-out answers (mean step score, 0-1): a floor,
    # and how far below the champion's (scored by the same reward model) it may fall.
    min_heldout_step_reward: float | None = Field(default=None, ge=0, le=1)
    max_heldout_step_reward_drop: float | None = Field(default=None, ge=0, le=1)
    # Content (issue 30): the reference answer chosen over same-shaped distractors on held-out
    # questions, that share above the base model's own, and a bound on answers with a pasted reason.
    min_heldout_choice_accuracy: float | None = Field(default=None, ge=0, le=1)
    min_heldout_choice_gain: float | None = Field(default=None, ge=-1, le=1)
    max_heldout_pasted: float | None = Field(default=None, ge=0, le=1)
    max_heldout_stock: float | None = Field(default=None, ge=0, le=1)


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    promote: bool
    kind: Literal["gate", "manual"] = "gate"
    note: str = ""  # who/why, for manual promotions
    challenger_version: str
    champion_version: str | None = None
    checks: list[Check] = []

    @property
    def verdict(self) -> str:
        if self.kind == "manual":
            return "promoted-manually"
        return "promoted" if self.promote else "rejected"

    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def description(self) -> str:
        """One paragraph for the model version's description in the registry."""
        against = f"champion v{self.champion_version}" if self.champion_version else "no champion"
        note = f" {self.note}." if self.note else ""
        return f"{self.verdict.upper()} against {against}.{note} " + " ".join(f"[{r}]" for r in self.reasons())


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _missing(name: str, metric: str) -> Check:
    return Check(name=name, passed=False, detail=f"{metric} was not measured")


def _loss_check(challenger: Metrics, champion: Metrics, gate: PromotionGate) -> Check:
    name = "eval loss improves"
    new, old = challenger.get(LOSS), champion.get(LOSS)
    if not (_measured(new) and _measured(old)):
        return _missing(name, "eval loss")
    change = (new - old) / old if old else 0.0
    need = gate.min_eval_loss_improvement
    return Check(name=name, passed=new <= old * (1 - need),
                 detail=f"{new:.4f} vs champion {old:.4f}: {change:+.2%} (need <= {-need:+.2%})")


def _style_drop_check(challenger: Metrics, champion: Metrics, gate: PromotionGate) -> Check:
    name = "style adherence not lower"
    new, old = challenger.get(STYLE), champion.get(STYLE)
    if not (_measured(new) and _measured(old)):
        return _missing(name, STYLE)
    floor = old - gate.max_style_adherence_drop
    return Check(name=name, passed=new >= floor - 1e-12,
                 detail=f"{new:.3f} vs champion {old:.3f} (floor {floor:.3f})")


def _not_below_champion(name: str, metric: str, challenger: Metrics, champion: Metrics, max_drop: float) -> Check:
    new, old = challenger.get(metric), champion.get(metric)
    if not (_measured(new) and _measured(old)):
        return _missing(name, metric)
    floor = old - max_drop
    return Check(name=name, passed=new >= floor - 1e-12, detail=f"{new:.3f} vs champion {old:.3f} (floor {floor:.3f})")


def _bound_check(name: str, metric: str, value: float | None, bound: float, *, upper: bool) -> Check:
    if not _measured(value):
        return _missing(name, metric)
    passed = value <= bound if upper else value >= bound
    return Check(name=name, passed=passed, detail=f"{value:.4f} {'<=' if upper else '>='} {bound:.4f} required")


def eligibility(run_status: str, evaluation_status: str | None) -> list[Check]:
    """Whatever the metrics say, a version whose training or evaluation failed is never promoted.

    >>> [c.passed for c in eligibility("FINISHED", "succeeded")], [c.passed for c in eligibility("FAILED", None)]
    ([True, True], [False, False])
    """
    return [Check(name="training succeeded", passed=run_status == "FINISHED", detail=f"training run {run_status or 'unknown'}"),
            Check(name="evaluation succeeded", passed=evaluation_status == "succeeded",
                  detail=f"evaluation {evaluation_status or 'never ran'}")]


def _refined_check(challenger: Metrics, sft_parent: Metrics, max_drop: float) -> Check:
    name = "held-out style not below its SFT parent"
    new, old = challenger.get(HELDOUT_STYLE), sft_parent.get(HELDOUT_STYLE)
    if not _measured(new) and not _measured(old) and not challenger.get("heldout/questions"):
        return Check(name=name, passed=True, detail="the domain has no held-out questions: nothing to compare")
    if not (_measured(new) and _measured(old)):
        return _missing(name, HELDOUT_STYLE)
    floor = old - max_drop
    return Check(name=name, passed=new >= floor - 1e-12, detail=f"{new:.3f} vs SFT parent {old:.3f} (floor {floor:.3f})")


def decide(challenger: Metrics, champion: Metrics | None, gate: PromotionGate, *,
           challenger_version: str, champion_version: str | None = None,
           preconditions: list[Check] | None = None, sft_parent: Metrics | None = None) -> Decision:
    """Promote only when every precondition and configured check passes. Without a champion,
    only the absolute bounds apply (the first good model becomes champion). `sft_parent`: a
    refined version's SFT adapter, measured before refinement.

    >>> gate = PromotionGate()
    >>> decide({HELDOUT_STYLE: 0.7}, None, gate, challenger_version="2", sft_parent={HELDOUT_STYLE: 0.8}).reasons()
    ['FAIL held-out style not below its SFT parent: 0.700 vs SFT parent 0.800 (floor 0.800)']
    """
    checks: list[Check] = list(preconditions or [])
    if champion is not None:
        checks += [_loss_check(challenger, champion, gate), _style_drop_check(challenger, champion, gate)]
    if champion is not None and gate.max_heldout_step_reward_drop is not None:
        checks.append(_not_below_champion("held-out step reward not lower", HELDOUT_STEP_REWARD, challenger, champion,
                                          gate.max_heldout_step_reward_drop))
    if sft_parent is not None and gate.max_refined_heldout_style_drop is not None:
        checks.append(_refined_check(challenger, sft_parent, gate.max_refined_heldout_style_drop))
    if gate.min_style_adherence is not None:
        checks.append(_bound_check("style adherence floor", STYLE, challenger.get(STYLE), gate.min_style_adherence, upper=False))
    if gate.min_consistency is not None:
        checks.append(_bound_check("consistency floor", CONSISTENCY, challenger.get(CONSISTENCY), gate.min_consistency,
                                   upper=False))
    if gate.max_drift_kl is not None:
        checks.append(_bound_check("drift bound", DRIFT, challenger.get(DRIFT), gate.max_drift_kl, upper=True))
    if gate.max_stability_std is not None:
        checks.append(_bound_check("stable across seeds", STYLE_STD, challenger.get(STYLE_STD), gate.max_stability_std,
                                   upper=True))
    floors = [("numbered-reason structure floor", STRUCTURED, gate.min_structured, False),
              ("degenerate answers bound", DEGENERATE, gate.max_degenerate, True),
              ("held-out structure floor", HELDOUT_STRUCTURED, gate.min_heldout_structured, False),
              ("beats its base on held-out questions", HELDOUT_GAIN, gate.min_heldout_gain, False),
              ("numbers as the reference computes them", NUMBERS_RIGHT, gate.min_numbers_right, False),
              ("held-out step reward floor", HELDOUT_STEP_REWARD, gate.min_heldout_step_reward, False),
              ("picks the reference answer on held-out questions", HELDOUT_CHOICE, gate.min_heldout_choice_accuracy,
               False),
              ("picks the reference more often than its base", HELDOUT_CHOICE_GAIN, gate.min_heldout_choice_gain, False),
              ("held-out answers with a pasted reason", HELDOUT_PASTED, gate.max_heldout_pasted, True),
              ("held-out answers with a stock reason", HELDOUT_STOCK, gate.max_heldout_stock, True)]
    checks += [_bound_check(name, metric, challenger.get(metric), bound, upper=upper)
               for name, metric, bound, upper in floors if bound is not None]
    return Decision(promote=all(c.passed for c in checks), checks=checks,
                    challenger_version=challenger_version, champion_version=champion_version)


def decide_reward_model(challenger: Metrics, champion: Metrics | None, *, min_bad_step_found: float,
                        max_drop: float | None, challenger_version: str, champion_version: str | None = None,
                        preconditions: list[Check] | None = None,
                        min_out_of_framework_f1: float | None = None) -> Decision:
    """A process reward model's gate: it must find the corrupted step often enough on held-out
    step labels and, where a champion reward model was measured on the same labels, not much
    less often than it; with a floor set, it must also find the wrong step (or say none) in
    hand-written answers outside the framework.

    >>> decide_reward_model({BAD_STEP_FOUND: 0.85}, {BAD_STEP_FOUND: 0.9}, min_bad_step_found=0.8, max_drop=0.02,
    ...                     challenger_version="2", champion_version="1").reasons()[1]
    'FAIL corrupted step found no less often than the champion: 0.850 vs champion 0.900 (floor 0.880)'
    """
    checks: list[Check] = list(preconditions or [])
    checks.append(_bound_check("corrupted step scored lowest", BAD_STEP_FOUND, challenger.get(BAD_STEP_FOUND),
                               min_bad_step_found, upper=False))
    if champion is not None and max_drop is not None:
        checks.append(_not_below_champion("corrupted step found no less often than the champion", BAD_STEP_FOUND,
                                          challenger, champion, max_drop))
    if min_out_of_framework_f1 is not None:
        checks.append(_bound_check("finds the wrong step outside the framework (F1)", OUT_OF_FRAMEWORK_F1,
                                   challenger.get(OUT_OF_FRAMEWORK_F1), min_out_of_framework_f1, upper=False))
    return Decision(promote=all(c.passed for c in checks), checks=checks,
                    challenger_version=challenger_version, champion_version=champion_version)


# --- champion history -----------------------------------------------------------------------

def parse_history(tag_value: str | None, current_champion: str | None) -> list[str]:
    """The history from the registered model's tag; a registry without the tag (or one changed
    by hand in the UI) is reconciled with the live `champion` alias."""
    history = [v for v in (tag_value or "").split(",") if v]
    if current_champion and (not history or history[-1] != current_champion):
        history = [v for v in history if v != current_champion] + [current_champion]
    return history


def format_history(history: list[str]) -> str:
    return ",".join(history)


def after_promotion(history: list[str], version: str) -> list[str]:
    """`version` becomes champion; re-promoting an old champion moves it to the top.

    >>> after_promotion(["1", "2"], "3")
    ['1', '2', '3']
    """
    return [v for v in history if v != version] + [version]


def after_rollback(history: list[str]) -> list[str]:
    """Drop the current champion; the one before it takes over.

    >>> after_rollback(["1", "2", "3"])
    ['1', '2']
    """
    if len(history) < 2:
        raise RslmError("nothing to roll back to: no previous champion recorded")
    return history[:-1]


def aliases_for(history: list[str]) -> dict[str, str | None]:
    """What `champion` and `previous-champion` point at for this history (None: no such alias)."""
    return {"champion": history[-1] if history else None,
            "previous-champion": history[-2] if len(history) >= 2 else None}


# --- report ---------------------------------------------------------------------------------

def comparison_markdown(challenger: Metrics, champion: Metrics | None, decision: Decision | None = None) -> str:
    """The metrics side by side, and the decision with its reasons, for Prefect and MLflow."""
    champion = champion or {}
    lines = []
    if decision is not None:
        against = f"champion v{decision.champion_version}" if decision.champion_version else "no champion"
        lines += [f"# v{decision.challenger_version}: {decision.verdict} (against {against})", ""]
        lines += [f"- {reason}" for reason in decision.reasons()] or ["- no checks configured"]
        lines.append("")
    lines += ["| metric | better | champion | challenger | change |", "|---|---|---|---|---|"]
    for name, direction in KEY_METRICS.items():
        new, old = challenger.get(name), champion.get(name)
        change = _fmt(new - old) if _measured(new) and _measured(old) else "—"
        lines.append(f"| {name} | {direction} | {_fmt(old)} | {_fmt(new)} | {change} |")
    return "\n".join(lines) + "\n"
