"""Expansion, dedup, cap and split: deterministic, metadata complete, no leakage."""
from collections import Counter, defaultdict

from tasks.domain.expansion import balanced_cap, build_dataset, deduplicate, expand_blueprint, render
from tasks.domain.records import Message, Row, RowMetadata


def test_deterministic_for_a_seed(devops_blueprint):
    first = build_dataset(devops_blueprint, seed=3, eval_fraction=0.1, max_samples=500)
    again = build_dataset(devops_blueprint, seed=3, eval_fraction=0.1, max_samples=500)
    other = build_dataset(devops_blueprint, seed=4, eval_fraction=0.1, max_samples=500)
    assert [r.id for r in first.train] == [r.id for r in again.train]
    assert [r.id for r in first.train] != [r.id for r in other.train]


def test_rows_carry_metadata_and_messages(devops_blueprint):
    rows = expand_blueprint(devops_blueprint)
    assert len(rows) >= 3000
    digest = devops_blueprint.digest()
    for row in rows[:200]:
        assert [m.role for m in row.messages][:3] == ["system", "user", "assistant"]
        assert row.metadata.blueprint_hash == digest and len(row.metadata.principle_path) == 4
        assert "{" not in row.messages[1].content and "{" not in row.messages[2].content
    assert any(len(r.messages) == 5 for r in rows), "some patterns are multi-turn"


def test_full_expansion_has_no_duplicates_and_stays_terse(devops_blueprint, devops_framework):
    build = build_dataset(devops_blueprint, seed=1, eval_fraction=0.1, max_samples=0)
    assert build.dedup.exact_duplicates == 0 and build.dedup.near_duplicates == 0
    cap = devops_framework.style.max_answer_words
    assert max(len(a.split()) for r in build.train + build.eval for a in r.turns("assistant")) <= cap


def _row(question, answer="An answer of several words here.", principle="p", group="g"):
    return Row(id=question, messages=[Message(role="user", content=question), Message(role="assistant", content=answer)],
               metadata=RowMetadata(domain="d", principle_path=[principle], pattern_id="x", group=group, blueprint_hash="h"))


def test_dedup_removes_exact_and_near_duplicates():
    rows = [_row("Why split the VPC?"), _row("Why split the VPC?"), _row("why split a VPC"), _row("Why peer VPCs?")]
    kept, stats = deduplicate(rows)
    assert [r.id for r in kept] == ["Why split the VPC?", "Why peer VPCs?"]
    assert (stats.exact_duplicates, stats.near_duplicates) == (1, 1)


def test_repeat_caps_keep_every_pattern_and_whole_question_groups(devops_blueprint):
    # the DevOps canary answers 342 questions with 16 answers: capped at one question group per
    # answer, no answer is taught under two questions (paraphrases aside), every pattern keeps rows,
    # and every kept group keeps all its paraphrases (the consistency metric needs them)
    def groups_by_answer(rows):
        found = defaultdict(set)
        for row in rows:
            found[row.turns("assistant")[-1]].add(row.metadata.group)
        return found

    full = build_dataset(devops_blueprint, seed=1, eval_fraction=0.1, max_samples=0)
    everything = full.train + full.eval
    capped = build_dataset(devops_blueprint, seed=1, eval_fraction=0.1, max_samples=0, max_answer_repeats=1)
    rows = capped.train + capped.eval
    assert max(len(g) for g in groups_by_answer(rows).values()) == 1
    assert groups_by_answer(rows).keys() == groups_by_answer(everything).keys()
    assert capped.dedup.repeated_answers == len(everything) - len(rows)
    kept_groups = {r.metadata.group for r in rows}
    assert Counter(r.metadata.group for r in rows) == Counter(r.metadata.group for r in everything
                                                              if r.metadata.group in kept_groups)
    assert max(Counter(r.metadata.group for r in rows).values()) > 1, "paraphrase groups survive"
    canary = Counter(r.metadata.pattern_id for r in rows)["canary"]
    assert canary < Counter(r.metadata.pattern_id for r in everything)["canary"] / 5
    balanced = build_dataset(devops_blueprint, seed=1, eval_fraction=0.1, max_samples=0, max_answer_repeats=1,
                             max_groups_per_pattern=16)
    groups_per_pattern = defaultdict(set)
    for row in balanced.train + balanced.eval:
        groups_per_pattern[row.metadata.pattern_id].add(row.metadata.group)
    assert max(map(len, groups_per_pattern.values())) == 16
    assert set(groups_per_pattern) == {r.metadata.pattern_id for r in everything}


def test_balanced_cap_keeps_every_principle():
    rows = [_row(f"q{i}", principle="big") for i in range(100)] + [_row(f"s{i}", principle="small") for i in range(3)]
    kept = balanced_cap(rows, 10)
    assert len(kept) == 10 and Counter(r.metadata.final_principle for r in kept)["small"] == 3


def test_split_is_stratified_and_groups_never_straddle(small_build, devops_framework):
    train_groups = {r.metadata.group for r in small_build.train}
    eval_groups = {r.metadata.group for r in small_build.eval}
    assert not train_groups & eval_groups, "paraphrases of one question must not leak into eval"
    principles = set(devops_framework.final_principle_ids())
    assert {r.metadata.final_principle for r in small_build.train} == principles
    assert {r.metadata.final_principle for r in small_build.eval} == principles
    assert all(r.metadata.split == "train" for r in small_build.train)
    assert all(r.metadata.split == "eval" for r in small_build.eval)


def test_render_supports_mapping_slots():
    assert render("{s.a}-{b}", {"s": {"a": 1}, "b": "x"}) == "1-x"


def test_answer_variants_share_an_answer_per_question_and_spread_across_slot_values():
    """Issue 30: a pattern's other wordings. Every paraphrase of one question (one group) gets the
    same wording; across slot values every wording is used; a variant naming an unknown slot is
    refused like any template."""
    import pytest
    from pydantic import ValidationError

    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.framework import Framework, Pattern

    pattern = {"id": "canary", "questions": ["Why canary {service}?", "What does a canary of {service} buy?"],
               "answer": "1. Blast radius: a bad {service} build hits few users.",
               "answer_variants": ["1. Exposure: few users see a bad {service} build.",
                                   "1. Rollback: {service} shifts back in seconds."],
               "slots": {"service": [f"service-{i}" for i in range(30)]}}
    framework = Framework.model_validate({
        "domain": "d", "description": "d", "layers": ["a", "b", "c", "d"], "system_prompt": "s",
        "style": {"tone": "t", "max_answer_words": 60},
        "principles": [{"id": "p", "title": "t", "statement": "s", "explanatory": [{"id": "e", "statement": "s",
                        "core_logic": [{"id": "c", "statement": "s", "blocks": [{"id": "b", "summary": "s",
                                        "key_terms": ["k"], "patterns": [pattern]}]}]}]}]})
    rows = expand_blueprint(OfflineBlueprintGenerator().generate(framework))
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row.metadata.group, set()).add(row.turns("assistant")[-1])
    assert len(by_group) == 30 and all(len(answers) == 1 for answers in by_group.values())
    labels = Counter(next(iter(answers)).split(":")[0] for answers in by_group.values())
    assert set(labels) == {"1. Blast radius", "1. Exposure", "1. Rollback"} and min(labels.values()) >= 5, labels
    assert expand_blueprint(OfflineBlueprintGenerator().generate(framework)) == rows, "stable across runs"
    with pytest.raises(ValidationError, match="placeholder {tier} has no slot values"):
        Pattern.model_validate({**pattern, "answer_variants": ["1. Price: {tier} is cheap."]})
