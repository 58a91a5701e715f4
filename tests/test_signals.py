"""A stop signal stays a stop: Prefect drops a KeyboardInterrupt that lands while a finished
subflow is being wrapped up ("BaseException was raised after user code finished executing"), and a
run then went on to its next stage (seen: Ctrl-C during evaluation's wrap-up, then a promotion and
exit 0). The stop is kept, and the next stage refuses to start."""
import os
import signal

import pytest

from tasks.adapters.ops.signals import Interrupted, raise_if_stop_requested, stop_signals_interrupt


def _swallowed(signum: int) -> None:
    """The signal delivered to this process and its exception swallowed, as Prefect's wrap-up does."""
    try:
        os.kill(os.getpid(), signum)  # handled in this thread before os.kill returns to Python code
        pytest.fail("the signal was not taken")
    except KeyboardInterrupt:
        pass


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """Ctrl-C handled as Python does in a terminal: CI may start the suite in the background, where
    the shell has it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Interrupted)])
def test_a_swallowed_stop_is_raised_again_at_the_next_check_and_at_the_end(ctrl_c_as_in_a_terminal, signum, raised):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(raised):
        with stop_signals_interrupt():
            raise_if_stop_requested()  # nothing asked yet: no-op
            _swallowed(signum)
            with pytest.raises(raised):
                raise_if_stop_requested()
    raise_if_stop_requested()  # outside the block, nothing is remembered
    assert {s: signal.getsignal(s) for s in before} == before, "the handlers are put back"


def test_ctrl_c_stays_ignored_where_the_process_was_started_ignoring_it():
    """`rslm pipeline &` from a script: the shell starts it with SIGINT ignored, and so it stays."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        raise_if_stop_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_next_stage_does_not_start_after_a_stop_the_previous_stage_swallowed(prefect_harness,
                                                                                ctrl_c_as_in_a_terminal):
    from prefect import flow

    from flows.nightly_retrain import stage

    ran: list[str] = []

    @stage("first-stage")
    def first() -> None:
        ran.append("first")
        _swallowed(signal.SIGINT)  # lands as the stage finishes, and is lost

    @stage("second-stage")
    def second() -> None:
        ran.append("second")

    @flow
    def run() -> None:
        with stop_signals_interrupt():
            first()
            second()

    with pytest.raises(KeyboardInterrupt):
        run()
    assert ran == ["first"], "the second stage never started"
