"""Step-labelled answers for the process reward model (issue 17). Every answer is a chain of steps:
its numbered reasons (text before the first number is a step of its own). The framework's answer
labels every step good; a corrupted copy breaks exactly one step and labels that one bad.

The corruptions are the failures a small model shows, one step at a time: a reason pasted from
another pattern, a computed number gone wrong, the step's claim negated (a contradiction of the
principle it states), hedging filler, a step cut off mid-sentence, and two that keep the step's
own label so that only what it says is wrong (issue 30): another pattern's claim under this
step's label (a fact swapped between patterns, what pasting produces) and an invented effect,
a false comparative or causal claim about the question's own subject. One more comes from a
registered chat model rather than a rule (`on_policy`): its own failing reasons.
"""
from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field, model_validator

from tasks.domain.content import PasteIndex, patterns_of, question_nouns, reasons_of, with_nouns
from tasks.domain.framework import Framework, Pattern
from tasks.domain.frozen import Frozen
from tasks.domain.hashing import content_hash
from tasks.domain.metrics import numbered_reasons
from tasks.domain.preferences import corrupt, reasons_by_pattern
from tasks.domain.records import Message, Row

StepKind = Literal["correct", "other_pattern", "wrong_number", "contradiction", "hedged", "cut_short",
                   "swapped_claim", "false_effect", "pasted_reason", "on_policy"]
CORRUPTIONS: tuple[StepKind, ...] = ("other_pattern", "wrong_number", "contradiction", "hedged", "cut_short",
                                     "swapped_claim", "false_effect", "pasted_reason")
GOOD, BAD = 1, 0
# Part of the step data's cache key: bump it when a corruption changes what it writes, or a step
# set written by the old code is reused (and with it the reward model trained on it).
# 2: swapped_claim and false_effect (issue 30); 3: pasted_reason; 4: borrowed_from; 5: on_policy.
STEPS_VERSION = 5


class StepExample(Frozen):
    """One row of `reasoning_steps.jsonl`: the prompt turns, the answer's steps and a label per step."""

    id: str
    prompt: list[Message] = Field(min_length=1)
    steps: list[str] = Field(min_length=1)
    labels: list[int] = Field(min_length=1)
    kind: StepKind
    bad_step: int | None = None  # index of the corrupted step; None for a correct answer
    source_row_id: str
    pattern_id: str
    split: Literal["train", "eval"]
    # The domain whose framework wrote this answer, where it is not the reward model's own
    # (`reward.borrowed_frameworks`); None for the domain's own answers.
    borrowed_from: str | None = None

    @model_validator(mode="after")
    def _one_label_per_step(self) -> StepExample:
        if len(self.labels) != len(self.steps):
            raise ValueError(f"{len(self.steps)} steps but {len(self.labels)} labels")
        return self

    def question(self) -> str:
        return [m.content for m in self.prompt if m.role == "user"][-1]


def answer_steps(answer: str) -> list[str]:
    """The answer's steps, each numbered reason with its marker; text before the first marker
    (a preamble such as "Sure! Here are reasons:") is a step of its own.

    >>> answer_steps("1. Isolation: one blast radius. 2. Routing: separate tables.")
    ['1. Isolation: one blast radius.', '2. Routing: separate tables.']
    >>> answer_steps("Sure! 1. Isolation: one blast radius.")
    ['Sure!', '1. Isolation: one blast radius.']
    """
    return [f"{number}. {text}" if number else text for number, text in step_items(answer)]


def step_items(answer: str) -> list[tuple[int, str]]:
    """`answer_steps` as (number, text) pairs, the preamble's number 0: the one place that says
    which items of an answer are steps, so an index into one list is an index into the other."""
    return [(number, text) for number, text in numbered_reasons(answer) if text or number]


def joined(steps: Sequence[str]) -> str:
    return " ".join(steps)


def _body(step: str) -> tuple[str, str]:
    """('N. ', rest) for a numbered step; ('', step) otherwise."""
    match = re.match(r"\d{1,2}[.)]\s+", step)
    return (match.group(), step[match.end():]) if match else ("", step)


# A step's claim turned into its opposite: the first of these found in the step (by position)
# is swapped. Negations go both ways, so "is not" becomes "is" and "is" becomes "is not".
_OPPOSITES: tuple[tuple[str, str], ...] = (
    ("is not", "is"), ("are not", "are"), ("cannot", "can"), ("does not", "does"), ("never", "always"),
    ("always", "never"), ("is", "is not"), ("are", "are not"), ("can", "cannot"), ("fewer", "more"),
    ("more", "fewer"), ("less", "more"), ("cheaper", "costlier"), ("smaller", "larger"), ("larger", "smaller"),
    ("faster", "slower"), ("slower", "faster"), ("cheap", "expensive"), ("instant", "slow"), ("only", "never"),
    ("keeps", "loses"), ("keep", "lose"), ("stays", "leaks"), ("stay", "leak"), ("lower", "higher"),
    ("higher", "lower"), ("reduces", "increases"), ("increases", "reduces"), ("rises", "falls"), ("falls", "rises"),
)
_OPPOSITE_RE = re.compile(r"\b(" + "|".join(re.escape(a) for a, _ in _OPPOSITES) + r")\b", re.IGNORECASE)
_OPPOSITE_OF = {a: b for a, b in _OPPOSITES}


def contradicted(step: str) -> str | None:
    """The step with its claim negated, or None where it holds nothing to negate.

    >>> contradicted("1. Isolation: each /24 is its own blast radius.")
    '1. Isolation: each /24 is not its own blast radius.'
    >>> contradicted("2. Cost: a cache hit never reaches the origin.")
    '2. Cost: a cache hit always reaches the origin.'
    """
    marker, body = _body(step)
    label, colon, claim = body.partition(": ")
    text = claim if colon else body
    match = _OPPOSITE_RE.search(text)
    if not match:
        return None
    swapped = _OPPOSITE_OF[match.group().lower()]
    negated = text[:match.start()] + swapped + text[match.end():]
    return marker + (f"{label}{colon}{negated}" if colon else negated)


def cut_short(step: str) -> str | None:
    """The step stopped mid-sentence: its first half of words, no closing punctuation.

    >>> cut_short("2. Routing: per-subnet route tables keep public and private paths apart.")
    '2. Routing: per-subnet route tables keep'
    """
    marker, body = _body(step)
    words = body.split()
    if len(words) < 4:
        return None
    return marker + " ".join(words[:max(2, len(words) // 2)]).rstrip(".,;:")


def hedged_step(step: str, banned_phrases: Sequence[str], rng: random.Random) -> str | None:
    """The step opened with hedging filler.

    >>> hedged_step("2. Routing: separate tables.", ["maybe"], random.Random(0))
    '2. Maybe, routing: separate tables.'
    """
    if not banned_phrases:
        return None
    marker, body = _body(step)
    phrase = rng.choice(list(banned_phrases))
    return f"{marker}{phrase[:1].upper()}{phrase[1:]}, {body[:1].lower()}{body[1:]}"


def _label_and_claim(step: str) -> tuple[str, str] | None:
    """('N. Label: ', claim) for a step that names its reason; None for one that does not."""
    marker, body = _body(step)
    label, colon, claim = body.partition(": ")
    return (f"{marker}{label}{colon}", claim) if colon and claim and len(label.split()) <= 4 else None


def swapped_claim(step: str, foreign_reason: str) -> str | None:
    """The step's own label over another pattern's claim: the label still fits the question,
    the claim is true somewhere else.

    >>> swapped_claim("3. Concurrency: one job runs the migration.", "Blast radius: a bad build hits 5% of users, not all.")
    '3. Concurrency: a bad build hits 5% of users, not all.'
    """
    own, foreign = _label_and_claim(step), _label_and_claim(foreign_reason)
    if own is None or foreign is None or foreign[1] == own[1]:
        return None
    return own[0] + foreign[1]


def false_effect(step: str, subject: str, effects: Sequence[str], rng: random.Random) -> str | None:
    """The step's own label over one of the framework's invented effects (`Framework.false_effects`)
    of the question's subject; None where the step names no reason or there is nothing to invent.

    >>> false_effect("2. Capacity: requests spread across both servers.", "a load balancer",
    ...              ["{subject} makes every disk ten times larger."], random.Random(1))
    '2. Capacity: a load balancer makes every disk ten times larger.'
    """
    own = _label_and_claim(step)
    if own is None or not subject or not effects:
        return None
    return own[0] + rng.choice(effects).format(subject=subject)


def pasted_reasons(templates: Sequence[Pattern], nouns: Sequence[str]) -> list[str]:
    """Other patterns' reasons with their slots filled by this question's nouns, those that name
    one: what the tuned model writes when it pastes a template (issue 30's "Availability: read
    replicas are available on the primary database"). Unlike `other_pattern`'s reason, such a
    reason names the question's own subject, so only what it claims gives it away.

    >>> canary = Pattern(id="canary", questions=["Why canary {service}?"], slots={"service": ["the API"]},
    ...                  answer="1. Blast radius: a bad build of {service} hits 5% of users. 2. Rollback: instant.")
    >>> pasted_reasons([canary], ["mutual TLS"])
    ['Blast radius: a bad build of mutual TLS hits 5% of users.']
    """
    return [reason for template in templates for reason in reasons_of(with_nouns(template, nouns))
            if any(noun in reason for noun in nouns)]


def pasted_reason(step: str, pastes: Sequence[str], rng: random.Random) -> str | None:
    """One of `pastes` (see `pasted_reasons`) in the step's place, under its number."""
    return _body(step)[0] + rng.choice(pastes) if pastes else None


def question_subject(question: str) -> str:
    """The noun phrase a question is about, as a claim's subject: its longest noun run, or ''."""
    nouns = [n for n in question_nouns(question) if not any(c.isdigit() for c in n)]  # "the 20 average" reads as noise
    return f"the {nouns[0]}" if nouns else ""


def _changed_step(steps: Sequence[str], corrupted_answer: str | None) -> tuple[list[str], int] | None:
    """A whole-answer corruption as (its steps, the one changed step), or None where it did not
    change exactly one step (a step must stay a step for its label to mean anything)."""
    if corrupted_answer is None:
        return None
    after = answer_steps(corrupted_answer)
    changed = [i for i, (a, b) in enumerate(zip(steps, after, strict=False)) if a != b]
    return (after, changed[0]) if len(after) == len(steps) and len(changed) == 1 else None


StepCorruption = Callable[[str], str | None]


def _one_step(steps: Sequence[str], change: StepCorruption, rng: random.Random) -> tuple[list[str], int] | None:
    """`change` applied to one step picked at random among those it can change."""
    candidates = [(i, changed) for i, step in enumerate(steps)
                  if (changed := change(step)) is not None and changed != step]
    if not candidates:
        return None
    index, changed = rng.choice(candidates)
    return [*steps[:index], changed, *steps[index + 1:]], index


def corrupt_steps(kind: StepKind, row: Row, framework: Framework, pool: dict[str, list[str]],
                  rng: random.Random) -> tuple[list[str], int] | None:
    """The row's answer as steps with exactly one broken by `kind`, and that step's index; None
    where the answer cannot be broken this way (no computed number to get wrong, say)."""
    steps = answer_steps(row.turns("assistant")[-1])
    if kind in ("other_pattern", "wrong_number"):  # whole-answer corruptions that change one reason
        return _changed_step(steps, corrupt(kind, row, framework, pool, rng))
    if kind == "contradiction":
        return _one_step(steps, contradicted, rng)
    if kind == "hedged":
        return _one_step(steps, lambda s: hedged_step(s, framework.style.banned_phrases, rng), rng)
    if kind == "cut_short":
        return _one_step(steps, cut_short, rng)
    if kind == "swapped_claim":
        others = sorted(p for p in pool if p != row.metadata.pattern_id and pool[p])
        return _one_step(steps, lambda s: swapped_claim(s, rng.choice(pool[rng.choice(others)])), rng) if others else None
    if kind == "false_effect":
        subject = question_subject(row.turns("user")[-1])
        return _one_step(steps, lambda s: false_effect(s, subject, framework.false_effects, rng), rng)
    if kind == "pasted_reason":
        templates = [t for pattern_id, t in sorted(patterns_of(framework).items()) if pattern_id != row.metadata.pattern_id]
        pastes = pasted_reasons(templates, question_nouns(row.turns("user")[-1]))
        return _one_step(steps, lambda s: pasted_reason(s, pastes, rng), rng)
    raise ValueError(f"{kind!r} is not a step corruption")


def _example(row: Row, kind: StepKind, steps: list[str], bad: int | None) -> StepExample:
    return StepExample(
        id=f"{row.id}-{kind}-{content_hash(steps)[:8]}", prompt=list(row.messages[:-1]), steps=steps,
        labels=[BAD if i == bad else GOOD for i in range(len(steps))], kind=kind, bad_step=bad,
        source_row_id=row.id, pattern_id=row.metadata.pattern_id, split=row.metadata.split or "train")


def reordered(example: StepExample, rng: random.Random) -> StepExample | None:
    """The same steps and labels in another order, renumbered 1..n; None for an answer of one step
    or with an unnumbered step (a preamble).

    A framework writes its reasons in one order (physics: principle, numbers, consequence; CS: the
    computation first), so a reward model trained on it alone can learn where a kind of step
    belongs: on the 20 hand-written CS answers outside the framework, it scored the true first step
    below 0.5 in 8 and the 40 later steps in 4. Shuffled copies teach it to judge what a step says
    wherever it stands.

    >>> e = StepExample(id="a", prompt=[{"role": "user", "content": "Why?"}], steps=["1. A: x.", "2. B: y.", "3. C: z."],
    ...                 labels=[1, 0, 1], kind="contradiction", bad_step=1, source_row_id="r", pattern_id="p", split="train")
    >>> r = reordered(e, random.Random(0))
    >>> r.steps, r.labels, r.bad_step
    (['1. A: x.', '2. C: z.', '3. B: y.'], [1, 1, 0], 2)
    """
    bodies = [_body(step) for step in example.steps]
    if len(bodies) < 2 or not all(marker for marker, _ in bodies):
        return None
    order = list(range(len(bodies)))
    while order == sorted(order):
        rng.shuffle(order)
    steps = [f"{position}. {bodies[i][1]}" for position, i in enumerate(order, start=1)]
    return example.model_copy(update={
        "id": f"{example.id}-reordered", "steps": steps, "labels": [example.labels[i] for i in order],
        "bad_step": None if example.bad_step is None else order.index(example.bad_step)})


def step_examples(rows: Sequence[Row], framework: Framework, *, seed: int,
                  kinds: Sequence[StepKind] = CORRUPTIONS, per_row: int = 2,
                  reorder_share: float = 0.0) -> list[StepExample]:
    """Per row: the framework's answer with every step good, then up to `per_row` corrupted copies,
    kinds in rotation (skipping one the answer cannot take), each with its one bad step; then
    `reorder_share` of them, drawn at random, with their steps shuffled (`reordered`).
    Deterministic for a seed."""
    examples = _framework_examples(rows, framework, seed=seed, kinds=kinds, per_row=per_row)
    if not reorder_share:
        return examples
    # its own generator: the corruptions drawn above stay the same whatever the share
    shuffle = random.Random(f"{seed}-reorder")
    return [(reordered(e, shuffle) or e) if shuffle.random() < reorder_share else e for e in examples]


def borrowed_examples(domain: str, rows: Sequence[Row], framework: Framework, *, seed: int,
                      kinds: Sequence[StepKind] = CORRUPTIONS, per_row: int = 2) -> list[StepExample]:
    """Another domain's step-labelled answers (its framework's answers and their corrupted copies,
    as `step_examples` makes them), marked `borrowed_from` that domain.

    A reward model trained on one framework alone learns what that framework's true steps look
    like, and reads an unfamiliar true step as a wrong one: on hand-written finance answers outside
    the framework it scored the true first step of 7 of 20 references below 0.5 (the framework's
    answers open with a computation). Answers from other frameworks are unfamiliar and true, with
    their own corruptions beside them."""
    return [e.model_copy(update={"borrowed_from": domain})
            for e in step_examples(rows, framework, seed=seed, kinds=kinds, per_row=per_row)]


OnPolicyRule = Literal["pasted", "off_reference"]


def on_policy_examples(asked: Sequence[Row], answers: Sequence[str], training_rows: Sequence[Row],
                       rule: OnPolicyRule) -> list[StepExample]:
    """A chat model's own failures as step labels: its `answers` to the `asked` training questions
    read reason by reason, and each failing reason put in the place of the framework's step at the
    same position, labelled bad; the framework's other steps stay good. One example per failing
    reason; an answer without one gives none. A reason that nearly copies a training reason of this
    question's own pattern never fails.

    `rule` says what fails. `pasted`: a reason that nearly copies a training reason of another
    pattern (a paste), or one the model gave, nearly word for word, to another pattern's question
    too (a stock reason). `off_reference`: any reason that does not nearly copy one of the row's
    own reference reasons (words the question uses do not count), on the evidence that a 135M
    model's reasons that do not say what the framework says are almost all false.

    The rule-based `pasted_reason` fills another pattern's template with this question's nouns;
    what the tuned model writes is its own blend ("Cost: a fast boot costs less than a slow one."
    for a startup-probe question), and the reward model trained on the rule alone scored such
    reasons of its held-out answers 0.99 against 0.94 for the rest."""
    pool = reasons_by_pattern(training_rows)
    pasted = PasteIndex(pool)
    own = {pattern: PasteIndex({pattern: reasons}) for pattern, reasons in pool.items()}
    given: dict[str, list[str]] = defaultdict(list)
    for row, answer in zip(asked, answers, strict=True):
        given[row.metadata.pattern_id] += reasons_of(answer)
    stock = PasteIndex(given)

    def fails(reason: str, question: str, pattern: str, reference: PasteIndex) -> bool:
        if reference.paste(reason, question) or (pattern in own and own[pattern].paste(reason, question)):
            return False
        return rule == "off_reference" or bool(pasted.paste(reason, question, pattern) or stock.paste(reason, question, pattern))

    examples: list[StepExample] = []
    for row, answer in zip(asked, answers, strict=True):
        question, pattern = row.turns("user")[-1], row.metadata.pattern_id
        reference = answer_steps(row.turns("assistant")[-1])
        said = PasteIndex({"reference": reasons_of(row.turns("assistant")[-1])})
        numbered = [i for i, step in enumerate(reference) if _body(step)[0]]
        for slot, reason in zip(numbered, reasons_of(answer), strict=False):
            if fails(reason, question, pattern, said):
                steps = [*reference[:slot], _body(reference[slot])[0] + reason, *reference[slot + 1:]]
                examples.append(_example(row, "on_policy", steps, slot))
    return examples


def _framework_examples(rows: Sequence[Row], framework: Framework, *, seed: int, kinds: Sequence[StepKind],
                        per_row: int) -> list[StepExample]:
    rng = random.Random(seed)
    pool = reasons_by_pattern(rows)
    examples: list[StepExample] = []
    for turn, row in enumerate(rows):
        steps = answer_steps(row.turns("assistant")[-1])
        examples.append(_example(row, "correct", steps, None))
        made = 0
        for offset in range(len(kinds)):
            if made == per_row:
                break
            kind = kinds[(turn * per_row + offset) % len(kinds)]
            broken = corrupt_steps(kind, row, framework, pool, rng)
            if broken is not None:
                examples.append(_example(row, kind, *broken))
                made += 1
    return examples


def labels_consistent(example: StepExample) -> bool:
    """A correct answer has no bad step; a corrupted one exactly one, where `bad_step` says."""
    bad = [i for i, label in enumerate(example.labels) if label == BAD]
    return bad == ([] if example.kind == "correct" else [example.bad_step])


def auroc(good: Sequence[float], bad: Sequence[float]) -> float:
    """The chance that a good step scores above a bad one (ties count half): 1.0 ranks every bad
    step below every good one, 0.5 is a coin.

    >>> auroc([0.9, 0.8], [0.1, 0.85])
    0.75
    """
    if not good or not bad:
        return float("nan")
    ranked = sorted([(s, 1) for s in good] + [(s, 0) for s in bad])
    wins, i = 0.0, 0
    bad_below = 0
    while i < len(ranked):  # walk ties as one block
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        block_good = sum(label for _, label in ranked[i:j])
        block_bad = (j - i) - block_good
        wins += block_good * (bad_below + block_bad / 2)
        bad_below += block_bad
        i = j
    return wins / (len(good) * len(bad))


def answer_score(step_scores: Sequence[float]) -> float:
    """An answer is as good as its weakest step."""
    return min(step_scores) if step_scores else float("nan")


def step_metrics(examples: Sequence[StepExample], scores: Sequence[Sequence[float]],
                 threshold: float = 0.5) -> dict[str, float]:
    """How a reward model's step scores (probability each step is good) agree with the labels:
    step accuracy at `threshold`, AUROC of good against bad steps, and how often the corrupted
    step scores lowest of its answer (`bad_step_found`, overall and per kind).

    >>> ex = lambda kind, bad: StepExample(id=kind, prompt=[Message(role="user", content="q")], steps=["a", "b"],
    ...     labels=[0 if i == bad else 1 for i in range(2)], kind=kind, bad_step=bad, source_row_id="r",
    ...     pattern_id="p", split="eval")
    >>> m = step_metrics([ex("correct", None), ex("hedged", 1), ex("cut_short", 0)], [[0.9, 0.8], [0.7, 0.2], [0.6, 0.4]])
    >>> m["bad_step_found"], m["bad_step_found/hedged"], m["step_accuracy"], m["auroc"]
    (0.5, 1.0, 0.6666666666666666, 0.875)
    """
    if len(examples) != len(scores):
        raise ValueError(f"{len(examples)} examples but {len(scores)} score lists")
    good = [s for e, ss in zip(examples, scores, strict=True) for s, label in zip(ss, e.labels, strict=True) if label == GOOD]
    bad = [s for e, ss in zip(examples, scores, strict=True) for s, label in zip(ss, e.labels, strict=True) if label == BAD]
    right = sum(s >= threshold for s in good) + sum(s < threshold for s in bad)
    found: dict[str, list[bool]] = {}
    for example, ss in zip(examples, scores, strict=True):
        if example.bad_step is not None:
            found.setdefault(example.kind, []).append(min(range(len(ss)), key=ss.__getitem__) == example.bad_step)
    correct = [answer_score(ss) for e, ss in zip(examples, scores, strict=True) if e.kind == "correct"]
    corrupted = [answer_score(ss) for e, ss in zip(examples, scores, strict=True) if e.kind != "correct"]
    every = [hit for hits in found.values() for hit in hits]
    return {"step_accuracy": right / max(1, len(good) + len(bad)), "auroc": auroc(good, bad),
            "answer_auroc": auroc(correct, corrupted),
            "bad_step_found": sum(every) / len(every) if every else float("nan"),
            **{f"bad_step_found/{kind}": sum(hits) / len(hits) for kind, hits in sorted(found.items())},
            "examples": float(len(examples)), "steps": float(len(good) + len(bad))}


def best_index(answer_scores: Sequence[float]) -> int:
    """The answer a reward model ranks highest (the first of equals; an unscored answer, NaN, last).

    >>> best_index([0.4, float("nan"), 0.9, 0.9])
    2
    """
    ranked = [(-s if s == s else float("inf"), i) for i, s in enumerate(answer_scores)]
    return min(ranked)[1]


def earliest_wrong(scores: Sequence[float], threshold: float = 0.5) -> int | None:
    """The first step the reward model scores below `threshold` (P(good)), or None.

    >>> earliest_wrong([0.9, 0.3, 0.2]), earliest_wrong([0.9, 0.8])
    (1, None)
    """
    return next((i for i, score in enumerate(scores) if score < threshold), None)


OUT_OF_FRAMEWORK = "out_of_framework/"  # prefix of the reward model's figures on the hand-written step probes


def out_of_framework_metrics(questions: Sequence[str], wrong_steps: Sequence[int | None],
                             scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """`step_probe_figures` on hand-written answers outside the framework, named for the reward
    model's run beside its in-framework `bad_step_found`."""
    return {f"{OUT_OF_FRAMEWORK}{k}": v for k, v in step_probe_figures(questions, wrong_steps, scores).items()}


def step_probe_figures(questions: Sequence[str], wrong_steps: Sequence[int | None], scores: Sequence[Sequence[float]],
                       threshold: float = 0.5) -> dict[str, float]:
    """ProcessBench's figures on step probes, with the F1's 95% interval (`f1_low`, `f1_high`) and
    how often the planted step scores below the true step it replaced (`planted_below_true`)."""
    low, high = processbench_f1_interval(questions, wrong_steps, scores, threshold)
    return (processbench_metrics(wrong_steps, scores, threshold) | {"f1_low": low, "f1_high": high}
            | {"planted_below_true": planted_below_true(questions, wrong_steps, scores)})


def processbench_metrics(wrong_steps: Sequence[int | None], scores: Sequence[Sequence[float]],
                         threshold: float = 0.5) -> dict[str, float]:
    """ProcessBench's figures: on answers with a wrong step, the share where the earliest step
    scored below `threshold` is that step (`erroneous`); on answers without one, the share where
    no step is (`correct`); `f1`, their harmonic mean.

    >>> processbench_metrics([1, None, 0, None], [[0.9, 0.2], [0.8, 0.9], [0.9, 0.1], [0.4, 0.9]])
    {'erroneous': 0.5, 'correct': 0.5, 'f1': 0.5}
    """
    return _processbench_rates(list(zip(wrong_steps, [earliest_wrong(s, threshold) for s in scores], strict=True)))


def _processbench_rates(answers: Sequence[tuple[int | None, int | None]]) -> dict[str, float]:
    """`processbench_metrics` from (wrong step, step found) per answer; a share with no answer of
    its kind is NaN, and so is the F1 then."""
    erroneous = [found == wrong for wrong, found in answers if wrong is not None]
    correct = [found is None for wrong, found in answers if wrong is None]
    a = sum(erroneous) / len(erroneous) if erroneous else float("nan")
    b = sum(correct) / len(correct) if correct else float("nan")
    return {"erroneous": a, "correct": b, "f1": 2 * a * b / (a + b) if a + b else 0.0}


def planted_below_true(questions: Sequence[str], wrong_steps: Sequence[int | None],
                       scores: Sequence[Sequence[float]]) -> float:
    """The share of planted answers whose planted step scores below the true step it replaced, in
    the same question's answer as written. Unlike the F1, no threshold and no other step enters:
    0.5 is a model that cannot tell what the step says, however it scores the steps around it.
    NaN without such pairs.

    >>> planted_below_true(["a", "a", "b", "b"], [None, 1, None, 0], [[0.9, 0.8], [0.9, 0.6], [0.3, 0.9], [0.4, 0.9]])
    0.5
    """
    written = {q: s for q, w, s in zip(questions, wrong_steps, scores, strict=True) if w is None}
    below = [s[w] < written[q][w] for q, w, s in zip(questions, wrong_steps, scores, strict=True)
             if w is not None and q in written]
    return sum(below) / len(below) if below else float("nan")


def processbench_f1_interval(questions: Sequence[str], wrong_steps: Sequence[int | None],
                             scores: Sequence[Sequence[float]], threshold: float = 0.5, level: float = 0.95,
                             draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """How far the F1 could move on other answers like these: a percentile bootstrap over the
    questions. A question's answers are drawn together, because a probe set pairs each reference
    with its planted copy and one reading of the question decides both. With 20 questions the
    interval is wide: +-0.16 to +-0.22 around an F1 of 0.5, as a pair's two answers fare apart
    or together. One F1 read from the probes is known no better than that.

    >>> q = ["a", "a", "b", "b", "c", "c"]
    >>> processbench_f1_interval(q, [1, None] * 3, [[0.9, 0.1], [0.9, 0.9]] * 3)  # every answer right
    (1.0, 1.0)
    >>> scores = [[0.9, 0.1], [0.9, 0.9], [0.9, 0.9], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]  # one miss, one false alarm
    >>> low, high = processbench_f1_interval(q, [1, None] * 3, scores)
    >>> low < processbench_metrics([1, None] * 3, scores)["f1"] < high
    True
    """
    if not len(questions) == len(wrong_steps) == len(scores):
        raise ValueError(f"{len(questions)} questions, {len(wrong_steps)} wrong steps, {len(scores)} score lists")
    predicted = [earliest_wrong(s, threshold) for s in scores]
    answers: dict[str, list[tuple[int | None, int | None]]] = defaultdict(list)
    for question, wrong, found in zip(questions, wrong_steps, predicted, strict=True):
        answers[question].append((wrong, found))
    groups = list(answers.values())
    rng = random.Random(seed)
    f1s = []
    for _ in range(draws):
        f1 = _processbench_rates([pair for group in rng.choices(groups, k=len(groups)) for pair in group])["f1"]
        if f1 == f1:  # a draw with no answer of one kind has no F1 (NaN)
            f1s.append(f1)
    if not f1s:
        return float("nan"), float("nan")
    f1s.sort()
    tail = (1 - level) / 2  # each end rounded outwards: the interval errs wide
    return f1s[math.floor(tail * (len(f1s) - 1))], f1s[math.ceil((1 - tail) * (len(f1s) - 1))]
