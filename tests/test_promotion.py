"""The promotion gate and champion history: pure decisions on hand-made metrics."""
import math

import pytest

from tasks.domain.errors import RslmError
from tasks.domain.promotion import (
    Check,
    PromotionGate,
    after_promotion,
    after_rollback,
    aliases_for,
    comparison_markdown,
    decide,
    eligibility,
    parse_history,
)

GATE = PromotionGate(min_eval_loss_improvement=0.01, max_style_adherence_drop=0.0, max_drift_kl=1.0)
CHAMPION = {"loss": 4.0, "style_adherence": 0.70, "drift_kl": 0.5, "consistency": 0.8}


def gate_decision(challenger, champion=CHAMPION, gate=GATE, **kw):
    return decide(challenger, champion, gate, challenger_version="2", champion_version="1" if champion else None, **kw)


def failed(decision):
    return [c.name for c in decision.checks if not c.passed]


def test_better_challenger_is_promoted_with_reasons():
    decision = gate_decision({"loss": 3.9, "style_adherence": 0.72, "drift_kl": 0.6})
    assert decision.promote and decision.verdict == "promoted" and failed(decision) == []
    reasons = decision.reasons()
    assert any(r.startswith("PASS eval loss improves") and "-2.50%" in r for r in reasons), reasons
    assert "PROMOTED against champion v1" in decision.description()


@pytest.mark.parametrize("challenger, reason", [
    ({"loss": 3.99, "style_adherence": 0.7, "drift_kl": 0.5}, "eval loss improves"),       # only 0.25% better
    ({"loss": 4.0, "style_adherence": 0.7, "drift_kl": 0.5}, "eval loss improves"),        # identical model
    ({"loss": 3.0, "style_adherence": 0.69, "drift_kl": 0.5}, "style adherence not lower"),
    ({"loss": 3.0, "style_adherence": 0.9, "drift_kl": 1.5}, "drift bound"),
    ({"loss": 3.0, "style_adherence": 0.9}, "drift bound"),                                # not measured
    ({"loss": math.nan, "style_adherence": 0.9, "drift_kl": 0.1}, "eval loss improves"),    # diverged
])
def test_worse_or_unmeasured_challenger_is_rejected(challenger, reason):
    decision = gate_decision(challenger)
    assert not decision.promote and decision.verdict == "rejected" and failed(decision) == [reason]


def test_loss_threshold_is_relative():
    gate = GATE.model_copy(update={"min_eval_loss_improvement": 0.10})
    assert not gate_decision({"loss": 3.7, "style_adherence": 0.7, "drift_kl": 0.1}, gate=gate).promote  # 7.5%
    assert gate_decision({"loss": 3.6, "style_adherence": 0.7, "drift_kl": 0.1}, gate=gate).promote      # 10%


def test_without_a_champion_only_absolute_bounds_apply():
    assert gate_decision({"loss": 9.0, "style_adherence": 0.1, "drift_kl": 0.2}, champion=None).promote
    strict = GATE.model_copy(update={"min_style_adherence": 0.5, "min_consistency": 0.5, "max_stability_std": 0.05})
    decision = gate_decision({"loss": 9.0, "style_adherence": 0.1, "drift_kl": 0.2, "consistency": 0.9,
                              "stability/style_adherence_std": 0.2}, champion=None, gate=strict)
    assert failed(decision) == ["style adherence floor", "stable across seeds"]


def test_shipped_gate_rejects_number_salad_and_a_model_no_better_than_its_base():
    """The floors of configs/pipeline.yaml: a first model with no champion to beat still has to
    answer in the trained shape, on held-out questions too, and beat its own base there."""
    from tasks.adapters.ops.config_files import load_pipeline_config

    gate = load_pipeline_config().promotion
    content_ok = {"heldout/choice_accuracy": 0.85, "heldout/choice_gain": 0.05, "heldout/pasted": 0.05,
                  "heldout/stock": 0.1}
    salad = {"loss": 4.5, "style_adherence": 0.0, "drift_kl": 0.3, "structured": 0.0, "degenerate": 1.0,
             "heldout/structured": 0.0, "heldout/structured_gain": 0.0, "numbers_right": 0.0,
             "heldout/choice_accuracy": 0.2, "heldout/choice_gain": -0.6, "heldout/pasted": 0.0, "heldout/stock": 0.0}
    assert set(failed(gate_decision(salad, champion=None, gate=gate))) == {
        "style adherence floor", "numbered-reason structure floor", "degenerate answers bound",
        "held-out structure floor", "beats its base on held-out questions", "numbers as the reference computes them",
        "picks the reference answer on held-out questions", "picks the reference more often than its base"}
    base_already_shaped = {"loss": 1.2, "style_adherence": 0.8, "drift_kl": 0.3, "structured": 0.9, "degenerate": 0.0,
                           "heldout/structured": 0.9, "heldout/structured_gain": 0.1, "numbers_right": 0.7, **content_ok}
    assert failed(gate_decision(base_already_shaped, champion=None, gate=gate)) == ["beats its base on held-out questions"]
    taught = {**base_already_shaped, "heldout/structured_gain": 0.85}
    assert gate_decision(taught, champion=None, gate=gate).promote
    # Well shaped, wrong arithmetic (the finance model on 135M parameters: 0.09): not promoted.
    assert failed(gate_decision({**taught, "numbers_right": 0.09}, champion=None, gate=gate)) == [
        "numbers as the reference computes them"]
    assert failed(gate_decision({**taught, "heldout/structured": math.nan}, champion=None, gate=gate)) == [
        "held-out structure floor"], "a floor on an unmeasured metric fails"
    # Well shaped, pasting the canary template (issue 30's default champion: choice 0.00, pasted 0.85)
    pasting = {**taught, "heldout/choice_accuracy": 0.0, "heldout/choice_gain": -0.8, "heldout/pasted": 0.85}
    assert failed(gate_decision(pasting, champion=None, gate=gate)) == [
        "picks the reference answer on held-out questions", "picks the reference more often than its base",
        "held-out answers with a pasted reason"]
    # Well shaped, no pastes, but its own filler under every question (the 61-pattern DevOps model at
    # 60 steps: "Availability: X is always available, so ..." in 9 of 20 answers): not promoted.
    assert failed(gate_decision({**taught, "heldout/stock": 0.45}, champion=None, gate=gate)) == [
        "held-out answers with a stock reason"]


def test_switched_off_checks_are_not_evaluated():
    open_gate = PromotionGate(min_eval_loss_improvement=0.0, max_style_adherence_drop=1.0, max_drift_kl=None)
    assert gate_decision({"loss": 4.0, "style_adherence": 0.0}, gate=open_gate).promote


def test_failed_training_or_evaluation_is_never_promoted():
    great = {"loss": 1.0, "style_adherence": 1.0, "drift_kl": 0.0}
    for run_status, evaluation in [("FAILED", "succeeded"), ("FINISHED", "failed"), ("FINISHED", None)]:
        decision = gate_decision(great, preconditions=eligibility(run_status, evaluation))
        assert not decision.promote, (run_status, evaluation)
    assert gate_decision(great, preconditions=eligibility("FINISHED", "succeeded")).promote
    blocked = gate_decision(great, preconditions=[Check(name="champion unchanged", passed=False, detail="moved")])
    assert not blocked.promote and failed(blocked) == ["champion unchanged"]


def test_champion_history_drives_aliases_and_rollback():
    history = after_promotion(after_promotion(after_promotion([], "1"), "2"), "4")
    assert history == ["1", "2", "4"] and aliases_for(history) == {"champion": "4", "previous-champion": "2"}
    history = after_rollback(history)
    assert aliases_for(history) == {"champion": "2", "previous-champion": "1"}
    history = after_rollback(history)
    assert aliases_for(history) == {"champion": "1", "previous-champion": None}
    with pytest.raises(RslmError, match="nothing to roll back"):
        after_rollback(history)
    assert after_promotion(["1", "2", "3"], "1") == ["2", "3", "1"], "re-promoting moves a version to the top"


def test_history_is_reconciled_with_the_live_alias():
    assert parse_history(None, None) == []
    assert parse_history(None, "3") == ["3"], "a registry from before the history tag"
    assert parse_history("1,2", "2") == ["1", "2"]
    assert parse_history("1,2", "5") == ["1", "2", "5"], "champion moved by hand in the MLflow UI"


def test_comparison_markdown_shows_both_sides_and_reasons():
    decision = gate_decision({"loss": 3.9, "style_adherence": 0.72, "drift_kl": 0.6})
    text = comparison_markdown({"loss": 3.9, "style_adherence": 0.72}, CHAMPION, decision)
    assert "# v2: promoted (against champion v1)" in text
    assert "| loss | lower | 4 | 3.9 | -0.1 |" in text
    assert "PASS drift bound" in text


@pytest.mark.parametrize("challenger, parent, passed", [
    ({"heldout/style": 0.95, "heldout/questions": 20}, {"heldout/style": 0.90}, True),
    ({"heldout/style": 0.85, "heldout/questions": 20}, {"heldout/style": 0.90}, False),  # DPO cost style
    ({"heldout/questions": 20}, {"heldout/style": 0.90}, False),                         # lost a measurement
    ({"heldout/style": 0.95, "heldout/questions": 20}, {}, False),                       # parent figures gone
    ({}, {}, True),                                                                    # a domain with no held-out set
])
def test_a_refined_version_may_not_fall_below_its_sft_parent_on_heldout_style(challenger, parent, passed):
    decision = decide(challenger, None, PromotionGate(), challenger_version="2", sft_parent=parent)
    (check,) = [c for c in decision.checks if "SFT parent" in c.name]
    assert check.passed is passed, check.detail
    assert not [c for c in decide(challenger, None, PromotionGate(), challenger_version="2").checks
                if "SFT parent" in c.name], "an SFT-only version has no parent check"


def test_reward_model_gate_holds_it_to_its_out_of_framework_floor_when_one_is_set():
    from tasks.domain.promotion import decide_reward_model

    def decide(figures, floor):
        return decide_reward_model(figures, None, min_bad_step_found=0.8, max_drop=None, challenger_version="2",
                                   min_out_of_framework_f1=floor)

    in_framework_only = {"bad_step_found": 0.95}
    assert decide(in_framework_only, None).promote  # no floor: measured, not gated
    finds_pastes = {**in_framework_only, "out_of_framework/f1": 0.75}
    assert decide(finds_pastes, 0.7).promote
    blind = {**in_framework_only, "out_of_framework/f1": 0.18}
    decision = decide(blind, 0.7)
    assert not decision.promote
    assert any(r.startswith("FAIL finds the wrong step outside the framework (F1)") for r in decision.reasons())
    assert not decide(in_framework_only, 0.7).promote  # a floor set and nothing measured is not a pass
