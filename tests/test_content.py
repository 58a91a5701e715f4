"""Content checks (issue 30): the choice test's items, paste detection and relevance, calibrated on
the shipped frameworks' own training rows and the hand-written held-out references."""
from __future__ import annotations

from collections import Counter
from functools import partial

import pytest
import yaml

from tasks.domain.config import HeldOutSet
from tasks.domain.content import (
    ChoiceItem,
    PasteIndex,
    choice_chance,
    choice_results,
    content_plan,
    question_nouns,
    relevance,
    stock_reasons,
)
from tasks.domain.metrics import is_structured
from tasks.domain.preferences import reasons_by_pattern
from tasks.domain.records import question_turns

from conftest import REPO

# The default champion's answers to questions outside every pattern (issue 30's and issue 29's
# notes, verbatim): each has reasons pasted from the canary or the storage-lifecycle template.
PASTED_ANSWERS = [
    ("Why enable mutual TLS between internal services?",
     "1. Blast radius: a bad build hits 25% of users, not all. 2. Evidence: compare the mutual TLS against the public "
     "and private paths. 3. Rollback: shifting a mismatch back is instant and cheap."),
    ("Why put a health check on a load balancer target?",
     "1. Price: a health check costs a fraction of a load balancer target. 2. Availability: a health check is rarely "
     "available. 3. Evidence: compare the health check against the target before making changes."),
    ("Why rotate API keys on a schedule?",
     "1. Blast radius: a bad build hits 50% of users, not all. 2. Evidence: compare the schedule against the API key "
     "before publishing. 3. Rollback: shifting a bad build back is instant and cheap."),
]
DOMAINS = ["devops", "cs", "finance", "physics"]


def _heldout(domain: str) -> HeldOutSet:
    return HeldOutSet.model_validate(yaml.safe_load((REPO / f"configs/probes/heldout/{domain}.yaml").read_text()))


@pytest.fixture(scope="module")
def plans():
    """Each shipped domain's content plan, from its full offline dataset's training rows."""
    from tasks.adapters.ops.config_files import load_framework
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import build_dataset

    built = {}
    for domain in DOMAINS:
        framework = load_framework(REPO / f"configs/frameworks/{domain}.yaml")
        rows = build_dataset(OfflineBlueprintGenerator().generate(framework), seed=13, eval_fraction=0.1,
                             max_samples=0).train
        built[domain] = (framework, rows, content_plan(rows, framework, seed=13))
    return built


def test_every_heldout_question_has_a_reference_in_the_trained_shape():
    for domain in DOMAINS:
        heldout = _heldout(domain)
        assert len(heldout.questions) >= 16
        assert all(is_structured(q.reference) for q in heldout.questions), domain


def test_a_reference_out_of_shape_is_refused_on_load_naming_the_question():
    from pydantic import ValidationError

    bad = {"domain": "devops", "description": "d",
           "questions": [{"question": "Why cache Docker layers in CI?", "reference": "Because it is faster."}]}
    with pytest.raises(ValidationError, match="Why cache Docker layers in CI.*not 1-3 numbered reasons"):
        HeldOutSet.model_validate(bad)
    with pytest.raises(ValidationError, match="reference"):
        HeldOutSet.model_validate({**bad, "questions": [{"question": "Why cache Docker layers in CI?"}]})


def test_pasted_reasons_are_found_and_named_by_their_pattern(plans):
    _, _, plan = plans["devops"]
    for question, answer in PASTED_ANSWERS:
        pastes = plan.index.pastes(answer, question)
        assert pastes, answer
        assert {p.pattern for p in pastes} <= {"canary", "lifecycle", "split-vpc"}
    question, answer = PASTED_ANSWERS[0]
    tls = plan.index.pastes(answer, question)
    # the canary's blast radius and rollback. The middle reason blends two patterns (the canary's
    # "Evidence: compare ... against", the subnet pattern's "public and private paths"): 0.55 of its
    # new words come from the subnet reason, below the 0.6 rule since the 61-pattern framework made
    # "public", "private" and "path" common training words. Blends are a known blind spot.
    assert [(p.pattern, p.reason) for p in tls] == [
        ("canary", "Blast radius: a bad build hits 25% of users, not all."),
        ("canary", "Rollback: shifting a mismatch back is instant and cheap.")]
    assert all(p.share >= 0.6 for p in tls)


def test_hand_written_references_are_not_called_pasted(plans):
    """Calibration: the references share the domain's vocabulary (rollback, recovery, blast radius)
    but say their own thing; a detector that flags them would flag good answers too."""
    for domain, (_, _, plan) in plans.items():
        flagged = [(q.question, plan.index.pastes(q.reference, q.question)) for q in _heldout(domain).questions]
        assert [f for f in flagged if f[1]] == [], domain


def test_a_pattern_is_not_pasted_from_itself_and_question_words_do_not_count():
    index = PasteIndex({"canary": ["Blast radius: a bad build hits 5% of users, not all."],
                        "non-root": ["Blast radius: whoever compromises nginx cannot write host paths as root."]})
    own = "1. Blast radius: a bad build hits 10% of users, not all."
    assert index.pastes(own, "Why canary the API?", own_pattern="canary") == []
    assert [p.pattern for p in index.pastes(own, "Why canary the API?", own_pattern="non-root")] == ["canary"]
    # the question asks about bad builds hitting users: those words are called for, not pasted
    assert index.pastes(own, "Why does a bad build hit all users at once?") == []


def test_choice_items_put_the_reference_first_among_distinct_same_shaped_distractors(plans):
    for domain, (framework, rows, plan) in plans.items():
        heldout = _heldout(domain)
        ask = partial(question_turns, framework.system_prompt)
        items = plan.heldout_items(ask, [(q.question, q.reference) for q in heldout.questions])
        for item, question in zip(items, heldout.questions, strict=True):
            assert item.options[0] == question.reference and item.kinds[0] == "reference"
            assert len(set(item.options)) == len(item.options) == 5, (domain, item.kinds)
            assert {k.split(":")[0] for k in item.kinds[1:]} == {"pasted", "template", "swapped"}
            assert all(is_structured(option) for option in item.options), (domain, item.options)
            assert item.prompt[0].content == framework.system_prompt and item.prompt[-1].content == question.question
        assert choice_chance(items) == pytest.approx(0.2)
        # the same options in the same order for every model, every run
        again = plan.heldout_items(ask, [(q.question, q.reference) for q in heldout.questions])
        assert again == items
        eval_items = plan.row_items(rows[:20])
        assert all(not kind.endswith(":" + row.metadata.pattern_id) for item, row in zip(eval_items, rows[:20],
                   strict=True) for kind in item.kinds[1:])


def test_pasted_distractors_carry_the_question_nouns(plans):
    framework, _, plan = plans["devops"]
    (item,) = plan.heldout_items(partial(question_turns, framework.system_prompt), [("Why rotate TLS certificates automatically?",
                                                             "1. Expiry: automation does not forget the date.")])
    pasted = [o for o, k in zip(item.options, item.kinds, strict=True) if k.startswith("pasted:")]
    assert len(pasted) == 2 and all("TLS certificates" in o for o in pasted)
    assert question_nouns("Why keep database backups in a different region?") == ["database backups", "different region"]


def test_the_reference_is_correct_only_when_it_scores_strictly_highest():
    item = ChoiceItem(question="q", prompt=(), options=("r", "a", "b"), kinds=("reference", "pasted:x", "template:y"))
    right, tied, wrong = choice_results([item] * 3, [[-1.0, -2.0, -3.0], [-1.0, -1.0, -3.0], [-2.0, -3.0, -1.0]])
    assert (right.correct, tied.correct, wrong.correct) == (True, False, False)
    assert wrong.picked == "template:y" and right.picked == "reference"


def test_relevance_ranks_an_on_topic_answer_above_a_pasted_one(plans):
    heldout = _heldout("devops")
    documents = [f"{q.question} {q.reference}" for q in heldout.questions]
    tls = next(i for i, q in enumerate(heldout.questions) if "TLS" in q.question)
    on_topic = "1. Expiry: an expired certificate breaks clients. 2. Toil: nobody renews certificates by hand."
    pasted = "1. Blast radius: a bad build hits 5% of users, not all. 2. Rollback: shifting 5% back is cheap."
    answers = [q.reference for q in heldout.questions]
    assert relevance(answers[:tls] + [on_topic] + answers[tls + 1:], documents)[tls] == 1.0
    assert relevance(answers[:tls] + [pasted] + answers[tls + 1:], documents)[tls] == 0.0


def test_stock_reasons_are_a_models_own_filler_repeated_across_questions():
    """The hand-written references reuse no reason across the 20 held-out questions; three real
    answers of the 61-pattern DevOps model (60 steps, 2026-12-05), each on its own question and
    none pasted from training, share one claim with the nouns swapped: all three are stock."""
    heldout = _heldout("devops")
    questions = [q.question for q in heldout.questions]
    references = [q.reference for q in heldout.questions]
    assert stock_reasons(references, questions) == [[]] * len(questions)
    filler = {"Why put a load balancer in front of two web servers?":
              "1. Cost: one load balancer is a fixed cost, not a fixed capacity. 2. Availability: one load balancer "
              "is always available, so the web servers can fail. 3. Security: a load balancer is a security layer, "
              "so it's not a vulnerability.",
              "Why separate read replicas from the primary database?":
              "1. Cost: read replicas take up the primary database, so they're free to grow. 2. Availability: read "
              "replicas fail quickly, so the primary database is always available. 3. Maintenance: one read replica "
              "is enough to test the database and its dependencies.",
              "Why use a message queue between an API and its workers?":
              "1. Latency: a slow API drains the message queue, so the API can keep up. 2. Cost: a slow API drains "
              "the message queue, so the cost of a slow API is the same as the cost of a slow worker. "
              "3. Availability: a message queue is always available, so the API and its workers can fail gracefully."}
    answers = [filler.get(q, ref) for q, ref in zip(questions, references, strict=True)]
    found = stock_reasons(answers, questions)
    flagged = {questions[i] for i, reasons in enumerate(found) if reasons}
    assert flagged == set(filler)
    assert all(p.reason.startswith("Availability:") for i in range(len(found)) for p in found[i])


def test_the_reward_model_is_compared_with_the_content_checks_on_the_steps_they_flag(plans):
    """Each held-out answer's flagged steps are its pasted and stock reasons, by their place among
    the steps the reward model scores (a preamble is a step); the AUROC says whether the reward
    model scores those steps below the others."""
    from tasks.domain.content import ChoiceResult
    from tasks.domain.evaluation import HeldOutAnswer, judge_heldout_content, step_reward_on_flags

    _, _, plan = plans["devops"]
    heldout = _heldout("devops").questions[:3]
    tuned = ["Sure. " + PASTED_ANSWERS[0][1],  # canary pastes, after a preamble
             "1. Cost: one NAT gateway is a fixed cost. 2. Availability: one NAT gateway is always available.",
             "1. Cost: shared runners bill by the minute. 2. Availability: a runner is always available."]
    answers = [HeldOutAnswer(q.question, "b", t, True, True, False, False, 9) for q, t in zip(heldout, tuned, strict=True)]
    verdict = [ChoiceResult(question=q.question, correct=True, picked="reference", scores=[0.0], kinds=["reference"])
               for q in heldout]
    judge_heldout_content(answers, [q.reference for q in heldout], verdict, None, plan.index)
    assert [a.tuned_flagged_steps for a in answers] == [[1, 3], [1], [1]]
    scores = [[0.9, 0.1, 0.8, 0.2], [0.7, 0.3], [0.6, 0.65]]  # one flagged step (0.65) above an unflagged one (0.6)
    for answer, steps in zip(answers, scores, strict=True):
        answer.tuned_step_scores = steps
    figures = step_reward_on_flags(answers)
    assert figures["heldout/step_reward_flag_auroc"] == pytest.approx(1 - 1 / 16)
    assert figures["heldout/step_reward_flagged"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.65) / 4)
    unflagged = HeldOutAnswer("q", "b", "1. R: r.", True, True, False, False, 2, tuned_step_scores=[0.5])
    assert step_reward_on_flags([unflagged]) == {}, "no flagged step: nothing to compare"


def test_the_gate_names_each_content_check_it_fails():
    from tasks.domain.promotion import PromotionGate, decide

    gate = PromotionGate(min_heldout_choice_accuracy=0.8, min_heldout_choice_gain=0.0, max_heldout_pasted=0.1,
                         max_heldout_stock=0.2)
    pasting = {"heldout/choice_accuracy": 0.0, "heldout/choice_gain": -0.8, "heldout/pasted": 0.85,
               "heldout/stock": 0.45}
    decision = decide(pasting, None, gate, challenger_version="1")
    assert not decision.promote
    assert {c.name for c in decision.checks if not c.passed} == {
        "picks the reference answer on held-out questions", "picks the reference more often than its base",
        "held-out answers with a pasted reason", "held-out answers with a stock reason"}
    good = {"heldout/choice_accuracy": 0.85, "heldout/choice_gain": 0.05, "heldout/pasted": 0.05, "heldout/stock": 0.1}
    assert decide(good, None, gate, challenger_version="1").promote
    unmeasured = decide({}, None, gate, challenger_version="1")
    assert not unmeasured.promote and all("was not measured" in c.detail for c in unmeasured.checks)


def test_shipped_gate_checks_content():
    from tasks.adapters.ops.config_files import load_pipeline_config

    gate = load_pipeline_config().promotion
    assert gate.min_heldout_choice_accuracy >= 0.8 and gate.max_heldout_pasted <= 0.1 and gate.max_heldout_stock <= 0.2
    assert gate.min_heldout_choice_gain is not None


def test_pool_is_every_pattern(plans):
    _, rows, plan = plans["devops"]
    assert set(plan.source.pool) == set(reasons_by_pattern(rows)) == set(plan.source.trained_answer)
    assert plan.source.most_frequent == "canary"


@pytest.mark.parametrize("domain", DOMAINS)
def test_step_probes_pair_each_reference_with_one_planted_wrong_step(domain):
    """configs/probes/steps/<domain>.yaml (issue 30 part 6): every held-out reference as written and
    once more with exactly one step replaced, at the index it names; the planted steps spread over
    every position, so "the last step is wrong" is not a rule that scores well."""
    from tasks.adapters.ops.config_files import load_model
    from tasks.domain.config import StepProbeSet
    from tasks.domain.steps import answer_steps

    probes = load_model(StepProbeSet, REPO / f"configs/probes/steps/{domain}.yaml")
    assert probes.domain == domain
    references = {q.question: answer_steps(q.reference) for q in _heldout(domain).questions}
    clean = [a for a in probes.answers if a.wrong_step is None]
    planted = [a for a in probes.answers if a.wrong_step is not None]
    assert len(clean) == len(planted) == len(references)
    assert all(a.steps == references[a.question] for a in clean)
    for answer in planted:
        changed = [i for i, (s, r) in enumerate(zip(answer.steps, references[answer.question], strict=True)) if s != r]
        assert changed == [answer.wrong_step], answer.question
    _assert_spread_over_positions(planted)


def _assert_spread_over_positions(planted) -> None:
    positions = Counter(a.wrong_step for a in planted)
    assert len(positions) == 3 and max(positions.values()) <= len(planted) / 2, positions


def test_step_probe_dev_split_pairs_new_questions_with_one_planted_step(plans):
    """configs/probes/steps-dev/devops.yaml, the split a reward-model change is tried on before the
    test probes are read: each question once as written and once with one step replaced, the
    planted steps over every position, and no question that the framework trains on, the held-out
    set asks or the test probes hold."""
    from tasks.adapters.ops.config_files import load_model
    from tasks.domain.config import StepProbeSet

    dev = load_model(StepProbeSet, REPO / "configs/probes/steps-dev/devops.yaml")
    clean = {a.question: a.steps for a in dev.answers if a.wrong_step is None}
    planted = [a for a in dev.answers if a.wrong_step is not None]
    assert len(clean) == len(planted) == len({a.question for a in planted}) >= 10
    for answer in planted:
        changed = [i for i, (s, r) in enumerate(zip(answer.steps, clean[answer.question], strict=True)) if s != r]
        assert changed == [answer.wrong_step], answer.question
    _assert_spread_over_positions(planted)
    test_probes = load_model(StepProbeSet, REPO / "configs/probes/steps/devops.yaml")
    _, rows, _ = plans["devops"]
    elsewhere = ({q.question for q in _heldout("devops").questions} | {a.question for a in test_probes.answers}
                 | {"\n".join(r.turns("user")) for r in rows})
    assert not set(clean) & elsewhere
