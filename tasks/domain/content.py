"""Content, not only shape (issue 30): judge-free checks of what an answer says. Pure.

- **Choice test** (the idea of InstructLab's MMLU-Branch): a question's reference answer among
  distractors of the same shape (numbered reasons, same length class): other patterns' answers with
  this question's nouns put in, the most frequent training template as it was trained, and the
  reference with one reason swapped for another pattern's. The model's mean log-probability per
  answer token picks one. Every option has the trained shape, so shape alone cannot win: chance is
  1/(K+1).
- **Paste detection**: a reason whose new words (those the question does not contain) come mostly
  from one training reason of another pattern. "Blast radius: a bad build hits 5% of users" under a
  TLS question is pasted; "Availability: health checks stop traffic to a failed server" is not.
- **Stock reasons**: a reason that nearly repeats one the same model gave to a *different* held-out
  question. "Availability: the NAT gateway is always available, so …" and "Availability: a message
  queue is always available, so …" are one claim with the nouns swapped: filler of the model's own,
  which paste detection (training reasons only) and relevance (topic words) both call fine.
- **Relevance**: whether a reason talks about its own question rather than another one: its
  TF-IDF similarity to its own question and reference against every other held-out question's.
  It sees topic, not truth: "a health check is rarely available" is on topic and false.
"""
from __future__ import annotations

import itertools
import math
import random
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tasks.domain.expansion import render
from tasks.domain.framework import Framework, Pattern
from tasks.domain.metrics import mean, numbered_reasons
from tasks.domain.preferences import reasons_by_pattern
from tasks.domain.records import Message, Row

# A reason is pasted when at least this share of its new words (weighed by their rarity in the
# training reasons), and at least MIN_SHARED_WORDS of them, come from one training reason of another
# pattern. Two shared words were too few: the hand-written "Recovery: you can restore in the other
# region" shares two with a rollback reason.
PASTE_SHARE = 0.6
MIN_SHARED_WORDS = 3

_STOPWORDS = frozenset("""a an the and or but if then than so of to in on at by for from with without into onto over
under about between before after during per as is are was were be been being do does did done doing has have had
having it its it's this that these those there here their they them we our us you your i me my he she his her not no
nor only own same too very can cannot could should would will may might must shall just also each every all any both
few more most other some such against one what which who whom whose why how when where while until up down out off again
further once own""".split())
# Verbs that open the questions ("Why rotate TLS certificates ...?"): not nouns to put in a template.
_QUESTION_VERBS = frozenset("""use put keep run set store enable limit prefer separate alert rotate cache tag pay hedge
value avoid give buy ask raise fight batch replace inline predict catch start need lose fall rise grow feel speed move
work travel focus float pause write change plan hold point see hear block depend cost reduce fit split pin carve divide
size connect deploy reference make get go mean matter""".split())
_WORD = re.compile(r"[a-z0-9]+(?:[./:'-][a-z0-9]+)*")
_DIGIT = re.compile(r"\d")


def _stem(word: str) -> str:
    """Numbers become '#', a plural's final s goes: 'builds' and 'build', '5%' and '25%' match."""
    if _DIGIT.search(word):
        return "#"
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def opening_verb(question: str) -> frozenset[str]:
    """The verb a question opens with, stemmed as content_words gives it ({} when it opens otherwise):
    "Why use a NAT gateway?" is about NAT gateways, not about using. The same word later on
    ("Why cache Docker layers?" against "a cache in front of the database") still counts.

    >>> sorted(opening_verb("Why use a NAT gateway?")), sorted(opening_verb("Why is latency high?"))
    (['use'], [])
    """
    words = [w for w in _WORD.findall(question.lower()) if w not in _STOPWORDS]
    return frozenset({_stem(words[0])}) if words and words[0] in _QUESTION_VERBS else frozenset()


def content_words(text: str) -> set[str]:
    """The text's words that carry content, lower-cased and stemmed.

    >>> sorted(content_words("Blast radius: a bad build hits 25% of users, not all."))
    ['#', 'bad', 'blast', 'build', 'hit', 'radiu', 'user']
    """
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def reasons_of(answer: str) -> list[str]:
    """The numbered reasons' texts (a preamble before the first number is not a reason)."""
    return [text for number, text in numbered_reasons(answer) if number and text]


# --- paste detection --------------------------------------------------------------------------

@dataclass(frozen=True)
class Paste:
    """A reason that nearly copies a training reason of another pattern."""

    reason: str
    pattern: str       # the pattern it came from
    source: str        # the training reason it copies
    share: float       # share of the reason's new words found in the source


class PasteIndex:
    """Every distinct training reason by pattern, indexed by content word, so that a reason's
    nearest training reason is found without comparing against all of them."""

    def __init__(self, reasons_by_pattern: Mapping[str, Sequence[str]]):
        seen: set[tuple[str, frozenset[str]]] = set()
        self.reasons: list[tuple[str, str, frozenset[str]]] = []
        for pattern in sorted(reasons_by_pattern):
            for reason in reasons_by_pattern[pattern]:
                key = (pattern, frozenset(content_words(reason)))
                if key[1] and key not in seen:
                    seen.add(key)
                    self.reasons.append((pattern, reason, key[1]))
        self.by_word: dict[str, list[int]] = defaultdict(list)
        for index, (_, _, words) in enumerate(self.reasons):
            for word in words:
                self.by_word[word].append(index)
        # A word's weight is its rarity among the training reasons; a word no training reason uses
        # weighs most, and is the best evidence that a reason was not pasted.
        self.unseen_weight = math.log(1 + len(self.reasons)) + 1
        self.weight = {w: math.log((1 + len(self.reasons)) / (1 + len(ids))) + 1 for w, ids in self.by_word.items()}

    def _weighed(self, words: set[str]) -> float:
        return sum(self.weight.get(w, self.unseen_weight) for w in words)

    def paste(self, reason: str, question: str, own_pattern: str | None = None) -> Paste | None:
        """The training reason of another pattern that `reason` copies, or None. Words the question
        itself uses do not count: a question about blast radius calls for the words "blast radius".

        >>> index = PasteIndex({"canary": ["Blast radius: a bad build hits 5% of users, not all."]})
        >>> index.paste("Blast radius: a bad build hits 25% of users.", "Why enable mutual TLS?").pattern
        'canary'
        >>> index.paste("Trust: each service proves who it is.", "Why enable mutual TLS?") is None
        True
        """
        # numbers say nothing of where a reason came from ("$16,000" and "347,000" are both "#")
        new = content_words(reason) - content_words(question) - {"#"}
        candidates = {i for word in new for i in self.by_word.get(word, ()) if self.reasons[i][0] != own_pattern}
        if len(new) < MIN_SHARED_WORDS or not candidates:
            return None
        best = min(candidates, key=lambda i: (-self._weighed(new & self.reasons[i][2]), i))
        pattern, source, words = self.reasons[best]
        common = new & words
        share = self._weighed(common) / self._weighed(new)
        if len(common) < MIN_SHARED_WORDS or share < PASTE_SHARE:
            return None
        return Paste(reason=reason, pattern=pattern, source=source, share=round(share, 3))

    def pastes(self, answer: str, question: str, own_pattern: str | None = None) -> list[Paste]:
        return [p for p in (self.paste(r, question, own_pattern) for r in reasons_of(answer)) if p]


def stock_reasons(answers: Sequence[str], questions: Sequence[str]) -> list[list[Paste]]:
    """Per answer, its reasons that nearly repeat a reason given to another question (the paste
    rule, with the other answers in place of the training reasons; `Paste.pattern` is that other
    question's index). Words an answer's own question uses do not count, as for pastes.

    >>> answers = ["1. Availability: a NAT gateway is always available, so nothing fails.",
    ...            "1. Availability: a message queue is always available, so nothing fails.",
    ...            "1. Expiry: an expired certificate breaks every client."]
    >>> questions = ["Why use a NAT gateway?", "Why use a message queue?", "Why rotate certificates?"]
    >>> [[p.pattern for p in found] for found in stock_reasons(answers, questions)]
    [['1'], ['0'], []]
    """
    index = PasteIndex({str(i): reasons_of(answer) for i, answer in enumerate(answers)})
    return [index.pastes(answer, question, own_pattern=str(i))
            for i, (answer, question) in enumerate(zip(answers, questions, strict=True))]


# --- relevance --------------------------------------------------------------------------------

class TfIdf:
    """TF-IDF vectors over content words, weighted by a fixed set of documents, and the cosine
    of a text against each of them: what relevance and framework grounding rank by."""

    def __init__(self, documents: Sequence[str]):
        bags = [content_words(d) for d in documents]
        frequency = Counter(word for bag in bags for word in bag)
        self._idf = {word: math.log((1 + len(bags)) / (1 + n)) + 1 for word, n in frequency.items()}
        self._documents = [self._vector(bag) for bag in bags]

    def _vector(self, words: set[str]) -> dict[str, float]:
        return {w: self._idf[w] for w in words if w in self._idf}

    @staticmethod
    def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
        dot = sum(v * b[w] for w, v in a.items() if w in b)
        return dot / (math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values())) or 1.0)

    def similarities(self, text: str, ignore: frozenset[str] = frozenset()) -> list[float]:
        """The text's cosine against each document, in the documents' order (0: no shared word),
        leaving out the words in `ignore`."""
        vector = self._vector(content_words(text) - ignore)
        return [self._cosine(vector, d) for d in self._documents]


def relevance(answers: Sequence[str], documents: Sequence[str]) -> list[float | None]:
    """For answer i, the share of its reasons whose most similar document (TF-IDF cosine over
    content words) is document i, its own question with its reference; None for an answer with no
    reasons. A reason that shares no word with any document is not relevant.

    >>> docs = ["Why use a load balancer? health checks spread traffic", "Why rotate TLS certificates? expiry"]
    >>> relevance(["1. Availability: health checks remove a dead server.", "1. Price: cheap per GB."], docs)
    [1.0, 0.0]
    """
    index = TfIdf(documents)
    shares: list[float | None] = []
    for own, answer in enumerate(answers):
        reasons = reasons_of(answer)
        if not reasons:
            shares.append(None)
            continue
        hits = 0
        for reason in reasons:
            sims = index.similarities(reason)
            hits += sims[own] > 0 and sims[own] == max(sims)
        shares.append(hits / len(reasons))
    return shares


# --- the choice test --------------------------------------------------------------------------

@dataclass(frozen=True)
class ChoiceItem:
    """One question of the choice test: the reference first, then its distractors."""

    question: str
    prompt: tuple[Message, ...]
    options: tuple[str, ...]
    kinds: tuple[str, ...]   # "reference", "pasted:<pattern>", "template:<pattern>", "swapped:<pattern>"


@dataclass
class ChoiceResult:
    question: str
    correct: bool
    picked: str                       # the kind of the option the model scored highest
    scores: list[float] = field(default_factory=list)  # mean log-probability per answer token, per option
    kinds: list[str] = field(default_factory=list)


def question_nouns(question: str) -> list[str]:
    """The question's noun phrases, longest first: runs of words that are neither function words
    nor the verbs questions open with.

    >>> question_nouns("Why rotate TLS certificates automatically?")
    ['TLS certificates']
    >>> question_nouns("Why put a load balancer in front of two web servers?")
    ['two web servers', 'load balancer', 'front']
    """
    runs, current = [], []
    for token in question.rstrip("?.!").split():
        bare = token.strip(string.punctuation)
        lower = bare.lower()
        if not bare or lower in _STOPWORDS or lower in _QUESTION_VERBS or lower.endswith("ly"):
            if current:
                runs.append(" ".join(current))
            current = []
        else:
            current.append(bare)
    if current:
        runs.append(" ".join(current))
    return sorted(dict.fromkeys(runs), key=lambda r: -len(r.split()))


def _noun_or_value(value, nouns: Sequence[str], turn):
    """A wordy slot value's place taken by the next noun; numbers (and values holding digits) kept."""
    return value if _DIGIT.search(str(value)) or not nouns else nouns[next(turn) % len(nouns)]


def with_nouns(pattern: Pattern, nouns: Sequence[str]) -> str:
    """The pattern's answer with its first slot values, each wordy one (no digits) replaced by one
    of `nouns` in turn: what a model pasting this template onto another question writes.

    >>> p = Pattern(id="canary", questions=["Why canary {service}?"], answer="1. Blast radius: {service} hits 5% first.",
    ...             slots={"service": ["the API"]})
    >>> with_nouns(p, ["TLS certificates"])
    '1. Blast radius: TLS certificates hits 5% first.'
    """
    turn = itertools.count()
    values = {root: ({k: _noun_or_value(v, nouns, turn) for k, v in options[0].items()}
                     if isinstance(options[0], dict) else _noun_or_value(options[0], nouns, turn))
              for root, options in pattern.slots.items()}
    return render(pattern.answer, values)


def patterns_of(framework: Framework) -> dict[str, Pattern]:
    return {pattern.id: pattern for _, block in framework.blocks() for pattern in block.patterns}


def most_frequent_pattern(pattern_ids: Sequence[str]) -> str | None:
    """The pattern with the most training rows (ties: the first by id): the template a model has
    seen most, and the one a pasting model falls back to."""
    counts = Counter(pattern_ids)
    return min(counts, key=lambda p: (-counts[p], p)) if counts else None


def swapped_reason(reference: str, own_pattern: str | None, pool: Mapping[str, Sequence[str]],
                   rng: random.Random) -> tuple[str, str] | None:
    """The reference with one reason replaced by another pattern's, and that pattern."""
    reasons = reasons_of(reference)
    others = sorted(p for p in pool if p != own_pattern and pool[p])
    if not reasons or not others:
        return None
    pattern = rng.choice(others)
    foreign = rng.choice(list(pool[pattern]))
    if foreign in reasons:
        return None
    reasons[rng.randrange(len(reasons))] = foreign
    return " ".join(f"{i}. {text}" for i, text in enumerate(reasons, start=1)), pattern


@dataclass(frozen=True)
class DistractorSource:
    """What distractors are drawn from: the training answers' reasons by pattern, one trained
    answer per pattern, the framework's templates, and the most frequent pattern."""

    pool: Mapping[str, Sequence[str]]
    trained_answer: Mapping[str, str]
    templates: Mapping[str, Pattern]
    most_frequent: str | None
    pasted_per_item: int = 2


def choice_item(question: str, prompt: Sequence[Message], reference: str, own_pattern: str | None,
                source: DistractorSource, seed: int) -> ChoiceItem:
    """The reference and up to `pasted_per_item` + 2 distractors, each distinct from the others.

    Seeded per question, so every model meets the same options in the same order."""
    rng = random.Random(f"{seed}:{question}")
    options, kinds = [reference], ["reference"]

    def add(text: str | None, kind: str) -> None:
        if text and text not in options:
            options.append(text)
            kinds.append(kind)

    foreign = sorted(p for p in source.trained_answer if p not in (own_pattern, source.most_frequent))
    nouns = question_nouns(question)
    for pattern in rng.sample(foreign, min(source.pasted_per_item, len(foreign))):
        template = source.templates.get(pattern)
        add(with_nouns(template, nouns) if template else source.trained_answer[pattern], f"pasted:{pattern}")
    frequent = source.most_frequent if source.most_frequent != own_pattern else None
    if frequent:
        add(source.trained_answer[frequent], f"template:{frequent}")
    swapped = swapped_reason(reference, own_pattern, source.pool, rng)
    if swapped:
        add(swapped[0], f"swapped:{swapped[1]}")
    return ChoiceItem(question=question, prompt=tuple(prompt), options=tuple(options), kinds=tuple(kinds))


def choice_results(items: Sequence[ChoiceItem], scores: Sequence[Sequence[float]]) -> list[ChoiceResult]:
    """Each item's verdict: correct when the reference (option 0) scores strictly highest."""
    results = []
    for item, item_scores in zip(items, scores, strict=True):
        best = max(range(len(item_scores)), key=lambda i: (item_scores[i], -i))
        correct = best == 0 and all(item_scores[0] > s for s in item_scores[1:])
        results.append(ChoiceResult(question=item.question, correct=correct, picked=item.kinds[best],
                                    scores=[round(s, 4) for s in item_scores], kinds=list(item.kinds)))
    return results


def choice_chance(items: Sequence[ChoiceItem]) -> float:
    """What picking at random would score: the mean of 1/(K+1) over the items."""
    return mean(1 / len(item.options) for item in items)


@dataclass(frozen=True)
class ContentPlan:
    """Everything the content checks need besides the model, built once from the training rows
    the model learned from: distractors for the choice test and the index pastes are found in."""

    source: DistractorSource
    index: PasteIndex
    seed: int

    def heldout_items(self, ask: Callable[[str], Sequence[Message]],
                      questions: Sequence[tuple[str, str]]) -> list[ChoiceItem]:
        """(question, reference) pairs, each asked as `ask` puts it (the model's own prompt turns)."""
        return [choice_item(q, tuple(ask(q)), reference, None, self.source, self.seed) for q, reference in questions]

    def row_items(self, rows: Sequence[Row]) -> list[ChoiceItem]:
        """Eval rows: the row's own answer is the reference, its pattern is not a distractor."""
        return [choice_item(row.turns("user")[-1], row.messages[:-1], row.turns("assistant")[-1],
                            row.metadata.pattern_id, self.source, self.seed) for row in rows]


def content_plan(train_rows: Sequence[Row], framework: Framework, seed: int) -> ContentPlan:
    pool = reasons_by_pattern(train_rows)
    trained: dict[str, str] = {}
    for row in sorted(train_rows, key=lambda r: r.id):
        trained.setdefault(row.metadata.pattern_id, row.turns("assistant")[-1])
    source = DistractorSource(pool=pool, trained_answer=trained, templates=patterns_of(framework),
                              most_frequent=most_frequent_pattern([r.metadata.pattern_id for r in train_rows]))
    return ContentPlan(source=source, index=PasteIndex(pool), seed=seed)
