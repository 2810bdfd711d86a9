"""Broken output caught where it happens (producer.engines.judge): synthetic frames and latents as tables, the
fallback without a suspect speed lever, and two end-to-end runs on the stand-ins where nothing is written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.engines import judge
from producer.files import provenance
from producer.sizing import speed

# ---------------------------------------------------------------- synthetic material (the calibration cases)


def ball_clip(n=33, w=160, h=96, radius=12, step=3.5):
    """A ball moving `step` px a frame over a colour gradient (step 0: a still clip), uint8 N x H x W x 3."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([0.2 + 0.5 * xx / w, 0.3 + 0.4 * yy / h, np.full((h, w), 0.5)], axis=-1)
    frames = []
    for i in range(n):
        frame = bg.copy()
        frame[(xx - 20 - i * step) ** 2 + (yy - h / 2) ** 2 < radius**2] = (0.9, 0.3, 0.2)
        frames.append(frame)
    return (np.stack(frames) * 255).round().astype(np.uint8)


def reasons(flags):
    return {f.reason: f.frames for f in flags}


def brighter(frame, factor):
    return (frame.astype(float) * factor).clip(0, 255).astype(np.uint8)


def test_clean_material_passes():
    clip = ball_clip()
    assert judge.check_frames(clip) == []
    assert judge.check_frames(clip[0]) == []  # one picture
    assert judge.check_frames(clip.astype(np.float32) / 255) == []  # floats in [0, 1] (the decoder's output)
    assert judge.check_latents(torch.randn(1, 4, 3, 8, 8), video=True) == []


@pytest.mark.parametrize(
    "damage, reason, frames",
    [
        (lambda c: c.__setitem__(5, 0), "black", [5]),
        (lambda c: c.__setitem__(slice(30, 33), 255), "white", [30, 31, 32]),
        (lambda c: c.__setitem__(7, 128), "uniform", [7]),
        (lambda c: c.__setitem__(16, brighter(c[16], 1.25)), "flicker", [16, 17]),  # into the bright frame and out
    ],
)
def test_each_broken_frame_is_flagged_with_its_reason_and_frame_numbers(damage, reason, frames):
    clip = ball_clip()
    damage(clip)
    flags = reasons(judge.check_frames(clip))
    assert flags[reason] == frames
    flag = next(f for f in judge.check_frames(clip) if f.reason == reason)
    assert flag.fix and flag.threshold == getattr(judge.Limits(), _limit_of(reason))


def _limit_of(reason):
    return {"black": "black_level", "white": "white_level", "uniform": "uniform_spread", "flicker": "flicker_ratio"}[
        reason
    ]


def test_a_frozen_clip_is_flagged_also_with_decoder_noise():
    still = ball_clip(step=0)
    noisy = (still.astype(int) + np.random.default_rng(0).integers(-2, 3, still.shape)).clip(0, 255).astype(np.uint8)
    for clip in (still, noisy):
        flags = reasons(judge.check_frames(clip))
        assert list(flags) == ["frozen"] and flags["frozen"] == list(range(33))


def test_a_dark_scene_with_highlights_is_not_black_and_a_night_shot_can_be_allowed():
    dark = (ball_clip() // 8).astype(np.uint8)  # everything under 32 levels, the ball the brightest
    assert "black" not in reasons(judge.check_frames(dark))
    very_dark = (ball_clip() // 20).astype(np.uint8)
    assert "black" in reasons(judge.check_frames(very_dark))
    assert "black" not in reasons(judge.check_frames(very_dark, judge.parse_limits(["black_level=4"])))


def test_nan_latents_name_the_video_frames_of_their_latent_frame():
    latents = torch.randn(1, 4, 5, 8, 8)
    latents[0, 2, 3, 1, 1] = float("nan")  # latent frame 3: video frames 9-12
    latents[0, 0, 0, 0, 0] = float("inf")  # latent frame 0: video frame 0
    (flag,) = judge.check_latents(latents, video=True)
    assert flag.reason == "nan_latents" and flag.frames == [0, 9, 10, 11, 12] and flag.figure > 0
    packed = torch.randn(1, 16, 8)  # Qwen's packed latents: one image
    packed[0, 3] = float("nan")
    assert reasons(judge.check_latents(packed, video=False)) == {"nan_latents": []}


def test_nan_in_decoded_floats_is_flagged():
    frames = ball_clip(n=5).astype(np.float32) / 255
    frames[2, 0, 0, 0] = np.nan
    assert reasons(judge.check_frames(frames))["nan_latents"] == [2]


@pytest.mark.parametrize(
    "given, says",
    [
        (["flicker=3"], "NAME one of"),
        (["flicker_ratio"], "NAME=VALUE"),
        (["flicker_ratio=x"], "not a number"),
        (["flicker_ratio=-1"], ">= 0"),
    ],
)
def test_bad_overrides_name_the_valid_ones(given, says):
    with pytest.raises(CliError, match=says) as err:
        judge.parse_limits(given)
    assert err.value.code == ExitCode.USAGE and "--judge" in err.value.fix


def test_an_override_changes_the_verdict():
    clip = ball_clip()
    clip[16] = brighter(clip[16], 1.25)
    assert judge.check_frames(clip, judge.parse_limits(["flicker-floor=50"])) == []
    assert judge.parse_limits(["flicker_ratio=8", "frozen_share=0"]).flicker_ratio == 8


# ---------------------------------------------------------------- the fallback


class Maker:
    """Gives broken results for the first `broken` calls, then sound ones; records the levers it ran with."""

    def __init__(self, broken, levers):
        self.broken, self.levers, self.runs = broken, levers, []

    def make(self):
        self.runs.append(self.levers)
        bad = len(self.runs) <= self.broken
        return "result", [judge.Flag("black", [3], 0.0, 16.0)] if bad else []

    def reopen(self, levers):
        self.levers = levers


def test_broken_with_fp8_matmuls_is_made_again_without_them_and_says_why():
    levers = speed.Speed(compile=True, attention="_native_math", fp8_matmul=True)
    maker = Maker(1, levers)
    result, fallback = judge.with_fallback(maker.make, levers, maker.reopen, "clip x.mp4")
    assert result == "result" and maker.runs[-1] == speed.Speed(compile=True)  # compile keeps the numbers: kept
    assert set(fallback["dropped"]) == {"fp8_matmul", "attention"} and fallback["cause"][0]["reason"] == "black"


def test_broken_without_a_suspect_lever_fails_at_once_with_the_frames():
    maker = Maker(5, speed.Speed(compile=True))
    with pytest.raises(CliError) as err:
        judge.with_fallback(maker.make, maker.levers, maker.reopen, "clip x.mp4")
    assert len(maker.runs) == 1 and err.value.code == ExitCode.FAILED
    assert "black at frame(s) 3" in err.value.message and err.value.details["broken"][0]["frames"] == [3]


def test_still_broken_after_the_fallback_fails_and_reports_the_fallback():
    maker = Maker(5, speed.Speed(fp8_matmul=True))
    with pytest.raises(CliError) as err:
        judge.with_fallback(maker.make, maker.levers, maker.reopen, "clip x.mp4")
    dropped = err.value.details["fallback"]["dropped"]
    assert len(maker.runs) == 2 and dropped == judge.suspect_levers(speed.Speed(fp8_matmul=True))


# ---------------------------------------------------------------- end to end on the stand-ins


def keyframe(path):
    rgb = (np.stack(np.mgrid[0:64, 0:64], axis=-1)[..., [0, 1, 0]] * 4).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def run_wan(capsys, *argv):
    from producer.makers import wan_video

    code = wan_video.main([str(a) for a in argv] + ["--size", "64x64", "--frames", "9", "--quiet", "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out.strip().splitlines()[-1])


@pytest.fixture
def nan_denoise(monkeypatch):
    """The Wan pipeline's latents turn NaN for the first `left[0]` calls (what a broken fp8 run gives)."""
    from diffusers import WanImageToVideoPipeline

    original, left = WanImageToVideoPipeline.__call__, [0]

    def denoise(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if left[0] > 0:
            left[0] -= 1
            out.frames[:, :, 1] = float("nan")  # latent frame 1: video frames 1-4
        return out

    monkeypatch.setattr(WanImageToVideoPipeline, "__call__", denoise)
    return left


def test_nan_clip_fails_and_leaves_nothing_under_its_name(standin_hf_home, nan_denoise, tmp_path, capsys):
    nan_denoise[0] = 1
    out = tmp_path / "video.mp4"
    code, result = run_wan(capsys, "--start-frame", keyframe(tmp_path / "kf.png"), "--prompt", "x", "-o", out)
    assert code == ExitCode.FAILED and result["broken"][0]["reason"] == "nan_latents"
    assert result["broken"][0]["frames"] == [1, 2, 3, 4] and "nothing was written" in result["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kf.png"]  # no clip, no review PNG, no temp file


def test_nan_with_a_non_default_attention_backend_falls_back_and_records_why(
    standin_hf_home, nan_denoise, tmp_path, capsys
):
    nan_denoise[0] = 1
    out = tmp_path / "video.mp4"
    start = keyframe(tmp_path / "kf.png")
    code, result = run_wan(capsys, "--start-frame", start, "--prompt", "x", "-o", out, "--attention", "_native_math")
    assert code == 0 and out.is_file() and result["speed"] == []  # the second load ran without the backend
    fallback = provenance.read_recipe(out)["fallback"]
    assert list(fallback["dropped"]) == ["attention"] and fallback["cause"][0]["frames"] == [1, 2, 3, 4]
    assert result["judge"]["fallback"] == fallback


def test_a_black_picture_is_refused_by_qwen_image(standin_hf_home, qwen_standin_areas, tmp_path, capsys, monkeypatch):
    from producer.engines.qwen import qwen
    from producer.makers import qwen_image

    monkeypatch.setattr(qwen.QwenSession, "_decode", lambda self, latents, job: Image.new("RGB", (64, 64)))
    out = tmp_path / "kf.png"
    fast = ["--lightning", "off", "--cfg", "1", "--steps", "2", "--size", "64x64", "--quiet", "--json"]
    code = qwen_image.main(["--prompt", "a fox", "-o", str(out), *fast])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == ExitCode.FAILED and result["broken"][0]["reason"] == "black" and not out.exists()
    assert list(tmp_path.iterdir()) == []
