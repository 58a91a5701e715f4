"""The process reward model (issue 17): step-labelled data, its Great Expectations suite, the
token-level labels, and the nightly stage that trains, registers, gates and reuses it, with the
uses built on it (evaluation's step reward, `rslm score`, best-of-n chat)."""
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tasks.domain.steps import CORRUPTIONS, answer_steps, labels_consistent, step_examples

from conftest import tiny_run


@pytest.fixture(scope="module")
def examples(small_build, devops_framework):
    return step_examples(small_build.train, devops_framework, seed=3)


def test_every_corruption_breaks_exactly_the_step_it_labels(examples):
    kinds = Counter(e.kind for e in examples)
    assert set(CORRUPTIONS) <= set(kinds) and kinds["correct"] == len({e.source_row_id for e in examples})
    correct = {e.source_row_id: e for e in examples if e.kind == "correct"}
    where = defaultdict(Counter)
    for example in examples:
        assert labels_consistent(example) and len(example.labels) == len(example.steps)
        if example.kind == "correct":
            assert set(example.labels) == {1}
            continue
        original = correct[example.source_row_id].steps
        changed = [i for i, (a, b) in enumerate(zip(original, example.steps, strict=True)) if a != b]
        assert changed == [example.bad_step], (example.kind, original, example.steps)
        where[example.kind][example.bad_step] += 1
    # the broken step is not always in the same place, so position alone cannot give it away
    assert all(len(positions) >= 2 for kind, positions in where.items() if kind != "wrong_number")


def test_reordered_copies_move_each_label_with_its_step_and_change_nothing_else(examples, small_build, devops_framework):
    """`reward.reorder_share`: the chosen answers' steps are shuffled and renumbered, each label
    moving with its step; every other answer, and every corruption drawn, is as without it."""
    from tasks.domain.steps import _body

    mixed = step_examples(small_build.train, devops_framework, seed=3, reorder_share=0.5)
    assert len(mixed) == len(examples)
    moved = 0
    for before, after in zip(examples, mixed, strict=True):
        if after.id == before.id:
            assert after == before
            continue
        moved += 1
        assert after.id == f"{before.id}-reordered" and after.kind == before.kind
        assert [_body(s)[0] for s in after.steps] == [f"{i}. " for i in range(1, len(after.steps) + 1)]
        pairs = sorted((_body(s)[1], label) for s, label in zip(after.steps, after.labels, strict=True))
        assert pairs == sorted((_body(s)[1], label) for s, label in zip(before.steps, before.labels, strict=True))
        assert after.steps != [f"{i}. {_body(s)[1]}" for i, s in enumerate(before.steps, start=1)]
        if before.bad_step is not None:
            assert _body(after.steps[after.bad_step])[1] == _body(before.steps[before.bad_step])[1]
            assert labels_consistent(after)
    assert 0.4 * len(examples) < moved < 0.6 * len(examples)


def test_borrowed_frameworks_add_marked_training_answers_in_their_share(small_build, devops_blueprint, devops_framework,
                                                                       tmp_path):
    """`reward.borrowed_frameworks`: another framework's answers and their corrupted copies join
    the training file only, marked with their domain and labelled as `step_examples` labels them;
    the training sample takes `borrowed_share` of its answers from them; the domain's own answers,
    and the held-out labels, are those of a step set without them."""
    from tasks.adapters.data.dataset_store import write_dataset
    from tasks.adapters.data.preference_store import read_located
    from tasks.adapters.ops.config_files import load_framework, load_pipeline_config
    from tasks.domain.config import RewardConfig
    from tasks.domain.steps import StepExample
    from tasks.stages.reward import _training_sample, build_step_data

    config = load_pipeline_config("configs/pipeline.yaml")
    dataset = write_dataset(small_build, devops_blueprint, config_hash="c", seed=7, root=tmp_path / "data")
    plain = RewardConfig(max_steps=40, batch_size=8)
    mixed = plain.model_copy(update={"borrowed_frameworks": ["configs/frameworks/physics.yaml"], "borrowed_share": 0.25})

    def read(reward):
        borrowed = [load_framework(path) for path in reward.borrowed_frameworks]
        steps = build_step_data(dataset, config, reward, devops_framework, tmp_path / "steps", borrowed=borrowed)
        assert steps.report.success, steps.report.summary()
        return ([e for _, e in read_located(Path(steps.train_path), StepExample)],
                [e for _, e in read_located(Path(steps.eval_path), StepExample)])

    (own, own_eval), (train, held_out) = read(plain), read(mixed)
    borrowed = [e for e in train if e.borrowed_from is not None]
    assert [e for e in train if e.borrowed_from is None] == own and held_out == own_eval
    assert {e.borrowed_from for e in borrowed} == {"physics"} and all(labels_consistent(e) for e in borrowed)
    assert set(CORRUPTIONS) - {e.kind for e in borrowed} <= {"wrong_number"} and len(borrowed) > 300
    assert all("?" in e.question() and e.question() not in {o.question() for o in own} for e in borrowed)
    sample = _training_sample(train, mixed)
    assert len(sample) == 320 and sum(e.borrowed_from == "physics" for e in sample) == 80
    assert _training_sample(own, mixed) == _training_sample(own, plain)


def test_on_policy_steps_put_the_models_pasted_and_stock_reasons_in_the_framework_answer(
        small_build, devops_blueprint, devops_framework, tmp_path):
    """`reward.on_policy_rows`: a chat model's answers to training questions, read reason by reason.
    A reason copied from another pattern's training answer, or one it gave to another pattern's
    question too, takes its step's place in the framework's answer, labelled bad; an answer that
    gives the trained reasons gives nothing. The step file carries them, validated, and its key
    moves with the answers."""
    from tasks.adapters.data.dataset_store import write_dataset
    from tasks.adapters.data.preference_store import read_located
    from tasks.adapters.ops.config_files import load_pipeline_config
    from tasks.domain.config import RewardConfig
    from tasks.domain.content import reasons_of
    from tasks.domain.steps import StepExample, on_policy_examples
    from tasks.stages.reward import OnPolicyAnswers, build_step_data

    rows = small_build.train
    first_of = {}
    for row in rows:
        if len(reasons_of(row.turns("assistant")[-1])) == 3:
            first_of.setdefault(row.metadata.pattern_id, row)
    pasting, source, faithful, stock_a, stock_b = list(first_of.values())[:5]
    own = reasons_of(pasting.turns("assistant")[-1])
    foreign = reasons_of(source.turns("assistant")[-1])[2]  # another pattern's trained reason, its nouns and all
    stock = "Cost: a quiet pager costs less than a loud pager."  # no pattern's reason; said for two patterns
    novel = "Speed: the scheduler reboots every laptop twice a week."  # no pattern's reason; said once
    kept = reasons_of(faithful.turns("assistant")[-1])
    answers = [f"1. {own[0]} 2. {foreign} 3. {own[2]}", f"1. {kept[0]} 2. {kept[1]} 3. {novel}",
               *(f"1. {stock} 2. {r[1]} 3. {r[2]}" for r in (reasons_of(x.turns("assistant")[-1]) for x in (stock_a, stock_b)))]
    asked = [pasting, faithful, stock_a, stock_b]
    made = on_policy_examples(asked, answers, rows, "pasted")

    assert [(e.source_row_id, e.bad_step) for e in made] == [(pasting.id, 1), (stock_a.id, 0), (stock_b.id, 0)]
    for example, row, reason in zip(made, (pasting, stock_a, stock_b), (foreign, stock, stock), strict=True):
        reference = answer_steps(row.turns("assistant")[-1])
        assert example.kind == "on_policy" and labels_consistent(example) and example.labels.count(0) == 1
        assert example.steps[example.bad_step] == f"{example.bad_step + 1}. {reason}"
        assert [s for i, s in enumerate(example.steps) if i != example.bad_step] == \
            [s for i, s in enumerate(reference) if i != example.bad_step]
    assert on_policy_examples([faithful], [faithful.turns("assistant")[-1]], rows, "pasted") == []
    # `off_reference`: every reason that is not the reference's fails, the novel one too
    off = on_policy_examples(asked, answers, rows, "off_reference")
    assert [(e.source_row_id, e.bad_step) for e in off] == [(pasting.id, 1), (faithful.id, 2), (stock_a.id, 0), (stock_b.id, 0)]
    assert off[1].steps[2] == f"3. {novel}"
    assert on_policy_examples([faithful], [faithful.turns("assistant")[-1]], rows, "off_reference") == []

    config = load_pipeline_config("configs/pipeline.yaml")
    dataset = write_dataset(small_build, devops_blueprint, config_hash="c", seed=7, root=tmp_path / "data")
    reward = RewardConfig(on_policy_rows=4, on_policy_rule="pasted")
    plain = build_step_data(dataset, config, reward, devops_framework, tmp_path / "steps")
    with_model = build_step_data(dataset, config, reward, devops_framework, tmp_path / "steps",
                                 on_policy=OnPolicyAnswers("models:/reasoning-slm-devops/3", asked, answers))
    assert with_model.report.success, with_model.report.summary()
    assert with_model.counts["train"]["on_policy"] == 3 and "on_policy" not in plain.counts["train"]
    written = [e for _, e in read_located(Path(with_model.train_path), StepExample) if e.kind == "on_policy"]
    assert written == made and with_model.sha256 != plain.sha256


@pytest.mark.parametrize("domain", ["devops", "physics"])
def test_a_run_borrows_every_listed_framework_but_its_own(domain):
    """One profile may list all four frameworks; each domain's run reads the other three, once."""
    from tasks.adapters.ops.config_files import load_framework, load_pipeline_config, resolve_run

    every = [f"configs/frameworks/{d}.yaml" for d in ("devops", "cs", "finance", "physics")]
    config = load_pipeline_config("configs/pipeline.yaml", {"reward_overrides": {"borrowed_frameworks": every}})
    path = f"configs/frameworks/{domain}.yaml"
    spec = resolve_run(config, load_framework(path), path)
    assert spec.reward.borrowed_frameworks == every
    assert sorted(b.domain for b in spec.borrowed_frameworks) == sorted({"devops", "cs", "finance", "physics"} - {domain})


def test_content_corruptions_keep_the_label_and_change_only_the_claim(examples, small_build):
    """Issue 30: a swapped or invented claim sits under the step's own label, so only what the step
    says is wrong; the swapped claim is true of another pattern, the invented one names this question."""
    from tasks.domain.preferences import reasons_by_pattern
    from tasks.domain.steps import question_subject

    pool = reasons_by_pattern(small_build.train)
    correct = {e.source_row_id: e for e in examples if e.kind == "correct"}
    for kind in ("swapped_claim", "false_effect"):
        broken = [e for e in examples if e.kind == kind]
        assert len(broken) >= 20, kind
        for example in broken:
            before, after = correct[example.source_row_id].steps[example.bad_step], example.steps[example.bad_step]
            label = before.partition(": ")[0]
            assert after.startswith(label + ": ") and after != before, (before, after)
            claim = after.partition(": ")[2]
            if kind == "swapped_claim":
                foreign = {r.partition(": ")[2] for p, reasons in pool.items() if p != example.pattern_id for r in reasons}
                assert claim in foreign, after
            else:
                assert claim.startswith(question_subject(example.question())), (example.question(), after)


def test_a_pasted_reason_is_another_patterns_reason_naming_this_questions_nouns(examples, devops_framework):
    """What the tuned model writes when it pastes a template: another pattern's reason with this
    question's nouns in its slots, under the step's own number, and not a reason of its own pattern."""
    from tasks.domain.content import patterns_of, question_nouns, reasons_of, with_nouns

    templates = patterns_of(devops_framework)
    correct = {e.source_row_id: e for e in examples if e.kind == "correct"}
    broken = [e for e in examples if e.kind == "pasted_reason"]
    assert len(broken) >= 20
    for example in broken:
        before, after = correct[example.source_row_id].steps[example.bad_step], example.steps[example.bad_step]
        number, _, reason = after.partition(". ")
        nouns = question_nouns(example.question())
        assert before.startswith(number + ". ") and any(noun in reason for noun in nouns), (example.question(), after)
        sources = [pid for pid, t in templates.items() if reason in reasons_of(with_nouns(t, nouns))]
        assert sources and example.pattern_id not in sources, (example.pattern_id, after)


def test_step_labels_suite_names_the_line_of_a_bad_label(examples, tmp_path):
    from tasks.adapters.data.preference_store import write_record_set
    from tasks.domain.config import PipelineConfig, RewardConfig
    from tasks.domain.errors import DatasetFormatError, DataValidationError
    from tasks.stages.reward import STEPS_FILE, check_steps, require_valid_steps

    config, reward = PipelineConfig(), RewardConfig()
    target = write_record_set(tmp_path / "steps", {STEPS_FILE: examples[:40]}, {})
    assert check_steps(target / STEPS_FILE, reward, config, [], [], tmp_path / "ok").success
    lines = (target / STEPS_FILE).read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] != "correct")
    record = json.loads(lines[broken])
    record["labels"] = [1] * len(record["labels"])  # a corrupted answer with no bad step
    lines[broken] = json.dumps(record)
    (target / STEPS_FILE).write_text("\n".join(lines) + "\n")
    report = check_steps(target / STEPS_FILE, reward, config, [], [], tmp_path / "bad")
    assert not report.success
    with pytest.raises(DataValidationError, match="step labels failed validation") as failed:
        require_valid_steps(report)
    assert f"{STEPS_FILE}:{broken + 1})" in report.summary() and "exactly one" in report.summary()
    assert failed.value.failures == report.failures
    # a question from the held-out set in a training prompt fails too
    held = examples[0].question()
    report = check_steps(target / STEPS_FILE, reward, config, [], [held], tmp_path / "held")
    assert not report.success and "held-out question" in report.summary()
    record["labels"] = record["labels"][:-1]  # one label short: refused as the line is read
    lines[broken] = json.dumps(record)
    (target / STEPS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=f"line {broken + 1}:.*labels"):
        check_steps(target / STEPS_FILE, reward, config, [], [], tmp_path / "short")


def test_out_of_framework_f1_interval_narrows_with_more_questions_and_draws_a_questions_answers_together():
    """The F1 on the step probes comes with a bootstrap interval over questions: it holds the
    F1, it narrows as the same outcomes come from more questions, and it is wider when a
    question's reference and planted copy succeed or fail together than when the same answers
    belong to separate questions (the probes are pairs: resampling answers alone would claim
    more certainty than 20 questions give)."""
    from tasks.domain.steps import processbench_f1_interval, processbench_metrics

    right_pair = [([0.9, 0.1, 0.9], 1), ([0.9, 0.9, 0.9], None)]  # finds the planted step, says none
    wrong_pair = [([0.9, 0.9, 0.9], 1), ([0.1, 0.9, 0.9], None)]  # misses it, flags a true step
    def probes(questions: int, paired: bool):
        answers = [a for q in range(questions) for a in (right_pair if q % 2 else wrong_pair)]
        names = [f"q{i // 2 if paired else i}" for i in range(len(answers))]
        return names, [w for _, w in answers], [s for s, _ in answers]

    names, wrong, scores = probes(20, paired=True)
    f1 = processbench_metrics(wrong, scores)["f1"]
    low, high = processbench_f1_interval(names, wrong, scores)
    assert low < f1 == 0.5 < high
    assert high - low > 0.3  # 20 questions, half right: the probes cannot place it closer
    low80, high80 = processbench_f1_interval(*probes(80, paired=True))
    assert low < low80 < f1 < high80 < high
    low_apart, high_apart = processbench_f1_interval(*probes(20, paired=False))
    assert high_apart - low_apart < high - low
    with pytest.raises(ValueError, match="3 questions"):
        processbench_f1_interval(names[:3], wrong, scores)


def test_planted_below_true_compares_each_planted_step_with_the_true_step_it_replaced():
    """A reward model that scores every step of one question low and every step of another high
    has the F1 of a coin flip whatever it reads; `planted_below_true` asks only whether the planted
    step scored below the true one in its place, so scores around it cannot move it."""
    from tasks.domain.steps import planted_below_true, processbench_metrics

    questions = ["a", "a", "b", "b"]
    wrong = [None, 2, None, 0]
    sees_content = [[0.2, 0.3, 0.4], [0.2, 0.3, 0.1], [0.9, 0.9, 0.8], [0.4, 0.9, 0.8]]  # low everywhere on "a"
    assert planted_below_true(questions, wrong, sees_content) == 1.0
    assert processbench_metrics(wrong, sees_content)["f1"] == 0.5  # "a" as written is a false alarm
    blind = [[0.9, 0.9, 0.4], [0.9, 0.9, 0.6], [0.6, 0.9, 0.9], [0.6, 0.9, 0.9]]
    assert planted_below_true(questions, wrong, blind) == 0.0
    assert planted_below_true(["a"], [1], [[0.9, 0.1]]) != planted_below_true(["a"], [1], [[0.9, 0.1]])  # NaN: no pair


def test_labels_sit_on_each_steps_last_token(tiny_base, examples):
    from tasks.adapters.model.base_models import load_tokenizer
    from tasks.adapters.model.chat_codec import chat_codec
    from tasks.adapters.model.reward_model import IGNORE, step_tokens

    codec = chat_codec(load_tokenizer(tiny_base))
    example = next(e for e in examples if e.kind != "correct")
    tokens = step_tokens(codec, example.prompt, example.steps, example.labels)
    labelled = [i for i, label in enumerate(tokens.labels) if label != IGNORE]
    assert labelled == tokens.step_ends and [tokens.labels[i] for i in labelled] == example.labels
    prompt_length = len(codec.prompt_ids(example.prompt))
    assert tokens.input_ids[:prompt_length] == codec.prompt_ids(example.prompt)
    for start, end, step in zip([prompt_length - 1, *tokens.step_ends], tokens.step_ends, example.steps, strict=False):
        assert codec.tokenizer.decode(tokens.input_ids[start + 1:end + 1]).strip() == step.strip()


@pytest.mark.slow
def test_reward_model_gives_its_head_its_own_rate_and_reads_answers_without_the_system_turn(tiny_base, examples,
                                                                                             tmp_path):
    from peft import get_peft_model

    from tasks.adapters.model.reward_model import _load_classifier, _lora, _optimizer, load_reward_scorer, train_reward_model
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import RewardConfig
    from tasks.domain.records import Message

    profile = load_profile("tiny")
    cfg = RewardConfig(max_steps=2, batch_size=4, learning_rate=1e-4, head_learning_rate=5e-2, top_layers=1)
    model = get_peft_model(_load_classifier(tiny_base, "fp32", "cpu"), _lora(cfg.lora, 1, 2))
    _, kwargs = _optimizer(model, cfg)
    rest, head = kwargs["params"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in rest["params"] + head["params"]} == trainable and head["lr"] == 5e-2
    assert {name for name, p in model.named_parameters() if any(p is h for h in head["params"])} == {
        name for name, p in model.named_parameters() if p.requires_grad and ".score." in name}

    summary = train_reward_model(tiny_base, examples[:16], cfg, profile.training, tmp_path / "prm")
    assert summary["system_turn"] is False and summary["steps"] == 2
    scorer = load_reward_scorer(tiny_base, tmp_path / "prm", "You are terse.", "cpu")
    example = examples[0]
    question = [m for m in example.prompt if m.role == "user"]
    under_other_system = [Message(role="system", content="Answer at great length, in French."), *question]
    assert scorer.score_steps([example.prompt], [example.steps]) == scorer.score_steps([under_other_system],
                                                                                      [example.steps])


# Every issue-29 speed switch of the reward model's step off, and on
REWARD_UNOPTIMIZED = {"head_on_step_ends_only": False, "cpu_fast_dropout": False, "attention": "sdpa",
                      "cpu_bf16_frozen_weights": False}
REWARD_FAST = {"head_on_step_ends_only": True, "cpu_fast_dropout": True, "attention": "eager",
               "cpu_bf16_frozen_weights": True}


def reward_step_losses(base, examples, cfg, training, out_dir) -> tuple[str, list[float], float]:
    """Per-step losses of a reward-model training with no dropout anywhere (LoRA's is 0 in `cfg`;
    the classifier's own, before its head, is switched off here), so no mask differs between runs;
    and how much the mean loss over all its batches fell from before training to after (each step's
    loss is on a different batch, so the first and last steps' losses alone do not show learning;
    one batch's alone moved either way with the answers drawn)."""
    import torch

    from tasks.adapters.model.reward_model import build_reward_trainer

    trainer, _, info = build_reward_trainer(base, examples, cfg, training, out_dir)
    trainer.model.get_base_model().dropout.p = 0.0
    trainer.args.logging_steps = 1
    batches = list(trainer.get_train_dataloader())

    def mean_loss() -> float:
        # copies: the Trainer's loss pops the labels out of what it is given; autocast as in training
        with torch.no_grad(), trainer.accelerator.autocast():
            return sum(float(trainer.compute_loss(trainer.model, dict(b))) for b in batches) / len(batches)

    before = mean_loss()
    trainer.train()
    return info["precision"], [h["loss"] for h in trainer.state.log_history if "loss" in h], before - mean_loss()


LEVERS = [{k: v} for k, v in REWARD_FAST.items()] + [REWARD_FAST]


@pytest.mark.slow
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "cpu-bf16-autocast"])
@pytest.mark.parametrize("switches", LEVERS, ids=[*REWARD_FAST, "all"])
def test_each_reward_step_switch_trains_as_the_unoptimized_step(tiny_base, examples, tmp_path, autocast, switches):
    """Issue 29: the head only at step ends, eager attention, fast dropout and bf16 frozen weights
    change the speed, not the losses: each switch alone, and all of them, against every switch
    off, on the same 5 steps of the same answers (class-weighted loss with all on), give the same
    losses, to 1e-5 in fp32 and 5e-3 (bf16's unit roundoff, 3.9e-3) under bf16 autocast.
    (Length grouping changes the batches by design, so it is not compared here.)"""
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import RewardConfig

    training = load_profile("tiny").training.model_copy(update={"device": "cpu", "cpu_bf16_autocast": autocast})
    cfg = RewardConfig(max_steps=5, batch_size=8, learning_rate=5e-3, head_learning_rate=2e-2, top_layers=1,
                       balance_labels=switches is REWARD_FAST, lora={"dropout": 0.0, "target_modules": "all-linear"})
    precision, slow, _ = reward_step_losses(tiny_base, examples[:60], cfg.model_copy(update=REWARD_UNOPTIMIZED),
                                            training, tmp_path / "slow")
    if autocast and precision != "bf16":
        pytest.skip("this CPU has no bf16 instructions: no autocast to compare under")
    _, fast, learned = reward_step_losses(tiny_base, examples[:60],
                                          cfg.model_copy(update={**REWARD_UNOPTIMIZED, **switches}), training,
                                          tmp_path / "fast")
    # Under bf16 autocast, eager attention and SDPA round the attention differently (bf16's unit
    # roundoff is 3.9e-3): the losses differ by up to 3e-3 over five steps (measured on an
    # AVX512-BF16 CPU, 2026-12-03; the bf16 cases had only ever skipped before). The other switches
    # round too: bf16 frozen weights against per-step casts differed by 1.0006e-3 at the fifth step on
    # the 61-pattern framework's answers (2026-12-05), and by 2.3e-3 (7e-4 absolute on a loss of 0.31)
    # once `pasted_reason` joined the kinds and changed the 60 answers (2026-12-06). So bf16's own
    # roundoff bounds every bf16 case. A wrong loss (the head at the wrong positions, a class weight
    # lost) is off by several percent.
    rel = 1e-5 if not autocast else 5e-3
    assert len(fast) == 5 and fast == pytest.approx(slow, rel=rel)
    assert learned > 0, "and it learns: its loss over the answers falls"


def test_step_end_loss_is_the_classifiers_own_loss_and_gradients(tiny_base, examples, tmp_path):
    """The head at step ends only, on one batch: the loss `transformers`' token classifier computes
    from logits at every position, and the same gradient on every trainable weight (head included)."""
    import torch

    from tasks.adapters.model.fast_step import step_end_loss
    from tasks.adapters.model.reward_model import build_reward_trainer
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import RewardConfig

    cfg = RewardConfig(max_steps=1, batch_size=8, top_layers=1, lora={"dropout": 0.0})
    trainer, _, _ = build_reward_trainer(tiny_base, examples[:8], cfg, load_profile("tiny").training, tmp_path)
    model = trainer.model
    model.get_base_model().dropout.p = 0.0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    results = []
    for loss_of in (lambda: model(**batch).loss, lambda: step_end_loss(model, batch)):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (everywhere, grads), (at_ends, end_grads) = results
    assert at_ends == pytest.approx(everywhere, rel=1e-6)
    assert any(".score." in n for n in grads) and grads.keys() == end_grads.keys()
    assert all(torch.allclose(end_grads[n], g, rtol=1e-4, atol=1e-8) for n, g in grads.items())


def test_frozen_weights_in_bf16_leave_the_reward_models_head_in_fp32(tiny_base, examples, tmp_path):
    import torch

    from tasks.adapters.model.reward_model import build_reward_trainer
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import RewardConfig

    training = load_profile("tiny").training.model_copy(update={"device": "cpu", "cpu_bf16_autocast": True})
    cfg = RewardConfig(max_steps=1, top_layers=1, cpu_bf16_frozen_weights=True)
    trainer, _, info = build_reward_trainer(tiny_base, examples[:8], cfg, training, tmp_path)
    if info["precision"] != "bf16":
        pytest.skip("this CPU has no bf16 instructions: the switch applies under bf16 autocast only")
    named = dict(trainer.model.named_parameters())
    assert {p.dtype for n, p in named.items() if n.endswith("base_layer.weight")} == {torch.bfloat16}
    assert {p.dtype for p in named.values() if p.requires_grad} == {torch.float32}, "LoRA and the head train in fp32"


@pytest.mark.slow
def test_reward_training_killed_mid_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        tiny_base, examples, tmp_path):
    """kill -9 a real reward-model training right after it saved checkpoint 8 of 12; training again
    in the same directory picks up at step 8 (model, optimizer, scheduler, RNG, data position),
    says so, and ends with the adapter and head an uninterrupted run gives (weights within 1e-5,
    held-out step scores within 1e-4, the same held-out figures). 24 answers in batches of 4 make
    6 steps an epoch, so the resumed run reads the second epoch's own order (`epoch_order`)."""
    import textwrap

    from safetensors.torch import load_file

    from tasks.adapters.model.reward_model import train_reward_model
    from tasks.adapters.model.training import CHECKPOINTS
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.config import RewardConfig

    from conftest import kill_once_printed, pause_after_checkpoint

    training = load_profile("tiny").training.model_copy(update={"device": "cpu"})
    cfg = RewardConfig(max_steps=12, save_steps=4, batch_size=4, learning_rate=5e-3, head_learning_rate=2e-2,
                       top_layers=1, warmup_ratio=0.0)
    rows = tmp_path / "steps.jsonl"
    rows.write_text("".join(e.model_dump_json() + "\n" for e in examples[:24]))
    whole = train_reward_model(tiny_base, examples[:24], cfg, training, tmp_path / "uninterrupted")
    assert whole["examples"] == 24, "every answer kept: the 12 steps span two epochs"

    interrupted = tmp_path / "interrupted"
    code = pause_after_checkpoint("tasks.adapters.model.reward_model", "build_reward_trainer", 8) + textwrap.dedent(f"""
        from pathlib import Path
        from tasks.domain.config import RewardConfig, TrainingConfig
        from tasks.domain.steps import StepExample

        examples = [StepExample.model_validate_json(line) for line in Path({str(rows)!r}).read_text().splitlines()]
        trained_module.train_reward_model({str(tiny_base)!r}, examples,
                                          RewardConfig.model_validate_json({cfg.model_dump_json()!r}),
                                          TrainingConfig.model_validate_json({training.model_dump_json()!r}),
                                          Path({str(interrupted)!r}))
    """)
    kill_once_printed(code, "saved 8")
    assert not (interrupted / "adapter_model.safetensors").exists(), "killed before it finished"

    told: list[str] = []
    resumed = train_reward_model(tiny_base, examples[:24], cfg, training, interrupted, say=told.append)
    assert resumed["resumed_from_step"] == 8 and resumed["steps"] == 12
    assert told and told[0].startswith("reward model: resuming from checkpoint 8 of 12 steps")
    assert sorted(p.name for p in (interrupted / CHECKPOINTS).glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    expected = load_file(tmp_path / "uninterrupted" / "adapter_model.safetensors")
    got = load_file(interrupted / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and any("score" in k for k in got)
    worst = max(float((expected[k] - got[k]).abs().max()) for k in expected)
    assert worst < 1e-5, f"resumed reward model differs from the uninterrupted one by {worst:g}"
    # and the figures the gate reads: held-out step scores (the logged loss is not comparable: after a
    # resume the trainer's running mean starts again at the checkpoint)
    from tasks.adapters.model.reward_model import load_reward_scorer
    from tasks.domain.steps import step_metrics

    held_out = examples[48:96]
    scores = [load_reward_scorer(tiny_base, directory, "", "cpu").score_steps([e.prompt for e in held_out],
                                                                           [e.steps for e in held_out])
              for directory in (tmp_path / "uninterrupted", interrupted)]
    assert max(abs(a - b) for x, y in zip(*scores, strict=True) for a, b in zip(x, y, strict=True)) < 1e-4
    assert step_metrics(held_out, scores[1]) == pytest.approx(step_metrics(held_out, scores[0]), abs=1e-6)


@pytest.mark.slow
@pytest.mark.integration
def test_nightly_run_trains_gates_reuses_and_uses_the_reward_model(prefect_harness, rslm_home):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    import mlflow
    from flows.cli import cli
    from flows.nightly_retrain import nightly_retrain

    # the top block only, the head at its own rate, class-weighted: options SmolLM2's profile measured
    reward = {"enabled": True, "max_steps": 8, "heldout_examples": 24, "min_bad_step_found": 0.0, "top_layers": 1,
              "balance_labels": True, "head_learning_rate": 5e-2}
    first = nightly_retrain(overrides=tiny_run(6, reward_overrides=reward))
    prm = first["reward_model"]
    assert (prm["name"], prm["version"], prm["status"]) == ("reasoning-slm-devops-prm", "1", "trained")
    assert prm["verdict"] == "promoted" and prm["champion_version"] == "1" and "champion" in prm["aliases"]
    assert 0 <= prm["metrics"]["bad_step_found"] <= 1 and prm["metrics"]["examples"] == 24
    from safetensors import safe_open

    adapter = next((rslm_home / "adapters" / "devops").glob("prm-*/adapter_model.safetensors"))
    with safe_open(str(adapter), "pt") as weights:
        adapted = {key.split(".layers.")[1].split(".")[0] for key in weights.keys() if "lora_" in key}
        assert adapted == {"1"} and any("score" in key for key in weights.keys())  # top block only, and the head
    # evaluation scored the chat model's held-out answers with the champion reward model
    metrics = first["evaluation"]["metrics"]
    assert 0 <= metrics["heldout/answer_reward"] <= metrics["heldout/step_reward"] <= 1
    # ... and the hand-written references to the same questions, against which its answers are ranked
    assert 0 <= metrics["heldout/step_reward_reference_auroc"] <= 1 and 0 <= metrics["heldout/step_reward_reference"] <= 1
    client = MlflowClient(tracking_uri=first["mlflow_tracking_uri"], registry_uri=first["mlflow_tracking_uri"])
    run = client.get_run(prm["run_id"])
    assert run.data.params["reward.lora.r"] == "16" and run.data.params["reward.head_learning_rate"] == "0.05"
    assert "prm/heldout/auroc" in run.data.metrics
    # ... and on the hand-written DevOps answers outside the framework (configs/probes/steps/devops.yaml)
    oof = {k.removeprefix("prm/heldout/out_of_framework/"): v for k, v in run.data.metrics.items()
           if k.startswith("prm/heldout/out_of_framework/")}
    assert 0 <= oof["f1_low"] <= oof["f1"] <= oof["f1_high"] <= 1  # ... with its interval over the 20 questions
    assert 0 <= oof["planted_below_true"] <= 1
    assert prm["metrics"]["out_of_framework/f1"] == run.data.metrics["prm/heldout/out_of_framework/f1"]
    assert len(client.get_metric_history(prm["run_id"], "prm/train/loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(prm["run_id"], "reward")}
    assert "reward/heldout_step_scores.json" in artifacts
    assert client.get_run(first["mlflow_run_id"]).data.tags["evaluation.reward_model"] == "models:/reasoning-slm-devops-prm/1"

    # the registered reward model loads as a pyfunc scorer outside the project's CLI
    mlflow.set_tracking_uri(first["mlflow_tracking_uri"])
    scorer = mlflow.pyfunc.load_model("models:/reasoning-slm-devops-prm@champion")
    import pandas as pd

    answer = "1. Isolation: each /24 is its own blast radius. 2. Routing: route tables stay apart."
    (scored,) = scorer.predict(pd.DataFrame({"question": ["Why split a /16 VPC?"], "answer": [answer]}))
    scored = json.loads(scored)
    assert [s["step"] for s in scored["steps"]] == answer_steps(answer)
    assert scored["answer_score"] == min(s["score"] for s in scored["steps"])

    # unchanged step labels and settings: nothing retrained
    again = nightly_retrain(overrides=tiny_run(6, reward_overrides=reward))
    assert again["reward_model"]["status"] == "unchanged" and again["reward_model"]["version"] == "1"

    # a reward model that misses the gate is registered, and the champion stays; the decision names
    # the out-of-framework floor it missed (a tiny model cannot reach F1 1.0 on hand-written answers)
    strict = nightly_retrain(overrides=tiny_run(6, reward_overrides={**reward, "min_bad_step_found": 1.0,
                                                                     "min_out_of_framework_f1": 1.0}))
    assert strict["reward_model"]["version"] == "2" and strict["reward_model"]["verdict"] == "rejected"
    reasons = json.loads(client.get_model_version("reasoning-slm-devops-prm", "2").tags["promotion.reasons"])
    assert any(r.startswith("FAIL finds the wrong step outside the framework (F1)") for r in reasons), reasons
    assert strict["reward_model"]["champion_version"] == "1"
    assert str(client.get_model_version_by_alias("reasoning-slm-devops-prm", "champion").version) == "1"

    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "reasoning-slm-devops-prm", "--json"])
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert rows["1"]["aliases"] == "champion" and rows["2"]["decision"] == "rejected"
    assert rows["1"]["bad_step_found"] == prm["metrics"]["bad_step_found"]
    assert rows["1"]["out_of_framework_f1_low"] == oof["f1_low"] and rows["1"]["out_of_framework_f1_high"] == oof["f1_high"]
    out = runner.invoke(cli, ["score", "Why split a /16 VPC?", answer])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    assert printed["reward_model"].endswith("-prm@champion") and len(printed["steps"]) == 2

    chat = runner.invoke(cli, ["chat", "Why pin images by digest?", "--model", "models:/reasoning-slm-devops/1",
                               "--best-of", "3", "--max-new-tokens", "12"])
    assert chat.exit_code == 0, chat.output
    metadata = json.loads(chat.stderr.strip().splitlines()[-1])
    assert metadata["best_of"] == 3 and len(metadata["candidates"]) == 3
    best = metadata["candidates"][metadata["chosen"]]
    assert chat.stdout.strip() == best["text"].strip()
    scores = [c["answer_score"] if c["answer_score"] is not None else -1 for c in metadata["candidates"]]
    assert (best["answer_score"] if best["answer_score"] is not None else -1) == max(scores)

    # the server's best_of: the same choice, with every candidate's step scores in the response
    from fastapi.testclient import TestClient

    from flows.cli.common import registered_generator, registered_scorer
    from tasks.adapters.model.chat_server import create_app

    app = create_app(registered_generator("models:/reasoning-slm-devops/1"), "v1", None,
                     registered_scorer("models:/reasoning-slm-devops-prm@champion"))
    body = {"messages": [{"role": "user", "content": "Why pin images by digest?"}], "max_tokens": 12, "best_of": 3}
    reply = TestClient(app).post("/v1/chat/completions", json=body).json()
    served = reply["reward"]
    assert served["best_of"] == 3 and reply["choices"][0]["message"]["content"] == served["candidates"][served["chosen"]]["text"]
    assert all("steps" in c and "answer_score" in c for c in served["candidates"])

    # on-policy steps: the registered chat model answers training questions before the reward model
    # trains; the step data records which version answered, and the reward model's run how many
    # of its reasons became bad steps (the tiny model's babble may give none)
    alias = client.get_model_version("reasoning-slm-devops", "1").aliases[0]
    asked = nightly_retrain(overrides=tiny_run(6, reward_overrides={
        **reward, "min_bad_step_found": 1.0, "on_policy_rows": 4, "on_policy_alias": alias}))
    assert asked["reward_model"]["status"] == "trained" and asked["reward_model"]["version"] == "3"
    params = client.get_run(asked["reward_model"]["run_id"]).data.params
    assert params["reward.on_policy_rows"] == "4" and int(params["reward.on_policy_steps"]) >= 0
    manifests = [json.loads(p.read_text()) for p in (rslm_home / "step-labels" / "devops").glob("*/manifest.json")]
    sampled = [m["settings"]["on_policy"] for m in manifests if m["settings"]["on_policy"]]
    assert [(s["model"], s["asked"]) for s in sampled] == [("models:/reasoning-slm-devops/1", 4)]
