"""How a run ends (`frontalab.tracking.outcome`): every outcome's status and reason, once per block, and the stop
signals' handlers put back. The kill, interrupt, SIGTERM, NaN and outage tests drive it end to end (slow)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from frontalab.naming import STATUS_REASON_TAG, STOPPED_EARLY_TAG
from frontalab.tracking.outcome import (FAILED, FINISHED, INTERRUPTED, KILLED, Outcome, RunFailure, interrupt,
                                        on_stop_signals, outcome_of, run_outcome)


def test_each_outcome_has_its_status_and_reason():
    assert outcome_of(None, in_trial=True) == Outcome(FINISHED)
    assert outcome_of(KeyboardInterrupt(), in_trial=True) == Outcome(KILLED, INTERRUPTED)
    assert outcome_of(RunFailure("non-finite generator loss at step 7: total"), in_trial=True) == \
        Outcome(FAILED, "non-finite generator loss at step 7: total")
    assert outcome_of(OSError("disk full"), in_trial=False) == Outcome(FAILED, "OSError: disk full")
    # A clean exit is Tune's stop of a trial (ASHA), but a signal in a sweep's driver (Ray's SIGTERM handler).
    assert outcome_of(SystemExit(0), in_trial=True) == Outcome(FINISHED, stopped_early=True)
    assert outcome_of(SystemExit(None), in_trial=True) == Outcome(FINISHED, stopped_early=True)
    assert outcome_of(SystemExit(3), in_trial=True) == Outcome(FAILED, "SystemExit: 3")
    assert outcome_of(SystemExit(15), in_trial=False) == Outcome(KILLED, INTERRUPTED)


def test_an_outcome_tags_its_reason_and_the_step_it_was_stopped_at():
    assert Outcome(FINISHED).tags(40) == {}
    assert Outcome(FINISHED, stopped_early=True).tags(10) == {STOPPED_EARLY_TAG: "10"}
    assert Outcome(FINISHED, stopped_early=True).tags(None) == {}  # stopped at its last step: not early
    assert Outcome(FAILED, "x" * 6000).tags(3) == {STATUS_REASON_TAG: "x" * 5000}  # MLflow's tag limit


def test_a_block_ends_its_run_once_and_its_error_goes_on():
    ended: list[Outcome] = []
    with run_outcome(ended.append, in_trial=True):
        pass
    with pytest.raises(RunFailure), run_outcome(ended.append, in_trial=True):
        raise RunFailure("non-finite")
    with pytest.raises(KeyboardInterrupt), run_outcome(ended.append, in_trial=False):
        raise KeyboardInterrupt
    assert ended == [Outcome(FINISHED), Outcome(FAILED, "non-finite"), Outcome(KILLED, INTERRUPTED)]


def test_sigterm_interrupts_the_block_and_the_handlers_are_put_back():
    before = signal.getsignal(signal.SIGTERM)
    ended: list[Outcome] = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with on_stop_signals(interrupt, (signal.SIGTERM,)), run_outcome(ended.append, in_trial=True):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises at once
    assert ended == [Outcome(KILLED, INTERRUPTED)]
    assert signal.getsignal(signal.SIGTERM) is before


def test_keep_others_leaves_a_signal_someone_else_handles():
    def theirs(signum, frame):
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, theirs)
    try:
        with on_stop_signals(interrupt, (signal.SIGTERM,), keep_others=True):
            assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, before)
