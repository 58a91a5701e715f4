"""Preference pairs for DPO, built from the framework's own answers: chosen is the framework's
answer, rejected breaks exactly one stated rule of the domain's style. Each pair says which rule,
and `broken_rule` checks that the rejected side really breaks it (validation runs it on every pair).

The rejection kinds are the failures a small model actually shows (issue 16; the champions'
answers in issue 15's note): hedging, padding past the word cap, a fourth and fifth reason, a
reason pasted from another pattern, a computed number that is wrong.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from tasks.domain.framework import Framework
from tasks.domain.frozen import Frozen
from tasks.domain.hashing import content_hash
from tasks.domain.metrics import (
    MAX_REASONS,
    check_numbers,
    hedges,
    is_degenerate,
    is_structured,
    numbered_reasons,
    numbers_in,
    without_markers,
    word_count,
)
from tasks.domain.records import Message, Row
from tasks.domain.sampling import round_robin, spread_sample

Kind = Literal["hedged", "over_cap", "too_many_reasons", "other_pattern", "wrong_number", "pasted_answer", "on_policy"]
RULE_BASED: tuple[Kind, ...] = ("hedged", "over_cap", "too_many_reasons", "other_pattern", "wrong_number",
                                "pasted_answer")
RULES: dict[str, str] = {
    "hedged": "no hedging filler",
    "over_cap": "at most the framework's word cap",
    "too_many_reasons": f"at most {MAX_REASONS} numbered reasons",
    "other_pattern": "every reason belongs to the question asked",
    "wrong_number": "every computed number is right",
    "pasted_answer": "the answer is about the question asked, not another pattern's answer pasted",
    "on_policy": "the model's own answer, failing the framework's checks",
}


class PreferencePair(Frozen):
    """One row of `reasoning_preferences.jsonl`: the prompt turns, both answers, and provenance."""

    id: str
    prompt: list[Message] = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    kind: Kind
    rule: str
    source_row_id: str
    pattern_id: str
    principle: str
    split: Literal["train", "eval"]

    def question(self) -> str:
        return [m.content for m in self.prompt if m.role == "user"][-1]

    def conversation(self, side: Literal["chosen", "rejected"]) -> list[Message]:
        """The prompt turns followed by one side's answer: what a chat format renders."""
        return [*self.prompt, Message(role="assistant", content=getattr(self, side))]


def _pair(row: Row, kind: Kind, rejected: str, rule: str) -> PreferencePair:
    """The row's final answer as chosen against `rejected`, with the row's provenance."""
    return PreferencePair(
        id=f"{row.id}-{kind}-{content_hash(rejected)[:8]}", prompt=list(row.messages[:-1]),
        chosen=row.turns("assistant")[-1], rejected=rejected, kind=kind, rule=rule, source_row_id=row.id,
        pattern_id=row.metadata.pattern_id, principle="/".join(row.metadata.principle_path),
        split=row.metadata.split or "train")


def _reasons(answer: str) -> list[str]:
    return [text for number, text in numbered_reasons(answer) if number]


def _numbered(reasons: Sequence[str]) -> str:
    return " ".join(f"{i}. {text}" for i, text in enumerate(reasons, start=1))


def reasons_by_pattern(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Every distinct reason each pattern's answers give: the pool "another pattern" draws from."""
    pool: dict[str, dict[str, None]] = defaultdict(dict)
    for row in rows:
        for answer in row.turns("assistant"):
            pool[row.metadata.pattern_id].update(dict.fromkeys(_reasons(answer)))
    return {pattern: list(reasons) for pattern, reasons in pool.items()}


def answers_by_pattern(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Every trained answer of each pattern, one per row (a frequent pattern has more)."""
    answers: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        answers[row.metadata.pattern_id].append(row.turns("assistant")[-1])
    return dict(answers)


def _pasted_answer(pattern_id: str, answers: dict[str, list[str]], rng: random.Random) -> str | None:
    """Another pattern's whole trained answer, as a model that pastes templates gives it (issue 30):
    patterns drawn by how many rows they have, so the most frequent template is pasted most."""
    others = sorted(p for p in answers if p != pattern_id and answers[p])
    if not others:
        return None
    pattern = rng.choices(others, weights=[len(answers[p]) for p in others])[0]
    return rng.choice(answers[pattern])


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _hedged(answer: str, framework: Framework, rng: random.Random) -> str | None:
    reasons = _reasons(answer)
    if not framework.style.banned_phrases or len(reasons) < 2:
        return None
    phrase = rng.choice(framework.style.banned_phrases)
    reasons[1] = f"{phrase[:1].upper()}{phrase[1:]}, {_lower_first(reasons[1])}"
    return _numbered(reasons)


def _over_cap(answer: str, framework: Framework, rng: random.Random) -> str | None:
    reasons = _reasons(answer)
    if not reasons:
        return None
    padded, turn = answer, 0
    while word_count(padded) <= framework.style.max_answer_words:
        padded += f" In other words, {_lower_first(reasons[turn % len(reasons)])}"
        turn += 1
    return padded


def _foreign_reasons(pattern_id: str, pool: dict[str, list[str]], rng: random.Random, count: int) -> list[str]:
    others = sorted(p for p in pool if p != pattern_id and pool[p])
    if not others:
        return []
    return [rng.choice(pool[rng.choice(others)]) for _ in range(count)]


def _too_many(answer: str, pattern_id: str, pool: dict[str, list[str]], rng: random.Random) -> str | None:
    reasons = _reasons(answer)
    extra = _foreign_reasons(pattern_id, pool, rng, MAX_REASONS + 2 - len(reasons))
    return _numbered(reasons + extra) if reasons and extra else None


def _other_pattern(answer: str, pattern_id: str, pool: dict[str, list[str]], rng: random.Random) -> str | None:
    reasons = _reasons(answer)
    foreign = _foreign_reasons(pattern_id, pool, rng, 1)
    if not reasons or not foreign or foreign[0] in reasons:
        return None
    reasons[rng.randrange(len(reasons))] = foreign[0]
    return _numbered(reasons)


_FORMATTED = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _perturbed(text: str, rng: random.Random) -> str:
    """Another plausible value in the same format: a wrong result looks like a right one."""
    value = float(text.replace(",", ""))
    decimals = len(text.split(".")[1]) if "." in text else 0
    for factor in rng.sample([0.5, 0.8, 1.25, 1.5, 2.0], 5):
        candidate = round(value * factor, decimals) if decimals else round(value * factor)
        formatted = f"{candidate:,.{decimals}f}" if "," in text else f"{candidate:.{decimals}f}"
        if formatted.replace(",", "") != text.replace(",", ""):
            return formatted
    return f"{value + 1:.{decimals}f}"


def _wrong_number(question: str, answer: str, rng: random.Random) -> str | None:
    """One number the answer computes (one the question does not state) changed to a value the
    answer does not state elsewhere (list markers are not numbers)."""
    given, stated = numbers_in(question), numbers_in(answer)
    computed = [m for m in _FORMATTED.finditer(without_markers(answer))
                if m.group().replace(",", "") in stated - given and float(m.group().replace(",", "")) >= 2]
    if not computed:  # ">= 2": not the "1" of "(1 + r)"
        return None
    target = rng.choice(computed)
    wrong = _perturbed(target.group(), rng)
    if wrong.replace(",", "") in stated | given:
        return None
    return answer[:target.start()] + wrong + answer[target.end():]


def corrupt(kind: Kind, row: Row, framework: Framework, pool: dict[str, list[str]], rng: random.Random,
            answers: dict[str, list[str]] | None = None) -> str | None:
    """The row's answer broken by one rule, or None where the rule cannot be broken this way
    (`pasted_answer` needs `answers`, the trained answers by pattern)."""
    question, answer = row.turns("user")[-1], row.turns("assistant")[-1]
    if kind == "hedged":
        return _hedged(answer, framework, rng)
    if kind == "over_cap":
        return _over_cap(answer, framework, rng)
    if kind == "too_many_reasons":
        return _too_many(answer, row.metadata.pattern_id, pool, rng)
    if kind == "other_pattern":
        return _other_pattern(answer, row.metadata.pattern_id, pool, rng)
    if kind == "wrong_number":
        return _wrong_number(question, answer, rng)
    if kind == "pasted_answer":
        return _pasted_answer(row.metadata.pattern_id, answers or {}, rng)
    raise ValueError(f"{kind!r} is not a rule-based rejection")


def broken_rule(pair: PreferencePair, framework: Framework, pool: dict[str, list[str]]) -> bool:
    """Whether the rejected answer breaks the rule its pair claims (and chosen does not)."""
    rejected, chosen = pair.rejected, pair.chosen
    if pair.kind == "hedged":
        return bool(hedges(rejected, framework.style.banned_phrases)) and not hedges(chosen, framework.style.banned_phrases)
    if pair.kind == "over_cap":
        return word_count(rejected) > framework.style.max_answer_words >= word_count(chosen)
    if pair.kind == "too_many_reasons":
        return len(_reasons(rejected)) > MAX_REASONS >= len(_reasons(chosen))
    if pair.kind in ("other_pattern", "pasted_answer"):
        own = set(pool.get(pair.pattern_id, ())) | set(_reasons(chosen))
        foreign = {r for p, reasons in pool.items() if p != pair.pattern_id for r in reasons}
        pasted = [r not in own and r in foreign for r in _reasons(rejected)]
        # other_pattern: one reason of another pattern's; pasted_answer: every reason is
        return any(pasted) if pair.kind == "other_pattern" else bool(pasted) and all(pasted)
    if pair.kind == "wrong_number":
        return not check_numbers(pair.question(), chosen, rejected).right
    return rejected.strip() != chosen.strip() and bool(failed_checks(pair.question(), chosen, rejected, framework))


def failed_checks(question: str, expected: str, answer: str, framework: Framework) -> list[str]:
    """The framework's checks an answer fails, against the reference answer to the same question.

    >>> from tasks.domain.framework import Framework
    >>> style = {"tone": "t", "max_answer_words": 60, "banned_phrases": ["maybe"]}
    >>> fw = Framework.model_construct(style=type("S", (), style))
    >>> failed_checks("Why /24?", "1. Isolation: 251 usable hosts each.", "1. Blast radius: maybe 5% of users.", fw)
    ['hedged', 'numbers']
    """
    style = framework.style
    failed = []
    if is_degenerate(answer):
        failed.append("degenerate")
    elif not is_structured(answer):
        failed.append("structure")
    if hedges(answer, style.banned_phrases):
        failed.append("hedged")
    if word_count(answer) > style.max_answer_words:
        failed.append("over_cap")
    if not check_numbers(question, expected, answer).right:
        failed.append("numbers")
    return failed


def on_policy_pairs(rows: Sequence[Row], answers: Sequence[str], framework: Framework) -> list[PreferencePair]:
    """The model's own answers to the rows' questions, kept as rejected where they fail the
    framework's checks (the failures it actually makes: a canary's "5% of users" pasted into an
    answer about Terraform), with the framework's answer as chosen. The rule records which checks."""
    pairs = []
    for row, answer in zip(rows, answers, strict=True):
        question, expected = row.turns("user")[-1], row.turns("assistant")[-1]
        failed = failed_checks(question, expected, answer, framework)
        if not failed or not answer.strip() or answer.strip() == expected.strip():
            continue
        pairs.append(_pair(row, "on_policy", answer, f"{RULES['on_policy']}: {', '.join(failed)}"))
    return pairs


def build_pairs(rows: Sequence[Row], framework: Framework, *, seed: int, kinds: Sequence[Kind] = RULE_BASED,
                per_row: int = 1) -> list[PreferencePair]:
    """Up to `per_row` pairs per source row, kinds taken in rotation (skipping a kind the row's
    answer cannot break, e.g. a wrong number where it computes none), deterministic for a seed.
    Only the final assistant turn is contrasted; earlier turns are part of the prompt."""
    rng = random.Random(seed)
    pool, answers = reasons_by_pattern(rows), answers_by_pattern(rows)
    pairs: list[PreferencePair] = []
    turn = 0
    for row in rows:
        made = 0
        for offset in range(len(kinds)):
            if made == per_row:
                break
            kind = kinds[(turn + offset) % len(kinds)]
            rejected = corrupt(kind, row, framework, pool, rng, answers)
            if rejected is None or rejected == row.turns("assistant")[-1]:
                continue
            pair = _pair(row, kind, rejected, RULES[kind])
            if broken_rule(pair, framework, pool):  # a corruption that happens to keep the rule is no pair
                pairs.append(pair)
                made += 1
        turn += 1
    return pairs


def balanced_sample(pairs: Sequence[PreferencePair], n: int) -> list[PreferencePair]:
    """Up to n pairs, taken round-robin across rejection kinds and, within a kind, across patterns
    (all when n is 0): a fixed, affordable set where each kind counts about equally and every
    pattern is present. The pairs file is grouped by principle and pattern, so the first pairs of
    each kind in file order would all come from the first few patterns.

    >>> pair = lambda i, kind, pattern: PreferencePair(id=f"{kind}{i}{pattern}", prompt=[Message(role="user", content="q")],
    ...     chosen="a", rejected="b", kind=kind, rule="", source_row_id="r", pattern_id=pattern, principle="p", split="eval")
    >>> pairs = [pair(0, "hedged", "x"), pair(1, "hedged", "x"), pair(2, "hedged", "y"), pair(0, "over_cap", "x")]
    >>> [p.id for p in balanced_sample(pairs, 3)]
    ['hedged0x', 'over_cap0x', 'hedged2y']
    """
    return spread_sample(pairs, n, kind=lambda p: p.kind, pattern=lambda p: p.pattern_id)


def hardest(pairs: Sequence[PreferencePair], margins: Sequence[float], n: int) -> list[PreferencePair]:
    """Up to n pairs the model ranks wrong (margin, chosen's log-probability over rejected's,
    below 0), taken round-robin across rejection kinds, the most wrong of each kind first, so
    a kind it gets wrong often cannot crowd out one it gets wrong less often; then, if room is
    left, those it ranks right by the smallest margins.

    >>> pair = lambda i, kind: PreferencePair(id=f"{kind}{i}", prompt=[Message(role="user", content="q")], chosen="a",
    ...     rejected="b", kind=kind, rule="", source_row_id="r", pattern_id="p", principle="p", split="train")
    >>> pairs = [pair(0, "over_cap"), pair(1, "over_cap"), pair(2, "over_cap"), pair(0, "hedged"), pair(1, "hedged")]
    >>> [p.id for p in hardest(pairs, [-3.0, -1.0, -2.0, -0.5, 4.0], 3)]
    ['over_cap0', 'hedged0', 'over_cap2']
    >>> [p.id for p in hardest(pairs, [-3.0, 1.0, 2.0, 0.5, 4.0], 3)]
    ['over_cap0', 'hedged0', 'over_cap1']
    """
    if len(pairs) != len(margins):
        raise ValueError(f"{len(pairs)} pairs but {len(margins)} margins")
    order = sorted(range(len(pairs)), key=lambda i: margins[i])
    wrong_by_kind: dict[str, list[int]] = defaultdict(list)
    for i in order:
        if margins[i] < 0:
            wrong_by_kind[pairs[i].kind].append(i)
    picked = round_robin(wrong_by_kind.values(), n)
    picked += [i for i in order if margins[i] >= 0][:n - len(picked)]
    return [pairs[i] for i in picked]


def dpo_training_set(rule_based: Sequence[PreferencePair], on_policy: Sequence[PreferencePair],
                     size: int, margins: Sequence[float] | None = None) -> list[PreferencePair]:
    """The pairs DPO sees in `size` examples (steps x batch): every on-policy pair first, up to
    half of them (the failures this model actually makes; drawn at random from thousands of
    rule-based pairs, a few dozen would almost never be seen), the rest rule-based: with the SFT
    model's `margins` on `rule_based`, the hardest of them; without, a sample spread across kinds
    and patterns.

    >>> pair = lambda i, kind: PreferencePair(id=f"{kind}{i}", prompt=[Message(role="user", content="q")], chosen="a",
    ...     rejected="b", kind=kind, rule="", source_row_id="r", pattern_id="p", principle="p", split="train")
    >>> rules = [pair(i, kind) for i in range(3) for kind in ("hedged", "over_cap")]
    >>> on_policy = [pair(0, "on_policy"), pair(1, "on_policy"), pair(2, "on_policy")]
    >>> [p.id for p in dpo_training_set(rules, on_policy, 4)]
    ['on_policy0', 'on_policy1', 'hedged0', 'over_cap0']
    >>> [p.id for p in dpo_training_set(rules, on_policy, 4, margins=[3, 2, 1, -1, 0, 4])]
    ['on_policy0', 'on_policy1', 'over_cap1', 'hedged2']
    >>> [p.id for p in dpo_training_set(rules, on_policy, 4, margins=[3, 2, 1, -1, -2, 4])]
    ['on_policy0', 'on_policy1', 'hedged2', 'over_cap1']
    """
    chosen_on_policy = list(on_policy[:size // 2])
    remaining = size - len(chosen_on_policy)
    if margins is None:
        return chosen_on_policy + balanced_sample(rule_based, remaining)
    return chosen_on_policy + hardest(rule_based, margins, remaining)


def preference_accuracy(pairs: Sequence[PreferencePair], margins: Sequence[float],
                        prefix: str = "preference") -> dict[str, float]:
    """Share of pairs where the model ranks chosen above rejected, overall and per rejection kind.

    >>> pair = lambda kind: PreferencePair(id=kind, prompt=[Message(role="user", content="q")], chosen="a",
    ...     rejected="b", kind=kind, rule="", source_row_id="r", pattern_id="p", principle="p", split="eval")
    >>> preference_accuracy([pair("hedged"), pair("hedged"), pair("over_cap")], [0.5, -1.0, 2.0])
    {'preference/accuracy': 0.6666666666666666, 'preference/accuracy/hedged': 0.5, 'preference/accuracy/over_cap': 1.0}
    """
    wins: dict[str, list[float]] = defaultdict(list)
    for pair, margin in zip(pairs, margins, strict=True):
        wins[pair.kind].append(float(margin > 0))
    every = [w for kind in wins for w in wins[kind]]
    figures = {f"{prefix}/accuracy": sum(every) / len(every)} if every else {}
    return figures | {f"{prefix}/accuracy/{kind}": sum(w) / len(w) for kind, w in sorted(wins.items())}
