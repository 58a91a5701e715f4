"""Decontamination: how much of a held-out question a dataset row already contains, in runs of n
words. The held-out questions are the one test no framework pattern wrote; training text that
shares word runs with them would make their answers look learned when they were copied.

8-word runs, as open-r1 uses: the held-out questions are about 13 words long, so lm-eval-harness'
13-gram would barely fit inside one.

The eval split is checked differently. It pairs the training templates with new slot values by
design, so most of its questions share some 8-word runs with training text (322 of 355 on the
default DevOps dataset) without any one being a copy. What would be a copy is one training row
holding (nearly) all of an eval question: `nearest_overlap` measures that, per eval question,
against the single closest training row. A template sibling differs in at least one slot value
and so loses every run crossing it (the shipped datasets peak at 0.93); a pasted question scores 1.0."""
from __future__ import annotations

import re
from collections.abc import Sequence

NGRAM = 8
_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    """Lower-cased runs of n words (punctuation ignored).

    >>> sorted(ngrams("Why pin images, by digest?", 3))
    [('images', 'by', 'digest'), ('pin', 'images', 'by'), ('why', 'pin', 'images')]
    """
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlap_with(texts: Sequence[str], questions: Sequence[str], n: int = NGRAM) -> list[float]:
    """For each text, the largest share of one question's n-grams that the text contains (0: none;
    1.0: the whole question is in it). A question shorter than n words is compared whole.

    >>> overlap_with(["Q: why pin images by digest in every deploy manifest here", "other"],
    ...              ["Why pin images by digest in every deploy manifest?"], 8)
    [1.0, 0.0]
    """
    probes = []
    for question in questions:
        size = min(n, len(_WORD.findall(question)))
        if size:
            probes.append((size, ngrams(question, size)))
    shares = []
    for text in texts:
        by_size = {size: ngrams(text, size) for size in {size for size, _ in probes}}
        shares.append(max((len(grams & by_size[size]) / len(grams) for size, grams in probes), default=0.0))
    return shares


def nearest_overlap(queries: Sequence[str], corpus: Sequence[str], n: int = NGRAM) -> list[float]:
    """For each query, the largest share of its n-grams that one single corpus text contains. A
    copy, or a query pasted inside a longer text, scores 1.0; a template sibling that differs in
    one slot value loses every run crossing that value. An index from n-gram to texts keeps it
    linear in the text, not quadratic in the rows.

    >>> nearest_overlap(["why split a vpc into subnets for the data platform team",
    ...                  "why split a vpc into subnets for the billing service team"],
    ...                 ["context: why split a vpc into subnets for the data platform team today"], 8)
    [1.0, 0.25]
    """
    index: dict[tuple[str, ...], list[int]] = {}
    for position, text in enumerate(corpus):
        for gram in ngrams(text, n):
            index.setdefault(gram, []).append(position)
    shares = []
    for query in queries:
        size = min(n, len(_WORD.findall(query)))
        grams = ngrams(query, size) if size else set()
        if size < n:  # a short query is compared whole, against the texts' runs of its own length
            shares.append(1.0 if any(grams & ngrams(text, size) for text in corpus) else 0.0)
            continue
        hits: dict[int, int] = {}
        for gram in grams:  # a query of n or more words has at least one n-gram
            for position in set(index.get(gram, ())):
                hits[position] = hits.get(position, 0) + 1
        shares.append(max(hits.values(), default=0) / len(grams))
    return shares
