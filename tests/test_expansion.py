"""Expansion, dedup, cap and split: deterministic, metadata complete, no leakage."""
from collections import Counter

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
