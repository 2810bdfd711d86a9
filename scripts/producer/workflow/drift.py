"""Drift across the film, per scene: colour against the keyframes, identity against the assets, motion per
frame; a drift chart per scene (a PNG for the agent to look at and show) and the flags `status` reports.

Per keyframe that shows a character or objects (scene-breakdown.md's Character and Objects columns): its
identity similarity to each of those assets (producer.workflow.identity). Per clip that exists: every frame's colour
cast against its keyframes (review.casts), its motion (judge.motion), the broken-output checks of
producer.engines.judge (also for clips made before them or by hand), and the identity of sampled frames against the
start keyframe's assets. Each flag names its item, reason, frames, figure, threshold, what to do, and the
chart. The charts go to .production/review/scene-NN.drift.png (tool state, never an approved file).

Thresholds: producer.engines.judge.Limits (frames), producer.workflow.identity (identity), COLOUR_DRIFT; each can be set in
.production/settings.json under "judge", e.g. {"judge": {"identity_min": 0.3, "colour_drift": 6}}.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from producer.engines import judge
from producer.errors import CliError
from producer.files import layout, media, paths, review, video
from producer.production.project import JUDGE, RETAKE_KEYS, judge_value_problem
from producer.workflow import identity

log = logging.getLogger("producer")

# A first-last-frame clip whose average colour is still this far (CIEDE2000) from the keyframes' after colour
# matching: twice review.DRIFT_LIMIT, the drift at which auto matching steps in (its clean synthetic clip 0.5,
# the injected drift 5.9). I2V clips are charted but not flagged: they may change colour as they move away.
COLOUR_DRIFT = 2 * review.DRIFT_LIMIT
CHART_SIZE = (720, 150)  # one panel: width x height in pixels
REVIEW_DIR = layout.STATE_FOLDERS[0]  # .production/review

FIXES = {
    "identity_keyframe": "the keyframe does not look like {asset}: show it beside the asset; retake it ({retake}) "
    "or make the character's description more specific",
    "identity_clip": "frames {frames} lost {asset}: retake the clip ({retake}); if it persists, add an end keyframe "
    "that holds the character (first-last-frame) or shorten the scene",
    "colour_drift": "the clip's colour drifts from its keyframes: retake it ({retake}), or remake it with "
    "--color-match on",
}


@dataclass(frozen=True)
class FilmLimits:
    frames: judge.Limits = field(default_factory=judge.Limits)
    identity: identity.IdentityLimits = field(default_factory=identity.IdentityLimits)
    colour_drift: float = COLOUR_DRIFT


def limits_from(settings: dict) -> tuple[FilmLimits, list[str]]:
    """The thresholds with the production's overrides; problems name the unknown keys and bad values."""
    given = settings.get(JUDGE) or {}
    limits, problems = FilmLimits(), []
    frame_names = judge.Limits.names()
    identity_names = [f.name for f in fields(identity.IdentityLimits)]
    for key, value in given.items():
        if key.startswith("_") or key in RETAKE_KEYS:  # the retake budget: producer.workflow.retakes
            continue
        bad = judge_value_problem(key, value)
        if bad:
            problems.append(bad)
        elif key in frame_names:
            limits = replace(limits, frames=replace(limits.frames, **{key: float(value)}))
        elif key in identity_names:
            limits = replace(limits, identity=replace(limits.identity, **{key: float(value)}))
        elif key == "colour_drift":
            limits = replace(limits, colour_drift=float(value))
        else:
            problems.append(
                f"{JUDGE}.{key} is not a threshold; known: "
                f"{', '.join([*frame_names, *identity_names, 'colour_drift'])}"
            )
    return limits, problems


# ---------------------------------------------------------------- the review


def review_film(root: Path, prod, limits: FilmLimits, retake_command=lambda item: item) -> dict:
    """Figures, charts and flags for every keyframe and clip that exists. `retake_command(item)`: the command
    a fix names. The embedder is loaded only when a picture shows an asset, and is skipped (said) if absent."""
    root = Path(root)
    plan = prod.plan
    out: dict = {"embedder": identity.EMBEDDER, "notes": [], "keyframes": [], "scenes": [], "flags": []}
    if plan is None:
        return out
    embedder = _LazyEmbedder()
    charts, why = _chart_folder(root)
    if why:
        out["notes"].append(f"drift charts not drawn: {why}")
    for row in plan.keyframes:
        path = layout.keyframe_path(root, row.id)
        subjects = _subjects(row, prod.assets)
        if not path.is_file() or not subjects or not embedder.get():
            continue
        item = f"keyframe:{row.id}"
        try:
            picture = media.load_image(path)
            for asset_id, asset_path in subjects:
                sim = embedder.get().similarity([picture], media.load_image(asset_path))[0]
                out["keyframes"].append({"item": item, "asset": asset_id, "identity": sim})
                for flag in identity.keyframe_flags(sim, limits.identity):
                    fix = FIXES["identity_keyframe"].format(asset=asset_id, retake=retake_command(item))
                    out["flags"].append(
                        {"item": item, **flag, "frames": [], "asset": asset_id, "fix": fix, "chart": None}
                    )
        except CliError as err:  # an unreadable picture: status reports it elsewhere; judged once readable
            out["notes"].append(f"{item} not judged: {err.message}")
    for scene in plan.scenes:
        clip = layout.clip_path(root, scene.number)
        if not clip.is_file():
            continue
        try:
            out["scenes"].append(_review_clip(root, prod, scene, clip, limits, embedder, retake_command, out["flags"],
                                              charts))
        except CliError as err:
            out["notes"].append(f"clip:scene-{scene.number:02d} not judged: {err.message}")
    if embedder.missing:
        out["notes"].append(
            f"identity not measured: {identity.EMBEDDER} is not installed "
            f"(python scripts/setup_diffusers.py --download --only {identity.EMBEDDER})"
        )
    return out


class _LazyEmbedder:
    def __init__(self):
        self._embedder, self._tried, self.missing = None, False, False

    def get(self):
        if not self._tried:
            self._tried = True
            self._embedder = identity.Embedder.load()
            self.missing = self._embedder is None
        return self._embedder


def _subjects(row, assets) -> list[tuple[str, Path]]:
    """The character and object assets a keyframe shows, as (asset id, picture) where the picture exists."""
    if row is None or assets is None:
        return []
    wanted = [("characters", row.character)] + [("objects", o.strip()) for o in (row.objects or "").split(",")]
    found = [assets.get(kind, name) for kind, name in wanted if name and name.strip().lower() not in ("", "none", "-")]
    return [(a.id, a.path) for a in found if a is not None and a.path.is_file() and not a.hand_written]


def _chart_folder(root: Path) -> tuple[Path | None, str | None]:
    """Where the charts go, or why none is drawn. `status` writes nothing else, so a review folder that is a
    file, or that leads out of the production (a link of it or of .production/), is said, never written
    through or crashed on."""
    folder = layout.state_dir(root) / REVIEW_DIR
    try:
        for own in (layout.state_dir(root), folder):
            paths.own_folder(root, own)
    except CliError as err:
        return None, f"{err.message} ({err.fix})"
    for own in (layout.state_dir(root), folder):
        if own.exists() and not own.is_dir():
            return None, f"{own} is a file, not a folder (move it away: the charts are written into that folder)"
    return folder, None


def _review_clip(root, prod, scene, clip, limits, embedder, retake_command, flags, charts) -> dict:
    """`charts`: the folder of the drift charts, or None to draw none."""
    item = f"clip:scene-{scene.number:02d}"
    frames, _ = video.read_video(clip)
    start_id = scene.start_keyframe.id if scene.start_keyframe else None
    end_id = scene.end_keyframe.id if scene.end_keyframe else None
    start = _picture(layout.keyframe_path(root, start_id)) if start_id else None
    end = _picture(layout.keyframe_path(root, end_id)) if end_id else None
    casts = review.casts(frames, start, end) if start is not None else []
    steps = [float(s) for s in judge.motion(frames)]
    chart = charts / f"scene-{scene.number:02d}.drift.png" if charts else None
    found: list[dict] = []
    for flag in judge.check_frames(frames, limits.frames):
        found.append({"item": item, **flag.to_dict(), "fix": f"{flag.fix} ({retake_command(item)})"})
    if end is not None and casts and max(casts) > limits.colour_drift:
        worst = int(np.argmax(casts))
        found.append(
            {
                "item": item,
                "reason": "colour_drift",
                "frames": [worst],
                "figure": round(max(casts), 3),
                "threshold": limits.colour_drift,
                "fix": FIXES["colour_drift"].format(retake=retake_command(item)),
            }
        )
    sampled, identities = identity.sample_frames(len(frames)), {}
    row = prod.plan.keyframe(start_id) if start_id else None
    subjects = _subjects(row, prod.assets)
    if subjects and embedder.get():
        for asset_id, asset_path in subjects:
            asset = media.load_image(asset_path)
            sims = embedder.get().similarity([frames[i] for i in sampled], asset)
            baseline = embedder.get().similarity([start], asset)[0] if start is not None else None
            identities[asset_id] = {
                "frames": sampled,
                "similarity": sims,
                "keyframe": baseline,
                "threshold": identity.clip_threshold(baseline, limits.identity),
            }
            for flag in identity.clip_flags(sampled, sims, baseline, limits.identity):
                fix = FIXES["identity_clip"].format(
                    frames=", ".join(map(str, flag["frames"])), asset=asset_id, retake=retake_command(item)
                )
                found.append({"item": item, **flag, "asset": asset_id, "fix": fix})
    if chart:
        draw_chart(
            chart, f"scene {scene.number:02d} ({len(frames)} frames)", casts, identities, steps, limits, end is not None
        )
    for flag in found:
        flag["chart"] = str(chart) if chart else None
    flags.extend(found)
    return {
        "item": item,
        "chart": str(chart) if chart else None,
        "frames": len(frames),
        "colour": [round(c, 3) for c in casts],
        "motion": [round(s, 3) for s in steps],
        "identity": identities,
        "flags": len(found),
    }


def _picture(path: Path):
    return media.load_image(path) if path.is_file() else None


# ---------------------------------------------------------------- the chart


def draw_chart(
    path: Path, title: str, casts: list[float], identities: dict, steps: list[float], limits: FilmLimits, flf: bool
) -> None:
    """Three panels over the frame numbers: colour cast (threshold drawn for FLF clips), identity per asset
    (its threshold), motion per frame (the flicker level: flicker_ratio x the median, at least flicker_floor)."""
    width, height = CHART_SIZE
    image = Image.new("RGB", (width, 3 * height + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill="black")
    count = max(len(casts), len(steps) + 1, 2)
    median = float(np.median(steps)) if steps else 0.0
    flicker = max(limits.frames.flicker_ratio * median, limits.frames.flicker_floor)
    panels = [
        (
            "colour cast vs keyframes (dE)",
            {"colour": (list(range(len(casts))), casts)},
            limits.colour_drift if flf else None,
        ),
        (
            "identity vs asset (cosine)",
            {a: (v["frames"], v["similarity"]) for a, v in identities.items()},
            min((v["threshold"] for v in identities.values()), default=None),
        ),
        ("motion per frame (luma levels)", {"motion": (list(range(1, len(steps) + 1)), steps)}, flicker),
    ]
    colours = ["#1f5fbf", "#2a9d3a", "#a040a0", "#d08000"]
    for n, (label, series, threshold) in enumerate(panels):
        top = 24 + n * height
        _panel(draw, (40, top + 16, width - 10, top + height - 14), label, series, threshold, count, colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    media.save_png(image, path, {"script": "production.py", "chart": title})


def _panel(draw, box, label, series, threshold, count, colours) -> None:
    left, top, right, bottom = box
    values = [v for _, ys in series.values() for v in ys] + ([threshold] if threshold is not None else [])
    low, high = (min(values + [0.0]), max(values + [1e-6])) if values else (0.0, 1.0)
    if high - low < 1e-6:
        high = low + 1.0
    draw.rectangle(box, outline="#888888")
    draw.text((left, top - 14), label, fill="black")
    draw.text((4, top), f"{high:.2g}", fill="#555555")
    draw.text((4, bottom - 10), f"{low:.2g}", fill="#555555")
    draw.text((left + 2, bottom + 1), "frame 0", fill="#555555")
    draw.text((right - 40, bottom + 1), f"frame {count - 1}", fill="#555555")

    def xy(x, y):
        return (left + (right - left) * x / max(1, count - 1), bottom - (bottom - top) * (y - low) / (high - low))

    if threshold is not None:
        y = xy(0, threshold)[1]
        for x in range(left, right, 8):
            draw.line((x, y, min(x + 4, right), y), fill="#d02020")
    for k, (name, (xs, ys)) in enumerate(series.items()):
        points = [xy(x, y) for x, y in zip(xs, ys)]
        colour = colours[k % len(colours)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        if len(series) > 1:
            draw.text((right - 160, top + 2 + 12 * k), name, fill=colour)
