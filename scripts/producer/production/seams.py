"""Seam review: does the film jump where one scene's clip meets the next?

At every boundary we compare, when known, three pictures: the last frame of the clip before, the
keyframe the plan puts there (keyframes/KF-X.png) and the first frame of the clip after. Each pair
gets three numbers:
- cast: CIEDE2000 between the two pictures' mean colours, a colour or exposure shift (motion barely
  moves it);
- delta_e: mean per-pixel CIEDE2000 (colour and motion together; reported, not judged);
- ssim: structural similarity at ANALYSIS_SIDE px, a jump or morph of the picture.

Thresholds were chosen on synthetic frames (a textured 832x480 scene: sky gradient, ground, discs,
noise; and the same at 64x48), each encoded with write_mp4 at crf 18 and decoded, like a real clip:
| change                                    | cast  | ssim at 256 px |
| same picture, crf 18 vs the PNG            | 0.55  | 0.98-0.99 |
| blur + noise (VAE-like re-synthesis)       | 0.3   | 0.99 |
| 1 / 2 / 4 / 8 px of motion (832 px wide)   | <0.05 | 0.97 / 0.91 / 0.73 / 0.56 |
| 4 / 8 px wavy warp (a morph)               | <0.05 | 0.89 / 0.70 |
| L* -2 / 5% darker / L* -4 / b* +4 / L* -8  | 1.8 / 2.7 / 3.8 / 3.6 / 7.8 | 0.97-0.98 |
| a different picture                        | 6     | 0.49 |
CAST_LIMIT = 2.5 sits four times above the encoding floor and below a 5% exposure drop, the
smallest darkening the lessons report for first-last-frame clips; a shift of 2 units, barely
visible side by side, passes. SSIM_LIMIT = 0.80 passes re-encoding, VAE-like loss and a 2 px drift,
and flags a 4 px jump or a morph of about 6 px and more. They are constants here, to be re-tuned on
real clips. DUPLICATE_* (the assembler's "same frame" test for explicit clips) are stricter: the
re-encoded same picture passes, a frame of motion over 1 px does not.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from producer.errors import CliError
from producer.files import colour, media, video
from producer.files.clips import ClipInfo, scan_clip
from producer.files.layout import clip_path, keyframe_path  # noqa: F401 - the layout's one home; re-exported for callers
from producer.production.scenes import SceneBreakdown, load_scene_breakdown, shared_keyframe

ANALYSIS_SIDE = 256  # seams are judged at the scale a viewer sees a jump, not VAE texture
CAST_LIMIT = 2.5
SSIM_LIMIT = 0.80
DUPLICATE_CAST = 1.0
DUPLICATE_SSIM = 0.95
SSIM_MIN_SIDE = 11  # colour.ssim's Gaussian window: smaller pictures have no SSIM


@dataclass(frozen=True)
class Comparison:
    cast: float
    delta_e: float
    ssim: float

    def to_dict(self) -> dict:
        # null, not NaN: NaN is not JSON, and a strict reader of --json (jq, JSON.parse) refuses the report
        return {k: None if math.isnan(v) else round(v, 3) for k, v in asdict(self).items()}


def _analysis(image) -> np.ndarray:
    a = video.frame_to_uint8(image)
    h, w = a.shape[:2]
    scale = ANALYSIS_SIDE / max(h, w)
    if scale >= 1:
        return a
    return np.asarray(Image.fromarray(a).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                Image.Resampling.BILINEAR))


def compare(a, b) -> Comparison:
    """a and b (frames or images; b is resized to a's shape) at ANALYSIS_SIDE px."""
    a8 = _analysis(a)
    b8 = np.asarray(Image.fromarray(video.frame_to_uint8(b)).resize(a8.shape[1::-1], Image.Resampling.BILINEAR))
    return Comparison(colour.color_difference(a8, b8, "mean"), colour.color_difference(a8, b8, "pixel"),
                      colour.ssim(a8, b8) if min(a8.shape[:2]) >= SSIM_MIN_SIDE else math.nan)


def is_duplicate(c: Comparison) -> bool:
    """Two frames are the same picture: what a re-encoded shared keyframe looks like."""
    return c.cast < DUPLICATE_CAST and c.ssim > DUPLICATE_SSIM


@dataclass
class SeamInput:
    before: str  # "scene 1"
    after: str
    before_clip: str | None
    after_clip: str | None
    transition: str
    last: np.ndarray | None  # the before clip's last frame (None: clip missing)
    first: np.ndarray | None
    end_keyframe: tuple[str, Path] | None = None  # (id, png) the before clip should end on
    start_keyframe: tuple[str, Path] | None = None  # (id, png) the after clip should start on
    continuity_expected: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass
class SeamReport:
    before: str
    after: str
    before_clip: str | None
    after_clip: str | None
    transition: str
    keyframe: str | None  # the shared keyframe id, if any
    continuity_expected: bool
    clip_to_clip: Comparison | None = None
    end_vs_keyframe: Comparison | None = None
    start_vs_keyframe: Comparison | None = None
    status: str = "ok"  # ok | flagged | skipped
    flags: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("clip_to_clip", "end_vs_keyframe", "start_vs_keyframe"):
            value = getattr(self, key)
            d[key] = value.to_dict() if value else None
        return d


def review_boundary(s: SeamInput) -> SeamReport:
    shared = s.end_keyframe[0] if s.end_keyframe and s.start_keyframe and s.end_keyframe == s.start_keyframe else None
    r = SeamReport(s.before, s.after, s.before_clip, s.after_clip, s.transition, shared, s.continuity_expected,
                   notes=list(s.notes))
    if s.last is None or s.first is None:
        r.status = "skipped"
        return r
    r.clip_to_clip = compare(s.last, s.first)
    end_kf, start_kf = _load(s.end_keyframe, r), _load(s.start_keyframe, r)
    if end_kf is not None:
        r.end_vs_keyframe = compare(s.last, end_kf)
        _judge_end(r, s)
    if start_kf is not None:
        r.start_vs_keyframe = compare(s.first, start_kf)
        _judge_start(r, s)
    if s.continuity_expected and not r.flags:  # a keyframe comparison already says which side jumped
        _judge_clips(r, s)
    if any(c is not None and math.isnan(c.ssim) for c in (r.clip_to_clip, r.end_vs_keyframe, r.start_vs_keyframe)):
        r.notes.append(f"the pictures are under {SSIM_MIN_SIDE} px a side: ssim is not measured (only colour is judged)")
    r.advice = list(dict.fromkeys(r.advice))
    r.status = "flagged" if r.flags else "ok"
    return r


def _load(keyframe: tuple[str, Path] | None, r: SeamReport) -> np.ndarray | None:
    if keyframe is None:
        return None
    kf_id, path = keyframe
    if not path.is_file():
        r.notes.append(f"{kf_id}: {path} not found; not compared")
        return None
    try:
        return np.asarray(media.load_image(path))
    except CliError as err:
        r.notes.append(f"{kf_id}: {err.message}; not compared")
        return None


def _judge_end(r: SeamReport, s: SeamInput) -> None:
    c, kf = r.end_vs_keyframe, s.end_keyframe[0]
    if c.cast > CAST_LIMIT:
        r.flags.append(f"{s.before}'s last frame has drifted in colour from {kf} (cast {c.cast:.1f} > {CAST_LIMIT})")
        r.advice.append(f"colour-match {s.before_clip} to its keyframes (wan_video.py colour matching, "
                        f"ramped to {kf} at the end), or regenerate {s.before} with another seed")
    if c.ssim < SSIM_LIMIT:
        r.flags.append(f"{s.before}'s last frame does not land on {kf} (ssim {c.ssim:.2f} < {SSIM_LIMIT})")
        r.advice.append(f"first-last-frame clips often morph in their last frames: look at the end of "
                        f"{s.before_clip} (its contact sheet) and cut the frames that morph with assemble_video.py "
                        f"--trim-end {_trim(s.before)}, or regenerate {s.before} with another seed")


def _trim(clip: str) -> str:
    """--trim-end's value as it pastes into a shell: 4 frames as the example (the contact sheet says how many)."""
    return f"{shlex.quote(clip + ':4')} (4: the frames that morph)"


def _judge_start(r: SeamReport, s: SeamInput) -> None:
    c, kf = r.start_vs_keyframe, s.start_keyframe[0]
    if c.cast > CAST_LIMIT:
        r.flags.append(f"{s.after}'s first frame differs in colour from {kf} (cast {c.cast:.1f} > {CAST_LIMIT})")
        r.advice.append(f"colour-match {s.after_clip} to its keyframes (wan_video.py colour matching)")
    if c.ssim < SSIM_LIMIT:
        r.flags.append(f"{s.after}'s first frame is not {kf} (ssim {c.ssim:.2f} < {SSIM_LIMIT})")
        r.advice.append(f"regenerate {s.after} with another seed (image-to-video clips can start off "
                        f"their input image)")


def _judge_clips(r: SeamReport, s: SeamInput) -> None:
    c = r.clip_to_clip
    if c.cast > CAST_LIMIT:
        r.flags.append(f"colour jump from {s.before} to {s.after} (cast {c.cast:.1f} > {CAST_LIMIT})")
        r.advice.append(f"colour-match {s.before_clip} and {s.after_clip} to the keyframe they share "
                        f"(wan_video.py colour matching), or regenerate the one that drifted with another seed")
    if c.ssim < SSIM_LIMIT:
        r.flags.append(f"picture jump from {s.before} to {s.after} (ssim {c.ssim:.2f} < {SSIM_LIMIT})")
        r.advice.append(f"if {s.before_clip} morphs at its end, cut those frames (assemble_video.py --trim-end "
                        f"{_trim(s.before)}), or regenerate with another seed; if the scenes are not meant to flow, "
                        f"make the transition a cut or fade")


# ================================================================ a production folder


def production_inputs(root: Path, plan: SceneBreakdown, infos: dict[int, ClipInfo | None],
                      transitions: list[str] | None = None) -> list[SeamInput]:
    """One SeamInput per pair of consecutive scenes (document order). infos: scene number -> scanned
    clip (None when missing); transitions: one kind per boundary to use instead of the plan's."""
    inputs = []
    scenes = sorted(plan.scenes, key=lambda scene: scene.number)  # scene-01, scene-02... is the film's order
    for i, (a, b) in enumerate(zip(scenes, scenes[1:])):
        kind = transitions[i] if transitions else (a.transition.kind if a.transition else "cut")
        shared = shared_keyframe(a, b)
        ia, ib = infos.get(a.number), infos.get(b.number)
        s = SeamInput(f"scene {a.number}", f"scene {b.number}", _rel(root, clip_path(root, a.number)),
                      _rel(root, clip_path(root, b.number)), kind, ia.last if ia else None, ib.first if ib else None,
                      continuity_expected=bool(shared) or kind == "continuous")
        if a.end_keyframe:
            s.end_keyframe = (a.end_keyframe.id, keyframe_path(root, a.end_keyframe.id))
        if b.start_keyframe:
            s.start_keyframe = (b.start_keyframe.id, keyframe_path(root, b.start_keyframe.id))
        if kind == "continuous" and not shared:
            s.notes.append(f"the plan joins scene {a.number} and {b.number} with 'continuous' but they do not "
                           "share a keyframe")
        for label, info in ((s.before_clip, ia), (s.after_clip, ib)):
            if info is None:
                s.notes.append(f"{label} is missing or unreadable; not reviewed")
        inputs.append(s)
    return inputs


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def review_seams(production_dir: str | Path) -> list[SeamReport]:
    """Every seam of a production folder, for the project tool's `status`. Missing or unreadable clips
    and keyframes make a seam 'skipped' or uncompared (with a note), never an exception; only a missing
    scene-breakdown.md raises CliError."""
    root = Path(production_dir)
    plan = load_scene_breakdown(root / "scene-breakdown.md")
    infos: dict[int, ClipInfo | None] = {}
    for scene in plan.scenes:
        try:
            infos[scene.number] = scan_clip(clip_path(root, scene.number))
        except CliError:
            infos[scene.number] = None
    return [review_boundary(s) for s in production_inputs(root, plan, infos)]
