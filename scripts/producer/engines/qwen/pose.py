"""Pose inputs for `qwen_image.py --pose`: what the file is, and the picture the model is given.

Three kinds of pose file, told apart by content (not by name):
- an OpenPose skeleton image (coloured limbs on black, as ControlNet annotators draw them): used as is;
- OpenPose keypoints JSON (`{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}`, the format OpenPose,
  ControlNet's pose editors and controlnet_aux write): drawn into a skeleton with controlnet_aux's
  drawing code, no weights needed;
- any other picture (a photo, a figure, a render): a person in the pose. It is turned into a skeleton
  with controlnet_aux's OpenPose detector when a path needs one; the detector's weights are the
  registry's `openpose-annotators` files (pickles: read here with `torch.load(weights_only=True)`,
  which refuses anything but tensors, instead of controlnet_aux's own loaders).

Skeleton or picture: a skeleton is mostly black (>= SKELETON_DARK_SHARE of its pixels) and what is not
black is strongly coloured (mean saturation >= SKELETON_MIN_SATURATION); photos and figures are neither.

Hands are drawn with our own copy of controlnet_aux's `draw_handpose` (same edges, same colours):
its version imports matplotlib for one colour conversion, and matplotlib is not a dependency of this
skill; `colorsys` gives the same colours. The OpenPose code is CMU's, licensed for non-commercial use.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from producer.errors import CliError, missing
from producer.files import media
from producer.files.inputs import regular_file
from producer.values import load_json

log = logging.getLogger("producer")

SKELETON_DARK_SHARE = 0.6  # drawn skeletons are ~90% black; a dark photo still has texture in its shadows
SKELETON_DARK_LEVEL = 24  # max(R, G, B) below this counts as black (JPEG noise stays under ~10)
SKELETON_MIN_SATURATION = 0.45  # limbs are pure hues (saturation 1); face points are white, a minority
DETECT_RESOLUTION = 512  # controlnet_aux's default: the short side the detector sees
# Hands: one more network, run at 4 scales per hand (~1 s a hand on a GPU, ~10 s on two CPU cores).
DETECT_HANDS = True
MAX_JSON_BYTES = 5_000_000
MAX_CANVAS = 16384  # canvas_width/height in pixels
MAX_COORDINATE = 4 * MAX_CANVAS  # a keypoint may lie off the canvas, not at 1e308 (the drawing converts to int)

# OpenPose BODY_25 -> the 18-point COCO order that ControlNet skeletons use (MidHip and the feet dropped).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
              (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
JSON_FIX = ('give OpenPose keypoints JSON: {"people": [{"pose_keypoints_2d": [x, y, confidence, ...]}], '
            '"canvas_width": W, "canvas_height": H}, a skeleton PNG, or a photo of the pose')


@dataclass
class PoseInput:
    kind: str  # "skeleton" | "keypoints" | "photo"
    path: Path
    image: Image.Image  # the skeleton (as given or drawn) or, for a photo, the photo itself
    people: int | None = None  # people drawn (keypoints JSON, detection)
    notes: list[str] = field(default_factory=list)

    @property
    def is_skeleton(self) -> bool:
        return self.kind != "photo"


def load_pose(path: str | Path, canvas_size: tuple[int, int]) -> PoseInput:
    """Read a pose file. `canvas_size` (w, h) draws keypoints JSON that names no canvas of its own."""
    path = regular_file(path, "pose file")  # before _looks_like_json opens it: a FIFO would block there
    if _looks_like_json(path):
        people, image = draw_keypoints_json(path, canvas_size)
        return PoseInput("keypoints", path, image, people, [f"{people} person(s) drawn from keypoints JSON"])
    image = _load_pose_image(path)
    kind = "skeleton" if is_skeleton(image) else "photo"
    return PoseInput(kind, path, image)


def _looks_like_json(path: Path) -> bool:
    if path.suffix.lower() == ".json":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False  # load_image names the problem
    return head[:1] in (b"{", b"[")


def _load_pose_image(path: Path) -> Image.Image:
    try:
        return media.load_image(path)
    except CliError as err:
        if "not an image" in err.message:
            raise CliError(f"pose file {path} is neither an image nor OpenPose keypoints JSON", JSON_FIX) from None
        raise


def is_skeleton(image: Image.Image) -> bool:
    """True for an OpenPose-style skeleton: mostly black, the rest strongly coloured."""
    rgb = np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.NEAREST), dtype=np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    dark = high < SKELETON_DARK_LEVEL
    if dark.mean() < SKELETON_DARK_SHARE or dark.all():
        return False
    saturation = (high - low) / np.maximum(high, 1.0)
    return float(saturation[~dark].mean()) >= SKELETON_MIN_SATURATION


# ---------------------------------------------------------------- keypoints JSON


def draw_keypoints_json(path: Path, canvas_size: tuple[int, int]) -> tuple[int, Image.Image]:
    data = _read_json(path)
    frame = _single_frame(data, path)
    width = _canvas_dim(frame, "canvas_width", path)
    height = _canvas_dim(frame, "canvas_height", path)
    people = frame.get("people")
    if not isinstance(people, list) or not people:
        raise CliError(f"{path}: no \"people\" list with keypoints in it", JSON_FIX)
    parsed = [_person(p, i, path) for i, p in enumerate(people)]
    coords = [v for person in parsed for part in person.values() if part for kp in part if kp for v in kp]
    if not coords:
        raise CliError(f"{path}: every keypoint has confidence 0, so there is no pose to draw", JSON_FIX)
    normalised = max(coords) <= 1.0
    if not normalised and not (width and height):
        raise CliError(f"{path}: keypoints are in pixels but the file names no canvas_width/canvas_height",
                       "add \"canvas_width\" and \"canvas_height\" (the size of the picture the keypoints were "
                       "taken from), or give coordinates between 0 and 1")
    if normalised:
        width, height = width or canvas_size[0], height or canvas_size[1]
    scale = (1.0, 1.0) if normalised else (1.0 / width, 1.0 / height)
    return len(parsed), draw_people(parsed, width, height, scale)


def _read_json(path: Path):
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CliError(f"pose file {path} is over {MAX_JSON_BYTES // 1_000_000} MB; keypoints JSON is a few KB",
                           JSON_FIX)
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CliError(f"pose file {path} {missing(path)}", "check the path") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise CliError(f"pose file {path} cannot be read as text ({type(exc).__name__})", JSON_FIX) from None
    try:
        return load_json(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"pose file {path} is neither an image nor valid JSON ({exc.msg} at line {exc.lineno})",
                       JSON_FIX) from None


def _single_frame(data, path: Path) -> dict:
    if isinstance(data, list):  # pose editors export a list of frames
        if len(data) != 1:
            raise CliError(f"{path} holds {len(data)} frames; a still needs one pose", "keep one frame in the file")
        data = data[0]
    if not isinstance(data, dict):
        raise CliError(f"{path} is JSON but not OpenPose keypoints (the top level is a {type(data).__name__})",
                       JSON_FIX)
    return data


def _canvas_dim(frame: dict, key: str, path: Path) -> int | None:
    value = frame.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= MAX_CANVAS:
        raise CliError(f"{path}: {key} must be a size in pixels, not {value!r}", JSON_FIX)
    return int(value)


def _person(person, index: int, path: Path) -> dict:
    if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
        raise CliError(f"{path}: person {index} has no pose_keypoints_2d", JSON_FIX)
    body = _triplets(person["pose_keypoints_2d"], f"person {index} pose_keypoints_2d", path, (18, 25))
    if len(body) == 25:
        body = [body[i] for i in BODY25_TO_COCO18]
    return {"body": body,
            "face": _optional(person, "face_keypoints_2d", index, path, (70,)),
            "left_hand": _optional(person, "hand_left_keypoints_2d", index, path, (21,)),
            "right_hand": _optional(person, "hand_right_keypoints_2d", index, path, (21,))}


def _optional(person: dict, key: str, index: int, path: Path, counts: tuple[int, ...]):
    values = person.get(key)
    if not values:
        return None
    return _triplets(values, f"person {index} {key}", path, counts)


def _triplets(values, what: str, path: Path, counts: tuple[int, ...]) -> list[tuple[float, float] | None]:
    """[x, y, c, ...] -> points; confidence 0 (OpenPose's "not found") or a negative coordinate -> None."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in values):
        raise CliError(f"{path}: {what} must be a flat list of numbers [x, y, confidence, ...]", JSON_FIX)
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in values):
        bad = next(v for v in values if not (math.isfinite(v) and abs(v) <= MAX_COORDINATE))
        raise CliError(f"{path}: {what} holds {bad!r}; coordinates and confidences are finite numbers within "
                       f"±{MAX_COORDINATE}", JSON_FIX)
    if len(values) not in tuple(3 * c for c in counts):
        expected = " or ".join(f"{3 * c} ({c} points)" for c in counts)
        raise CliError(f"{path}: {what} has {len(values)} numbers, expected {expected}", JSON_FIX)
    points = []
    for i in range(0, len(values), 3):
        x, y, c = values[i:i + 3]
        points.append((float(x), float(y)) if c > 0 and x >= 0 and y >= 0 else None)
    return points


# ---------------------------------------------------------------- drawing


def _openpose():
    """controlnet_aux's OpenPose package. Importing it imports all of controlnet_aux, whose other annotators
    warn about optional packages (mediapipe, timm renames) that OpenPose does not use: those warnings go to
    the debug log instead of the user's terminal."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import controlnet_aux.open_pose as openpose
    for warning in caught:
        log.debug("controlnet_aux import: %s: %s", warning.category.__name__, warning.message)
    return openpose


def draw_people(people: list[dict], width: int, height: int, scale=(1.0, 1.0)) -> Image.Image:
    """Body, face and hands of each person on a black canvas, as ControlNet's OpenPose annotator draws them."""
    openpose = _openpose()
    util, Keypoint = openpose.util, openpose.body.Keypoint

    def keypoints(points):
        if points is None:
            return None
        return [None if p is None else Keypoint(p[0] * scale[0], p[1] * scale[1]) for p in points]

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        canvas = util.draw_bodypose(canvas, keypoints(person["body"]))
        canvas = draw_hand(canvas, keypoints(person["left_hand"]))
        canvas = draw_hand(canvas, keypoints(person["right_hand"]))
        canvas = util.draw_facepose(canvas, keypoints(person["face"]))
    return Image.fromarray(canvas)


def draw_hand(canvas: np.ndarray, keypoints) -> np.ndarray:
    """controlnet_aux's draw_handpose with colorsys in place of matplotlib (identical colours)."""
    import cv2

    if not keypoints:
        return canvas
    h, w = canvas.shape[:2]
    eps = 0.01  # controlnet_aux's util.eps: points at the canvas origin are "not found"

    def pixel(k):
        return (int(k.x * w), int(k.y * h)) if k is not None and k.x > eps and k.y > eps else None

    for i, (a, b) in enumerate(HAND_EDGES):
        p, q = pixel(keypoints[a]), pixel(keypoints[b])
        if p and q:
            color = [c * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)]
            cv2.line(canvas, p, q, color, thickness=2)
    for k in keypoints:
        if pixel(k):
            cv2.circle(canvas, pixel(k), 4, (0, 0, 255), thickness=-1)
    return canvas


# ---------------------------------------------------------------- photo -> skeleton


def detect_skeleton(pose: PoseInput) -> PoseInput:
    """A photo or figure turned into a skeleton with controlnet_aux's OpenPose networks (body, hands, face)."""
    if pose.is_skeleton:
        return pose
    detector = _detector(DETECT_HANDS)
    photo = np.asarray(pose.image.convert("RGB"))
    _openpose()
    from controlnet_aux.util import HWC3, resize_image

    small = resize_image(HWC3(photo), DETECT_RESOLUTION)
    import torch

    with torch.inference_mode():
        found = detector.detect_poses(small, include_hand=DETECT_HANDS, include_face=True)
    if not found:
        raise CliError(f"no person found in the pose picture {pose.path}",
                       "use a picture where one whole person is clearly visible, or give a skeleton PNG / "
                       "OpenPose keypoints JSON instead")
    people = [{"body": _points(p.body.keypoints), "face": _points(p.face), "left_hand": _points(p.left_hand),
               "right_hand": _points(p.right_hand)} for p in found]
    skeleton = draw_people(people, pose.image.width, pose.image.height)
    return PoseInput("photo", pose.path, skeleton, len(people),
                     pose.notes + [f"{len(people)} person(s) detected with OpenPose"])


def _points(keypoints):
    if keypoints is None:
        return None
    return [None if k is None else (float(k.x), float(k.y)) for k in keypoints]


_DETECTORS: dict[tuple, object] = {}


def _detector(hands: bool):
    """controlnet_aux's OpenposeDetector with its networks loaded by us, tensors only (cached per process).
    It runs on the GPU when there is one (controlnet_aux moves inputs to its networks' device)."""
    import torch

    from producer.facts import registry
    from producer.modelfiles import models

    entry = registry.get("openpose-annotators")
    paths = {role: models.locate_file(entry, role) for role in ("body", "hand", "face")}
    key = (tuple(str(p) for p in paths.values()), hands)
    if key not in _DETECTORS:
        _DETECTORS[key] = _build_detector(paths, hands, "cuda" if torch.cuda.is_available() else "cpu")
    return _DETECTORS[key]


def _build_detector(paths: dict[str, Path], hands: bool, device: str):
    _openpose()
    from controlnet_aux.open_pose import OpenposeDetector, util
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face, FaceNet
    from controlnet_aux.open_pose.face import params as face_params
    from controlnet_aux.open_pose.hand import Hand
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    # Body/Hand/Face.__init__ call torch.load without weights_only; we build the same objects ourselves.
    body, face = Body.__new__(Body), Face.__new__(Face)
    body.model = _load_network(bodypose_model(), paths["body"], util.transfer)
    hand = None
    if hands:
        hand = Hand.__new__(Hand)
        hand.model = _load_network(handpose_model(), paths["hand"], util.transfer)
    face.model = _load_network(FaceNet(), paths["face"], None)
    face.inference_size = face_params["inference_img_size"]
    face.sigma = face_params["gaussian_sigma"]
    face.threshold = face_params["heatmap_peak_thresh"]
    for part in (body, hand, face):
        if part is not None:
            part.to(device)
    return OpenposeDetector(body, hand, face)


def _load_network(model, path: Path, rename):
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise CliError(f"{path.name} is not a plain tensor file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                       "download the annotators again: python scripts/setup_diffusers.py --download --only "
                       "openpose-annotators (files that need full unpickling are refused: they could run code)") from None
    try:
        model.load_state_dict(rename(model, state) if rename else state)
    except (KeyError, RuntimeError) as exc:
        raise CliError(f"{path.name} does not fit controlnet_aux's OpenPose network ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200]})", "download the annotators again (lllyasviel/Annotators)") from None
    return model.float().eval()
