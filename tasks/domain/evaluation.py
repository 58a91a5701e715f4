"""What evaluation asks of a model, and how its answers become metrics. Pure: the model-facing
part (losses, generation, KL) lives in `tasks/adapters/model/measurement.py` and hands plain values back.

- loss/perplexity: mean cross-entropy per answer token over the whole held-out split;
- style: answers to a balanced sample of held-out prompts against the framework's style;
- consistency: answers to every paraphrase of a few held-out questions, compared pairwise;
- drift: mean per-token KL(adapted || base) on fixed out-of-domain probes;
- stability: style and consistency again under sampled decoding, one pass per seed.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tasks.domain.content import ChoiceResult, Paste, PasteIndex, relevance, stock_reasons
from tasks.domain.framework import Framework, Style
from tasks.domain.metrics import (
    StyleScore,
    check_numbers,
    consistency,
    hedges,
    is_degenerate,
    is_structured,
    mean,
    numbers_in,
    perplexity,
    spread,
    style_score,
    style_summary,
    word_count,
)
from tasks.domain.promotion import (
    CHOICE,
    CONSISTENCY,
    DRIFT,
    HELDOUT_BASE_CHOICE,
    HELDOUT_BASE_STRUCTURED,
    HELDOUT_CHOICE,
    HELDOUT_CHOICE_GAIN,
    HELDOUT_GAIN,
    HELDOUT_PASTED,
    HELDOUT_RELEVANCE,
    HELDOUT_STEP_REWARD,
    HELDOUT_STEP_REWARD_FLAG_AUROC,
    HELDOUT_STEP_REWARD_REFERENCE_AUROC,
    HELDOUT_STOCK,
    HELDOUT_STRUCTURED,
    HELDOUT_STYLE,
    LOSS,
    NUMBERS_RIGHT,
    PERPLEXITY,
    STYLE_STD,
)
from tasks.domain.records import Message, Row
from tasks.domain.sampling import round_robin
from tasks.domain.steps import auroc, step_items

# Bump when a metric's definition changes: cached evaluations of older definitions are then
# recomputed rather than compared with new numbers.
METRICS_VERSION = 8  # 3: structure, repetition, degenerate answers earn no style or consistency; 4: numbers_right;
# 5: a digit closing a parenthesis, as in "(2 + 1) = 2.0", is not a list marker;
# 6: an answer that gives one reason twice is not structured; heldout/style; 7: content (choice, pasted, relevance);
# 8: the step reward on flagged reasons (tuned_flagged_steps) and on the references
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> (name, alias, version).

    >>> parse_model_uri("models:/reasoning-slm-devops@champion")
    ('reasoning-slm-devops', 'champion', None)
    >>> parse_model_uri("models:/reasoning-slm-devops/3")
    ('reasoning-slm-devops', None, '3')
    """
    match = _MODEL_URI.match(uri.strip())
    if not match:
        raise ValueError(f"{uri!r} is not a registry URI: use models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def _balanced(rows: Sequence[Row], n: int, rng: random.Random) -> list[Row]:
    """Up to n rows, round-robin across final principles, order fixed by the rng."""
    by_principle: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.id):
        by_principle[row.metadata.final_principle].append(row)
    queues = []
    for key in sorted(by_principle):
        members = by_principle[key]
        rng.shuffle(members)
        queues.append(members[::-1])  # taken from the shuffled end, as this sample always was
    return round_robin(queues, n)


def generation_sample(rows: Sequence[Row], n: int, seed: int) -> list[Row]:
    """Held-out rows whose answers are generated and scored for style: one per question group
    (paraphrases are the consistency check's job), balanced across final principles."""
    one_per_group = {}
    for row in sorted(rows, key=lambda r: r.id):
        one_per_group.setdefault(row.metadata.group, row)
    return _balanced(list(one_per_group.values()), n, random.Random(seed))


def loss_sample(rows: Sequence[Row], n: int, seed: int, first: Sequence[Row] = ()) -> list[Row]:
    """The rows whose answer-token loss is measured: all of them (n = 0), or n rows that start with
    `first` (the generated sample, so each answer row also shows its loss) and are otherwise
    balanced across principles. A forward pass over every eval row of a 135M model costs minutes
    on 2 CPU cores; the same n rows are used for challenger and champion, so the comparison holds."""
    if not n or n >= len(rows):
        return sorted(rows, key=lambda r: r.id)
    chosen = {r.id: r for r in list(first)[:n]}
    rest = _balanced([r for r in rows if r.id not in chosen], n - len(chosen), random.Random(seed))
    return sorted([*chosen.values(), *rest], key=lambda r: r.id)


def paraphrase_groups(rows: Sequence[Row], n: int, seed: int) -> list[list[Row]]:
    """Up to n held-out question groups with at least two phrasings, each with all its rows."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.id):
        if len(row.messages) <= 3:  # single-turn only: a follow-up's answer depends on its context
            groups[row.metadata.group].append(row)
    names = sorted(g for g, members in groups.items() if len(members) >= 2)
    random.Random(seed).shuffle(names)
    return [groups[g] for g in sorted(names[:n])]


def context(row: Row) -> list[Message]:
    """The conversation up to the answer the model must give (the last assistant turn removed)."""
    return list(row.messages[:-1])


def key_terms_by_path(framework: Framework) -> dict[tuple[str, ...], list[str]]:
    return {path: list(block.key_terms) for path, block in framework.blocks()}


@dataclass
class AnswerRecord:
    """One generated answer with its style verdict: a row of the per-example table."""

    row_id: str
    principle: str
    prompt: str
    expected: str
    answer: str
    words: int
    within_cap: bool
    key_term_coverage: float
    hedges: list[str]
    style: float
    structured: bool = False
    repetition: float = 0.0
    degenerate: bool = True
    loss: float | None = None
    numbers_missing: list[str] = field(default_factory=list)  # computed by the reference, absent here
    numbers_invented: list[str] = field(default_factory=list)  # in neither the question nor the reference
    # Content (issue 30): whether the model's likelihood picked the reference among same-shaped
    # distractors (None: not measured), which option it picked, and the answer's pasted reasons.
    choice_correct: bool | None = None
    choice_picked: str = ""
    pasted: list[str] = field(default_factory=list)


def score_answers(rows: Sequence[Row], answers: Sequence[str], framework: Framework) -> list[AnswerRecord]:
    terms = key_terms_by_path(framework)
    style = framework.style
    records = []
    for row, answer in zip(rows, answers, strict=True):
        score = style_score(answer, max_words=style.max_answer_words, min_words=style.min_answer_words,
                            key_terms=terms.get(tuple(row.metadata.principle_path), []),
                            banned_phrases=style.banned_phrases)
        prompt, expected = row.turns("user")[-1], row.turns("assistant")[-1]
        numbers = check_numbers(prompt, expected, answer)
        records.append(AnswerRecord(
            row_id=row.id, principle="/".join(row.metadata.principle_path), prompt=prompt,
            expected=expected, answer=answer, words=score.words, within_cap=score.within_cap,
            key_term_coverage=score.coverage, hedges=list(score.hedges), style=score.score,
            structured=score.structured, repetition=score.repetition, degenerate=score.degenerate,
            numbers_missing=list(numbers.missing), numbers_invented=list(numbers.invented)))
    return records


def style_metrics(records: Sequence[AnswerRecord]) -> dict[str, float]:
    """Style and shape, plus content: `numbers_right` (the share of answers whose numbers are the
    reference's: none missing, none invented) and, where measured, `choice_accuracy` and `pasted`."""
    summary = style_summary([StyleScore(words=r.words, within_cap=r.within_cap, coverage=r.key_term_coverage,
                                        hedges=tuple(r.hedges), structured=r.structured, repetition=r.repetition,
                                        degenerate=r.degenerate) for r in records])
    summary[NUMBERS_RIGHT] = mean(float(not r.numbers_missing and not r.numbers_invented) for r in records)
    chosen = [r.choice_correct for r in records if r.choice_correct is not None]
    if chosen:
        summary |= {CHOICE: mean(map(float, chosen)), "pasted": mean(float(bool(r.pasted)) for r in records)}
    return summary


def loss_metrics(loss_sums: Sequence[float], token_counts: Sequence[int]) -> dict[str, float]:
    """Token-weighted mean over the whole split (not a mean of per-example means)."""
    tokens = sum(token_counts)
    loss = sum(loss_sums) / tokens if tokens else float("nan")
    return {LOSS: loss, PERPLEXITY: perplexity(loss), "eval_tokens": float(tokens)}


def drift_metric(kl_sums: Sequence[float], positions: Sequence[int]) -> dict[str, float]:
    """Mean per-probe KL, each probe's KL averaged over its positions (every probe counts once)."""
    return {DRIFT: mean(s / n for s, n in zip(kl_sums, positions, strict=True) if n)}


@dataclass
class HeldOutAnswer:
    """One held-out question answered by the base and by the tuned model: a row of the
    side-by-side table users read first."""

    question: str
    base: str
    tuned: str
    base_structured: bool
    tuned_structured: bool
    base_degenerate: bool
    tuned_degenerate: bool
    tuned_words: int
    # Numbers the tuned answer states that the question does not: on these qualitative questions
    # usually a figure pasted from a training template ("a bad build hits 5% of users").
    tuned_new_numbers: list[str] = field(default_factory=list)
    base_style: float = 0.0
    tuned_style: float = 0.0
    # The process reward model's score of each step of the tuned answer (empty: none was scored).
    tuned_step_scores: list[float] = field(default_factory=list)
    # Content (issue 30): the hand-written reference; whether tuned and base picked it in the choice
    # test (None: not measured) and what tuned picked; each answer's pasted reasons ("pattern: reason")
    # and stock reasons (one it also gave, nearly word for word, to another held-out question: "reason
    # [also to: question]"); the share of tuned reasons most similar to this question and its reference.
    reference: str = ""
    choice_correct: bool | None = None
    base_choice_correct: bool | None = None
    choice_picked: str = ""
    base_choice_picked: str = ""
    choice_scores: dict[str, float] = field(default_factory=dict)  # tuned: mean log-prob per token, by option kind
    tuned_pasted: list[str] = field(default_factory=list)
    base_pasted: list[str] = field(default_factory=list)
    tuned_stock: list[str] = field(default_factory=list)
    base_stock: list[str] = field(default_factory=list)
    relevance: float | None = None
    # Indices among the tuned answer's steps (`answer_steps`) of the reasons flagged pasted or
    # stock: where the reward model's step scores are compared with the content checks.
    tuned_flagged_steps: list[int] = field(default_factory=list)


def heldout_style(question: str, answer: str, style: Style) -> float:
    """Style on a question with no reference answer: the mean of four checks (within the word cap,
    no hedging, numbered-reason structure, no number the question does not give), 0 when degenerate.
    Key terms are left out: a held-out question has none of its own.

    >>> style = Style(tone="terse", max_answer_words=12, banned_phrases=["maybe"])
    >>> heldout_style("Why tag?", "1. Cost: tags split the bill. 2. Audit: tags name owners.", style)
    1.0
    >>> heldout_style("Why tag?", "1. Cost: maybe tags cut 5% of the bill.", style)
    0.5
    """
    if is_degenerate(answer):
        return 0.0
    checks = (style.min_answer_words <= word_count(answer) <= style.max_answer_words,
              not hedges(answer, style.banned_phrases), is_structured(answer), not numbers_in(answer) - numbers_in(question))
    return sum(map(float, checks)) / len(checks)


def compare_heldout(questions: Sequence[str], base: Sequence[str], tuned: Sequence[str], style: Style) -> list[HeldOutAnswer]:
    return [HeldOutAnswer(question=q, base=b, tuned=t, base_structured=is_structured(b), tuned_structured=is_structured(t),
                          base_degenerate=is_degenerate(b), tuned_degenerate=is_degenerate(t), tuned_words=word_count(t),
                          tuned_new_numbers=sorted(numbers_in(t) - numbers_in(q)),
                          base_style=heldout_style(q, b, style), tuned_style=heldout_style(q, t, style))
            for q, b, t in zip(questions, base, tuned, strict=True)]


def _described(pastes: Sequence[Paste]) -> list[str]:
    return [f"{p.pattern}: {p.reason}" for p in pastes]


def _stock_described(found: Sequence[Sequence[Paste]], questions: Sequence[str]) -> list[list[str]]:
    return [[f"{p.reason} [also to: {questions[int(p.pattern)]}]" for p in pastes] for pastes in found]


def flagged_steps(answer: str, flagged_reasons: Sequence[str]) -> list[int]:
    """Indices, among the answer's steps as the reward model reads them (a preamble is a step of
    its own), of the numbered reasons whose text is one of `flagged_reasons`.

    >>> flagged_steps("Sure. 1. Cost: cheap. 2. Blast radius: 5% of users.", ["Blast radius: 5% of users."])
    [2]
    """
    flagged = set(flagged_reasons)
    return [i for i, (number, text) in enumerate(step_items(answer)) if number and text in flagged]


def judge_eval_content(records: Sequence[AnswerRecord], rows: Sequence[Row], choices: Sequence[ChoiceResult],
                       index: PasteIndex) -> None:
    """The eval answers' choice verdicts (the first `len(choices)` rows: the choice test samples
    them) and pasted reasons (another pattern's than the row's own) of all."""
    for i, (record, row) in enumerate(zip(records, rows, strict=True)):
        if i < len(choices):
            record.choice_correct, record.choice_picked = choices[i].correct, choices[i].picked
        record.pasted = _described(index.pastes(record.answer, record.prompt, row.metadata.pattern_id))


def judge_heldout_content(answers: Sequence[HeldOutAnswer], references: Sequence[str], tuned: Sequence[ChoiceResult],
                          base: Sequence[ChoiceResult] | None, index: PasteIndex) -> None:
    """The held-out answers' content verdicts: choice (tuned and base), pasted and stock reasons of
    both answers, and each tuned answer's relevance to its own question and reference."""
    documents = [f"{a.question} {ref}" for a, ref in zip(answers, references, strict=True)]
    relevant = relevance([a.tuned for a in answers], documents)
    questions = [a.question for a in answers]
    tuned_stock_found = stock_reasons([a.tuned for a in answers], questions)
    tuned_stock = _stock_described(tuned_stock_found, questions)
    base_stock = _stock_described(stock_reasons([a.base for a in answers], questions), questions)
    for i, answer in enumerate(answers):
        answer.reference, answer.relevance = references[i], relevant[i]
        answer.tuned_stock, answer.base_stock = tuned_stock[i], base_stock[i]
        answer.choice_correct, answer.choice_picked = tuned[i].correct, tuned[i].picked
        answer.choice_scores = dict(zip(tuned[i].kinds, tuned[i].scores, strict=True))
        if base is not None:
            answer.base_choice_correct, answer.base_choice_picked = base[i].correct, base[i].picked
        pasted = index.pastes(answer.tuned, answer.question)
        answer.tuned_pasted = _described(pasted)
        answer.base_pasted = _described(index.pastes(answer.base, answer.question))
        answer.tuned_flagged_steps = flagged_steps(answer.tuned, [p.reason for p in [*pasted, *tuned_stock_found[i]]])


def distractor_wins(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Which distractors beat the reference: per distractor kind (pasted, template, swapped), the
    share of pairings in which the reference scores higher (`heldout/choice_vs_<kind>`).

    >>> distractor_wins([{"reference": -2.0, "pasted:a": -3.0, "template:b": -1.0}])
    {'heldout/choice_vs_pasted': 1.0, 'heldout/choice_vs_template': 0.0}
    """
    wins: dict[str, list[float]] = defaultdict(list)
    for item in scores:
        for kind, score in item.items():
            if kind != "reference":
                wins[kind.split(":")[0]].append(float(item["reference"] > score))
    return {f"heldout/choice_vs_{kind}": mean(values) for kind, values in wins.items()}


def content_metrics(rows: Sequence[HeldOutAnswer]) -> dict[str, float]:
    """Choice accuracy (tuned, base, gain), the shares of answers with a pasted reason and with a
    stock reason (tuned, base) and mean relevance, over the held-out answers the content checks judged ({} when none).

    >>> row = HeldOutAnswer("q", "b", "t", True, True, False, False, 3, reference="1. R: r.", choice_correct=True,
    ...                     base_choice_correct=False, tuned_pasted=["canary: Blast radius: ..."], relevance=0.5)
    >>> content_metrics([row])[HELDOUT_CHOICE_GAIN], content_metrics([row])[HELDOUT_PASTED]
    (1.0, 1.0)
    """
    judged = [r for r in rows if r.choice_correct is not None]
    if not judged:
        return {}
    figures = {HELDOUT_CHOICE: mean(float(r.choice_correct) for r in judged),
               HELDOUT_PASTED: mean(float(bool(r.tuned_pasted)) for r in judged),
               "heldout/base_pasted": mean(float(bool(r.base_pasted)) for r in judged),
               HELDOUT_STOCK: mean(float(bool(r.tuned_stock)) for r in judged),
               "heldout/base_stock": mean(float(bool(r.base_stock)) for r in judged),
               HELDOUT_RELEVANCE: mean(r.relevance or 0.0 for r in judged),
               "heldout/choice_chance": mean(1 / len(r.choice_scores) for r in judged if r.choice_scores)}
    figures |= distractor_wins([r.choice_scores for r in judged])
    if all(r.base_choice_correct is not None for r in judged):
        figures[HELDOUT_BASE_CHOICE] = mean(float(r.base_choice_correct) for r in judged)
        figures[HELDOUT_CHOICE_GAIN] = figures[HELDOUT_CHOICE] - figures[HELDOUT_BASE_CHOICE]
    return figures


def heldout_metrics(rows: Sequence[HeldOutAnswer]) -> dict[str, float]:
    """Share of held-out answers in the trained shape, tuned and base, and the gain between them.

    >>> style = Style(tone="terse", max_answer_words=60)
    >>> rows = compare_heldout(["q"], ["I'm not sure."], ["1. Isolation: one blast radius per tier."], style)
    >>> heldout_metrics(rows)["heldout/structured_gain"], heldout_metrics(rows)["heldout/style"]
    (1.0, 1.0)
    """
    if not rows:
        return {}
    tuned = mean(float(r.tuned_structured) for r in rows)
    base = mean(float(r.base_structured) for r in rows)
    return {HELDOUT_STRUCTURED: tuned, HELDOUT_BASE_STRUCTURED: base, HELDOUT_GAIN: tuned - base,
            "heldout/degenerate": mean(float(r.tuned_degenerate) for r in rows),
            "heldout/base_degenerate": mean(float(r.base_degenerate) for r in rows),
            "heldout/new_numbers": mean(float(bool(r.tuned_new_numbers)) for r in rows),
            HELDOUT_STYLE: mean(r.tuned_style for r in rows), "heldout/base_style": mean(r.base_style for r in rows),
            "heldout/answer_words": mean(float(r.tuned_words) for r in rows),
            "heldout/questions": float(len(rows)), **content_metrics(rows)}


def answered_heldout_metrics(questions: Sequence[str], answers: Sequence[str], style: Style) -> dict[str, float]:
    """One model's held-out figures (`heldout/style`, `heldout/structured`, ...) without a base to
    compare with: what a refined version's SFT parent is recorded with."""
    rows = compare_heldout(questions, answers, answers, style)
    return {k: v for k, v in heldout_metrics(rows).items() if "base" not in k and k != HELDOUT_GAIN}


def _flat(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


def _content_flags(r: HeldOutAnswer) -> str:
    """The tuned answer's content verdicts in one cell: choice, pastes, stock reasons, relevance."""
    if r.choice_correct is None:
        return "-"
    flags = ["picks reference" if r.choice_correct else f"picks {r.choice_picked}"]
    flags += [f"PASTED {_flat(p)}" for p in r.tuned_pasted]
    flags += [f"STOCK {_flat(s)}" for s in r.tuned_stock]
    if r.relevance is not None:
        flags.append(f"relevance {r.relevance:.2f}")
    return "; ".join(flags)


def heldout_markdown(rows: Sequence[HeldOutAnswer], title: str) -> str:
    """Base vs tuned answers side by side, with the shape verdict of each, the reference answer and
    the content verdicts where they were measured (and the reward model's score of each tuned step,
    where one scored them)."""
    def cell(text: str, ok: bool) -> str:
        return f"{'✓' if ok else '✗'} {_flat(text)}"

    scored = any(r.tuned_step_scores for r in rows)
    judged = any(r.reference for r in rows)
    header = "| question | base | tuned |" + (" reference | content |" if judged else "") + (" step scores |" if scored else "")
    legend = ["✓ = in the trained shape (1-3 numbered reasons, each a real clause)"]
    if judged:
        legend.append("content: whether the tuned model's likelihood picks the reference among same-shaped distractors, "
                      "each reason pasted from another pattern's training answer, "
                      "and each STOCK reason: one the tuned model also gave, nearly word for word, to another question")
    lines = [f"# {title}", "", "\n\n".join(legend), "", header, "|" + "---|" * header.count(" |")]
    for r in rows:
        line = f"| {r.question} | {cell(r.base, r.base_structured)} | {cell(r.tuned, r.tuned_structured)} |"
        if judged:
            line += f" {_flat(r.reference)} | {_content_flags(r)} |"
        if scored:
            line += f" {' '.join(f'{v:.2f}' for v in r.tuned_step_scores) or '-'} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def step_reward_metrics(step_scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """The reward model's verdict on a set of answers: the mean over answers of their mean step
    score (`heldout/step_reward`) and of their weakest step's (`heldout/answer_reward`). An answer
    with no steps scores 0.

    >>> step_reward_metrics([[0.9, 0.5], []])
    {'heldout/step_reward': 0.35, 'heldout/answer_reward': 0.25}
    """
    if not step_scores:
        return {}
    return {HELDOUT_STEP_REWARD: mean(sum(s) / len(s) if s else 0.0 for s in step_scores),
            "heldout/answer_reward": mean(min(s) if s else 0.0 for s in step_scores)}


def step_reward_on_flags(answers: Sequence[HeldOutAnswer]) -> dict[str, float]:
    """Whether the reward model sees what the content checks see: the mean step score of the
    tuned answers' flagged reasons (pasted or stock) and of the others, and the AUROC of "an
    unflagged reason scores above a flagged one" (`heldout/step_reward_flag_auroc`: 1.0 ranks every
    flagged reason lowest, 0.5 is a coin). {} unless both kinds of reason were scored.

    >>> a = HeldOutAnswer("q", "b", "t", True, True, False, False, 3, tuned_step_scores=[0.9, 0.2, 0.8],
    ...                   tuned_flagged_steps=[1])
    >>> step_reward_on_flags([a])["heldout/step_reward_flag_auroc"]
    1.0
    """
    flagged, others = [], []
    for answer in answers:
        for i, score in enumerate(answer.tuned_step_scores):
            (flagged if i in answer.tuned_flagged_steps else others).append(score)
    if not flagged or not others:
        return {}
    return {HELDOUT_STEP_REWARD_FLAG_AUROC: auroc(others, flagged), "heldout/step_reward_flagged": mean(flagged),
            "heldout/step_reward_unflagged": mean(others)}


def step_reward_against_references(tuned: Sequence[Sequence[float]], references: Sequence[Sequence[float]]) -> dict[str, float]:
    """Whether the reward model prefers what is true to what the model said: the mean step score
    of the hand-written held-out references (`heldout/step_reward_reference`), and the AUROC of "a
    reference's step scores above a tuned answer's step" (`heldout/step_reward_reference_auroc`).
    A tuned model that says what the references say scores 0.5; one that writes nonsense should
    score near 1.0. Below 0.5, the reward model prefers the tuned answers to the truth, and a gate
    on the step reward would reward the wrong thing. {} unless both have scored steps.

    >>> step_reward_against_references([[0.9, 0.4]], [[0.95, 0.8]])["heldout/step_reward_reference_auroc"]
    0.75
    """
    tuned_steps = [s for steps in tuned for s in steps]
    reference_steps = [s for steps in references for s in steps]
    if not tuned_steps or not reference_steps:
        return {}
    return {"heldout/step_reward_reference": mean(reference_steps),
            HELDOUT_STEP_REWARD_REFERENCE_AUROC: auroc(reference_steps, tuned_steps)}


@dataclass
class SampledPass:
    seed: int
    style_adherence: float
    consistency: float


def stability_metrics(passes: Sequence[SampledPass]) -> dict[str, float]:
    if not passes:
        return {}
    style_mean, style_std = spread([p.style_adherence for p in passes])
    cons_mean, cons_std = spread([p.consistency for p in passes])
    return {"stability/style_adherence_mean": style_mean, STYLE_STD: style_std,
            "stability/consistency_mean": cons_mean, "stability/consistency_std": cons_std,
            "stability/seeds": float(len(passes))}


@dataclass
class EvaluationResult:
    """Everything one model's evaluation produced; `metrics` is what MLflow and the gate see."""

    metrics: dict[str, float]
    answers: list[AnswerRecord] = field(default_factory=list)
    paraphrases: list[dict] = field(default_factory=list)
    probe_kl: list[dict] = field(default_factory=list)
    heldout: list[HeldOutAnswer] = field(default_factory=list)


def summarise(losses: tuple[Sequence[float], Sequence[int]], answers: list[AnswerRecord],
              paraphrase_answers: Sequence[Sequence[str]], kl: tuple[Sequence[float], Sequence[int]],
              passes: Sequence[SampledPass], heldout: Sequence[HeldOutAnswer] = ()) -> dict[str, float]:
    metrics = {**loss_metrics(*losses), **style_metrics(answers),
               CONSISTENCY: consistency(paraphrase_answers), **drift_metric(*kl), **stability_metrics(passes),
               **heldout_metrics(heldout)}
    metrics["generated"] = float(len(answers))
    return metrics

