"""Evaluation metrics on hand-made examples whose answers are known."""
import math

import pytest
import torch

from tasks.domain.evaluation import drift_metric, loss_metrics
from tasks.domain.metrics import (
    agreement,
    consistency,
    cosine_similarity,
    hedges,
    is_degenerate,
    is_structured,
    key_term_coverage,
    perplexity,
    repetition,
    spread,
    style_score,
    style_summary,
)
from tasks.domain.tensor_metrics import kl_per_example, token_losses


def test_key_term_coverage_counts_terms_and_folds_plurals():
    answer = "1. Isolation: one blast radius per subnet. 2. Routing: route tables per tier."
    assert key_term_coverage(answer, ["isolation", "routing", "subnets", "hosts"]) == 0.75
    assert key_term_coverage(answer, ["blast radius"]) == 1.0, "multi-word terms need every word"
    assert key_term_coverage(answer, ["blast door"]) == 0.0
    assert key_term_coverage("Policies apply.", ["policy"]) == 1.0
    assert key_term_coverage("anything", []) == 1.0


def test_hedges_match_whole_phrases_only():
    assert hedges("I think maybe it depends.", ["I think", "maybe", "it depends", "as an AI"]) == [
        "I think", "maybe", "it depends"]
    assert hedges("Mayberry is a town; I thinking aloud.", ["maybe", "I think"]) == []


def test_style_score_combines_cap_coverage_hedging_and_structure():
    terse = style_score("1. Isolation: one blast radius each. 2. Routing: separate route tables.", max_words=20,
                        key_terms=["isolation", "routing"], banned_phrases=["maybe"])
    assert (terse.within_cap, terse.coverage, terse.no_hedging, terse.structured, terse.score) == (True, 1.0, True, True, 1.0)
    unnumbered = style_score("Isolation and routing matter here.", max_words=20, key_terms=["isolation", "routing"],
                             banned_phrases=[])
    assert not unnumbered.structured and unnumbered.score == 0.75
    rambling = style_score("maybe " * 20, max_words=10, key_terms=["isolation"], banned_phrases=["maybe"])
    assert rambling.degenerate and rambling.score == 0.0
    empty = style_score("", max_words=10, key_terms=["x"], banned_phrases=[], min_words=2)
    assert not empty.within_cap and empty.degenerate, "an empty answer is not terse, it is missing"
    summary = style_summary([terse, rambling])
    assert summary["style_adherence"] == 0.5 and summary["within_word_cap"] == 0.5 and summary["structured"] == 0.5
    assert summary["degenerate"] == 0.5


NUMBER_SALAD = "1. 1. 1. 1. 1. 3. 3. 3. 3. 3. 3. 3."  # what the random-init tiny model answers everything with


def test_number_salad_is_degenerate_and_earns_nothing():
    """The tiny model's answer passed the old word cap and no-hedging checks and scored 0.67."""
    score = style_score(NUMBER_SALAD, max_words=60, key_terms=["isolation"], banned_phrases=["maybe"])
    assert score.within_cap and score.no_hedging, "the checks that number salad passes"
    assert score.degenerate and not score.structured and score.score == 0.0
    assert is_degenerate(NUMBER_SALAD) and repetition(NUMBER_SALAD) > 0.5
    assert consistency([[NUMBER_SALAD, NUMBER_SALAD]]) == 0.0, "the same loop twice is not consistency"


@pytest.mark.parametrize("answer, shaped", [
    ("1. Isolation: each /24 is its own blast radius.", True),
    ("1. Isolation: one blast radius. 2. Routing: per-subnet tables. 3. Capacity: 256 subnets of 251 hosts.", True),
    ("1. A is here. 2. B is there. 3. C is near. 4. D is far.", False),      # more than three reasons
    ("2. Routing: per-subnet tables. 1. Isolation: one blast radius.", False),  # out of order
    ("Here is why: 1. Isolation: one blast radius.", False),                 # preamble before the first reason
    ("1. Isolation. 2. Routing.", False),                                    # labels, not clauses
    ("Isolation keeps failures contained.", False),                          # not numbered
    ("", False),
    # reason 3 repeats reason 1 (a champion's code-review answer; its trigram repetition of 0.28
    # stayed under the loop threshold, so it once counted as well shaped)
    ("1. Review: a second reader catches the bug before merge. 2. History: the diff records why. "
     "3. Review: a second reader catches the bug before merge.", False),
    ("1. Review: a reader catches bugs. 2. Review: a reader spreads knowledge of the code.", True),
])
def test_structure_check_wants_one_to_three_distinct_numbered_clauses(answer, shaped):
    assert is_structured(answer) is shaped


def test_similarity_and_consistency_known_values():
    assert cosine_similarity("isolation routing capacity", "isolation routing capacity") == pytest.approx(1.0)
    assert cosine_similarity("isolation routing", "latency cost") == 0.0
    assert cosine_similarity("isolation routing", "isolation cost") == pytest.approx(0.5)  # 1 / (sqrt2 * sqrt2)
    assert cosine_similarity("1. isolation 2. routing", "1. latency 2. cost") == 0.0, "list markers are not content"
    assert cosine_similarity("1. 2.", "1. 2.") == 0.0, "two answers without content agree on nothing"
    same, other = "isolation keeps routing apart", "latency costs money"
    assert agreement([same, same, other]) == pytest.approx(1 / 3)  # pairs: 1, 0, 0
    assert agreement(["only one"]) == 1.0
    assert consistency([[same, same], [same, other], ["single"]]) == pytest.approx(0.5), "singletons are skipped"


def test_spread_and_perplexity():
    assert spread([0.5, 0.5]) == (0.5, 0.0)
    assert spread([1.0, 3.0]) == (2.0, 1.0)
    assert all(math.isnan(v) for v in spread([]))
    assert perplexity(0.0) == 1.0 and perplexity(math.log(50)) == pytest.approx(50)
    assert perplexity(1e6) == math.inf


def test_token_losses_use_only_masked_targets():
    # Vocabulary of 2; position t's logits predict token t+1. Uniform logits cost ln 2 per token.
    logits = torch.zeros(1, 3, 2)
    input_ids = torch.tensor([[0, 1, 1]])
    sums, counts = token_losses(logits, input_ids, torch.tensor([[0, 0, 1]]))
    assert counts == [1] and sums[0] == pytest.approx(math.log(2))
    confident = torch.tensor([[[0.0, 20.0], [0.0, 20.0], [0.0, 0.0]]])  # sure of token 1 at both steps
    sums, counts = token_losses(confident, input_ids, torch.tensor([[0, 1, 1]]))
    assert counts == [2] and sums[0] < 1e-6


def test_loss_metrics_are_token_weighted():
    metrics = loss_metrics([4.0, 2.0], [2, 2])  # mean 1.5 per token, not mean of (2, 1) per example
    assert metrics["loss"] == 1.5 and metrics["perplexity"] == pytest.approx(math.exp(1.5))
    metrics = loss_metrics([3.0, 1.0], [3, 1])
    assert metrics["loss"] == 1.0


def test_kl_is_zero_for_identical_and_known_for_different_distributions():
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    mask = torch.tensor([[1, 1]])
    sums, counts = kl_per_example(p, p, mask)
    assert counts == [2] and sums[0] == pytest.approx(0.0, abs=1e-7)
    q = torch.log(torch.tensor([[[0.9, 0.1], [0.9, 0.1]]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL([.5,.5] || [.9,.1]) at position 0 only
    sums, _ = kl_per_example(p, q, mask)
    assert sums[0] == pytest.approx(expected, rel=1e-5)
    sums, counts = kl_per_example(p, q, torch.tensor([[0, 1]]))
    assert counts == [1] and sums[0] == pytest.approx(0.0, abs=1e-6), "masked positions do not count"


def test_drift_metric_averages_per_probe():
    assert drift_metric([2.0, 1.0], [2, 1])["drift_kl"] == 1.0  # (2/2 + 1/1) / 2
