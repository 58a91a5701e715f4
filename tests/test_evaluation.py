"""Evaluation: the plan (which prompts, which paraphrases) and a real run on the tiny model."""
from collections import Counter

import pytest

from tasks.domain.evaluation import generation_sample, paraphrase_groups, parse_model_uri, score_answers


def test_generation_sample_is_balanced_one_per_group_and_seeded(small_build):
    rows = small_build.eval
    sample = generation_sample(rows, 12, seed=3)
    assert len(sample) == 12 and len({r.metadata.group for r in sample}) == 12
    per_principle = Counter(r.metadata.final_principle for r in sample)
    assert max(per_principle.values()) - min(per_principle.values()) <= 1, per_principle
    assert [r.id for r in generation_sample(rows, 12, seed=3)] == [r.id for r in sample]
    assert [r.id for r in generation_sample(rows, 12, seed=4)] != [r.id for r in sample]


def test_paraphrase_groups_hold_every_phrasing_of_one_question(small_build):
    groups = paraphrase_groups(small_build.eval, 5, seed=1)
    assert 0 < len(groups) <= 5
    for group in groups:
        assert len(group) >= 2 and len({r.metadata.group for r in group}) == 1
        assert len({r.turns("user")[-1] for r in group}) == len(group), "distinct phrasings"
        assert len({r.turns("assistant")[-1] for r in group}) == 1, "one expected answer"


def test_model_uris_parse_or_fail_clearly():
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/12") == ("m", None, "12")
    for bad in ["runs:/abc/adapter", "models:/m", "models:/m@", "m@champion"]:
        with pytest.raises(ValueError, match="not a registry URI"):
            parse_model_uri(bad)


def test_answers_are_scored_against_their_own_principle(small_build, devops_framework):
    row = small_build.eval[0]
    expected = row.turns("assistant")[-1]
    good, bad = score_answers([row, row], [expected, "maybe " * 100], devops_framework)
    assert good.within_cap and not good.hedges and good.style > bad.style
    assert bad.hedges == ["maybe"] and not bad.within_cap
    assert good.principle == "/".join(row.metadata.principle_path)


def test_numbers_right_sees_wrong_arithmetic_and_pasted_figures_that_the_shape_metrics_pass(small_build):
    """A well-shaped answer with one computed number wrong, or with a figure pasted from another
    template, is structured and within the cap, and not right."""
    from tasks.adapters.ops.config_files import load_framework
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.evaluation import compare_heldout, heldout_metrics, style_metrics
    from tasks.domain.expansion import build_dataset

    from conftest import REPO

    finance = load_framework(REPO / "configs/frameworks/finance.yaml")
    rows = [r for r in build_dataset(OfflineBlueprintGenerator().generate(finance), seed=1, eval_fraction=0.1,
                                     max_samples=0).eval if r.metadata.pattern_id == "grow-savings"][:2]
    right, wrong = (r.turns("assistant")[-1] for r in rows)
    gain = wrong.split("the gain is $")[1].split(",")[0]  # the thousands of the true gain
    miscounted = wrong.replace(f"the gain is ${gain},", f"the gain is ${int(gain) + 1},", 1)
    exact, off = score_answers(rows, [right, miscounted], finance)
    assert exact.structured and off.structured and off.within_cap, "the shape metrics cannot tell them apart"
    assert (exact.numbers_missing, exact.numbers_invented) == ([], [])
    assert off.numbers_missing and off.numbers_invented
    assert style_metrics([exact, off])["numbers_right"] == 0.5

    (pasted,) = compare_heldout(["Why keep database backups in another region?"], ["Backups."],
                                ["1. Blast radius: a bad build hits 5% of users, not all. 2. Rollback: undo is cheap."],
                                finance.style)
    assert pasted.tuned_structured and pasted.tuned_new_numbers == ["5"]
    assert heldout_metrics([pasted])["heldout/new_numbers"] == 1.0
    assert pasted.tuned_style == 0.75, "held-out style loses the pasted figure's point, and only that one"


@pytest.mark.slow
def test_evaluation_on_the_tiny_model_is_deterministic_and_drift_is_measured(tiny_base, small_build,
                                                                             devops_framework, tmp_path):
    from tasks.adapters.model.inference import load_generator
    from tasks.adapters.model.measurement import evaluate_generator
    from tasks.adapters.model.training import train_lora
    from tasks.adapters.ops.config_files import load_heldout
    from tasks.domain.config import EvaluationConfig, Probe, TrainingConfig
    from tasks.domain.content import content_plan

    probes = [Probe(prompt="What is the capital of France?", answer="Paris."),
              Probe(prompt="Name a colour.", answer="Blue.")]
    cfg = EvaluationConfig(max_generations=6, consistency_groups=2, max_new_tokens=12, batch_size=4,
                           stability={"seeds": [1, 2], "temperature": 0.9})
    eval_rows = small_build.eval
    heldout = load_heldout(EvaluationConfig(), "devops").questions[:4]
    content = content_plan(small_build.train, devops_framework, seed=3)
    base = load_generator(tiny_base, None, devops_framework.system_prompt)
    untouched = evaluate_generator(base, eval_rows, devops_framework, probes, cfg, heldout, content)
    assert untouched.metrics["drift_kl"] == 0.0, "a model without an adapter has not drifted from itself"
    # content: a model without an adapter is its own base in the choice test too
    assert untouched.metrics["heldout/choice_gain"] == 0.0
    assert all(h.choice_correct == h.base_choice_correct and len(h.choice_scores) == 5 for h in untouched.heldout)

    adapter = tmp_path / "adapter"
    train_lora(tiny_base, small_build.train, small_build.eval, TrainingConfig(
        max_steps=30, learning_rate=1.0e-2, batch_size=8, max_length=320, save_steps=30, seed=5,
        lora={"target_modules": "all-linear"}), adapter)
    tuned = load_generator(tiny_base, adapter, devops_framework.system_prompt)
    first = evaluate_generator(tuned, eval_rows, devops_framework, probes, cfg, heldout, content)
    again = evaluate_generator(tuned, eval_rows, devops_framework, probes, cfg, heldout, content)
    assert first.metrics == again.metrics, "deterministic for a seed"
    metrics = first.metrics
    assert metrics["drift_kl"] > 0.0 and metrics["loss"] < untouched.metrics["loss"], "training moved the model"
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"], rel=1e-6)
    assert metrics["generated"] == 6 and len(first.answers) == 6 and all(a.loss is not None for a in first.answers)
    assert 0.0 <= metrics["style_adherence"] <= 1.0 and 0.0 <= metrics["consistency"] <= 1.0
    assert metrics["stability/seeds"] == 2 and metrics["stability/style_adherence_std"] >= 0.0
    assert len(first.paraphrases) == 2 and len(first.probe_kl) == 2
    for key in ("choice_accuracy", "heldout/choice_accuracy", "heldout/base_choice_accuracy", "heldout/pasted",
                "heldout/stock", "heldout/base_stock"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # each answer's stock reasons are its own reasons, each named with the other question it went to
    questions = {h.question for h in first.heldout}
    for h in first.heldout:
        for flagged in h.tuned_stock:
            reason, _, other = flagged.partition(" [also to: ")
            assert reason in h.tuned and other.rstrip("]") in questions - {h.question}
    assert metrics["heldout/stock"] == sum(bool(h.tuned_stock) for h in first.heldout) / len(first.heldout)
    assert [h.reference for h in first.heldout] == [q.reference for q in heldout]
    assert all(a.choice_correct is not None for a in first.answers)


@pytest.mark.slow
def test_the_lean_evaluation_measures_what_the_plain_one_does(tiny_base, small_build, devops_framework, tmp_path):
    """Issue 29: the output layer only at answer positions gives every row's summed answer loss and
    token count as full logits do, and the adapter merged into the weights for generation gives the
    same greedy answers; afterwards the model is unmerged again (the base's own outputs unchanged).
    The loss and the choice test, the tokens a batch's rows begin with run once for the batch (for an
    item's options: its system prompt and question), score as whole passes do."""
    import contextlib

    import torch

    from tasks.adapters.model.inference import load_generator
    from tasks.adapters.model.measurement import _batches, _logits, _tokenize, adapter_merged, answer_token_losses, choice_scores
    from tasks.adapters.model.training import train_lora
    from tasks.domain.config import TrainingConfig
    from tasks.domain.content import content_plan
    from tasks.domain.records import Message
    from tasks.domain.tensor_metrics import token_losses

    adapter = tmp_path / "adapter"
    train_lora(tiny_base, small_build.train, [], TrainingConfig(
        max_steps=30, learning_rate=1.0e-2, batch_size=8, max_length=320, save_steps=30, seed=5,
        lora={"target_modules": "all-linear"}), adapter)
    gen = load_generator(tiny_base, adapter, devops_framework.system_prompt, "cpu")
    examples = _tokenize(gen, [gen.codec.fmt.row(r) for r in small_build.eval[:12]])
    with torch.no_grad():
        for batch in _batches(gen, examples, 4, "test"):
            full = token_losses(_logits(gen.model, batch), batch.input_ids, batch.loss_mask)
            lean = answer_token_losses(gen.model, batch)
            assert lean[1] == full[1] and min(full[1]) > 5
            assert lean[0] == pytest.approx(full[0], rel=1e-5)
    items = content_plan(small_build.train, devops_framework, seed=3).row_items(small_build.eval[:6])
    options = [gen.codec.fmt.example([*i.prompt, Message(role="assistant", content=o)]) for i in items for o in i.options]
    for adapter_on in (True, False):
        with torch.no_grad(), (contextlib.nullcontext() if adapter_on else gen.model.disable_adapter()):
            shared = choice_scores(gen, items)
            whole_rows = [token_losses(_logits(gen.model, b), b.input_ids, b.loss_mask)
                          for b in _batches(gen, _tokenize(gen, options), 4, "whole passes")]
        whole = iter(-s / n for sums, counts in whole_rows for s, n in zip(sums, counts, strict=True))
        for result in shared:
            assert len(result.scores) >= 4
            assert result.scores == pytest.approx([next(whole) for _ in result.scores], abs=2e-4)
    questions = [r.turns("user")[-1] for r in small_build.eval[:8]]
    plain = gen.reply(questions, max_new_tokens=24, batch_size=4)
    with gen.model.disable_adapter():
        base_before = gen.reply(questions, max_new_tokens=24, batch_size=4)
    with adapter_merged(gen):
        assert all(m.merged for m in gen.model.modules() if hasattr(m, "merged_adapters"))
        merged = gen.reply(questions, max_new_tokens=24, batch_size=4)
    assert merged == plain and plain != base_before, "the same answers, and they are the adapter's"
    assert not any(m.merged for m in gen.model.modules() if hasattr(m, "merged_adapters"))
    with gen.model.disable_adapter():
        assert gen.reply(questions, max_new_tokens=24, batch_size=4) == base_before
