"""Taking a fair share from groups: one shared round-robin for every balanced sample (eval
generation, the dataset cap, held-out preference pairs)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def round_robin(groups: Iterable[Sequence[T]], n: int) -> list[T]:
    """Up to n items: the first of each group in turn, then the second of each, and so on, so no
    group is starved while another has items left.

    >>> round_robin([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]], 5)
    ['a1', 'b1', 'c1', 'a2', 'c2']
    """
    queues = [list(group) for group in groups]
    picked: list[T] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picked += [queue[rank] for queue in queues if rank < len(queue)]
        if len(picked) >= n:
            break
    return picked[:n]


def spread_sample(items: Sequence[T], n: int, kind: Callable[[T], str], pattern: Callable[[T], str]) -> list[T]:
    """Up to n items, round-robin across kinds and, within a kind, across patterns (all when n is
    0 or covers them): each kind counts about equally and every pattern is present, although the
    files these come from are grouped by pattern.

    >>> spread_sample(["a1x", "a2x", "a3y", "b1x"], 3, kind=lambda s: s[0], pattern=lambda s: s[2])
    ['a1x', 'b1x', 'a3y']
    """
    if not n or n >= len(items):
        return list(items)
    by_kind: dict[str, dict[str, list[T]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_kind[kind(item)][pattern(item)].append(item)
    across_patterns = [round_robin(patterns.values(), len(items)) for patterns in by_kind.values()]
    return round_robin(across_patterns, n)
