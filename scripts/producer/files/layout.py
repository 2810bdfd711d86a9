"""Where every file of a production lives: the one place that knows the folder layout.

    DIR/
    ├── philosophy.md            Phase 1: the production philosophy (every template section filled)
    ├── style.json               Phase 1: the style, read by the generation scripts (--style-ref)
    ├── scene-breakdown.md       Phase 2: the unique keyframes table and one section per scene
    ├── assets.json              Phase 2.5: characters, backgrounds, poses, styles, objects
    ├── assets/
    │   ├── characters/NAME.png  (each path is the one assets.json gives; these folders are the default)
    │   ├── backgrounds/NAME.png
    │   ├── poses/NAME.png       (or NAME.json: OpenPose keypoints written by hand, never generated)
    │   ├── styles/NAME.png
    │   └── objects/NAME.png
    ├── keyframes/
    │   ├── KF-A.png             Phase 3: every unique keyframe, once (adjacent scenes share them)
    │   └── layers/KF-B/         the layers of a character keyframe:
    │       ├── background.png       the empty set (chained from the previous keyframe's background)
    │       └── character.png        the character in the keyframe's pose on a plain ground
    ├── scene-01/video.mp4       Phase 4: one clip per scene, with the review files wan_video.py writes
    ├── final/film.mp4           Phase 5: the assembled film (+ film.contact.png, film.mp4.provenance.json)
    └── .production/             the project tool's state: approvals.json, takes.json, settings.json and
                                 the batch files `next` writes (next-assets.json ...)

A landscape keyframe has no layers: its picture is its background, and the next keyframe's background
is chained from it. Scenes are numbered from 1; `scene-1/video.mp4` is accepted where it already exists.
"""

from __future__ import annotations

from pathlib import Path

PHILOSOPHY = "philosophy.md"
STYLE = "style.json"
SCENE_BREAKDOWN = "scene-breakdown.md"
ASSETS = "assets.json"
ASSET_KINDS = ("characters", "backgrounds", "poses", "styles", "objects")
KEYFRAMES = "keyframes"
FILM = "final/film.mp4"
STATE = ".production"
LAYERS = ("background", "character")
STATE_FOLDERS = ("review", "variants")  # in .production/: the drift charts of `status`, the kept retake variants


def keyframe_path(root: Path, kf_id: str) -> Path:
    return Path(root) / KEYFRAMES / f"{kf_id}.png"


def layer_path(root: Path, kf_id: str, layer: str) -> Path:
    """keyframes/layers/KF-B/background.png or character.png (character keyframes only)."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, not {layer!r}")
    return Path(root) / KEYFRAMES / "layers" / kf_id / f"{layer}.png"


def scene_dir(root: Path, number: int) -> Path:
    return Path(root) / f"scene-{number:02d}"


def clip_path(root: Path, number: int) -> Path:
    """scene-01/video.mp4 (SKILL.md's layout); scene-1/video.mp4 is accepted when that is what exists."""
    path = scene_dir(root, number) / "video.mp4"
    loose = Path(root) / f"scene-{number}" / "video.mp4"
    return loose if not path.exists() and loose.exists() else path


def default_asset_path(kind: str, name: str) -> str:
    """Where a new asset's picture goes, relative to the production folder."""
    return f"assets/{kind}/{name}.png"


def film_path(root: Path) -> Path:
    return Path(root) / FILM


def state_dir(root: Path) -> Path:
    return Path(root) / STATE


def state_file(root: Path, name: str) -> Path:
    return state_dir(root) / name


def own_folders(root: Path) -> list[Path]:
    """The folders above that exist: the ones the tools write into (and read approvals from)."""
    root = Path(root)
    fixed = [STATE, *(f"{STATE}/{f}" for f in STATE_FOLDERS), KEYFRAMES, f"{KEYFRAMES}/layers", "final", "assets",
             *(f"assets/{k}" for k in ASSET_KINDS)]
    found = [root / name for name in fixed]
    found += sorted(root.glob("scene-*")) + sorted((root / KEYFRAMES / "layers").glob("*"))
    return [p for p in found if p.is_symlink() or p.is_dir()]


def relative(root: Path, path: Path) -> str:
    """A path as shown to the user: relative to the production folder when inside it."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)
