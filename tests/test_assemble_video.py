"""assemble_video.py end to end on tiny clips written in the test (64x48, 9-17 frames, 16 fps), the
timeline plan as a table, and the seam review on an injected colour shift."""

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from producer.cli import ExitCode
from producer.files import clips as clipio
from producer.files import colour, timeline, video
from producer.makers import assemble_video
from producer.production import seams

W, H = 64, 48
RED, BLUE = (200, 50, 50), (50, 50, 200)


def grey(v):
    return np.full((H, W, 3), v, np.uint8)


def clip(path, frames, fps=16):
    video.write_mp4(frames, path, fps=fps)
    return path


def run(argv, capsys):
    code = assemble_video.main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out), err


def film(path):
    frames, fps = video.read_video(path)
    return frames, fps


def mean(frame):
    return frame.reshape(-1, 3).mean(0)


@pytest.fixture
def numbered(tmp_path):
    """Clip A counts up in grey (10, 30, ... 170); clip B starts on A's last frame (a shared keyframe)
    and counts down (170, 155, ... 50)."""
    a = [grey(10 + 20 * k) for k in range(9)]
    b = [a[-1]] + [grey(170 - 15 * k) for k in range(1, 9)]
    return clip(tmp_path / "a.mp4", a), clip(tmp_path / "b.mp4", b)


def only_inputs_left(folder, names):
    return sorted(p.name for p in folder.iterdir()) == sorted(names)


# ================================================================ duplicates and transitions


def test_continuous_drops_the_shared_frame(numbered, tmp_path, capsys):
    code, r, _ = run(["--clips", *numbered, "--transition", "continuous", "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["frames"] == 17 and r["output_frames"] == 17 and r["duration_seconds"] == 17 / 16
    assert r["dropped_frames"][0]["name"] == "clip 2" and r["dropped_frames"][0]["source_frame"] == 0
    assert [(c["film_in"], c["film_out"], c["source_in"]) for c in r["clips"]] == [(0, 9, 0), (9, 17, 1)]
    frames, fps = film(tmp_path / "f.mp4")
    levels = [round(mean(f)[0]) for f in frames]
    assert fps == 16 and abs(levels[8] - 170) <= 3 and abs(levels[9] - 155) <= 3  # no repeated 170
    assert Path(r["contact_sheet"]).is_file() and Path(r["provenance"]).is_file()


def test_trim_end_cuts_a_morphing_end_and_keeps_the_next_first_frame(numbered, tmp_path, capsys):
    code, r, _ = run(["--clips", *numbered, "--transition", "continuous", "--trim-end", "1:3",
                      "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["frames"] == 6 + 9 and r["dropped_frames"] == []
    first, second = r["clips"]
    assert (first["source_out"], first["trimmed_end_frames"], second["source_in"]) == (6, 3, 0)
    levels = [round(mean(f)[0]) for f in film(tmp_path / "f.mp4")[0]]
    assert abs(levels[5] - 110) <= 3 and abs(levels[6] - 170) <= 3  # clip A up to 110, then B from its start
    code, r, err = run(["--clips", *numbered, "--trim-end", "clip 9:2", "-o", tmp_path / "g.mp4"], capsys)
    assert code == 2 and "no clip" in r["error"]
    code, r, err = run(["--clips", *numbered, "--trim-end", "2:9", "-o", tmp_path / "g.mp4"], capsys)
    assert code == 2 and "only 9 frames" in r["error"]


def test_a_cut_keeps_the_shared_frame_and_says_so(numbered, tmp_path, capsys):
    code, r, _ = run(["--clips", *numbered, "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["frames"] == 18 and r["dropped_frames"] == []
    assert "use continuous" in r["transitions"][0]["note"]


def test_fade_goes_through_black(tmp_path, capsys):
    a, b = clip(tmp_path / "a.mp4", [grey(RED)] * 17), clip(tmp_path / "b.mp4", [grey(BLUE)] * 17)
    code, r, _ = run(["--clips", a, b, "--transition", "fade:0.5", "-o", tmp_path / "f.mp4"], capsys)
    t = r["transitions"][0]
    assert code == 0 and r["frames"] == 34 and (t["frames"], t["film_start"], t["film_end"]) == (8, 13, 21)
    frames, _ = film(tmp_path / "f.mp4")
    brightness = [mean(f).sum() for f in frames]
    assert brightness[16] < 10 and brightness[17] < 10  # the two frames at the boundary are black
    assert brightness[12] > brightness[14] > brightness[16] and brightness[17] < brightness[19] < brightness[21]
    assert mean(frames[14])[0] > mean(frames[14])[2] and mean(frames[19])[2] > mean(frames[19])[0]


def test_dissolve_blends_and_shortens(tmp_path, capsys):
    a, b = clip(tmp_path / "a.mp4", [grey(RED)] * 17), clip(tmp_path / "b.mp4", [grey(BLUE)] * 17)
    code, r, _ = run(["--clips", a, b, "--transition", "dissolve", "-o", tmp_path / "f.mp4"], capsys)
    t = r["transitions"][0]
    assert code == 0 and r["frames"] == 26 and t["frames"] == 8 and t["film_shortened_by_frames"] == 8
    frames, _ = film(tmp_path / "f.mp4")
    red, _, blue = mean(frames[12])  # 4 of 8 through the overlap: 5/9 red, 4/9 blue
    assert abs(red - (200 * 5 + 50 * 4) / 9) < 6 and abs(blue - (50 * 5 + 200 * 4) / 9) < 6
    assert mean(frames[8])[0] > 180 and mean(frames[-1])[2] > 180


@pytest.mark.parametrize("kinds, lengths, expected_frames, film_ins", [
    (["cut", "cut"], [9, 9, 9], 27, [0, 9, 18]),
    (["continuous", "continuous"], [9, 9, 9], 25, [0, 9, 17]),
    (["dissolve", "fade"], [17, 17, 17], 47, [0, 13, 30]),  # a 0.25 s dissolve overlaps 4 frames
])
def test_timeline_plan_table(kinds, lengths, expected_frames, film_ins):
    bounds = [timeline.Boundary(k, timeline.DEFAULT_SECONDS[k] / 2, drop_first=k == "continuous") for k in kinds]
    plan = timeline.plan_timeline(["a", "b", "c"], lengths, bounds, 16)
    assert plan.frames == expected_frames and [s.film_in for s in plan.segments] == film_ins


def test_transition_longer_than_a_clip_is_refused(numbered, tmp_path, capsys):
    code, r, err = run(["--clips", *numbered, "--transition", "dissolve:2", "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.USAGE and "shorter transitions" in r["fix"]
    assert only_inputs_left(tmp_path, ["a.mp4", "b.mp4"])


# ================================================================ audio, cards, conversions


def sine_wav(path, seconds, rate=22050):
    t = np.arange(int(rate * seconds)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("audio_seconds, handling", [(3.0, "trimmed"), (0.4, "padded")])
def test_audio_is_fitted_to_the_film(numbered, tmp_path, capsys, audio_seconds, handling):
    wav = sine_wav(tmp_path / "music.wav", audio_seconds)
    code, r, _ = run(["--clips", *numbered, "--audio", wav, "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["audio"]["handling"] == handling
    if handling == "trimmed":
        assert r["audio"]["fade_out_seconds"] == 1.0
    assert abs(clipio.probe_audio(tmp_path / "f.mp4").seconds - r["duration_seconds"]) < 0.05


def test_title_and_end_card(numbered, tmp_path, capsys):
    code, r, _ = run(["--clips", *numbered, "--title", "Lantern Walk", "--end-card", "The End",
                      "--card-seconds", "0.5", "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["frames"] == 8 + 18 + 8
    assert [(c["kind"], c["film_in"], c["film_out"]) for c in r["cards"]] == [("title", 0, 8), ("end card", 26, 34)]
    assert r["clips"][0]["film_in"] == 8
    frames, _ = film(tmp_path / "f.mp4")
    title = frames[3].max(axis=2)
    assert (title > 100).sum() > 20 and (title < 30).mean() > 0.7  # light text on black


def test_card_text_fits_the_frame():
    card = timeline.render_card("A rather long title that certainly has to wrap onto another line\\nthe end",
                                832, 480)  # "\\n" as typed in a shell breaks the line too
    ink = np.argwhere(card.max(axis=2) > 128)
    assert card.shape == (480, 832, 3) and ink[:, 1].min() > 20 and ink[:, 1].max() < 812
    assert ink[:, 0].max() - ink[:, 0].min() > 2 * 48  # three lines of 48 px text (a tenth of the height)


def test_fps_conversion_and_upscale(numbered, tmp_path, capsys):
    code, r, _ = run(["--clips", *numbered, "--transition", "continuous", "--fps", "24", "--upscale", "2",
                      "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and r["output_fps"] == 24 and (r["output_width"], r["output_height"]) == (128, 96)
    assert r["output_frames"] == 26  # ceil(17 / 16 s x 24)
    assert abs(r["output_duration_seconds"] - r["duration_seconds"]) <= 1 / 24
    assert "minterpolate" in r["conversions"]["fps"]["method"] and r["conversions"]["scale"]["method"] == "lanczos"


def test_contact_sheet_has_one_tile_per_second(tmp_path, capsys):
    a = clip(tmp_path / "a.mp4", [grey(RED)] * 17)
    code, r, _ = run(["--clips", a, a, a, "-o", tmp_path / "f.mp4"], capsys)
    sheet = Image.open(r["contact_sheet"])
    assert code == 0 and r["frames"] == 51 and sheet.width > 4 * W  # tiles at 0, 1, 2, 3 s and the last frame


# ================================================================ bad input


def test_different_sizes_are_letterboxed(tmp_path, capsys):
    a = clip(tmp_path / "a.mp4", [grey(RED)] * 9)
    b = clip(tmp_path / "b.mp4", [np.full((64, 64, 3), BLUE, np.uint8)] * 9)
    code, r, _ = run(["--clips", a, b, "-o", tmp_path / "f.mp4"], capsys)
    assert code == 0 and (r["output_width"], r["output_height"]) == (W, H)
    assert "letterboxed" in r["conversions"]["conformed_clips"][0]
    frame = film(tmp_path / "f.mp4")[0][12]
    assert frame[:, :5].max() < 30 and mean(frame[:, 20:44])[2] > 180  # pillarboxed: black sides


def test_different_frame_rates_are_refused(tmp_path, capsys):
    a, b = clip(tmp_path / "a.mp4", [grey(90)] * 9), clip(tmp_path / "b.mp4", [grey(90)] * 9, fps=24)
    code, r, err = run(["--clips", a, b, "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.USAGE and "24 fps" in r["error"] and "minterpolate" in r["fix"]
    assert only_inputs_left(tmp_path, ["a.mp4", "b.mp4"])


@pytest.mark.parametrize("make, words", [
    (lambda p, good: None, "does not exist"),
    (lambda p, good: p.write_text("not a video"), "not a video"),
    (lambda p, good: p.write_bytes(good.read_bytes()[:len(good.read_bytes()) * 3 // 4]), "can read"),  # cut short
])
def test_missing_or_unreadable_clip(numbered, tmp_path, capsys, make, words):
    bad = tmp_path / "bad.mp4"
    make(bad, numbered[1])
    code, r, err = run(["--clips", numbered[0], bad, "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.USAGE and words in r["error"] and r["fix"] and "fix:" in err
    assert not (tmp_path / "f.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_unreadable_audio(numbered, tmp_path, capsys):
    (tmp_path / "music.mp3").write_bytes(b"ID3 garbage")
    code, r, _ = run(["--clips", *numbered, "--audio", tmp_path / "music.mp3", "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.USAGE and "cannot be read" in r["error"] and "--audio" in r["fix"]
    code, r, _ = run(["--clips", *numbered, "--audio", numbered[0], "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.USAGE and "no audio track" in r["error"]
    assert not (tmp_path / "f.mp4").exists()


def test_existing_output_needs_overwrite(numbered, tmp_path, capsys):
    out = tmp_path / "f.mp4"
    out.write_bytes(b"old")
    code, r, _ = run(["--clips", *numbered, "-o", out], capsys)
    assert code == ExitCode.USAGE and "--overwrite" in r["fix"] and out.read_bytes() == b"old"
    code, r, _ = run(["--clips", *numbered, "-o", out, "--overwrite"], capsys)
    assert code == 0 and out.stat().st_size > 100


@pytest.mark.parametrize("argv, words", [
    (["--transition", "fade", "--transition", "cut", "--transition", "cut"], "3 --transition"),
    (["--transition", "wipe"], "one of cut"),
    (["--transition", "cut:1"], "no duration"),
    ([], "no output"),
])
def test_usage_errors(numbered, tmp_path, capsys, argv, words):
    out = [] if argv == [] else ["-o", tmp_path / "f.mp4"]
    code, r, _ = run(["--clips", *numbered, *argv, *out], capsys)
    assert code == ExitCode.USAGE and words in r["error"]


def test_interrupt_leaves_nothing(numbered, tmp_path, capsys, monkeypatch):
    real = timeline._faded

    def interrupted(frame, k, seg):
        if k == 5:
            raise KeyboardInterrupt
        return real(frame, k, seg)

    monkeypatch.setattr(timeline, "_faded", interrupted)
    code, r, _ = run(["--clips", *numbered, "-o", tmp_path / "f.mp4"], capsys)
    assert code == ExitCode.INTERRUPTED and only_inputs_left(tmp_path, ["a.mp4", "b.mp4"])


# ================================================================ a production folder and its seams


def scene_image(seed, shift=(0, 0, 0)):
    """A textured picture (SSIM needs structure): gradient, discs and noise, with an optional Lab shift."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, H)[:, None, None]
    img = np.broadcast_to(np.array([90, 140, 210]) * (1 - y) + np.array([230, 200, 160]) * y, (H, W, 3)).copy()
    for _ in range(6):
        cx, cy, r = rng.integers(0, W), rng.integers(0, H), rng.integers(4, 14)
        yy, xx = np.mgrid[0:H, 0:W]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    img = np.clip(img * 0.85 + rng.integers(0, 255, (H, W, 3)) * 0.15, 0, 255).astype(np.uint8)
    if any(shift):
        lab = colour.rgb_to_lab(img / 255.0) + np.array(shift)
        img = np.round(colour.lab_to_rgb(lab) * 255).astype(np.uint8)
    return img


PLAN = """\
# Scene Breakdown: Test
## Unique Keyframes
| ID | Description | Pose Asset | Character | Background | Used In |
|----|-------------|------------|-----------|------------|---------|
| KF-A | a | - | - | - | Scene 1 start |
| KF-B | b | - | - | - | Scene 1 end, Scene 2 start |
| KF-C | c | - | - | - | Scene 2 end |
### Scene 1: One
**Type**: landscape
**Start Keyframe**: KF-A
**End Keyframe**: KF-B
**Transition to Next**: {transition}
### Scene 2: Two
**Type**: landscape
**Start Keyframe**: KF-B (shared from Scene 1 end - do NOT regenerate)
**End Keyframe**: KF-C
"""


def production(root, transition="continuous", scene2_shift=(0, 0, 0)):
    (root / "keyframes").mkdir(parents=True)
    kfs = {k: scene_image(i) for i, k in enumerate("ABC")}
    for k, img in kfs.items():
        Image.fromarray(img).save(root / "keyframes" / f"KF-{k}.png")
    (root / "scene-breakdown.md").write_text(PLAN.format(transition=transition))
    for n, (start, end) in enumerate([("A", "B"), ("B", "C")], start=1):
        (root / f"scene-{n:02d}").mkdir()
        frames = [kfs[start]] * 5 + [kfs[end]] * 4
        if n == 2 and any(scene2_shift):
            frames = [scene_image("ABC".index(start), scene2_shift)] * 5 + [scene_image(2, scene2_shift)] * 4
        clip(root / f"scene-{n:02d}" / "video.mp4", frames)
    return root


def test_production_folder_drops_the_shared_keyframe_and_reviews(tmp_path, capsys):
    root = production(tmp_path / "film")
    code, r, _ = run([root, "-o", root / "final.mp4", "--review"], capsys)
    assert code == 0 and r["mode"] == "production" and r["frames"] == 17
    assert "KF-B" in r["dropped_frames"][0]["reason"] and r["clips"][1]["path"].endswith("scene-02/video.mp4")
    (seam,) = r["seams"]
    assert seam["status"] == "ok" and seam["keyframe"] == "KF-B" and seam["clip_to_clip"]["ssim"] > 0.9


def test_seam_review_flags_an_injected_colour_shift(tmp_path, capsys):
    root = production(tmp_path / "film", transition="cut", scene2_shift=(-8, 0, 6))
    code, r, err = run([root, "--review"], capsys)  # review only: nothing is written
    (seam,) = r["seams"]
    assert code == 0 and "output" not in r and seam["status"] == "flagged"
    assert seam["start_vs_keyframe"]["cast"] > seams.CAST_LIMIT > seam["end_vs_keyframe"]["cast"]
    assert any("colour-match scene-02/video.mp4" in a for a in seam["advice"]) and "seam scene 1" in err
    assert sorted(p.name for p in root.iterdir()) == ["keyframes", "scene-01", "scene-02", "scene-breakdown.md"]
    reports = seams.review_seams(root)  # what the project tool's status calls
    assert [x.status for x in reports] == ["flagged"]


def test_review_skips_a_missing_clip(tmp_path, capsys):
    root = production(tmp_path / "film")
    os.remove(root / "scene-02" / "video.mp4")
    (report,) = seams.review_seams(root)
    assert report.status == "skipped" and "missing" in report.notes[0]
    code, r, _ = run([root, "--review"], capsys)  # a review mid-production is not an error
    assert code == 0 and r["seams"][0]["status"] == "skipped" and "does not exist" in r["clips"][1]["error"]


def test_production_folder_with_a_missing_clip_is_refused(tmp_path, capsys):
    root = production(tmp_path / "film")
    os.remove(root / "scene-02" / "video.mp4")
    code, r, _ = run([root, "-o", root / "final.mp4"], capsys)
    assert code == ExitCode.USAGE and "scene-02" in r["error"] and "wan_video.py" in r["fix"]
    assert not (root / "final.mp4").exists()


def test_seam_thresholds_on_synthetic_frames(tmp_path):
    img = scene_image(0)
    darker = np.clip(img * 0.95, 0, 255).astype(np.uint8)  # the darkening FLF clips show at their end
    cases = {"same": img, "darker": darker, "warmer": scene_image(0, (0, 2, 4)), "other": scene_image(5)}
    encoded = film(clip(tmp_path / "x.mp4", list(cases.values())))[0]
    kf = tmp_path / "kf.png"
    Image.fromarray(img).save(kf)
    status = {}
    for name, frame in zip(cases, encoded):
        seam = seams.SeamInput("scene 1", "scene 2", "a.mp4", "b.mp4", "cut", encoded[0], frame,
                               end_keyframe=("KF-B", kf), start_keyframe=("KF-B", kf))
        status[name] = seams.review_boundary(seam).status
    assert status == {"same": "ok", "darker": "flagged", "warmer": "flagged", "other": "flagged"}


def test_duplicate_rule_passes_a_reencoded_frame_and_not_motion(tmp_path):
    img = scene_image(0)
    again = film(clip(tmp_path / "x.mp4", [img] * 2))[0][0]
    assert seams.is_duplicate(seams.compare(img, again))
    assert not seams.is_duplicate(seams.compare(img, np.roll(img, 2, axis=1)))
    assert not seams.is_duplicate(seams.compare(img, scene_image(0, (-4, 0, 0))))


# ================================================================ the real command line


def test_help_and_a_real_run(numbered, tmp_path):
    from producer.makers import script_path

    script = script_path("assemble_video")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--clips", "--transition", "--audio", "--audio-fade", "--title", "--end-card", "--card-seconds",
                   "--fps", "--upscale", "--size", "--crf", "--review", "--json", "--overwrite", "examples:"):
        assert option in help_text
    done = subprocess.run([sys.executable, script, "--clips", *map(str, numbered), "-o", str(tmp_path / "f.mp4"),
                           "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout)["frames"] == 18
