"""Decontamination: how much of a held-out question a dataset row already contains, in runs of n
words. The held-out questions are the one test no framework pattern wrote; training text that
shares word runs with them would make their answers look learned when they were copied.

8-word runs, as open-r1 uses: the held-out questions are about 13 words long, so lm-eval-harness'
13-gram would barely fit inside one. The eval split is not checked this way: it pairs the training
templates with new slot values by design, so most of its questions share 8-word runs with training
text (measured: 322 of 355 on the default DevOps dataset) without any one being a copy."""
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
