"""Settings of a Wan 2.2 I2V clip, resolved from what the user asked: frames, size, schedule, distill LoRA.

Pure functions without torch, so `wan_video.py --help` stays instant and the rules are table-tested.
`None` always means "the model's default" and is resolved here, once; the resolved values are what the
JSON report, the provenance recipe and the generator see.

Rules
- Frames: Wan packs 4 frames into one latent frame after the first, so a clip has 4n+1 frames. Any
  other count is rounded to the nearest 4n+1 (halves up) with a warning; `--duration SECONDS` gives
  round(seconds x fps) frames, snapped the same way. At least 5 frames (two latent frames).
- Size: `--size WxH` must be multiples of 16 (VAE 8x times patch 2); anything else is an error that
  names the nearest valid size. `--preset 480p|720p` (default 480p) is turned to the keyframe's
  orientation: landscape, portrait or square, whichever crops the least (media.orient_preset).
- Schedule: with a step-distill LoRA, the registry's distilled schedule (4 steps, guidance 1, shift 5,
  Euler: two steps on each expert); without one, the official one (40 steps, guidance 3.5/3.5, shift 5,
  UniPC). `--steps`, `--guidance`, `--guidance-2`, `--shift` override single values. Each value's public source
  is named in registry.WanVideoFacts and listed in docs/real-models.md.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

from producer.errors import CliError, ExitCode
from producer.facts import registry
from producer.values import number_arg

WAN = registry.WAN
MIN_FRAMES = 5  # two latent frames: the first frame and one group of four
MAX_SECONDS = 60  # a minute in one clip: 12x what the model was trained on, and already beyond any GPU's memory
MAX_FRAMES = MAX_SECONDS * WAN.fps + 1
MAX_STEPS = 200  # 5x the full schedule: more only costs time
MAX_GUIDANCE = 20.0  # Wan runs at 3.5 (full) or 1 (distilled); far above, frames burn
MAX_SHIFT = 100.0  # the schedules use 5 (Wan 2.2) to 12; past 100 every step sits at the noisy end
# Below 1 the shift pulls every step after the first towards sigma 0; on the stand-ins 1e-8 made NaN latents and
# 1e-300 an empty step in diffusers' scheduler (an IndexError), while 1e-7 still ran. 0.01 keeps far from that.
MIN_SHIFT = 0.01
MAX_SIDE = 4096  # pixels a side: the model is trained at 480p and 720p; 4096x4096 is 18x the 720p frame
# argparse types for those numbers: nan, inf or out of range is refused while the arguments are read
frames_arg = number_arg(1, MAX_FRAMES, whole=True)
seconds_arg = number_arg(0, MAX_SECONDS, above=True)
steps_arg = number_arg(1, MAX_STEPS, whole=True)
guidance_arg = number_arg(0, MAX_GUIDANCE)
shift_arg = number_arg(0, MAX_SHIFT, above=True)
TRAINED_FRAMES = WAN.frames  # Wan2.2 shared_config frame_num 81: longer clips tend to loop or degrade

# --distill choices -> registry entries. `auto` takes the first one installed, in this order: the Wan 2.2
# Lightning pair was distilled for these very experts (one file each); the Wan 2.1 LoRA is older and
# goes into both experts with one file.
DISTILL_ENTRIES = {"lightning": "wan-lightning", "lightx2v": "wan21-lightx2v"}
DISTILL_CHOICES = ("auto", *DISTILL_ENTRIES, "off")


# ---------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frames:
    count: int
    note: str = ""  # what was rounded, for a warning


def snap_frames(requested: int) -> Frames:
    """The nearest 4n+1 frame count (halves round up), at least MIN_FRAMES."""
    m = WAN.frame_multiple
    n = max((MIN_FRAMES - 1) // m, math.floor((requested - 1) / m + 0.5))
    count = n * m + 1
    if count == requested:
        return Frames(count)
    return Frames(count, f"{requested} frames is not 4n+1 (Wan packs 4 frames per latent after the first); "
                         f"using {count}")


def frames_for_duration(seconds: float, fps: int = WAN.fps) -> Frames:
    if not math.isfinite(seconds) or seconds <= 0:
        raise CliError(f"--duration {seconds:g} must be a positive number of seconds", "e.g. --duration 5")
    exact = round(seconds * fps)
    snapped = snap_frames(exact)
    note = "" if snapped.count == exact else f"{seconds:g} s at {fps} fps is {exact} frames; using {snapped.count} (4n+1)"
    return Frames(snapped.count, note)


def resolve_frames(frames: int | None, duration: float | None) -> Frames:
    if frames is not None and duration is not None:
        raise CliError("give --frames or --duration, not both", "e.g. --frames 81, or --duration 5")
    if duration is not None:
        return frames_for_duration(duration)
    if frames is None:
        return Frames(WAN.frames)
    if frames < 1:
        raise CliError(f"--frames {frames} must be positive", f"e.g. --frames {WAN.frames}")
    return snap_frames(frames)


# ---------------------------------------------------------------- size


def size_arg(value: str) -> tuple[int, int]:
    """argparse type for WxH (the multiple-of-16 rule is checked later, with the nearest valid size)."""
    try:
        w, h = (int(v) for v in value.lower().replace(" ", "").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give WIDTHxHEIGHT, e.g. 832x480") from None
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"{value!r}: width and height must be 1 to {MAX_SIDE}")
    return w, h


def resolve_size(size: tuple[int, int] | None, preset: str | None, keyframe_wh: tuple[int, int]) -> tuple[int, int, str]:
    """(width, height, how it was chosen)."""
    if size is not None and preset is not None:
        raise CliError("give --size or --preset, not both", "e.g. --preset 480p, or --size 832x480")
    multiple = WAN.size_multiple
    if size is not None:
        w, h = size
        if w % multiple or h % multiple:
            from producer.files.media import snap_size

            near = snap_size(w, h, multiple)
            raise CliError(f"--size {w}x{h}: width and height must be multiples of {multiple} "
                           "(VAE 8x x patch 2)", f"use --size {near.width}x{near.height}")
        return w, h, f"--size {w}x{h}"
    name = preset or "480p"
    from producer.files.media import orient_preset

    w, h = orient_preset(WAN.presets[name], keyframe_wh, multiple)
    return w, h, f"preset {name} turned to the keyframe's {keyframe_wh[0]}x{keyframe_wh[1]}: {w}x{h}"


# ---------------------------------------------------------------- schedule


def resolve_sampling(distilled: bool, steps: int | None = None, guidance: float | None = None,
                     guidance_2: float | None = None, shift: float | None = None) -> registry.WanSampling:
    """The registry's schedule for the mode with the user's overrides applied and checked."""
    base = WAN.distilled if distilled else WAN.full
    overrides = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("guidance_2", guidance_2),
                                   ("shift", shift)) if v is not None}
    sampling = replace(base, **overrides)
    if sampling.steps < 1 or sampling.steps > MAX_STEPS:
        raise CliError(f"--steps {sampling.steps} is outside 1..{MAX_STEPS}", f"the default is {base.steps} "
                       f"({'distilled' if distilled else 'full'} schedule)")
    # the argparse type allows anything above 0 (its message is older): the floor is checked here, before loading
    if not MIN_SHIFT <= sampling.shift <= MAX_SHIFT:
        why = ": every step after the first would run at almost no noise, and the schedule breaks down (NaN " \
              "frames or a failing scheduler)" if sampling.shift < MIN_SHIFT else ""
        raise CliError(f"--shift {sampling.shift:g} is outside {MIN_SHIFT:g}..{MAX_SHIFT:g}{why}",
                       f"use --shift {MIN_SHIFT:g} to {MAX_SHIFT:g}; the default is {base.shift:g}")
    for flag, value in (("--guidance", sampling.guidance), ("--guidance-2", sampling.guidance_2)):
        if not 0 <= value <= MAX_GUIDANCE:
            raise CliError(f"{flag} {value:g} is outside 0..{MAX_GUIDANCE:g}", f"Wan uses {WAN.full.guidance:g} (full schedule) "
                           "or 1 (distilled: no CFG)")
    if sampling.guidance <= 1 < sampling.guidance_2:
        # diffusers' Wan pipeline decides whether to run the unconditional pass from the high-noise
        # guidance alone: with --guidance 1 the low-noise expert would silently run without CFG.
        raise CliError(f"--guidance-2 {sampling.guidance_2:g} needs --guidance above 1: the pipeline runs CFG "
                       f"for both experts or neither, and --guidance is {sampling.guidance:g}",
                       "raise --guidance (e.g. 3.5), or set --guidance-2 1")
    return sampling


# ---------------------------------------------------------------- step-distill LoRA


def choose_distill(choice: str, installed: set[str]) -> str | None:
    """The registry entry to load for --distill, or None for the full schedule.

    `installed`: names of the registry's distill LoRA entries present on disk. An explicit choice that is
    not installed is an error naming the setup command; `auto` falls back to the full schedule.
    """
    if choice == "off":
        return None
    if choice == "auto":
        return next((DISTILL_ENTRIES[c] for c in DISTILL_ENTRIES if DISTILL_ENTRIES[c] in installed), None)
    name = DISTILL_ENTRIES[choice]
    if name not in installed:
        from producer.modelfiles.models import setup_command

        raise CliError(f"--distill {choice}: the {registry.get(name).title} is not installed",
                       f"download it: {setup_command(name)}  (or run the full 40-step schedule: --distill off)",
                       code=ExitCode.MISSING_MODEL)
    return name


def strength_arg(value: str) -> dict[str, float]:
    """argparse type for --distill-strength HIGH[:LOW] -> {"transformer": HIGH, "transformer_2": LOW}."""
    parts = value.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give HIGH or HIGH:LOW, e.g. 1.0 or 1.0:0.8") from None
    if len(numbers) not in (1, 2) or not all(math.isfinite(n) and 0 <= n <= 5 for n in numbers):
        raise argparse.ArgumentTypeError(f"{value!r}: one or two strengths between 0 and 5, e.g. 1.0:0.8")
    high = numbers[0]
    return {"transformer": high, "transformer_2": numbers[-1]}
