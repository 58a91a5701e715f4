"""Taking a fair share from groups: one shared round-robin for every balanced sample (eval
generation, the dataset cap, held-out preference pairs)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
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
