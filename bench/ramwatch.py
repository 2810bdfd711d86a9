"""Peak host memory by kind, sampled from /proc/self/status while a run goes on.

`ru_maxrss` counts every resident page, including the pages of memory-mapped model files, which are page
cache: the kernel drops them when memory runs short, so they do not decide whether a plan fits a machine's
RAM. What must fit is anonymous memory (plain and page-locked copies of the weights, activations) plus
shared memory, and the model files' pages locked where they lie (producer.sizing.locked_map: file pages the
kernel cannot drop); this watch samples them, so a run reports the peak of what must fit beside the resident
one. `mark(stage)` names what the run is doing now (reading an expert, denoising with it, decoding); each sample
counts towards the stage marked at that moment, so a peak above the plan's prediction shows where it was reached.
"""

from __future__ import annotations

import threading
from pathlib import Path

from producer.sizing import locked_map

STATUS = Path("/proc/self/status")
FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
_STAGE = ["start"]  # what the run is doing now: set by mark(), read by the sampling thread


def mark(stage: str) -> None:
    """From now on, samples count towards `stage` (until the next mark)."""
    _STAGE[0] = stage


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
        self.anon = self.file_at_anon_peak = self.locked_at_anon_peak = self.rss = 0
        self.anon_by_stage: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RamWatch:
        mark("start")
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
        locked = locked_map.locked_bytes_now()
        anon = now["RssAnon"] + now["RssShmem"] + locked
        stage = _STAGE[0]
        self.anon_by_stage[stage] = max(self.anon_by_stage.get(stage, 0), anon)
        if anon > self.anon:
            self.anon, self.file_at_anon_peak, self.locked_at_anon_peak = anon, now["RssFile"], locked
        self.rss = max(self.rss, now["VmRSS"])

    def peaks(self) -> dict:
        """GiB: the peak of what must fit (anonymous + shared + file pages locked in place; the last also apart, at
        that moment), the file pages mapped at that moment, and the sampled resident peak; empty where /proc is
        missing."""
        if not self.anon:
            return {}
        gib = 2**30
        return {"peak_ram_anon_gib": round(self.anon / gib, 2),
                "file_pages_at_anon_peak_gib": round(self.file_at_anon_peak / gib, 2),
                "locked_file_pages_at_anon_peak_gib": round(self.locked_at_anon_peak / gib, 2),
                "peak_rss_sampled_gib": round(self.rss / gib, 2),
                "peak_ram_anon_by_stage_gib": {k: round(v / gib, 2) for k, v in self.anon_by_stage.items()}}


def mark_session_stages(session, family: str) -> None:
    """Name the session's stages for the RAM watch (mark): reading a denoiser, denoising with each,
    letting one go, decoding; so that a RAM peak above the plan shows which stage reached it."""
    def marking(method: str, before, after=None):
        original = getattr(session, method)

        def wrapped(*a, **k):
            mark(before(*a))
            out = original(*a, **k)
            if after:
                after(*a)
            return out

        setattr(session, method, wrapped)

    def denoising(*_):  # each expert's forwards mark its stage (the loop switches experts by itself)
        for component in registry.WAN_DENOISERS:
            module = getattr(session.pipe, component)
            if module is not None and not getattr(module, "_bench_marks", False):
                module.register_forward_pre_hook(lambda *_, c=component: mark(f"denoise {c}"))
                module._bench_marks = True

    from producer.facts import registry

    if family == "wan":
        marking("_experts_for_start", lambda: "load", denoising)
        marking("_bring_in", lambda c: f"read {c}", denoising)
        marking("_let_go", lambda c: f"release {c}")
    else:
        marking("denoise", lambda job: "place and denoise")
    marking("decode", lambda *a: "decode", lambda *a: mark("after decode"))
