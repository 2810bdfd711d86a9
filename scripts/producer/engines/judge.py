"""Broken output, caught where it happens: after each denoise (latents) and each decode (frames).

What is flagged (each a `Flag`: its reason, the frames concerned, the figure, the threshold and what to do):
- `nan_latents`: NaN or infinite values in the denoised latents (checked before the decode, which is then
  skipped). Wan's latent frame 0 is video frame 0 and latent frame f > 0 holds video frames 4f-3 .. 4f.
- `black`, `white`, `uniform`: a frame with (almost) no pixel above BLACK_LEVEL, none below WHITE_LEVEL, or
  a luma spread below UNIFORM_SPREAD (a flat grey or coloured field: what a NaN decode or a dead VAE gives).
- `frozen`: a clip whose frames barely differ: in the median step, fewer than `frozen_share` of the pixels
  change by more than CHANGED_LEVELS (decoder noise changes pixels by a level or two, a moving thing by more).
- `flicker`: a frame-to-frame jump far above the clip's own motion (FLICKER_RATIO times its median) and
  above FLICKER_FLOOR luma levels (so that a very still clip's noise is not called flicker).

Motion is the mean absolute luma difference of consecutive frames (0-255 levels), measured on frames
subsampled to about MOTION_SIDE pixels a side (sensor-level noise averages out; a jump does not).

Calibration (synthetic cases only; see docs/judging.md and tests/test_judge.py): a 33-frame 160x96 clip of
a 12 px ball moving 3.5 px a frame over a gradient (the clean case, deliberately little motion) changes
~0.7 % of its pixels a step, with median motion 0.07 levels and its largest step 2.4x the median; a still
clip of that scene changes none (also with +-2 levels of noise added); one frame 25 % brighter jumps 30
levels (~400x the median); a black frame has p99 luma 0, a flat grey one a spread of 0 (the clean frames:
20). The limits sit well
between: clean material passes with room, every injected fault is flagged. They have not been measured on
real Wan or Qwen output; a user overrides them with `--judge NAME=VALUE`, or for a production in
.production/settings.json, {"judge": {"flicker_ratio": 8}} (the planner passes it to every job).

Fallback (`with_fallback`): a broken result made with a lever that is the usual cause of NaN or black
output (fp8 matmuls, a non-default attention backend) is made once more without it; the recipe records
what was dropped and why. A result that is still broken raises `broken_error`: exit 1, the flags in the
JSON, and nothing written under the final name (the caller raises before its outputs are committed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from producer.errors import CliError, ExitCode

log = logging.getLogger("producer")

MOTION_SIDE = 64  # frames are subsampled to about this many pixels a side before motion is measured
CHANGED_LEVELS = 4.0  # a pixel "changed" between frames by more than this (decoder noise: 1-2 levels)


@dataclass(frozen=True)
class Limits:
    """The thresholds, in 0-255 luma levels unless said otherwise (module doc: how they were chosen)."""

    black_level: float = 16.0  # a frame is black when 99 % of its pixels are below this (a dark scene has highlights)
    white_level: float = 240.0  # ... white when 99 % are above this
    uniform_spread: float = 2.0  # ... flat when its luma's standard deviation is below this (clean scene: > 20)
    frozen_share: float = 0.002  # frozen: under 0.2 % of pixels change in the median step (still clip 0, clean 0.7 %)
    flicker_ratio: float = 6.0  # a jump this many times the clip's median motion... (clean clip's largest: 2.4x)
    flicker_floor: float = 6.0  # ...and at least this many levels is flicker (the injected one: ~30)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


FIXES = {
    "nan_latents": "the model produced NaN: rerun without --fp8-matmul and --attention; if it persists, with "
    "--weights bf16 or another seed",
    "black": "a black frame: rerun with another seed; if every seed gives it, drop --fp8-matmul/--attention or "
    "use --weights bf16",
    "white": "a white frame: rerun with another seed, or lower the guidance",
    "uniform": "a flat frame with no picture: rerun with another seed; if it persists, check the weights "
    "(validate_diffusers.py)",
    "frozen": "the clip does not move: rerun with another seed, and describe the motion in the prompt",
    "flicker": "a sudden jump between frames: rerun with another seed, or cut the clip before the jump",
}


@dataclass
class Flag:
    reason: str
    frames: list[int]  # 0-based frame numbers ([] for a single image: the image)
    figure: float
    threshold: float
    fix: str = ""

    def __post_init__(self):
        self.fix = self.fix or FIXES.get(self.reason, "")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        where = f" at frame(s) {_frame_list(self.frames)}" if self.frames else ""
        return f"{self.reason}{where} (figure {self.figure:g}, threshold {self.threshold:g})"


def parse_limits(pairs: list[str] | None) -> Limits:
    """`--judge NAME=VALUE` (repeatable) -> Limits; unknown names and bad numbers name the valid ones."""
    limits = Limits()
    for pair in pairs or []:
        name, sep, value = str(pair).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in Limits.names():
            raise CliError(
                f"--judge {pair!r}: expected NAME=VALUE with NAME one of {', '.join(Limits.names())}",
                "e.g. --judge flicker_ratio=8",
            )
        try:
            number = float(value)
        except ValueError:
            raise CliError(f"--judge {pair!r}: {value!r} is not a number", "e.g. --judge flicker_ratio=8") from None
        if not np.isfinite(number) or number < 0:
            raise CliError(f"--judge {pair!r}: must be a number >= 0", "e.g. --judge flicker_ratio=8")
        limits = replace(limits, **{name: number})
    return limits


def add_args(parser) -> None:
    parser.add_argument(
        "--judge",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a broken-output threshold (repeatable), e.g. flicker_ratio=8; "
        f"names: {', '.join(Limits.names())} (docs/judging.md)",
    )


# ---------------------------------------------------------------- latents


def check_latents(latents: Any, video: bool) -> list[Flag]:
    """NaN or infinite latents. `video`: Wan's B x C x F x H x W (the frames are named), else one image."""
    import torch

    bad = ~torch.isfinite(latents.detach().float())
    if not bool(bad.any()):
        return []
    share = float(bad.float().mean())
    frames: list[int] = []
    if video and latents.dim() == 5:
        for f in torch.nonzero(bad.any(dim=(0, 1, 3, 4))).flatten().tolist():
            frames += [0] if f == 0 else list(range(4 * f - 3, 4 * f + 1))
    return [Flag("nan_latents", frames, round(share, 4), 0.0)]


# ---------------------------------------------------------------- frames


def luma(frames: np.ndarray) -> np.ndarray:
    """N x H x W x 3 (uint8, or floats in [0, 1]) -> N x h x w float luma in 0-255 levels, subsampled."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    step = max(1, max(frames.shape[1:3]) // MOTION_SIDE)
    small = frames[:, ::step, ::step, :3].astype(np.float32)
    if frames.dtype != np.uint8:
        small = np.nan_to_num(small, nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1) * 255
    return small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def motion(frames: np.ndarray) -> np.ndarray:
    """Mean absolute luma difference of each frame to the one before (N - 1 values, 0-255 levels)."""
    y = luma(frames)
    return np.abs(np.diff(y, axis=0)).mean(axis=(1, 2)) if len(y) > 1 else np.zeros(0, dtype=np.float32)


def check_frames(frames: np.ndarray, limits: Limits | None = None) -> list[Flag]:
    """Black, white and flat frames; for a clip also frozen and flicker. Frames: N x H x W x 3 or one H x W x 3."""
    limits = limits or Limits()
    flags: list[Flag] = []
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 and not np.isfinite(frames).all():
        bad = [i for i, f in enumerate(frames if frames.ndim == 4 else frames[None]) if not np.isfinite(f).all()]
        flags.append(
            Flag(
                "nan_latents",
                bad if frames.ndim == 4 else [],
                1.0,
                0.0,
                fix="the decode produced NaN: " + FIXES["nan_latents"],
            )
        )
    y = luma(frames)
    clip = frames.ndim == 4
    flat = y.reshape(len(y), -1)
    high, low, spread = np.percentile(flat, 99, axis=1), np.percentile(flat, 1, axis=1), flat.std(axis=1)
    black = [i for i in range(len(y)) if high[i] < limits.black_level]
    white = [i for i in range(len(y)) if low[i] > limits.white_level]
    uniform = [i for i in range(len(y)) if spread[i] < limits.uniform_spread and i not in black and i not in white]
    for reason, found, figures, threshold in (
        ("black", black, high, limits.black_level),
        ("white", white, low, limits.white_level),
        ("uniform", uniform, spread, limits.uniform_spread),
    ):
        if found:
            worst = min(found, key=lambda i: figures[i]) if reason != "white" else max(found, key=lambda i: figures[i])
            flags.append(Flag(reason, found if clip else [], round(float(figures[worst]), 3), threshold))
    if clip and len(y) > 2:
        differences = np.abs(np.diff(y, axis=0))
        flags += _motion_flags(differences.mean(axis=(1, 2)), (differences > CHANGED_LEVELS).mean(axis=(1, 2)), limits)
    return flags


def _motion_flags(steps: np.ndarray, changed: np.ndarray, limits: Limits) -> list[Flag]:
    share = float(np.median(changed))
    if share < limits.frozen_share:
        return [Flag("frozen", list(range(len(steps) + 1)), round(share, 5), limits.frozen_share)]
    median = max(float(np.median(steps)), 1e-6)
    limit = max(limits.flicker_ratio * median, limits.flicker_floor)
    jumps = [i + 1 for i, s in enumerate(steps) if s > limit]  # the frame that jumps from the one before
    if not jumps:
        return []
    return [Flag("flicker", jumps, round(float(steps.max()) / median, 2), limits.flicker_ratio)]


# ---------------------------------------------------------------- the error and the fallback


def broken_error(what: str, flags: list[Flag], fallback: dict | None = None) -> CliError:
    first = flags[0]
    extra = "" if len(flags) == 1 else f" (and {len(flags) - 1} more)"
    details: dict = {"broken": [f.to_dict() for f in flags]}
    if fallback:
        details["fallback"] = fallback
    return CliError(
        f"{what} is broken: {first.describe()}{extra}; nothing was written", first.fix, ExitCode.FAILED, **details
    )


def suspect_levers(speed) -> dict[str, str]:
    """The levers of a `producer.sizing.speed.Speed` that are the usual cause of NaN or black output, with why."""
    if speed is None:
        return {}
    found = {}
    if speed.fp8_matmul:
        found["fp8_matmul"] = "fp8 matmuls overflow on some activations (NaN or black frames)"
    if speed.attention:
        found["attention"] = f"the attention backend {speed.attention} is not the default one"
    return found


def without_levers(speed, levers: dict[str, str]):
    return replace(
        speed,
        **{"fp8_matmul": False} if "fp8_matmul" in levers else {},
        **{"attention": None} if "attention" in levers else {},
    )


def drop_levers(args, levers) -> None:
    """A script's run goes on with the levers of `levers` (a speed.Speed) only: how its `reopen` loads the
    model again without the suspect ones (speed.choose reads these options)."""
    args.fp8_matmul = levers.fp8_matmul
    args.attention = levers.attention


def with_fallback(
    make: Callable[[], tuple[Any, list[Flag]]], speed, reopen: Callable[[Any], None], what: str
) -> tuple[Any, dict | None]:
    """Run `make` (-> result, flags). Broken, with a suspect lever on: `reopen(speed without it)`, then `make`
    once more. Returns (result, fallback record or None); raises broken_error when the result stays broken."""
    result, flags = make()
    if not flags:
        return result, None
    levers = suspect_levers(speed)
    if not levers:
        raise broken_error(what, flags)
    cause = "; ".join(f.describe() for f in flags)
    log.warning("warning: %s is broken (%s); making it once more without %s", what, cause, ", ".join(levers))
    reopen(without_levers(speed, levers))
    fallback = {"dropped": levers, "cause": [f.to_dict() for f in flags]}
    result, flags = make()
    if flags:
        raise broken_error(what, flags, fallback)
    return result, fallback


def _frame_list(frames: list[int], shown: int = 8) -> str:
    text = ", ".join(map(str, frames[:shown]))
    return text + (f" ... ({len(frames)} in all)" if len(frames) > shown else "")
