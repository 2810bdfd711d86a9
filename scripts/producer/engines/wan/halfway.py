"""Clips of a batch made expert by expert, for machines that hold one Wan expert in RAM at a time.

With one expert in RAM (16 GB machines), a clip reads the high-noise expert from disk, runs its steps, lets
it go and reads the low-noise one: two experts read per clip (measured on an H100 with the 10 GB / 16 GB plan:
17 s of a 37 s clip). A batch can do better: while the high-noise expert is loaded, run the high-noise steps
of the next clips too, keep where each one stands at the expert boundary, then make each clip's low-noise
half with the low-noise expert loaded once. Two reads for a group of clips instead of two a clip.

A clip is split with diffusers' own pipeline call, not a loop of ours: the first half is the call stopped
after its last high-noise step (`_interrupt`, diffusers' own flag, set from the step-end callback), which
returns the latents; the second half is the same call again, its high-noise steps skipped the same way, from
the kept latents, image condition and scheduler state (a copy taken at the boundary, so a multistep
scheduler keeps its history). The same operations on the same values in the same order as one call, so the
same clip (tests/test_wan_session.py compares them); between the halves the tensors wait in host memory.
"""

from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Halfway:
    """A clip stopped at the expert boundary: what its second half starts from (host memory)."""

    latents: torch.Tensor
    condition: torch.Tensor
    scheduler: Any  # the scheduler after the last high-noise step, its tensors on the CPU
    steps_done: int
    high: Any = None  # producer.engines.wan.experts.ExpertRun of the high-noise expert for this clip
    seconds: float = 0.0  # the first half's time


def job_key(job) -> tuple:
    """A clip job's identity within one batch: its settings and its keyframe objects (the batch keeps them)."""
    return (id(job.image), id(job.last_image), job.prompt_key, job.width, job.height, job.frames, job.sampling,
            job.seed)


def crosses(scheduler, steps: int, boundary: float) -> bool:
    """Whether a schedule has steps on both sides of the expert boundary (a 1-step clip has nothing to split)."""
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    return bool(timesteps[0] >= boundary > timesteps[-1])


def first_half(pipe, call: dict, boundary: float) -> Halfway:
    """Run `pipe(**call)` up to the expert boundary (timesteps >= `boundary` are the high-noise expert's)."""
    kept: dict[str, Any] = {}

    def keep_condition(*args, **kwargs):
        latents, condition = type(pipe).prepare_latents(pipe, *args, **kwargs)
        kept["condition"] = condition
        return latents, condition

    def stop_at_boundary(pipe_, i, t, callback_kwargs):
        timesteps = pipe_.scheduler.timesteps
        if i + 1 < len(timesteps) and timesteps[i + 1] < boundary <= t:
            kept["scheduler"], kept["steps_done"] = _to(copy.deepcopy(pipe_.scheduler), "cpu"), i + 1
            pipe_._interrupt = True  # diffusers skips the remaining steps and returns these latents
        return callback_kwargs

    with _instance_attribute(pipe, "prepare_latents", keep_condition):
        latents = pipe(**call, output_type="latent", callback_on_step_end=stop_at_boundary).frames
    if "scheduler" not in kept:
        raise ValueError("the schedule never crosses the expert boundary: nothing to split")
    return Halfway(latents.cpu(), kept["condition"].cpu(), kept["scheduler"], kept["steps_done"])


def second_half(pipe, call: dict, halfway: Halfway, device: torch.device) -> torch.Tensor:
    """The rest of `pipe(**call)` from `halfway`: the latents after its last step."""
    latents, condition = halfway.latents.to(device), halfway.condition.to(device)
    scheduler = _to(copy.deepcopy(halfway.scheduler), device)
    scheduler.set_timesteps = lambda *args, **kwargs: None  # already set, and `steps_done` steps into them
    saved_scheduler, pipe.scheduler = pipe.scheduler, scheduler
    try:
        with _instance_attribute(pipe, "prepare_latents", lambda *args, **kwargs: (latents, condition)), \
                _skipping_steps(pipe, halfway.steps_done):
            return pipe(**call, output_type="latent").frames
    finally:
        pipe.scheduler = saved_scheduler


@contextmanager
def _instance_attribute(obj, name: str, value):
    setattr(obj, name, value)
    try:
        yield
    finally:
        delattr(obj, name)


@contextmanager
def _skipping_steps(pipe, steps: int):
    """diffusers' loop skips a step while `pipe.interrupt` is true: true for the first `steps` steps."""
    original = type(pipe)
    pipe.__class__ = _skipping_class(original)
    pipe._producer_skip = steps
    try:
        yield
    finally:
        pipe.__class__ = original
        del pipe._producer_skip


@functools.cache
def _skipping_class(cls: type) -> type:
    def interrupt(self) -> bool:
        if self._producer_skip > 0:
            self._producer_skip -= 1
            return True
        return self._interrupt

    return type(f"Resumed{cls.__name__}", (cls,), {"interrupt": property(interrupt)})


def _to(scheduler, device):
    """The scheduler's tensors (and lists of them: a multistep scheduler's history) moved to `device`."""
    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, value.to(device))
        elif isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
            setattr(scheduler, name, [v.to(device) if isinstance(v, torch.Tensor) else v for v in value])
    return scheduler
