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
_LIST_MARKER = re.compile(r"(?<!\S)\d{1,2}[.)](?=\s|$)")


def words(text: str) -> list[str]:
    """Lower-cased word tokens; CIDRs, versions and hyphenated terms stay whole.

    >>> words("Split 10.0.0.0/16 into /24 subnets: blast-radius!")
    ['split', '10.0.0.0/16', 'into', '24', 'subnets', 'blast-radius']
    """
    return _WORD.findall(text.lower())


def word_count(text: str) -> int:
    """Whitespace-separated words, the same count the dataset's terseness expectation uses."""
    return len(text.split())


def _stem(word: str) -> str:
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
    present = {_stem(w) for w in words(answer)}
    hits = sum(all(_stem(w) in present for w in words(term)) for term in key_terms)
    return hits / len(key_terms)


def hedges(answer: str, banned_phrases: Sequence[str]) -> list[str]:
    """The banned (hedging, filler) phrases the answer contains, matched on word boundaries."""
    lowered = " ".join(words(answer))
    return [p for p in banned_phrases if re.search(rf"(?<!\S){re.escape(' '.join(words(p)))}(?!\S)", lowered)]


@dataclass(frozen=True)
class StyleScore:
    """One answer against the framework's style. `score` is the mean of the three checks."""

    words: int
    within_cap: bool
    coverage: float
    hedges: tuple[str, ...]

    @property
    def no_hedging(self) -> bool:
        return not self.hedges

    @property
    def score(self) -> float:
        return (float(self.within_cap) + self.coverage + float(self.no_hedging)) / 3


def style_score(answer: str, *, max_words: int, key_terms: Sequence[str], banned_phrases: Sequence[str],
                min_words: int = 1) -> StyleScore:
    """An empty or too-short answer is never within the cap: terse is not the same as silent."""
    count = word_count(answer)
    return StyleScore(words=count, within_cap=min_words <= count <= max_words,
                      coverage=key_term_coverage(answer, key_terms), hedges=tuple(hedges(answer, banned_phrases)))


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
        "answer_words": mean(float(s.words) for s in scores),
    }


def content_words(text: str) -> list[str]:
    """Words without numbered-list markers: "1. Isolation" and "2. Isolation" say the same thing.

    >>> content_words("1. Isolation: /24 per tier. 2. Routing.")
    ['isolation', '24', 'per', 'tier', 'routing']
    """
    return words(_LIST_MARKER.sub(" ", text))


def cosine_similarity(a: str, b: str) -> float:
    """Cosine of the two answers' content-word count vectors: 1 for the same words, 0 for none shared.

    >>> round(cosine_similarity("a b", "a b"), 6)
    1.0
    >>> cosine_similarity("a", "b")
    0.0
    """
    ca, cb = Counter(content_words(a)), Counter(content_words(b))
    if not ca or not cb:
        return 1.0 if not ca and not cb else 0.0
    dot = sum(ca[w] * cb[w] for w in ca.keys() & cb.keys())
    return dot / (math.sqrt(sum(v * v for v in ca.values())) * math.sqrt(sum(v * v for v in cb.values())))


def agreement(answers: Sequence[str]) -> float:
    """Mean pairwise similarity of answers to paraphrases of one question (1.0 for fewer than two)."""
    pairs = list(combinations(answers, 2))
    return mean(cosine_similarity(a, b) for a, b in pairs) if pairs else 1.0


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
