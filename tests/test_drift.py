"""Identity and drift across the film (producer.workflow.identity, producer.workflow.drift) on the stand-in embedder and
synthetic pictures and clips: a swapped character and a colour drift are flagged with their reason, frames,
figure, threshold, fix and chart; clean material passes; thresholds come from the production's settings."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from producer.files import layout, video
from producer.production.assets import Asset, AssetPlan
from producer.production.project import Production
from producer.production.scenes import KeyframeRef, KeyframeRow, Scene, SceneBreakdown
from producer.workflow import drift, identity

W, H, FRAMES = 160, 96, 17


def figure(kind: str, bg=(120, 160, 90), x=60, size=(W, H)) -> Image.Image:
    """The fox (a red ellipse) or another character (a blue rectangle) at x over a plain background."""
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    if kind == "fox":
        draw.ellipse((x, 14, x + 40, 84), fill=(200, 40, 40))
    else:
        draw.rectangle((x, 30, x + 50, 70), fill=(40, 60, 200))
    return img


def clip_of(kind_at, darken_to=1.0) -> np.ndarray:
    """FRAMES frames; kind_at(i) names who is in frame i; the light falls to `darken_to` towards the end."""
    frames = []
    for i in range(FRAMES):
        frame = np.asarray(figure(kind_at(i), x=50 + 2 * i), dtype=np.float32)
        frames.append(frame * (1 - (1 - darken_to) * i / (FRAMES - 1)))
    return np.stack(frames).round().astype(np.uint8)


@pytest.fixture
def embedder(standin_hf_home):
    loaded = identity.Embedder.load()
    assert loaded is not None, "the stand-in dinov2-small is installed with the others"
    return loaded


def test_the_stand_in_embedder_tells_the_character_from_another(embedder):
    asset = figure("fox", bg=(255, 255, 255), x=20, size=(96, 128))
    same, other = embedder.similarity([figure("fox"), figure("other")], asset)
    assert same > identity.IDENTITY_MIN > other
    limits = identity.IdentityLimits()
    assert identity.keyframe_flags(same, limits) == [] and identity.keyframe_flags(other, limits)[0]["figure"] == other


def test_clip_frames_are_judged_against_the_start_keyframe():
    limits = identity.IdentityLimits(identity_min=0.25, identity_drop=0.2)
    assert identity.clip_threshold(0.9, limits) == 0.7 and identity.clip_threshold(0.3, limits) == 0.25
    (flag,) = identity.clip_flags([0, 4, 8], [0.88, 0.6, 0.86], 0.9, limits)
    assert flag["frames"] == [4] and flag["figure"] == 0.6 and flag["threshold"] == 0.7
    assert identity.clip_flags([0, 4], [0.88, 0.8], 0.9, limits) == []
    assert identity.sample_frames(81) == [0, 20, 40, 60, 80] and identity.sample_frames(3) == [0, 1, 2]


# ---------------------------------------------------------------- a production in miniature


def production(root: Path, clips: dict[int, np.ndarray], settings=None) -> Production:
    """Two scenes: 1 is I2V from KF-A, 2 is first-last-frame from KF-A to KF-B; both keyframes show the fox."""
    (root / "assets" / "characters").mkdir(parents=True)
    fox = root / "assets" / "characters" / "fox.png"
    figure("fox", bg=(255, 255, 255), x=20, size=(96, 128)).save(fox)
    layout.keyframe_path(root, "KF-A").parent.mkdir(parents=True)
    for kf in ("KF-A", "KF-B"):
        figure("fox", x=50).save(layout.keyframe_path(root, kf))
    for number, frames in clips.items():
        layout.scene_dir(root, number).mkdir()
        video.write_mp4(frames, layout.scene_dir(root, number) / "video.mp4", fps=16)
    rows = [KeyframeRow(kf, "", "", "fox", "street", "", [], 1) for kf in ("KF-A", "KF-B")]
    scenes = [
        Scene(1, "one", 1, start_keyframe=KeyframeRef("KF-A", "", 1)),
        Scene(2, "two", 2, start_keyframe=KeyframeRef("KF-A", "", 2), end_keyframe=KeyframeRef("KF-B", "", 2)),
    ]
    assets = AssetPlan([Asset("characters", "fox", "a fox", "assets/characters/fox.png", fox, 1)])
    return Production(
        root, plan=SceneBreakdown("scene-breakdown.md", None, rows, scenes, []), assets=assets, settings=settings or {}
    )


def review(root, prod):
    limits, problems = drift.limits_from(prod.settings)
    assert problems == []
    return drift.review_film(root, prod, limits, lambda item: f"production.py retake {root} {item}")


def test_clean_film_passes_and_each_scene_gets_a_chart(standin_hf_home, tmp_path):
    clean = clip_of(lambda i: "fox")
    result = review(tmp_path, production(tmp_path, {1: clean, 2: clean}))
    assert result["flags"] == [] and result["notes"] == []
    assert [k["item"] for k in result["keyframes"]] == ["keyframe:KF-A", "keyframe:KF-B"]
    for scene in result["scenes"]:
        chart = Image.open(scene["chart"])
        assert chart.size == (drift.CHART_SIZE[0], 3 * drift.CHART_SIZE[1] + 24)
        assert len(scene["colour"]) == FRAMES and len(scene["motion"]) == FRAMES - 1
        assert scene["identity"]["asset:characters/fox"]["frames"] == identity.sample_frames(FRAMES)
    assert Path(result["scenes"][0]["chart"]).parent == layout.state_dir(tmp_path) / drift.REVIEW_DIR


def test_a_swapped_character_is_flagged_with_its_frames(standin_hf_home, tmp_path):
    swapped = clip_of(lambda i: "fox" if i < 8 else "other")
    result = review(tmp_path, production(tmp_path, {1: swapped}))
    (flag,) = [f for f in result["flags"] if f["reason"] == "identity"]  # the swap is a jump too: flicker at 8
    assert flag["item"] == "clip:scene-01" and flag["reason"] == "identity" and flag["frames"] == [8, 12, 16]
    assert flag["figure"] < flag["threshold"] and flag["asset"] == "asset:characters/fox"
    assert f"production.py retake {tmp_path} clip:scene-01" in flag["fix"] and Path(flag["chart"]).is_file()


def test_colour_drift_of_a_first_last_frame_clip_is_flagged(standin_hf_home, tmp_path):
    darkening = clip_of(lambda i: "fox", darken_to=0.6)
    result = review(tmp_path, production(tmp_path, {1: darkening, 2: darkening}))
    flags = [f for f in result["flags"] if f["reason"] == "colour_drift"]
    assert [f["item"] for f in flags] == ["clip:scene-02"]  # the I2V scene is charted, not flagged
    assert flags[0]["frames"] == [FRAMES - 1] and flags[0]["figure"] > drift.COLOUR_DRIFT
    loose = production(tmp_path / "loose", {2: darkening}, {"judge": {"colour_drift": 50}})
    assert "colour_drift" not in {f["reason"] for f in review(tmp_path / "loose", loose)["flags"]}


def test_a_frozen_clip_made_elsewhere_is_flagged_by_status_too(standin_hf_home, tmp_path):
    still = np.repeat(clip_of(lambda i: "fox")[:1], FRAMES, axis=0)
    result = review(tmp_path, production(tmp_path, {1: still}))
    assert [(f["item"], f["reason"]) for f in result["flags"]] == [("clip:scene-01", "frozen")]


def test_without_the_embedder_identity_is_skipped_and_said(tmp_path):
    result = review(tmp_path, production(tmp_path, {1: clip_of(lambda i: "fox")}))
    assert result["keyframes"] == [] and result["scenes"][0]["identity"] == {}
    assert "dinov2-small is not installed" in result["notes"][0] and "--only dinov2-small" in result["notes"][0]


@pytest.mark.parametrize(
    "given, says", [({"identity_min": "high"}, "must be a number"), ({"identity": 0.3}, "is not a threshold")]
)
def test_settings_overrides_and_their_problems(given, says):
    limits, problems = drift.limits_from({"judge": {"identity_min": 0.4, "flicker_ratio": 9}})
    assert limits.identity.identity_min == 0.4 and limits.frames.flicker_ratio == 9 and problems == []
    _, problems = drift.limits_from({"judge": given})
    assert says in problems[0]


def test_an_unreadable_clip_or_keyframe_is_noted_not_fatal(standin_hf_home, tmp_path):
    prod = production(tmp_path, {1: clip_of(lambda i: "fox")})
    (layout.scene_dir(tmp_path, 1) / "video.mp4").write_bytes(b"not a video")
    layout.keyframe_path(tmp_path, "KF-B").write_bytes(b"not a picture")
    result = review(tmp_path, prod)
    assert result["scenes"] == [] and len(result["notes"]) == 2
    assert {n.split(" ")[0] for n in result["notes"]} == {"keyframe:KF-B", "clip:scene-01"}
