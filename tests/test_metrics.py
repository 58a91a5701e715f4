"""Evaluation metrics on hand-made examples whose answers are known."""
import math

import pytest
import torch

from tasks.domain.evaluation import drift_metric, loss_metrics
from tasks.domain.metrics import (agreement, consistency, cosine_similarity, hedges, key_term_coverage, perplexity,
                                  spread, style_score, style_summary)
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


def test_style_score_combines_cap_coverage_and_hedging():
    terse = style_score("1. Isolation. 2. Routing. 3. Capacity.", max_words=10, key_terms=["isolation", "routing"],
                        banned_phrases=["maybe"])
    assert (terse.within_cap, terse.coverage, terse.no_hedging, terse.score) == (True, 1.0, True, 1.0)
    rambling = style_score("maybe " * 20, max_words=10, key_terms=["isolation"], banned_phrases=["maybe"])
    assert (rambling.within_cap, rambling.coverage, rambling.no_hedging, rambling.score) == (False, 0.0, False, 0.0)
    empty = style_score("", max_words=10, key_terms=["x"], banned_phrases=[], min_words=2)
    assert not empty.within_cap, "an empty answer is not terse, it is missing"
    summary = style_summary([terse, rambling])
    assert summary["style_adherence"] == 0.5 and summary["within_word_cap"] == 0.5 and summary["answer_words"] == 13.0


def test_similarity_and_consistency_known_values():
    assert cosine_similarity("a b c", "a b c") == pytest.approx(1.0)
    assert cosine_similarity("a b", "c d") == 0.0
    assert cosine_similarity("a b", "a c") == pytest.approx(0.5)  # one shared word of two: 1 / (sqrt2 * sqrt2)
    assert cosine_similarity("1. isolation 2. routing", "1. latency 2. cost") == 0.0, "list markers are not content"
    assert agreement(["a b", "a b", "c d"]) == pytest.approx(1 / 3)  # pairs: 1, 0, 0
    assert agreement(["only one"]) == 1.0
    assert consistency([["a b", "a b"], ["a b", "c d"], ["single"]]) == pytest.approx(0.5), "singletons are skipped"


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
