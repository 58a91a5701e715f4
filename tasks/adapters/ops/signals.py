"""SIGTERM (a worker cancelling the run, `kill`, a laptop shutting down) handled like Ctrl-C, so
the run records that it was interrupted and closes what it opened instead of vanishing."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM)."""


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted` as Ctrl-C raises KeyboardInterrupt. Only the
    main thread can take signals; elsewhere (a Prefect worker's thread) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(error: BaseException) -> str | None:
    """What stopped the run, when a signal did (None for an ordinary failure)."""
    if isinstance(error, Interrupted):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    return None
