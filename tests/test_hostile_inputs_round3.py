"""Bad input found by a third hostile review: each case failed on the code before its fix (see git log)."""

import json
import subprocess

import numpy as np
import pytest
from conftest import run_json
from PIL import Image
from producer.cli import ExitCode
from producer.files import video
from producer.makers import assemble_video, qwen_image, wan_video


def picture(path, size=(64, 48)):
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def clip(path, frames=9, size=(64, 48), fps=16):
    rng = np.random.default_rng(1)
    video.write_mp4([(rng.random((size[1], size[0], 3)) * 255).astype(np.uint8) for _ in range(frames)], path, fps=fps)
    return path


# ---------------------------------------------------------------- an output's folder that is a file


@pytest.mark.parametrize("script", ["qwen", "wan", "assemble"])
def test_an_output_folder_that_is_a_file_is_named_so_and_not_sent_to_mkdir(tmp_path, script):
    """Was: "the folder ref.png does not exist", fix "mkdir -p ref.png", which fails on the file."""
    ref = picture(tmp_path / "ref.png")
    argv = {"qwen": (qwen_image.main, "-p", "x", "-o", ref / "a.png"),
            "wan": (wan_video.main, "--prompt", "x", "--start-frame", ref, "-o", ref / "a.mp4"),
            "assemble": (assemble_video.main, "--clips", clip(tmp_path / "a.mp4"), "-o", ref / "a.mp4")}[script]
    code, report, _ = run_json(*argv)
    assert code == ExitCode.USAGE, report
    assert "is a file, not a folder" in report["error"] and "does not exist" not in report["error"], report
    assert "mkdir" not in report["fix"] and str(ref) in report["fix"], report
    sub = ref / "sub" / "a.png"  # a file further up the path: mkdir -p would fail on it too
    code, report, _ = run_json(qwen_image.main, "-p", "x", "-o", sub)
    assert code == ExitCode.USAGE and "mkdir" not in report["fix"], report
    code, report, _ = run_json(qwen_image.main, "-p", "x", "-o", tmp_path / "new" / "a.png")  # still: mkdir -p
    assert code == ExitCode.USAGE and report["fix"] == f"create it: mkdir -p {tmp_path / 'new'}", report


# ---------------------------------------------------------------- a clip cut short


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_a_clip_cut_short_is_refused_not_assembled_without_its_last_frames(tmp_path, keep):
    """Was: exit 0, the film made from the frames before the cut (the MP4's index is at the front)."""
    whole = clip(tmp_path / "a.mp4", frames=17)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * keep)])
    code, report, err = run_json(assemble_video.main, "--clips", whole, cut, "-o", tmp_path / "film.mp4")
    assert code == ExitCode.USAGE and "cut short" in report["error"] and "17 frames" in report["error"], report
    assert "fix:" in err and not (tmp_path / "film.mp4").exists()
    code, report, _ = run_json(assemble_video.main, "--clips", whole, whole, "-o", tmp_path / "film.mp4")
    assert code == 0 and report["frames"] == 34, report


# ---------------------------------------------------------------- the film's name, size and inputs


@pytest.mark.parametrize("name", ["film.png", "film.mkv", "film"])
def test_a_film_named_other_than_mp4_is_refused(tmp_path, name):
    """Was: exit 0, an H.264 MP4 written under a .png (or .mkv, or bare) name."""
    code, report, _ = run_json(assemble_video.main, "--clips", clip(tmp_path / "a.mp4"), "-o", tmp_path / name)
    assert code == ExitCode.USAGE and ".mp4" in report["error"] and "film.mp4" in report["fix"], report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_a_first_clip_of_odd_size_names_the_size_to_give(tmp_path):
    """Was: exit 1, "ffmpeg could not write ...: Nothing was written into output file" (yuv420p needs even sides)."""
    odd = tmp_path / "odd.mp4"  # another tool's clip (yuv444p): write_mp4 itself refuses odd sides
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=s=65x49:d=0.5:r=16",
                    "-pix_fmt", "yuv444p", str(odd)], check=True)
    code, report, _ = run_json(assemble_video.main, "--clips", odd, "-o", tmp_path / "film.mp4")
    assert code == ExitCode.USAGE and "65x49" in report["error"] and "--size 64x48" in report["fix"], report
    assert not (tmp_path / "film.mp4").exists()
    code, report, _ = run_json(assemble_video.main, "--clips", odd, "-o", tmp_path / "film.mp4", "--size", "64x48")
    assert code == 0 and (report["output_width"], report["output_height"]) == (64, 48), report


@pytest.mark.parametrize("which", ["clip", "audio"])
def test_overwrite_never_replaces_one_of_the_films_own_inputs(tmp_path, which):
    """Was: with --overwrite, the film replaced the clip (or the audio) it was made from."""
    a, b = clip(tmp_path / "a.mp4"), clip(tmp_path / "b.mp4")
    before = b.read_bytes()
    extra = ["--audio", b] if which == "audio" else []
    code, report, _ = run_json(assemble_video.main, "--clips", a, *(extra or [b]), "-o", b, "--overwrite")
    assert code == ExitCode.USAGE and "its own inputs" in report["error"], report
    assert b.read_bytes() == before and not (tmp_path / "b.contact.png").exists()


# ---------------------------------------------------------------- --smoke-dir on a cache of real models


def test_smoke_dir_refuses_a_hub_cache_that_another_tool_filled(tmp_path):
    """Was: exit 0, and refs/main of the user's Wan download (made by `hf download`: no install record) pointed
    at a stand-in snapshot, so every later load of that repo from the cache got random tiny weights."""
    from producer.commands import smoke, validate_diffusers
    from producer.modelfiles import models

    model = tmp_path / "hub" / "models--Wan-AI--Wan2.2-I2V-A14B-Diffusers"
    (model / "snapshots" / "abc123").mkdir(parents=True)
    (model / "refs").mkdir()
    (model / "refs" / "main").write_text("abc123")
    code, report, _ = run_json(validate_diffusers.main, "--smoke-dir", tmp_path)
    assert code == ExitCode.USAGE and "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in report["error"], report
    assert (model / "refs" / "main").read_text() == "abc123" and sorted(p.name for p in tmp_path.iterdir()) == ["hub"]
    (model / "snapshots" / "abc123" / models.STANDIN_MARKER).write_text(json.dumps({"standin": True}))
    smoke.check_smoke_dir(tmp_path)  # a folder of stand-ins (an earlier --smoke-dir made it) is still taken


def test_smoke_dir_run_twice_says_what_to_remove(tmp_path):
    """Was: exit 1 with seven failed steps, each "already exists", and "Next: pass --overwrite" (which
    validate_diffusers.py does not take)."""
    from producer.commands import validate_diffusers

    (tmp_path / "smoke-outputs").mkdir()
    (tmp_path / "smoke-outputs" / "fox.png").write_bytes(b"an earlier run's picture")
    code, report, _ = run_json(validate_diffusers.main, "--smoke-dir", tmp_path)
    assert code == ExitCode.USAGE and "earlier run" in report["error"] and "rm -r" in report["fix"], report
    assert (tmp_path / "smoke-outputs" / "fox.png").read_bytes() == b"an earlier run's picture"


def test_a_missing_lora_of_a_batch_job_is_looked_for_where_the_batch_says(tmp_path, monkeypatch):
    """Was: "relative paths start in the current folder", while a batch job's path starts in the batch's folder."""
    batch = tmp_path / "jobs" / "batch.json"
    batch.parent.mkdir()
    batch.write_text(json.dumps([{"prompt": "x", "output": "a.png", "lora": "style.safetensors"}]))
    monkeypatch.chdir(tmp_path)
    code, report, _ = run_json(qwen_image.main, "--batch", batch)
    assert code == ExitCode.USAGE and str(batch.parent / "style.safetensors") in report["error"], report
    assert "batch file's folder" in report["fix"], report


@pytest.mark.parametrize("text", ["dissolve 1e400 s", "fade -1s", "fade x1.5s"])
def test_a_transition_length_that_is_not_a_plain_number_of_seconds_is_refused_not_misread(text):
    from producer.production.scenes import parse_transition

    got = parse_transition(text)  # these were read as 400 s, 1 s and 1.5 s
    assert isinstance(got, str) and "plain positive number of seconds" in got
    assert parse_transition("dissolve (1.5 seconds)") == ("dissolve", 1.5)


def test_a_clip_under_ten_pixels_a_side_reports_its_size(tmp_path):
    path = tmp_path / "tiny.mp4"
    video.write_mp4(np.zeros((5, 6, 8, 3), "uint8"), path, fps=16)
    info = video.probe_video(path)  # the size was read only with 2 digits or more: null here
    assert (info["width"], info["height"]) == (8, 6)


def test_check_refuses_a_transition_longer_than_the_clips_it_joins(tmp_path, capsys):
    """Found before any clip is made, not by the assembler at the end."""
    import shutil
    from pathlib import Path

    from producer.commands import production

    root = tmp_path / "film"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "lighthouse", root)
    plan = root / "scene-breakdown.md"
    plan.write_text(plan.read_text().replace("**Transition to Next**: cut", "**Transition to Next**: dissolve 99 s"))
    code = production.main(["check", str(root), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code != 0 and "lasts 99 s, longer than a clip it joins" in json.dumps(report), report


def test_an_edit_never_replaces_its_own_reference(tmp_path, capsys):
    """With --overwrite the picture edited would be gone, and the new one's recipe would name content that no
    longer exists (stale for good); the same rule as the film's."""
    hero = tmp_path / "hero.png"
    Image.new("RGB", (64, 64), "red").save(hero)
    before = hero.read_bytes()
    code = qwen_image.main(["-r", str(hero), "-p", "red hair", "-o", str(hero), "--overwrite", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == ExitCode.USAGE and "one of its own inputs" in out["error"] and hero.read_bytes() == before
