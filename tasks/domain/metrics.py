"""Evaluation metrics over plain values: answer style, paraphrase consistency, spread across seeds.
No model, no IO: answers and expectations in, numbers out. (Tensor metrics, such as masked loss
and KL drift, are in `tensor_metrics.py`.)"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

_WORD = re.compile(r"[a-z0-9]+(?:[./:'-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; CIDRs, versions and hyphenated terms stay whole.

    >>> words("Split 10.0.0.0/16 into /24 subnets: blast-radius!")
    ['split', '10.0.0.0/16', 'into', '24', 'subnets', 'blast-radius']
    """
    return _WORD.findall(text.lower())


def word_count(text: str) -> int:
    """Whitespace-separated words, the same count the dataset's terseness expectation uses."""
    return len(text.split())


def stem(word: str) -> str:
    """Crude plural folding so `subnet` matches `subnets` and `policies` matches `policy`."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def key_term_coverage(answer: str, key_terms: Sequence[str]) -> float:
    """Share of key terms present in the answer (every word of a multi-word term, plurals folded).

    >>> key_term_coverage("1. Isolation per subnet. 2. Routing tables.", ["isolation", "routing", "hosts"])
    0.6666666666666666
    """
    if not key_terms:
        return 1.0
    present = {stem(w) for w in words(answer)}
    hits = sum(all(stem(w) in present for w in words(term)) for term in key_terms)
    return hits / len(key_terms)


def hedges(answer: str, banned_phrases: Sequence[str]) -> list[str]:
    """The banned (hedging, filler) phrases the answer contains, matched on word boundaries."""
    lowered = " ".join(words(answer))
    return [p for p in banned_phrases if re.search(rf"(?<!\S){re.escape(' '.join(words(p)))}(?!\S)", lowered)]


# A list marker: "1." or "2)" at the start or after whitespace, followed by whitespace or the end.
_REASON_MARKER = re.compile(r"(?:^|(?<=\s))(\d{1,2})[.)](?=\s|$)")
_LETTER_WORD = re.compile(r"[A-Za-z]{2,}")
MAX_REASONS = 3
# Above this share of repeated word trigrams an answer is a loop, not reasoning.
DEGENERATE_REPETITION = 0.3


def _markers(text: str) -> list[re.Match]:
    """List markers as a reader finds them: numbered 1, 2, 3 in turn, so a sentence ending in a
    number ("... leaves 59. 3. Headroom") keeps its number, and never a digit that closes a
    parenthesis ("(2 + 1) = 2.0"; physics, Amdahl and annuity answers are full of both)."""
    found: list[re.Match] = []
    for match in _REASON_MARKER.finditer(text):
        closes = text[match.end(1)] == ")" and text.count("(", 0, match.start()) > text.count(")", 0, match.start())
        if int(match.group(1)) == len(found) + 1 and not closes:
            found.append(match)
    return found


def without_markers(text: str) -> str:
    """The text with its list markers blanked, each by as many spaces (offsets stay valid)."""
    for marker in reversed(_markers(text)):
        text = text[:marker.start()] + " " * (marker.end() - marker.start()) + text[marker.end():]
    return text


def numbered_reasons(answer: str) -> list[tuple[int, str]]:
    """The answer's numbered items as (number, text); text before the first marker is item 0.

    >>> numbered_reasons("1. Isolation: one blast radius. 2. Routing: separate tables.")
    [(1, 'Isolation: one blast radius.'), (2, 'Routing: separate tables.')]
    >>> [n for n, _ in numbered_reasons("1. Momentum: 2 x 3 / (2 + 1) = 2.0 m/s. 2. Math: 64 less 5 is 59. 3. Go.")]
    [1, 2, 3]
    """
    answer = answer.strip()
    markers = _markers(answer)
    head = answer[:markers[0].start()] if markers else answer
    items = [(0, head.strip())] if head.strip() else []
    ends = [m.start() for m in markers[1:]] + [len(answer)] if markers else []
    return items + [(int(m.group(1)), answer[m.end():end].strip()) for m, end in zip(markers, ends, strict=True)]


_EQUATION = re.compile(r"=\s*[-$]?\d")


def is_clause(text: str) -> bool:
    """A reason says something: three or more words, two or more of them distinct real words (or
    one word labelling a worked equation, "Numbers: 2 x 3 / (2 + 1) = 2.0 m/s."), and no
    word-salad repetition inside it.

    >>> is_clause("Isolation: each /24 is its own blast radius."), is_clause("3. 3. 3."), is_clause("the the the")
    (True, False, False)
    >>> is_clause("Numbers: 2 x 3 / (2 + 1) = 2.0 m/s."), is_clause("2 x 3 = 6 = 6")
    (True, False)
    """
    tokens = text.split()
    letters = {w.lower() for w in _LETTER_WORD.findall(text)}
    worded = len(letters) >= 2 or (len(letters) == 1 and bool(_EQUATION.search(text)))
    return len(tokens) >= 3 and worded and len(set(tokens)) >= len(tokens) / 2


def is_structured(answer: str, max_reasons: int = MAX_REASONS) -> bool:
    """The trained shape: 1..k numbered reasons in order (k <= max_reasons), nothing before the
    first, each a real clause.

    >>> is_structured("1. Isolation: one blast radius per tier. 2. Routing: separate route tables.")
    True
    >>> is_structured("1. 1. 1. 1. 3. 3. 3."), is_structured("Sure! Here are reasons: 1. A is good. 2. B is good.")
    (False, False)
    """
    items = numbered_reasons(answer)
    numbers = [n for n, _ in items]
    return (1 <= len(items) <= max_reasons and numbers == list(range(1, len(items) + 1))
            and all(is_clause(text) for _, text in items) and not repeats_a_reason([t for _, t in items]))


# Two reasons sharing this much of their vocabulary say one thing twice ("3. Automation: a CDN
# schedules pages" after "1. Automation: a CDN schedules pages"), whatever the trigram share.
REPEATED_REASON_OVERLAP = 0.8


def repeats_a_reason(reasons: Sequence[str]) -> bool:
    """Whether any two reasons are the same reason: word-set overlap (Jaccard) of 0.8 or more.
    Reasons that share a topic but argue different points stay distinct.

    >>> repeats_a_reason(["Price: CDNs cost per GB.", "Access: pages are cached.", "Price: CDNs cost per GB!"])
    True
    >>> repeats_a_reason(["Isolation: one blast radius per /24.", "Routing: one route table per /24."])
    False
    """
    vocabularies = [set(words(reason)) for reason in reasons]
    return any(len(a & b) >= REPEATED_REASON_OVERLAP * len(a | b)
               for a, b in combinations(vocabularies, 2) if a | b)


def repetition(answer: str) -> float:
    """Share of word trigrams that repeat an earlier one: 0 for varied text, near 1 for a loop.

    >>> repetition("1. Isolation per subnet. 2. Routing per table."), round(repetition("1. 1. 1. 1. 1. 1."), 2)
    (0.0, 0.75)
    """
    tokens = answer.lower().split()
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))  # shifted copies: shorter by design
    return 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def is_degenerate(answer: str) -> bool:
    """Empty, wordless or looping: no credit for style or consistency, whatever else it passes.

    >>> is_degenerate(""), is_degenerate("1. 1. 1. 3. 3. 3."), is_degenerate("1. Isolation per subnet.")
    (True, True, False)
    """
    return len(set(w.lower() for w in _LETTER_WORD.findall(answer))) < 2 or repetition(answer) > DEGENERATE_REPETITION


@dataclass(frozen=True)
class StyleScore:
    """One answer against the framework's style. `score` is the mean of four checks (word cap,
    key terms, no hedging, numbered-reason structure), and 0 for a degenerate answer."""

    words: int
    within_cap: bool
    coverage: float
    hedges: tuple[str, ...]
    structured: bool = False
    repetition: float = 0.0
    degenerate: bool = True

    @property
    def no_hedging(self) -> bool:
        return not self.hedges

    @property
    def score(self) -> float:
        if self.degenerate:
            return 0.0
        return (float(self.within_cap) + self.coverage + float(self.no_hedging) + float(self.structured)) / 4


def style_score(answer: str, *, max_words: int, key_terms: Sequence[str], banned_phrases: Sequence[str],
                min_words: int = 1) -> StyleScore:
    """An empty or too-short answer is never within the cap: terse is not the same as silent."""
    count = word_count(answer)
    return StyleScore(words=count, within_cap=min_words <= count <= max_words,
                      coverage=key_term_coverage(answer, key_terms), hedges=tuple(hedges(answer, banned_phrases)),
                      structured=is_structured(answer), repetition=repetition(answer),
                      degenerate=is_degenerate(answer))


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def style_summary(scores: Sequence[StyleScore]) -> dict[str, float]:
    """Aggregate style metrics: `style_adherence` is the mean per-answer score."""
    return {
        "style_adherence": mean(s.score for s in scores),
        "within_word_cap": mean(float(s.within_cap) for s in scores),
        "key_term_coverage": mean(s.coverage for s in scores),
        "no_hedging": mean(float(s.no_hedging) for s in scores),
        "structured": mean(float(s.structured) for s in scores),
        "degenerate": mean(float(s.degenerate) for s in scores),
        "repetition": mean(s.repetition for s in scores),
        "answer_words": mean(float(s.words) for s in scores),
    }


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> set[str]:
    """The numbers a text states, list markers aside, thousands separators dropped.

    >>> sorted(numbers_in("1. FV = 2,000 x 1.09^10 = $4,735. 2. Gain: $2,735."))
    ['1.09', '10', '2000', '2735', '4735']
    """
    return {n.replace(",", "") for n in _NUMBER.findall(without_markers(text))}


@dataclass(frozen=True)
class NumberCheck:
    """An answer's numbers against the reference answer's. `missing`: numbers the reference
    computes (states without the question stating them) that the answer lacks; `invented`: numbers
    the answer states that neither the question nor the reference does. Shape metrics cannot see
    "the gain is $2,000" where $2,735 is right, nor a canary's "5% of users" pasted into an
    answer about backups; this can."""

    missing: tuple[str, ...]
    invented: tuple[str, ...]

    @property
    def right(self) -> bool:
        return not self.missing and not self.invented


def check_numbers(question: str, expected: str, answer: str) -> NumberCheck:
    """
    >>> check_numbers("Why does $2,000 at 9% grow to $4,735 in 10 years?",
    ...               "1. FV = 2,000 x 1.09^10 = $4,735. 2. Gain: $2,735.", "1. FV = $4,735. 2. Gain: $2,000, 12 x 7 units.")
    NumberCheck(missing=('1.09', '2735'), invented=('12', '7'))
    """
    given, reference, stated = numbers_in(question), numbers_in(expected), numbers_in(answer)
    return NumberCheck(missing=tuple(sorted(reference - given - stated)),
                       invented=tuple(sorted(stated - reference - given)))


def content_words(text: str) -> list[str]:
    """Words without numbered-list markers: "1. Isolation" and "2. Isolation" say the same thing.

    >>> content_words("1. Isolation: /24 per tier. 2. Routing.")
    ['isolation', '24', 'per', 'tier', 'routing']
    """
    return words(without_markers(text))


def cosine_similarity(a: str, b: str) -> float:
    """Cosine of the two answers' content-word count vectors: 1 for the same words, 0 for none shared.
    Two answers with no content words agree on nothing (0), not on everything.

    >>> round(cosine_similarity("a b", "a b"), 6)
    1.0
    >>> cosine_similarity("a", "b"), cosine_similarity("1. 2. 3.", "1. 2. 3.")
    (0.0, 0.0)
    """
    ca, cb = Counter(content_words(a)), Counter(content_words(b))
    if not ca or not cb:
        return 0.0
    dot = sum(ca[w] * cb[w] for w in ca.keys() & cb.keys())
    return dot / (math.sqrt(sum(v * v for v in ca.values())) * math.sqrt(sum(v * v for v in cb.values())))


def agreement(answers: Sequence[str]) -> float:
    """Mean pairwise similarity of answers to paraphrases of one question (1.0 for fewer than two).
    A degenerate answer agrees with nothing: the same loop twice is not consistency.

    >>> agreement(["1. 1. 1. 1. 1.", "1. 1. 1. 1. 1."])
    0.0
    """
    pairs = list(combinations(answers, 2))
    return mean(_credited_similarity(a, b) for a, b in pairs) if pairs else 1.0


def _credited_similarity(a: str, b: str) -> float:
    return 0.0 if is_degenerate(a) or is_degenerate(b) else cosine_similarity(a, b)


def consistency(groups: Iterable[Sequence[str]]) -> float:
    """Mean agreement over question groups that have at least two paraphrases."""
    return mean(agreement(g) for g in groups if len(g) >= 2)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation.

    >>> spread([1.0, 3.0])
    (2.0, 1.0)
    """
    if not values:
        return float("nan"), float("nan")
    centre = mean(values)
    return centre, math.sqrt(mean((v - centre) ** 2 for v in values))


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy); inf rather than an overflow error for a diverged model."""
    return math.exp(loss) if loss < 700 else math.inf
