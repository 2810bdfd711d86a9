"""Peak host memory by kind, sampled from /proc/self/status while a run goes on.

`ru_maxrss` counts every resident page, including the pages of memory-mapped model files, which are page
cache: the kernel drops them when memory runs short, so they do not decide whether a plan fits a machine's
RAM. What must fit is anonymous memory (plain and page-locked copies of the weights, activations) plus
shared memory; this watch samples both, so a run reports the two peaks side by side.
"""

from __future__ import annotations

import threading
from pathlib import Path

STATUS = Path("/proc/self/status")
FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def sample() -> dict[str, int] | None:
    """Bytes of each field now (None where /proc is not there, e.g. macOS)."""
    try:
        text = STATUS.read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            values[name] = int(rest.split()[0]) * 1024  # kB
    return values if len(values) == len(FIELDS) else None


class RamWatch:
    """`with RamWatch() as watch:` ... `watch.peaks()`; samples every `interval` seconds on its own thread."""

    def __init__(self, interval: float = 0.01):
        self.interval, self._stop = interval, threading.Event()
        self.anon = self.file_at_anon_peak = self.rss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RamWatch:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def _take(self) -> None:
        now = sample()
        if now is None:
            return
        anon = now["RssAnon"] + now["RssShmem"]
        if anon > self.anon:
            self.anon, self.file_at_anon_peak = anon, now["RssFile"]
        self.rss = max(self.rss, now["VmRSS"])

    def peaks(self) -> dict:
        """GiB: the anonymous + shared peak (what must fit), the file pages mapped at that moment, and the
        sampled resident peak; empty where /proc is missing."""
        if not self.anon:
            return {}
        gib = 2**30
        return {"peak_ram_anon_gib": round(self.anon / gib, 2),
                "file_pages_at_anon_peak_gib": round(self.file_at_anon_peak / gib, 2),
                "peak_rss_sampled_gib": round(self.rss / gib, 2)}
