"""Ctrl-C and SIGTERM held over a commit of outputs (producer.files.outputs), and after it until the run's
next step: a run whose files are in place is not made a failure by a signal that came too late to stop it.
The fault hook (producer.files.faults) asks whether signals are held before it waits for one."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred(outermost: bool = True) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM over a commit. If the commit fails, or outside a script's run (a test, a library
    call), a held signal is delivered as the block ends. Inside a run (cli.run_main: `one_run`) a signal held
    here, or arriving once the files are in place, waits for the run's next step instead: the next stage or
    batch job delivers it (deliver_late_signal), and a run that has nothing left to do reports success
    (signal_after_commit): its outputs are complete. A second signal does not wait. `outermost`: the set the
    user asked for, not a writer's own temp inside it (only that one waits for the next step)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it receives Python's signal exceptions)
        return
    if _held_signals:  # nested: the outer block delivers them
        yield
        return
    late = _late.pop("previous", None)  # a signal waiting since the last commit still waits, for the same handlers
    previous = late or {signum: signal.getsignal(signum) for signum in HELD}
    _held_signals.append(_late.pop("caught", []))
    for signum in HELD:
        signal.signal(signum, lambda number, frame: _held_signals[-1].append(number))
    committed = False
    try:
        yield
        committed = True
    finally:
        caught = _held_signals.pop()
        if committed and _runs and outermost:
            _wait_for_next_step(previous, caught)
        else:
            _restore(previous)
            if caught:
                signal.raise_signal(caught[0])


HELD = (signal.SIGINT, signal.SIGTERM)
_runs: list[bool] = []  # one entry while a script's run is in progress (one_run)
_held_signals: list[list[int]] = []  # the signals caught while held (one list while a block holds them)
_late: dict = {}  # after a commit: the handlers to restore ("previous") and the signals caught ("caught")


def _wait_for_next_step(previous: dict, caught: list[int]) -> None:
    def record(number, frame):
        caught.append(number)
        if len(caught) > 1:  # asked twice: stop now
            deliver_late_signal()

    _late.update(previous=previous, caught=caught)
    for signum in HELD:
        signal.signal(signum, record)


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def one_run() -> Iterator[None]:
    """A script's run (cli.run_main), in which a signal after a commit waits for the next step (deferred)."""
    _runs.append(True)
    try:
        yield
    finally:
        _runs.pop()


def signal_after_commit() -> int | None:
    """The signal that arrived during or after this run's last commit, if any, with the usual handlers back.
    For the end of a run: its outputs are complete, so that signal does not make it a failure."""
    if not _late or threading.current_thread() is not threading.main_thread():
        return None
    _restore(_late.pop("previous"))
    caught = _late.pop("caught")
    return caught[0] if caught else None


def deliver_late_signal() -> None:
    """Where a run begins new work (a stage, a batch job): a signal held since the last commit stops it here."""
    late = signal_after_commit()
    if late is not None:
        signal.raise_signal(late)


def signals_held() -> bool:
    """True inside a commit, where Ctrl-C and SIGTERM wait until the files are in place, and after it until the
    run's next step (faults.py asks)."""
    return bool(_held_signals) or bool(_late)
