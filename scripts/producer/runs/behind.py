"""Write-behind for a --batch: the CPU work that follows an item runs while the next item generates.

After a clip is made, colour checking, the review pictures and the x264 encode took 2.3-3.7 s of CPU a clip on
the H100 machine (docs/performance.md, "What a batch pays per item"), with the GPU idle. In a batch that work runs
in one background thread (`WriteBehind`), and the job's turn ends as soon as its generation does: the
scripts' run_jobs (runs/batch.py) puts the job's files in place after the *next* job is made, in the main
thread, through the same commit as a single run (outputs.atomic_outputs: all or none, Ctrl-C and SIGTERM held
over the renames, the fault points of the reliability tests). So the background thread only computes and
fills the set's own temp files; it never renames, takes a lock, or handles a signal.

One thread: items finish in order, and two encodes never compete with each other for the CPU. A failure in
the background (a full disk while encoding) is the job's failure, reported when its files are put in place;
Ctrl-C during the next item still puts the finished item's files in place before the run stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Deferred:
    """A job made whose files are still being finished in the background: settle() waits for that work, puts
    the files in place (`finish(prepared)`, in the calling thread) and returns the job's result, or raises as
    the job would have; abandon() drops them (the batch stopped). Either releases what the job held (its output
    lock, via holding())."""

    def __init__(self, future: Future, finish: Callable[[Any], dict], abandon: Callable[[], None]):
        self._future = future
        self._finish = finish
        self._abandon = abandon
        self._held = contextlib.ExitStack()
        self._done: Callable[[], None] = lambda: None

    def holding(self, held: contextlib.ExitStack, done: Callable[[], None]) -> Deferred:
        """Keep `held` (e.g. the output's lock) until the job is settled or abandoned; `done()` once settled."""
        self._held, self._done = held, done
        return self

    def settle(self) -> dict:
        with self._held:
            try:
                prepared = self._future.result()
            except BaseException:
                self._abandon()
                raise
            result = self._finish(prepared)
            self._done()
            return result

    def abandon(self) -> None:
        with self._held:
            with contextlib.suppress(Exception):  # its own failure no longer matters: nothing is written
                self._future.result()
            self._abandon()


class WriteBehind:
    """One background thread for the batch's after-generation work (see the module doc); close() waits for it."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def defer(self, work: Callable[[], Any], finish: Callable[[Any], dict],
              abandon: Callable[[], None]) -> Deferred:
        """Start `work()` in the background; the Deferred's settle() passes its value to `finish` (see Deferred)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        return Deferred(self._pool.submit(work), finish, abandon)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
