"""Progress bars for long work (expansion, blueprint generation, evaluation batches, generation)."""
from __future__ import annotations

from collections.abc import Callable, Iterable


def tqdm_progress(description: str, unit: str = "block", leave: bool = True) -> Callable[[Iterable], Iterable]:
    """A wrapper that shows a progress bar over an iterable (pure code takes it as a parameter)."""
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=description, unit=unit, leave=leave)
