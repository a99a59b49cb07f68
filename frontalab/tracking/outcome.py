"""How a run ends, decided in one place: what happened (a block's exception, or none) becomes the run's MLflow status
and the tags that say why.

A trial ends its own run through `run_outcome` (`frontalab.training.trial`); so does a sweep's driver for the
sweep's parent run, and for the trials' runs that their trials could not end (killed, or stopped by the scheduler
with their workers: `frontalab.sweep.tune`, through `frontalab.tracking.store`). The signals that stop either are
caught by `on_stop_signals`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from frontalab.naming import STATUS_REASON_TAG, STOPPED_EARLY_TAG

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # MLflow's run statuses that end a run
RUNNING = "RUNNING"  # and the one before
INTERRUPTED = "interrupted"  # the reason of a run ended by Ctrl-C or SIGTERM


class RunFailure(RuntimeError):
    """An error whose message is the whole reason its run failed (a non-finite loss): tagged as it is."""


@dataclass(frozen=True)
class Outcome:
    status: str  # FINISHED, FAILED or KILLED
    reason: str = ""  # why it failed or was killed: the run's STATUS_REASON_TAG
    stopped_early: bool = False  # FINISHED because the sweep's scheduler stopped it (ASHA), not at its last step

    def tags(self, step: Optional[int] = None) -> dict[str, str]:
        """The run's tags for this outcome, ``step`` the last step trained (tagged when stopped early)."""
        tags = {STATUS_REASON_TAG: self.reason[:5000]} if self.reason else {}
        if self.stopped_early and step is not None:
            tags[STOPPED_EARLY_TAG] = str(step)
        return tags


def outcome_of(error: Optional[BaseException], *, in_trial: bool) -> Outcome:
    """The outcome of a block that raised ``error`` (None: it returned). A clean `SystemExit` means a scheduler's
    stop ``in_trial`` (Tune ends a stopped trial's thread so), and a signal in a sweep's driver (Ray's driver turns
    SIGTERM into one)."""
    if error is None:
        return Outcome(FINISHED)
    if isinstance(error, KeyboardInterrupt):
        return Outcome(KILLED, INTERRUPTED)
    if isinstance(error, SystemExit):
        if not in_trial:
            return Outcome(KILLED, INTERRUPTED)
        if error.code in (0, None):
            return Outcome(FINISHED, stopped_early=True)
        return Outcome(FAILED, f"SystemExit: {error.code}")
    if isinstance(error, RunFailure):
        return Outcome(FAILED, str(error))
    return Outcome(FAILED, f"{type(error).__name__}: {error}")


@contextmanager
def run_outcome(end: Callable[[Outcome], Any], *, in_trial: bool) -> Iterator[None]:
    """Ends a run by how the block ends: ``end(outcome)`` once (`outcome_of`); the block's exception goes on."""
    try:
        yield
    except BaseException as error:
        end(outcome_of(error, in_trial=in_trial))
        raise
    end(Outcome(FINISHED))


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler: SIGTERM ends the run as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def on_stop_signals(handler: Callable[[int, Any], None], signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                    *, keep_others: bool = False) -> Iterator[None]:
    """``handler`` for ``signals`` while the block runs, the previous handlers after. ``keep_others``: leave a
    signal alone when someone (Ray's driver) already handles it. Only the main thread can catch signals: elsewhere
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in signals}
    ours = [sig for sig in signals if not keep_others or before[sig] in (signal.SIG_DFL, None)]
    for sig in ours:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig in ours:  # None: a handler not set from Python, which cannot be set back
            signal.signal(sig, signal.SIG_DFL if before[sig] is None else before[sig])
