"""The film's timeline: where every clip lands, what each boundary does, and the frames, streamed.

Planning is a pure function of clip lengths and boundaries (unit-tested as a table); composing walks
the plan and pulls frames from each source one at a time, so memory holds at most one dissolve's
overlap, whatever the length of the film.

Boundaries (seconds are the total length of the transition):
- cut: the next clip starts on the next frame. Nothing is dropped, even when the clips share a
  keyframe (the report says so; `continuous` is the boundary that drops it).
- continuous: like a cut, but when the next clip's first frame repeats the previous clip's last frame
  (adjacent first-last-frame clips share their boundary keyframe) that first frame is dropped, so the
  motion does not stall for a frame.
- fade (default 1.0 s): through black. The previous clip fades out over the first half of the frames,
  the next fades in over the second half, both over their own frames: the film keeps its length, and
  the two frames around the boundary are fully black.
- dissolve (default 0.5 s): a cross-fade: the last N frames of one clip are blended with the first N
  of the next (N = seconds x fps), so the film is N frames shorter than the clips laid end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from producer.errors import CliError
from producer.files import video

DEFAULT_SECONDS = {"cut": 0.0, "continuous": 0.0, "fade": 1.0, "dissolve": 0.5}
CARD_SECONDS = 2.0  # long enough to read a short title at a glance, short enough not to stall the film


@dataclass(frozen=True)
class Boundary:
    kind: str
    seconds: float
    drop_first: bool = False  # drop the next source's first frame (a duplicate)
    reason: str = ""  # why it was dropped, or why not


@dataclass
class Segment:
    """One source (clip or card) on the film: film frames [film_in, film_out), source frames
    [source_start, source_end)."""
    name: str
    frames: int  # the source's length
    source_start: int = 0
    film_in: int = 0
    film_out: int = 0
    fade_in: int = 0
    fade_out: int = 0
    overlap_in: int = 0  # frames blended with the previous segment's tail (dissolve)
    overlap_out: int = 0
    trim_end: int = 0  # frames cut off the source's end (--trim-end: where a first-last-frame clip morphs)

    @property
    def kept(self) -> int:
        return self.frames - self.source_start - self.trim_end


@dataclass
class Timeline:
    fps: float
    segments: list[Segment]
    boundaries: list[Boundary]
    frames: int = 0
    transitions: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def transition_frames(boundary: Boundary, fps: float) -> int:
    if boundary.kind in ("cut", "continuous"):
        return 0
    return max(1, round(boundary.seconds * fps)) if boundary.seconds > 0 else 0


def plan_timeline(names: list[str], lengths: list[int], boundaries: list[Boundary], fps: float,
                  trims: dict[str, int] | None = None) -> Timeline:
    """Place each source on the film. `trims`: source name -> frames cut off its end.
    Raises CliError when a transition is longer than a clip has frames."""
    if len(boundaries) != len(lengths) - 1:
        raise ValueError(f"{len(lengths)} sources need {len(lengths) - 1} boundaries, got {len(boundaries)}")
    segments = [Segment(name, length, trim_end=(trims or {}).get(name, 0)) for name, length in zip(names, lengths)]
    for before, after, b in zip(segments, segments[1:], boundaries):
        n = transition_frames(b, fps)
        after.source_start = 1 if b.drop_first else 0
        if b.kind == "fade":
            before.fade_out, after.fade_in = n - n // 2, n // 2  # an odd frame goes to the fade-out
        elif b.kind == "dissolve":
            before.overlap_out = after.overlap_in = n
    cursor = 0
    for seg in segments:
        _check_fits(seg, fps)
        seg.film_in = cursor - seg.overlap_in
        seg.film_out = seg.film_in + seg.kept
        cursor = seg.film_out
    timeline = Timeline(fps, segments, boundaries, cursor)
    timeline.transitions = [_describe(b, s, t, fps) for b, s, t in zip(boundaries, segments, segments[1:])]
    return timeline


def _check_fits(seg: Segment, fps: float) -> None:
    used = seg.fade_in + seg.fade_out + seg.overlap_in + seg.overlap_out
    if used > seg.kept:
        raise CliError(f"{seg.name} has {seg.kept} frames ({seg.kept / fps:.2f} s) but its transitions need "
                       f"{used} ({used / fps:.2f} s)",
                       "use shorter transitions, e.g. --transition dissolve:0.25, or a cut")


def _describe(b: Boundary, before: Segment, after: Segment, fps: float) -> dict:
    if b.kind == "fade":
        start, end = before.film_out - before.fade_out, after.film_in + after.fade_in
    elif b.kind == "dissolve":
        start, end = after.film_in, before.film_out
    else:
        start = end = after.film_in
    d = {"between": [before.name, after.name], "kind": b.kind, "seconds": round((end - start) / fps, 4),
         "frames": end - start, "film_start": start, "film_end": end,
         "start_seconds": round(start / fps, 4), "end_seconds": round(end / fps, 4),
         "dropped_duplicate": b.drop_first}
    if b.kind == "dissolve":
        d["film_shortened_by_frames"] = end - start
    if b.reason:
        d["note"] = b.reason
    return d


# ================================================================ composing frames


def compose(timeline: Timeline, open_source: Callable[[int], Iterator[np.ndarray]],
            on_frame: Callable[[int, np.ndarray, int], None] | None = None) -> Iterator[np.ndarray]:
    """Yield the film's frames in order. open_source(i) gives source i's frames (all of them, from its
    first); on_frame(film_index, frame, segment_index) sees each film frame (for the contact sheet)."""
    film_index = 0
    tail: list[np.ndarray] = []  # the previous segment's last frames, waiting for a dissolve
    for i, seg in enumerate(timeline.segments):
        frames = open_source(i)
        try:
            held = []
            for k, frame in enumerate(_kept(frames, seg)):
                if k < seg.overlap_in:
                    out = _blend(tail[k], frame, (k + 1) / (seg.overlap_in + 1))
                elif k >= seg.kept - seg.overlap_out:
                    held.append(frame)  # blended with the next segment's head
                    continue
                else:
                    out = _faded(frame, k, seg)
                if on_frame:
                    on_frame(film_index, out, i)
                film_index += 1
                yield out
            tail = held
        finally:
            close = getattr(frames, "close", None)
            if close:
                close()  # a generator over an ffmpeg reader stops it here


def _kept(frames: Iterator[np.ndarray], seg: Segment) -> Iterator[np.ndarray]:
    """The source's frames after the dropped ones, checked against the planned count (a clip that
    changed on disk since it was scanned would otherwise shift every later clip)."""
    count = 0
    for index, frame in enumerate(frames):
        if index < seg.source_start:
            continue
        if count == seg.kept:
            break
        count += 1
        yield frame
    if count != seg.kept:
        raise CliError(f"{seg.name} gave {count} frames, {seg.kept} were expected",
                       "it changed while the film was being assembled; run again")


def _blend(a: np.ndarray, b: np.ndarray, weight_b: float) -> np.ndarray:
    mixed = a.astype(np.float32) * (1 - weight_b) + b.astype(np.float32) * weight_b
    return np.round(mixed).astype(np.uint8)


def _faded(frame: np.ndarray, k: int, seg: Segment) -> np.ndarray:
    """Scale towards black: the first fade-in frame and the last fade-out frame are black."""
    factor = 1.0
    if k < seg.fade_in:
        factor = k / seg.fade_in
    from_end = seg.kept - 1 - k - seg.overlap_out
    if 0 <= from_end < seg.fade_out:
        factor = min(factor, from_end / seg.fade_out)
    if factor >= 1.0:
        return frame
    return np.round(frame.astype(np.float32) * factor).astype(np.uint8)


# ================================================================ the contact sheet


class ContactSheet:
    """One thumbnail per second of film and the last frame, labelled with time, source and transition.

    Fed by compose()'s on_frame while the film streams past, so only thumbnails (240 px wide) are kept.
    """

    def __init__(self, plan: Timeline, width: int = 240):
        self.plan, self.width = plan, width
        self.step = max(1, round(plan.fps))
        self.tiles: list[tuple[Image.Image, str]] = []

    def add(self, index: int, frame: np.ndarray, segment: int) -> None:
        if index % self.step and index != self.plan.frames - 1:
            return
        image = Image.fromarray(frame)
        if image.width > self.width:
            image = image.resize((self.width, max(1, round(image.height * self.width / image.width))),
                                 Image.Resampling.LANCZOS)
        label = f"{index / self.plan.fps:.1f}s {self.plan.segments[segment].name}"
        in_transition = [t["kind"] for t in self.plan.transitions if t["film_start"] <= index < t["film_end"]]
        self.tiles.append((image, label + (f" ({in_transition[0]})" if in_transition else "")))

    def render(self, name: str) -> Image.Image:
        frames, labels = zip(*self.tiles)
        return video.contact_sheet(list(frames), n=len(frames), labels=list(labels), columns=6,
                                   tile_width=self.width, title=f"{name}: {self.plan.seconds:.2f} s, {self.plan.frames} frames at "
                                         f"{self.plan.fps:g} fps, one tile per second")


# ================================================================ title and end cards


def render_card(text: str, width: int, height: int) -> np.ndarray:
    """White text centred on black, in PIL's default font (no font file to ship) at a size a viewer
    reads on a phone: a tenth of the frame height, smaller only when a line would not fit. Lines break
    at '\\n' (or the two characters backslash-n as typed in a shell) and wrap at the frame width."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    size = max(8, height // 10)
    while True:
        font = ImageFont.load_default(size=size)
        lines = _wrap(text.replace("\\n", "\n"), font, draw, width * 0.9)
        widest = max(draw.textlength(line, font=font) for line in lines)
        line_h = size * 1.25
        if (widest <= width * 0.9 and line_h * len(lines) <= height * 0.9) or size <= 8:
            break
        size = max(8, int(size * 0.85))
    top = (height - line_h * len(lines)) / 2
    for n, line in enumerate(lines):
        x = (width - draw.textlength(line, font=font)) / 2
        draw.text((x, top + n * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _wrap(text: str, font, draw: ImageDraw.ImageDraw, max_width: float) -> list[str]:
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines or [""]


def card_frames(card: np.ndarray, count: int) -> Iterator[np.ndarray]:
    for _ in range(count):
        yield card
