"""Where a from-disk load's seconds go: the scripts' own loading functions, timed while a session brings in its
experts, so that `load_to_first_step_s` against the disk's read floor can be explained stage by stage.

Stages (each synchronised with the GPU at its end; a stage inside another is also counted in it):
- `read`: the GGUF file's tensors read into host chunks by the file readers (gguf_host.read_into_host_chunks;
  making the page-locked chunks is part of it);
- `lock_in_place`: instead of `read`, where the plan streams from a GGUF file locked where its pages lie
  (gguf_host.map_in_place: mapping the file, starting to page-lock the streamed tensors' ranges in the
  background, reading the other tensors);
- `lock_wait`: the locking still left once diffusers has built the model (gguf_host.finish_locking);
- `gguf_load`: the whole of gguf_host.load_gguf, the read and diffusers' `from_single_file` building the model;
- `loras`: the session's LoRA loading (folding the step-distill factors beside the GGUF weights);
- `place`: offload.place_module (pinning what is left, group offloading, the resident blocks to the GPU);
- `release`: offload.release (letting a model go: with one Wan expert in RAM, the other expert before each read,
  its page-locked chunks handed back to the system);
- `pinned_alloc` (CUDA only): the time PyTorch's pinned allocator spent making page-locked memory, inside the
  stages above (torch.cuda.memory.host_memory_stats).
`build` (`gguf_load` - `read` - `lock_in_place` - `lock_wait`) is added to the result, as is `other` (the whole
less the outer stages).
With BENCH_PROFILE_LOAD=FILE in the environment, the load also runs under cProfile and FILE gets the functions
that took longest (cumulative), for what the stages do not name: each load appends its own, so a run of several
configurations keeps them all.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextmanager
def watched(device: str):
    """Yields a dict that fills with each stage's seconds (summed over calls) while the block runs (profiled too
    where BENCH_PROFILE_LOAD names a file)."""
    with profiled(os.environ.get("BENCH_PROFILE_LOAD")), _stages(device) as seconds:
        yield seconds


@contextmanager
def _stages(device: str):
    from producer.engines.wan import wan
    from producer.sizing import gguf_host, offload

    seconds: dict[str, float] = {}
    targets = [(gguf_host, "read_into_host_chunks", "read"), (gguf_host, "map_in_place", "lock_in_place"),
               (gguf_host, "finish_locking", "lock_wait"), (gguf_host, "load_gguf", "gguf_load"),
               (wan.WanSession, "_load_loras", "loras"), (offload, "place_module", "place"),
               (offload, "release", "release")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def timing(original, stage):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                _sync(device)
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
        return timed

    for (owner, name, stage), (_, _, original) in zip(targets, originals):
        setattr(owner, name, timing(original, stage))
    allocating = _host_alloc_seconds(device)
    try:
        yield seconds
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        if allocating is not None:
            seconds["pinned_alloc"] = _host_alloc_seconds(device) - allocating


def _host_alloc_seconds(device: str) -> float | None:
    """Seconds PyTorch's pinned allocator has spent in CUDA's allocation calls (None off CUDA, or where this
    PyTorch does not count them)."""
    import torch

    if device != "cuda" or not hasattr(torch.cuda.memory, "host_memory_stats"):
        return None
    return torch.cuda.memory.host_memory_stats().get("host_alloc_time.total", 0) / 1e6


@contextmanager
def profiled(path: str | None):
    """cProfile over the block when `path` is set; the top 40 functions by cumulative time are appended to it."""
    if not path:
        yield
        return
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
        with open(path, "a") as f:
            f.write(text.getvalue() + "\n")


def summary(seconds: dict[str, float], whole: float) -> dict[str, float]:
    """The stages rounded, with `build` (model construction after the read) and `other` (the rest of `whole`)."""
    out = dict(seconds)
    if "gguf_load" in out:
        out["build"] = out["gguf_load"] - sum(out.get(k, 0.0) for k in ("read", "lock_in_place", "lock_wait"))
    outer = sum(out.get(k, 0.0) for k in ("gguf_load", "loras", "place", "release"))
    out["other"] = max(whole - outer, 0.0)
    return {k: round(v, 3) for k, v in out.items()}
