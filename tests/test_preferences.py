"""Preference pairs from the framework: each rejected answer breaks exactly the rule it claims,
chosen is the framework's answer, and the pairs are the same for the same seed."""
from collections import Counter
from pathlib import Path

import pytest

from tasks.domain.metrics import MAX_REASONS, check_numbers, hedges, is_structured, word_count
from tasks.domain.preferences import RULE_BASED, PreferencePair, broken_rule, build_pairs, reasons_by_pattern


@pytest.fixture(scope="module")
def finance_build():
    from tasks.adapters.ops.config_files import load_framework
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import build_dataset

    from conftest import REPO

    framework = load_framework(REPO / "configs/frameworks/finance.yaml")
    build = build_dataset(OfflineBlueprintGenerator().generate(framework), seed=13, eval_fraction=0.1, max_samples=0)
    return framework, build


def test_every_kind_is_built_and_breaks_the_rule_it_claims(finance_build):
    framework, build = finance_build
    pairs = build_pairs(build.train, framework, seed=1)
    kinds = Counter(p.kind for p in pairs)
    assert set(kinds) == set(RULE_BASED) and min(kinds.values()) >= 150, kinds
    style = framework.style
    for pair in pairs:
        assert pair.chosen != pair.rejected and is_structured(pair.chosen)
        assert pair.prompt[0].role == "system" and pair.prompt[-1].role == "user" and pair.split == "train"
    by_kind = {kind: next(p for p in pairs if p.kind == kind) for kind in RULE_BASED}
    assert hedges(by_kind["hedged"].rejected, style.banned_phrases)
    assert word_count(by_kind["over_cap"].rejected) > style.max_answer_words
    assert by_kind["too_many_reasons"].rejected.count(f"{MAX_REASONS + 1}. ") == 1
    wrong = by_kind["wrong_number"]
    assert not check_numbers(wrong.question(), wrong.chosen, wrong.rejected).right
    assert len(wrong.rejected.split()) == len(wrong.chosen.split()), "one number changed, nothing else"
    # another pattern's whole trained answer under this question (issue 30's pasting)
    pasted = [p for p in pairs if p.kind == "pasted_answer"]
    trained = {row.turns("assistant")[-1]: row.metadata.pattern_id for row in build.train}
    assert all(trained.get(p.rejected) not in (None, p.pattern_id) for p in pasted)
    frequent = Counter(trained[p.rejected] for p in pasted).most_common(1)[0][0]
    assert frequent == Counter(row.metadata.pattern_id for row in build.train).most_common(1)[0][0]
    assert build_pairs(build.train, framework, seed=1) == pairs, "deterministic for a seed"


def test_a_rejected_answer_that_keeps_its_rule_is_caught(finance_build):
    framework, build = finance_build
    pool = reasons_by_pattern(build.train)
    pair = build_pairs(build.train[:20], framework, seed=1)[0]
    for kind in RULE_BASED:
        harmless = PreferencePair(**{**pair.model_dump(), "kind": kind, "rejected": pair.chosen.replace("1. ", "1.  ")})
        assert not broken_rule(harmless, framework, pool), kind


@pytest.mark.integration
def test_pairs_validate_and_a_bad_pair_is_named_by_its_rule(finance_build, tmp_path):
    """The suite passes the built pairs; a pair whose rejected side keeps its rule, and a prompt
    holding an eval question, each fail by pair id."""
    from expectations.preference_pairs import build_suite, flatten_pairs
    from tasks.adapters.data.gx_runner import run_suite
    from tasks.domain.config import ValidationConfig
    from tasks.domain.records import Message

    framework, build = finance_build
    pool = reasons_by_pattern(build.train)
    pairs = build_pairs(build.train[:300], framework, seed=1)
    eval_questions = ["\n".join(r.turns("user")) for r in build.eval]
    suite = build_suite(framework, ValidationConfig())
    clean = run_suite(flatten_pairs(pairs, framework, pool, eval_questions), suite, tmp_path / "ok")
    assert clean.success, clean.summary()

    toothless = pairs[3].model_copy(update={"rejected": pairs[3].chosen + " "})
    leaked_question = build.eval[0].turns("user")[-1]
    leaked = pairs[4].model_copy(update={"prompt": [*pairs[4].prompt[:-1], Message(role="user", content=leaked_question)]})
    bad = [*pairs[:3], toothless, leaked, *pairs[5:]]
    report = run_suite(flatten_pairs(bad, framework, pool, eval_questions), build_suite(framework, ValidationConfig()),
                       tmp_path / "bad")
    failed = {f["rule"]: f["row_ids"] for f in report.failures}
    assert failed["rejected differs from chosen"] == [toothless.id]
    assert failed["rejected breaks the rule its pair claims"] == [toothless.id]
    assert failed["no prompt holds an eval-split question (at most 95% of its 8-word runs)"] == [leaked.id]


def test_cli_builds_and_validates_the_pairs_of_a_dataset(rslm_home, tmp_path):
    import json

    from click.testing import CliRunner

    from flows.cli import cli

    built = CliRunner().invoke(cli, ["generate", "--max-samples", "300"])
    assert built.exit_code == 0, built.output
    dataset_dir = json.loads(built.output[built.output.index("{"):])["directory"]
    result = CliRunner().invoke(cli, ["preferences", dataset_dir])
    assert result.exit_code == 0 and "ok: " in result.output and "passed 10 expectations" in result.output
    path = result.output.strip().splitlines()[-1]
    from tasks.adapters.data.preference_store import read_preferences

    pairs = read_preferences(Path(path))
    train_rows = json.loads((Path(dataset_dir) / "manifest.json").read_text())["rows"]["train"]
    assert len(pairs) == train_rows and {p.split for p in pairs} == {"train"}  # one per training row
    held_out = read_preferences(Path(path).with_name("reasoning_preferences.eval.jsonl"))
    assert held_out and {p.split for p in held_out} == {"eval"}


def test_on_policy_pairs_keep_only_the_models_failing_answers(small_build, devops_framework):
    """The model's own answers become rejected only where they fail a check: the champion's
    canary paste ("a bad build hits 5% of users") into an unrelated answer, a loop, a hedge."""
    from tasks.domain.preferences import on_policy_pairs

    rows = [r for r in small_build.train if not any(ch.isdigit() for ch in r.turns("assistant")[-1].replace(
        "1. ", "").replace("2. ", "").replace("3. ", ""))][:4]
    pasted = "1. Blast radius: a bad build hits 5% of users, not all. 2. Evidence: compare it against the baseline."
    answers = [rows[0].turns("assistant")[-1], pasted, "1. 1. 1. 1. 1. 1.", "1. Maybe it depends on the team here."]
    pairs = on_policy_pairs(rows, answers, devops_framework)
    assert [p.source_row_id for p in pairs] == [r.id for r in rows[1:]], "a right answer makes no pair"
    assert [p.rule.split(": ", 1)[1] for p in pairs] == ["numbers", "degenerate, numbers", "hedged"]
    assert all(p.kind == "on_policy" and p.chosen == r.turns("assistant")[-1] for p, r in zip(pairs, rows[1:], strict=True))
    pool = reasons_by_pattern(small_build.train)
    assert all(broken_rule(p, devops_framework, pool) for p in pairs)
    keeps = pairs[0].model_copy(update={"rejected": pairs[0].chosen + " Also true."})
    assert not broken_rule(keeps, devops_framework, pool), "an answer that passes every check is no rejection"
