"""Review figures and colour matching on synthetic clips, and the settings rules of wan_settings as tables."""

import logging

import numpy as np
import pytest
from producer.cli import CliError, ExitCode
from producer.engines.wan import wan_settings as ws
from producer.facts import registry
from producer.files import colour, review

H, W, N = 96, 160, 33
YY, XX = np.mgrid[0:H, 0:W]


def scene(i: int, light: float = 1.0, radius: int = 15, crossing: bool = False) -> np.ndarray:
    """A ball moving over a gradient; `crossing`: a ball that enters and leaves the frame mid-clip."""
    f = np.zeros((H, W, 3))
    f[..., 0], f[..., 1], f[..., 2] = 0.2 + 0.3 * XX / W, 0.4 + 0.3 * YY / H, 0.6
    cx = -60 + (W + 120) * i / (N - 1) if crossing else 20 + (W - 40) * i / (N - 1)
    f[((XX - cx) ** 2 + (YY - H / 2) ** 2) < radius ** 2] = [0.9, 0.2, 0.15]
    return (np.clip(f * light, 0, 1) * 255).round().astype(np.uint8)


def clean_flf() -> np.ndarray:
    """FLF with an intended 20 % lighting change from the start keyframe to the end keyframe."""
    return np.stack([scene(i, light=1.0 - 0.2 * i / (N - 1)) for i in range(N)])


def with_drift(frames: np.ndarray, dark=0.12, warm=0.06) -> np.ndarray:
    """What FLF clips do: darker and warmer towards the end, the last frame snapping back to its keyframe."""
    out = []
    for i, frame in enumerate(frames):
        k = i / (N - 1) if i < N - 1 else 0.0
        g = frame / 255.0 * (1 - dark * k)
        g[..., 0] *= 1 + warm * k
        g[..., 2] *= 1 - warm * k
        out.append((np.clip(g, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


@pytest.fixture
def producer_log(caplog, monkeypatch):
    """caplog for the producer logger, which a script run earlier in this process may have detached."""
    monkeypatch.setattr(logging.getLogger("producer"), "propagate", True)
    caplog.set_level(logging.INFO, logger="producer")
    return caplog


def mean_difference(a, b) -> float:
    return float(np.mean([colour.color_difference(x, y) for x, y in zip(a, b)]))


def test_colour_matching_removes_an_injected_flf_drift():
    clean = clean_flf()
    drifted = with_drift(clean)
    matched, report = review.color_match(drifted, clean[0], clean[-1], "auto")
    assert report["applied"] and report["before"]["drift"] > 5 > review.DRIFT_LIMIT > report["after"]["drift"]
    assert mean_difference(drifted, clean) > 2.5 and mean_difference(matched, clean) < 0.6
    three_quarters = N * 3 // 4
    assert colour.color_difference(drifted[three_quarters], clean[three_quarters]) > 4
    assert colour.color_difference(matched[three_quarters], clean[three_quarters]) < 1
    assert report["after"]["first_vs_start"]["ssim"] > 0.95 and report["max_change"] > 3


def test_auto_leaves_a_clip_without_drift_alone_and_on_barely_touches_it():
    clean = clean_flf()
    same, report = review.color_match(clean, clean[0], clean[-1], "auto")
    assert not report["applied"] and same is clean and report["before"]["drift"] < 1
    forced, forced_report = review.color_match(clean, clean[0], clean[-1], "on")
    assert forced_report["applied"] and mean_difference(forced, clean) < 0.2


def test_auto_never_matches_an_i2v_clip_and_off_never_matches():
    drifted = with_drift(clean_flf())
    for end, choice, reason in ((None, "auto", "I2V"), (drifted[-1], "off", "off")):
        frames, report = review.color_match(drifted, drifted[0], end, choice)
        assert frames is drifted and not report["applied"] and reason in report["reason"]
    frames, report = review.color_match(drifted, drifted[0], None, "on")
    assert report["applied"] and report["method"].startswith("match_colors (start")


def test_a_large_change_made_by_matching_is_warned_about(producer_log):
    """The measured limit: an object crossing mid-clip moves the average colour too, and gets evened out."""
    crossing = np.stack([scene(i, radius=30, crossing=True) for i in range(N)])
    _, report = review.color_match(crossing, crossing[0], crossing[-1], "auto")
    assert report["applied"] and report["max_change"] > review.MAX_CHANGE_WARN
    assert "--color-match off" in producer_log.text


def test_continuity_figures():
    clean = clean_flf()
    figures = review.continuity(clean, clean[0], clean[-1])
    assert figures["first_vs_start"] == {"delta_e": 0.0, "cast": 0.0, "ssim": 1.0}
    assert figures["last_vs_end"]["delta_e"] == 0.0
    shifted = review.frame_figures(with_drift(clean, dark=0.3)[-2], clean[-2])
    assert shifted["cast"] > 5 and shifted["ssim"] < 1


def test_review_paths_sit_beside_the_clip(tmp_path):
    paths = review.review_paths(tmp_path / "scene-01" / "video.mp4")
    assert {k: p.name for k, p in paths.items()} == {"first_frame": "video.first.png", "last_frame": "video.last.png",
                                                      "contact_sheet": "video.contact.png"}


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("requested, frames, warned", [
    (81, 81, False), (83, 85, True), (82, 81, True), (10, 9, True), (1, 5, True), (5, 5, False), (121, 121, False)])
def test_frames_are_4n_plus_1(requested, frames, warned):
    result = ws.snap_frames(requested)
    assert result.count == frames and (result.count - 1) % 4 == 0 and bool(result.note) == warned


@pytest.mark.parametrize("seconds, frames", [(5, 81), (3, 49), (2.5, 41), (0.1, 5), (10, 161)])
def test_duration_becomes_frames(seconds, frames):
    assert ws.resolve_frames(None, seconds).count == frames


def test_default_frames_and_conflicts():
    assert ws.resolve_frames(None, None).count == registry.WAN.frames
    for frames, duration in ((9, 2.0), (0, None), (None, -1.0)):
        with pytest.raises(CliError):
            ws.resolve_frames(frames, duration)


@pytest.mark.parametrize("preset, keyframe, size", [
    (None, (1920, 1080), (832, 480)), ("480p", (1080, 1920), (480, 832)), ("480p", (1024, 1024), (480, 480)),
    ("720p", (1664, 960), (1280, 720)), ("720p", (768, 1344), (720, 1280))])
def test_presets_turn_to_the_keyframe(preset, keyframe, size):
    w, h, how = ws.resolve_size(None, preset, keyframe)
    assert (w, h) == size and "turned to the keyframe" in how


def test_explicit_size_must_be_multiples_of_16():
    assert ws.resolve_size((832, 480), None, (10, 10))[:2] == (832, 480)
    with pytest.raises(CliError) as err:
        ws.resolve_size((830, 470), None, (10, 10))
    assert "--size 832x464" in err.value.fix or "--size 832x480" in err.value.fix
    with pytest.raises(CliError):
        ws.resolve_size((832, 480), "480p", (10, 10))


def test_schedules_and_overrides():
    assert ws.resolve_sampling(True) == registry.WAN.distilled
    assert ws.resolve_sampling(False) == registry.WAN.full
    tuned = ws.resolve_sampling(True, steps=6, guidance_2=1.0, shift=3.0)
    assert (tuned.steps, tuned.shift, tuned.scheduler) == (6, 3.0, "euler")
    for bad in ({"steps": 0}, {"shift": 0}, {"guidance": -1}, {"guidance": 1.0, "guidance_2": 3.5}):
        with pytest.raises(CliError):
            ws.resolve_sampling(False, **bad)


def test_distill_choice():
    both = {"wan-lightning", "wan21-lightx2v"}
    assert ws.choose_distill("auto", both) == "wan-lightning"
    assert ws.choose_distill("auto", {"wan21-lightx2v"}) == "wan21-lightx2v"
    assert ws.choose_distill("auto", set()) is None and ws.choose_distill("off", both) is None
    assert ws.choose_distill("lightx2v", both) == "wan21-lightx2v"
    with pytest.raises(CliError) as err:
        ws.choose_distill("lightning", {"wan21-lightx2v"})
    assert err.value.code == ExitCode.MISSING_MODEL and "wan-lightning" in err.value.fix


def test_distill_strength_syntax():
    import argparse

    assert ws.strength_arg("1.0") == {"transformer": 1.0, "transformer_2": 1.0}
    assert ws.strength_arg("1.0:0.8") == {"transformer": 1.0, "transformer_2": 0.8}
    for bad in ("x", "1:2:3", "-1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            ws.strength_arg(bad)
