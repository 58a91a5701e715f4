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


@pytest.mark.parametrize(("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Interrupted)])
def test_a_swallowed_stop_is_raised_again_at_the_next_check_and_at_the_end(signum, raised):
    with pytest.raises(raised):
        with stop_signals_interrupt():
            raise_if_stop_requested()  # nothing asked yet: no-op
            _swallowed(signum)
            with pytest.raises(raised):
                raise_if_stop_requested()
    raise_if_stop_requested()  # outside the block, nothing is remembered
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handlers are put back"


def test_the_next_stage_does_not_start_after_a_stop_the_previous_stage_swallowed(prefect_harness):
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
