"""SIGTERM (a worker cancelling the run, `kill`, a laptop shutting down) handled like Ctrl-C, so
the run records that it was interrupted and closes what it opened instead of vanishing."""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGINT or SIGTERM)."""


# The stop asked for while `stop_signals_interrupt` is active, kept after its exception is raised:
# Prefect drops a BaseException that lands while a finished subflow or task is being wrapped up
# (flow_engine: "BaseException was raised after user code finished executing"), and the run would
# then go on to its next stage. `raise_if_stop_requested` raises it again at the next stage.
_requested: list[BaseException] = []


def _raise_interrupted(signum, _frame) -> None:
    error = Interrupted(f"interrupted by {signal.Signals(signum).name}")
    _requested.append(error)
    raise error


def _ctrl_c(_signum, _frame) -> None:
    _requested.append(KeyboardInterrupt())
    raise KeyboardInterrupt


def raise_if_stop_requested() -> None:
    """Raise the stop signal this process took earlier, if something swallowed its exception."""
    if _requested:
        first = _requested[0]
        raise type(first)(*first.args)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted` as Ctrl-C raises KeyboardInterrupt, and
    either stays raised: a stop that something swallowed is raised again at the next stage
    (`raise_if_stop_requested`) and at the end of the block. Only the main thread can take
    signals; elsewhere (a Prefect worker's thread) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (`cmd &`)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _ctrl_c)
    try:
        yield
        raise_if_stop_requested()  # the block ran on after a swallowed stop: it still fails as stopped
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def interruption(error: BaseException) -> str | None:
    """What stopped the run, when a signal did (None for an ordinary failure)."""
    if isinstance(error, Interrupted):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    return None
