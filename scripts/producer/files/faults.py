"""Fault injection for the reliability tests: a signal, an error or a pause at a named point of a run.

Inert unless the environment variable PRODUCER_FAULT is set; nothing in the skill sets it. Its value is
`POINT=ACTION`, several separated by ";". POINT is an fnmatch pattern over the points a run passes:

  stage:NAME       the start of a timed stage (cli.Stopwatch): load, load_text_encoder, load_experts,
                   text_encode, denoise, decode, write, ...
  rename:FILE      an output complete in its temp file, before the commit of its set (outputs.atomic_outputs)
  lock:FILE        the lock of output FILE just taken, its holder about to be written into it (locks.py)
The commit of a set of files (outputs.commit), in this order; FILE is a file of the set, OUTPUT the one
messages name:
  fsync:FILE       syncing FILE's temp file
  backup:FILE      keeping the old FILE under a second name for a roll-back (only where FILE exists)
  journal:OUTPUT   writing the commit's journal
  commit:FILE      just before FILE's temp file is renamed to FILE (between each pair of renames)
  committed:OUTPUT every file renamed, the journal not yet removed
(a set of one file has only fsync: and commit:).

ACTION is SIGINT or SIGTERM (sent to this process, as Ctrl-C or `kill` would), SIGKILL (the process ends on
the spot: a crash, for a test that runs the script in its own process), ENOSPC or EIO (an OSError with that
errno for the file being written at that point, as a full disk or a failing disk gives), `error` (a
RuntimeError: a bug), or `pause`: print "fault: paused at POINT (pid N)" on stderr and wait (at most
PAUSE_SECONDS) for a signal from outside; a test uses that line to know where the process is before it
signals it or starts a second run. Inside a commit Ctrl-C and SIGTERM are held until the files are in
place (held_signals.signals_held): a signal sent there waits for the run's next stage or batch job, and a run
with nothing left to do succeeds (its outputs are complete).
Each entry fires once. Example: PRODUCER_FAULT="rename:*.mp4=SIGTERM;commit:*.json=ENOSPC".
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import sys
import time

from producer.files import held_signals

ENV = "PRODUCER_FAULT"
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": getattr(signal, "SIGKILL", None)}
ERRORS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
ACTIONS = [*SIGNALS, *ERRORS, "error", "pause"]
PAUSE_SECONDS = 120  # a test that forgot its paused process does not leave it behind for long
_fired: set[str] = set()


def at(point: str, filename: str | os.PathLike | None = None) -> None:
    """Called at each named point (`filename`: the file being written there); does nothing unless
    PRODUCER_FAULT names this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for entry in (e.strip() for e in spec.split(";")):
        pattern, _, action = entry.partition("=")
        if entry in _fired or not fnmatch.fnmatchcase(point, pattern):
            continue
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} (use {', '.join(ACTIONS)})")
        _fired.add(entry)
        _act(point, action, filename)


def _act(point: str, action: str, filename: str | os.PathLike | None) -> None:
    if action in ERRORS:
        code = ERRORS[action]
        raise OSError(code, f"{os.strerror(code)} ({ENV} at {point})", os.fspath(filename) if filename else None)
    if action == "error":
        raise RuntimeError(f"{ENV}: an error at {point}")
    if action == "pause":
        print(f"fault: paused at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(PAUSE_SECONDS)
        return
    os.kill(os.getpid(), SIGNALS[action])
    if held_signals.signals_held():
        return  # delivered at the run's next step (held_signals.deliver_late_signal)
    # The signal's handler raises (KeyboardInterrupt, cli.Terminated) out of this sleep.
    time.sleep(10)
    raise RuntimeError(f"{ENV}: {action} at {point} was not delivered")


def reset() -> None:
    """Forget which entries fired (tests that run several faulted runs in one process)."""
    _fired.clear()
