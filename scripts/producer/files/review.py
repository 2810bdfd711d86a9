"""What an agent reviews instead of watching a clip, and the colour fix for first-last-frame drift.

An agent cannot watch an MP4. Next to `video.mp4` go `video.first.png` and `video.last.png` (the first
and last frames), `video.contact.png` (8 evenly spaced frames with their numbers), and figures:
continuity (how close the first frame is to the start keyframe and, first-last-frame, the last frame to
the end keyframe) and colour drift. Each PNG carries the clip's recipe (media.save_png), which also
marks it as ours: a later run may replace it, never a PNG someone else made.

Figures (media's colour science): `delta_e` is the mean CIEDE2000 difference per pixel (< 1 the same
picture, 1-3 visible on a close look, > 5 clearly different), `cast` the CIEDE2000 difference of the
two images' average colours (exposure or white-balance shift, ignoring motion), `ssim` the structural
similarity of their luma (1 = identical). Keyframes are compared as the model saw them (fitted to the
clip size). `drift` is the largest cast of any frame against the keyframes' average colour,
interpolated from the start keyframe (first frame) to the end keyframe (last frame).

Colour matching (`--color-match`), colour.match_colors_ramp (Reinhard transfer in CIELAB, target
interpolated from start to end keyframe; I2V: colour.match_colors to the start keyframe):
- off: never. on: always.
- auto (default): first-last-frame clips whose drift exceeds DRIFT_LIMIT; never I2V clips, which may
  legitimately change colour as they move away from their one keyframe.
Measured on synthetic 33-frame FLF clips (a moving ball over a gradient, a 20 % lighting change between
the keyframes): an injected drift (12 % darker and a 6 % warm cast at the end, the last frame snapping
back to its keyframe as FLF clips do) had drift 5.9 and differed from the clean clip by 2.9 mean
delta E (4.6 at three quarters); matched, 0.4 (0.6). On the clean clip (drift 0.5) matching changed the
frames by 0.1. The limit: a large object crossing the frame mid-clip also moves the average colour
(drift 3.5 to 40 for a ball of 15 to 45 px radius in 160x96) and matching then evens that out too,
changing frames by up to 5 to 18 delta E. The report gives `max_change` (the largest per-frame change
matching made) and warns above MAX_CHANGE_WARN: rerun with --color-match off if the change was intended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from producer.errors import CliError
from producer.files import colour, media, video
from producer.values import log

COLOR_MATCH_CHOICES = ("auto", "on", "off")
DRIFT_LIMIT = 2.0  # between "a close look shows it" (1-3) and the injected drift (5.9); a clean clip measured 0.5
MAX_CHANGE_WARN = 4.0  # a per-frame change this large is more than a cast: intended colour may have been evened out
CONTACT_TILES = 8
STATS_SIDE = 256  # average colours are measured on frames subsampled to about this many pixels a side
CHANGE_SIDE = 128  # the size at which the change made by matching is measured (a figure for a warning)
REVIEW_SUFFIXES = {"first_frame": ".first.png", "last_frame": ".last.png", "contact_sheet": ".contact.png"}


def review_paths(output: str | Path) -> dict[str, Path]:
    """video.mp4 -> {"first_frame": video.first.png, "last_frame": video.last.png, "contact_sheet": video.contact.png}."""
    output = Path(output)
    return {key: output.with_name(output.stem + suffix) for key, suffix in REVIEW_SUFFIXES.items()}


def check_review_paths(output: str | Path, overwrite: bool, script: str) -> None:
    """Refuse to replace a review PNG that this script did not make (unless --overwrite)."""
    if overwrite:
        return
    for path in review_paths(output).values():
        if path.exists() and not made_by(path, script):
            raise CliError(f"{path} already exists and was not made by {script}",
                           "pass --overwrite to replace it, or choose another output name")


def made_by(path: Path, script: str) -> bool:
    try:
        meta = media.read_png_metadata(path)
    except CliError:
        return False
    return bool(meta) and meta.get("script") == script


# ---------------------------------------------------------------- figures


def frame_figures(frame: Any, keyframe: Any) -> dict:
    return {"delta_e": round(colour.color_difference(frame, keyframe, "pixel"), 3),
            "cast": round(colour.color_difference(frame, keyframe, "mean"), 3),
            "ssim": round(colour.ssim(frame, keyframe), 4)}


def continuity(frames: Sequence[Any], start: Any, end: Any | None) -> dict:
    figures = {"first_vs_start": frame_figures(frames[0], start)}
    if end is not None:
        figures["last_vs_end"] = frame_figures(frames[-1], end)
    figures["drift"] = round(drift(frames, start, end), 3)
    return figures


def drift(frames: Sequence[Any], start: Any, end: Any | None) -> float:
    """The largest cast of a frame against the keyframes' average colour, interpolated along the clip."""
    return float(max(casts(frames, start, end)))


def casts(frames: Sequence[Any], start: Any, end: Any | None) -> list[float]:
    """Each frame's cast (CIEDE2000 of average colours) against the keyframes' average colour, interpolated
    from the start keyframe (first frame) to the end keyframe (last frame; I2V: the start keyframe)."""
    first = _mean_lab(start)
    last = _mean_lab(end if end is not None else start)
    span = max(1, len(frames) - 1)
    return [float(colour.delta_e_ciede2000(_mean_lab(f), first + (last - first) * i / span))
            for i, f in enumerate(frames)]


def _mean_lab(image: Any) -> np.ndarray:
    """Average CIELAB colour, from every n-th pixel so that the longer side has <= STATS_SIDE samples: an
    average does not need all 400k pixels of a 480p frame (a whole 81-frame clip then takes ~0.3 s, not 3)."""
    pixels = video.frame_to_uint8(image)
    step = max(1, -(-max(pixels.shape[:2]) // STATS_SIDE))
    return colour.lab_stats(pixels[::step, ::step]).mean


# ---------------------------------------------------------------- colour matching


def color_match(frames: np.ndarray, start: Any, end: Any | None, choice: str) -> tuple[np.ndarray, dict]:
    """Apply --color-match to uint8 frames; returns (frames, report with the figures before and after)."""
    if choice not in COLOR_MATCH_CHOICES:
        raise ValueError(f"choice must be one of {COLOR_MATCH_CHOICES}, not {choice!r}")
    before = continuity(frames, start, end)
    report = {"mode": choice, "applied": False, "drift_limit": DRIFT_LIMIT, "before": before}
    apply, report["reason"] = _decide(choice, end is not None, before["drift"])
    if not apply:
        return frames, report
    matched = (colour.match_colors_ramp(frames, start, end) if end is not None
               else colour.match_colors(frames, start))
    changes = [colour.color_difference(a, b, max_side=CHANGE_SIDE) for a, b in zip(matched, frames)]
    report.update(applied=True, after=continuity(matched, start, end), max_change=round(max(changes), 3),
                  method="match_colors_ramp (start -> end keyframe)" if end is not None
                  else "match_colors (start keyframe)")
    if max(changes) > MAX_CHANGE_WARN:
        log.warning("colour matching changed frame %d by %.1f delta E; if that colour change was intended (an "
                    "object crossing the frame, a light going on), rerun with --color-match off",
                    int(np.argmax(changes)), max(changes))
    return matched, report


def _decide(choice: str, flf: bool, measured: float) -> tuple[bool, str]:
    if choice == "off":
        return False, "--color-match off"
    if choice == "on":
        return True, "--color-match on"
    if not flf:
        return False, "auto: I2V clips are not matched (their colour may change on purpose)"
    if measured <= DRIFT_LIMIT:
        return False, f"auto: drift {measured:.2f} is within {DRIFT_LIMIT:g}"
    return True, f"auto: drift {measured:.2f} exceeds {DRIFT_LIMIT:g}"


# ---------------------------------------------------------------- the files


def write_review(frames: np.ndarray, output: str | Path, recipe: dict, fps: float, title: str,
                 into: dict[str, Path] | None = None) -> dict[str, str]:
    """First and last frame PNGs and a contact sheet beside `output`, each carrying the recipe. `into`: the
    temp files to write them to instead (the caller puts them in place with the clip: outputs.atomic_outputs)."""
    paths = review_paths(output)
    targets = into or paths
    for key, picture in _review_pictures(frames, fps, title).items():
        media.save_png(picture, targets[key], _metadata(recipe, output))
    return {key: str(path) for key, path in paths.items()}


def render_review(frames: np.ndarray, output: str | Path, recipe: dict, fps: float, title: str) -> dict[str, bytes]:
    """write_review's PNGs as bytes, by review_paths key (made in a background thread, written by the caller)."""
    return {key: media.png_bytes(picture, _metadata(recipe, output))
            for key, picture in _review_pictures(frames, fps, title).items()}


def _metadata(recipe: dict, output: str | Path) -> dict:
    """What each review picture carries: the clip's recipe and the clip it belongs to."""
    return {**recipe, "of": Path(output).name}


def _review_pictures(frames: np.ndarray, fps: float, title: str) -> dict:
    from PIL import Image

    return {"first_frame": Image.fromarray(video.frame_to_uint8(frames[0])),
            "last_frame": Image.fromarray(video.frame_to_uint8(frames[-1])),
            "contact_sheet": video.contact_sheet(frames, n=CONTACT_TILES, labels="both", fps=fps, title=title)}


def sheet_title(prompt: str, seed: int, frames: int, fps: float, limit: int = 90) -> str:
    text = json.dumps(prompt, ensure_ascii=False)[1:-1]
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return f"{frames} frames, {frames / fps:.2f} s, seed {seed}: {text}"
