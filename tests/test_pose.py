"""Pose inputs: skeleton detection by content, keypoints JSON drawing, the OpenPose detector's loading."""

import json
import pickle

import numpy as np
import pytest
import torch
from conftest import use_hf_home
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.engines.qwen import pose
from producer.facts import registry
from producer.testing import standins

# A standing person, COCO-18 order, in pixels of a 64x64 canvas.
STANDING = [(32, 10), (32, 20), (24, 20), (20, 30), (18, 40), (40, 20), (44, 30), (46, 40), (28, 40), (28, 50),
            (28, 60), (36, 40), (36, 50), (36, 60), (30, 8), (34, 8), (28, 9), (36, 9)]


def keypoints(points, confidence=1.0):
    return [v for x, y in points for v in (x, y, confidence)]


def write_json(tmp_path, data, name="pose.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def photo(size=(96, 128), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x * 2, y * 2, 128 + 0 * x], axis=-1) + rng.normal(0, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base, 0, 255).astype("uint8"))


def test_keypoints_json_is_drawn_as_a_skeleton(tmp_path):
    path = write_json(tmp_path, {"canvas_width": 64, "canvas_height": 64,
                                 "people": [{"pose_keypoints_2d": keypoints(STANDING)}]})
    got = pose.load_pose(path, (256, 256))
    assert got.kind == "keypoints" and got.people == 1 and got.image.size == (64, 64)
    assert pose.is_skeleton(got.image)
    pixels = np.asarray(got.image)
    assert pixels[10, 32].max() > 200  # the nose is drawn where the file puts it (x 32, y 10)
    assert pixels[2, 2].max() == 0


def test_body25_normalised_and_editor_list_forms_draw_the_same_body(tmp_path):
    coco = write_json(tmp_path, {"canvas_width": 64, "canvas_height": 64,
                                 "people": [{"pose_keypoints_2d": keypoints(STANDING)}]}, "coco.json")
    body25 = list(STANDING[:8]) + [(32, 40)] + list(STANDING[8:]) + [(0, 0)] * 6  # MidHip and feet added
    b25 = keypoints(body25)
    for i in range(19, 25):
        b25[3 * i + 2] = 0.0  # feet not found
    other = write_json(tmp_path, [{"people": [{"pose_keypoints_2d": [v / 64 if i % 3 < 2 else v
                                                                      for i, v in enumerate(b25)]}]}], "b25.json")
    a = np.asarray(pose.load_pose(coco, (64, 64)).image)
    b = np.asarray(pose.load_pose(other, (64, 64)).image)  # normalised: drawn at the given canvas size
    assert a.shape == b.shape and np.array_equal(a, b)


def test_hands_and_face_are_drawn(tmp_path):
    hand = [(10 + i, 50 + (i % 4)) for i in range(21)]
    face = [(30 + i % 5, 5 + i % 3) for i in range(70)]
    person = {"pose_keypoints_2d": keypoints(STANDING), "hand_left_keypoints_2d": keypoints(hand),
              "face_keypoints_2d": keypoints(face)}
    with_parts = pose.load_pose(write_json(tmp_path, {"canvas_width": 64, "canvas_height": 64, "people": [person]}),
                                (64, 64)).image
    body_only = pose.load_pose(write_json(tmp_path, {"canvas_width": 64, "canvas_height": 64, "people": [
        {"pose_keypoints_2d": keypoints(STANDING)}]}, "b.json"), (64, 64)).image
    assert not np.array_equal(np.asarray(with_parts), np.asarray(body_only))


def test_hand_colours_match_controlnet_aux():
    canvas = np.zeros((64, 64, 3), np.uint8)
    from controlnet_aux.open_pose.body import Keypoint

    points = [Keypoint(0.1, 0.5), Keypoint(0.6, 0.5)] + [None] * 19  # the wrist and the thumb's first joint
    pose.draw_hand(canvas, points)
    # controlnet_aux colours edge i with hsv_to_rgb(i / 20, 1, 1): edge 0 (wrist -> thumb) is pure red;
    # joints are blue dots
    assert tuple(canvas[32, 22]) == (255, 0, 0)
    assert tuple(canvas[32, 6]) == (0, 0, 255)


@pytest.mark.parametrize("data, message", [
    ({"people": []}, "no \"people\""),
    ({"people": [{"face_keypoints_2d": []}]}, "no pose_keypoints_2d"),
    ({"people": [{"pose_keypoints_2d": [1, 2, 3]}]}, "has 3 numbers"),
    ({"people": [{"pose_keypoints_2d": ["a"] * 54}]}, "flat list of numbers"),
    ({"people": [{"pose_keypoints_2d": keypoints(STANDING)}]}, "no canvas_width"),
    ({"people": [{"pose_keypoints_2d": keypoints(STANDING, 0.0)}]}, "confidence 0"),
    ({"canvas_width": -5, "people": [{"pose_keypoints_2d": keypoints(STANDING)}]}, "canvas_width"),
    ([{"people": []}, {"people": []}], "2 frames"),
    ([1, 2], "2 frames"),
    ("just text", "not OpenPose keypoints"),
])
def test_bad_keypoints_json_names_the_problem(tmp_path, data, message):
    with pytest.raises(CliError) as err:
        pose.load_pose(write_json(tmp_path, data), (64, 64))
    assert message in err.value.message and err.value.code == ExitCode.USAGE and err.value.fix


def test_a_file_that_is_neither_image_nor_json_is_refused(tmp_path):
    junk = tmp_path / "pose.bin"
    junk.write_bytes(b"\x00\x01binary junk" * 10)
    with pytest.raises(CliError, match="neither an image nor OpenPose keypoints JSON"):
        pose.load_pose(junk, (64, 64))
    broken = tmp_path / "broken.json"
    broken.write_text('{"people": [')
    with pytest.raises(CliError, match="neither an image nor valid JSON"):
        pose.load_pose(broken, (64, 64))


def test_skeletons_and_photos_are_told_apart(tmp_path):
    skeleton = pose.draw_people([{"body": [(x / 64, y / 64) for x, y in STANDING], "face": None,
                                  "left_hand": None, "right_hand": None}], 64, 64)
    assert pose.is_skeleton(skeleton)
    assert not pose.is_skeleton(photo())
    assert not pose.is_skeleton(Image.new("RGB", (64, 64)))  # all black: nothing drawn
    dark_photo = Image.fromarray((np.asarray(photo()) * 0.15).astype("uint8"))
    assert not pose.is_skeleton(dark_photo)  # dark but grey, not coloured limbs
    skeleton.save(tmp_path / "s.png")
    photo().save(tmp_path / "p.jpg")
    assert pose.load_pose(tmp_path / "s.png", (64, 64)).kind == "skeleton"
    assert pose.load_pose(tmp_path / "p.jpg", (64, 64)).kind == "photo"


# ---------------------------------------------------------------- the detector


@pytest.fixture(scope="module")
def annotators_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("annotators-home")
    standins.install_standins(home, ["openpose-annotators"])
    return home


def test_detector_needs_the_annotators_and_says_how_to_get_them(tmp_path):
    photo().save(tmp_path / "p.png")
    with pytest.raises(CliError) as err:
        pose.detect_skeleton(pose.load_pose(tmp_path / "p.png", (64, 64)))
    assert err.value.code == ExitCode.MISSING_MODEL and "openpose-annotators" in err.value.fix


def test_detector_loads_tensors_only_and_draws_what_it_finds(annotators_home, monkeypatch, tmp_path):
    use_hf_home(monkeypatch, annotators_home)
    # Random weights: what matters is that the networks load and run. Hands cost ~10 s on two CPU cores.
    monkeypatch.setattr(pose, "DETECT_RESOLUTION", 128)
    monkeypatch.setattr(pose, "DETECT_HANDS", False)
    photo((160, 224)).save(tmp_path / "p.png")
    source = pose.load_pose(tmp_path / "p.png", (64, 64))
    assert source.kind == "photo"
    found = pose.detect_skeleton(source)  # the seeded random networks "find" people in this picture
    assert found.kind == "photo" and found.people >= 1 and found.image.size == (160, 224)
    assert pose.is_skeleton(found.image) and found.notes


def test_a_pickle_that_needs_code_is_refused(annotators_home, monkeypatch, tmp_path):
    import shutil

    hub = tmp_path / "home"
    shutil.copytree(annotators_home, hub)
    use_hf_home(monkeypatch, hub)
    entry = registry.get("openpose-annotators")
    from producer.modelfiles import models

    body = models.locate_file(entry, "body")
    body.unlink()  # a cached blob may be shared: replace the file, not its content
    with open(body, "wb") as fh:
        pickle.dump({"weights": torch.zeros(1), "payload": _Payload()}, fh)  # not a plain tensor dict
    pose._DETECTORS.clear()
    photo().save(tmp_path / "p.png")
    with pytest.raises(CliError, match="not a plain tensor file"):
        pose.detect_skeleton(pose.load_pose(tmp_path / "p.png", (64, 64)))


class _Payload:
    """Unpickling this needs the class: torch.load(weights_only=True) refuses it."""
