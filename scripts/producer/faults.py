"""Fault injection for the reliability tests: a signal (or a pause) at a named point of a run.

Inert unless the environment variable PRODUCER_FAULT is set; nothing in the skill sets it. Its value is
`POINT=ACTION`, several separated by ";". POINT is an fnmatch pattern over the points a run passes:

  stage:NAME       the start of a timed stage (cli.Stopwatch): load, load_text_encoder, load_experts,
                   text_encode, denoise, decode, write, ...
  rename:FILE      an output complete in its temp file, just before it is renamed to FILE (outputs.atomic_output)

ACTION is SIGINT or SIGTERM (sent to this process, as Ctrl-C or `kill` would), or `pause`: print
"fault: paused at POINT (pid N)" on stderr and wait (at most PAUSE_SECONDS) for a signal from outside;
a test uses that line to know where the process is before it signals it or starts a second run.
Each entry fires once. Example: PRODUCER_FAULT="rename:*.mp4=SIGTERM".
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time

ENV = "PRODUCER_FAULT"
ACTIONS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "pause": None}
PAUSE_SECONDS = 120  # a test that forgot its paused process does not leave it behind for long
_fired: set[str] = set()


def at(point: str) -> None:
    """Called at each named point; does nothing unless PRODUCER_FAULT names this point."""
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
        _act(point, action)


def _act(point: str, action: str) -> None:
    if action == "pause":
        print(f"fault: paused at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
    else:
        os.kill(os.getpid(), ACTIONS[action])
    # The signal's handler raises (KeyboardInterrupt, cli.Terminated) out of this sleep.
    time.sleep(PAUSE_SECONDS if action == "pause" else 10)
    if action != "pause":
        raise RuntimeError(f"{ENV}: {action} at {point} was not delivered")


def reset() -> None:
    """Forget which entries fired (tests that run several faulted runs in one process)."""
    _fired.clear()
