"""Arguments that reach arithmetic, a closed stdout, messages that must not mislead, a signal after success.

Numbers are refused while the arguments are read (cli.number_arg): nan, inf, 1e308, negative or huge counts
never reach a schedule, an encoder or a frame count. No model is installed in these tests, so a run that got
past the arguments would end at "not installed" (exit 3): exit 2 naming the option shows where it stopped.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_json
from PIL import Image
from producer import cli
from producer.cli import CliError, ExitCode
from producer.commands import production as tool
from producer.makers import assemble_video, qwen_image, wan_video
from producer.runs import batch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lighthouse"


run = run_json


def picture(path: Path, size=(96, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- numbers


NUMBERS = [
    ("5", {"low": 0, "high": 100, "above": True}, 5.0),
    ("100", {"low": 0, "high": 100}, 100.0),
    ("0", {"low": 0, "high": 100, "above": True}, None),
    ("nan", {"low": 0, "high": 100}, None),
    ("inf", {"low": 0}, None),
    ("-inf", {"high": 3}, None),
    ("1e308", {"low": 0, "high": 60}, None),
    ("1e400", {"low": 0}, None),
    ("-1", {"low": 0, "high": 51, "whole": True}, None),
    ("7", {"low": 1, "whole": True}, 7),
    ("7.5", {"low": 1, "whole": True}, None),
    ("9" * 5000, {"low": 1, "whole": True}, None),
    ("x", {"low": 0}, None),
]


@pytest.mark.parametrize("text,kwargs,ok", NUMBERS, ids=[f"{t[:8]}-{sorted(k.items())}" for t, k, _ in NUMBERS])
def test_number_arg_takes_finite_numbers_in_range_only(text, kwargs, ok):
    import argparse

    parse = cli.number_arg(**kwargs)
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match="give (a|a whole) number"):
            parse(text)
    else:
        assert parse(text) == ok and type(parse(text)) is type(ok)


WAN = ["--start-frame", "kf.png", "--prompt", "waves", "-o", "v.mp4"]
QWEN = ["--prompt", "a fox", "-o", "kf.png"]
REFUSED = [  # (script, argv, option, the range its message gives)
    *[
        (wan_video, WAN + [f"--shift={v}"], "--shift", "above 0 to 100")
        for v in ("nan", "inf", "-inf", "0", "-1", "1e308")
    ],
    *[
        (wan_video, WAN + [f"--duration={v}"], "--duration", "above 0 to 60")
        for v in ("1e308", "nan", "inf", "0", "-3")
    ],
    *[(wan_video, WAN + [f"--frames={v}"], "--frames", "1 to 961") for v in ("-5", "0", "1000000000", "81.5")],
    *[(wan_video, WAN + [f"--steps={v}"], "--steps", "1 to 200") for v in ("0", "-4", "100000")],
    *[
        (wan_video, WAN + [f"{o}={v}"], o, "0 to 20")
        for o in ("--guidance", "--guidance-2")
        for v in ("nan", "-1", "inf")
    ],
    (wan_video, WAN + ["--context-parallel=0"], "--context-parallel", "at least 1"),
    *[(wan_video, WAN + [f"--size={v}"], "--size", "1 to 4096") for v in ("160000x160000", "0x480", "832x-16")],
    *[(qwen_image, QWEN + [f"--steps={v}"], "--steps", "1 to 200") for v in ("0", "-1", "1e9")],
    *[(qwen_image, QWEN + [f"--cfg={v}"], "--cfg", "0 to 20") for v in ("nan", "inf", "-1", "1e308")],
    *[(qwen_image, QWEN + [f"--control-strength={v}"], "--control-strength", "above 0 to 2") for v in ("nan", "0")],
    *[
        (qwen_image, QWEN + [other, "480", f"{o}={v}"], o, "1 to 65536")
        for o, other in (("--width", "--height"), ("--height", "--width"))
        for v in ("0", "-5", "1000000000")
    ],
    (qwen_image, QWEN + ["--batch", "b.json", "--workers=0"], "--workers", "at least 1"),
    *[
        (assemble_video, ["--clips", "a.mp4", "-o", "f.mp4", f"--crf={v}"], "--crf", "0 to 51")
        for v in ("-1", "52", "nan")
    ],
    *[
        (assemble_video, ["--clips", "a.mp4", "-o", "f.mp4", f"--audio-fade={v}"], "--audio-fade", "0 to 30")
        for v in ("nan", "-1", "inf")
    ],
    *[
        (assemble_video, ["--clips", "a.mp4", "-o", "f.mp4", f"--card-seconds={v}"], "--card-seconds", "above 0 to 30")
        for v in ("nan", "0", "1e308")
    ],
]


@pytest.mark.parametrize("script,argv,option,allowed", REFUSED, ids=[f"{s.__name__} {a[-1]}" for s, a, _, _ in REFUSED])
def test_numbers_out_of_range_are_refused_while_the_arguments_are_read(
    tmp_path, monkeypatch, script, argv, option, allowed
):
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "kf.png")
    code, result, _ = run(script.main, *argv)
    assert code == ExitCode.USAGE, result
    assert result["error"].startswith(f"argument {option}") and allowed in result["error"], result["error"]
    assert sorted(os.listdir(tmp_path)) == ["kf.png"]  # nothing written


def test_width_zero_is_refused_not_ignored(tmp_path, monkeypatch):
    """`--width 0 --height 480` used to fall through to the default size ("0" is false)."""
    monkeypatch.chdir(tmp_path)
    code, result, _ = run(qwen_image.main, *QWEN, "--width", "0", "--height", "480")
    assert code == ExitCode.USAGE and "--width" in result["error"]


def test_a_size_that_cannot_be_computed_with_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, result, _ = run(qwen_image.main, *QWEN, "--size", "0x480")
    assert code == ExitCode.USAGE and "1 to 65536" in result["error"]


def test_a_batch_job_number_is_checked_like_the_flag(tmp_path):
    """JSON reads NaN and 1e400 (inf) as numbers: a job gets the same refusal as the command line."""
    picture(tmp_path / "kf.png")
    (tmp_path / "b.json").write_text(
        '[{"start-frame": "kf.png", "prompt": "x", "output": "a.mp4", "shift": NaN},'
        ' {"start-frame": "kf.png", "prompt": "x", "output": "b.mp4", "duration": 1e400}]'
    )
    jobs = batch.parse_jobs(wan_video.build(), tmp_path / "b.json", wan_video.PATH_OPTIONS, wan_video.BATCH_ONLY)
    assert all(isinstance(j, CliError) for j in jobs)
    assert "--shift" in jobs[0].message and "--duration" in jobs[1].message


# ---------------------------------------------------------------- a closed stdout


def closed_stdout(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone, as `... | head -c 5` gives once head has exited."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            check=False,
            env={**os.environ, "PYTHONPATH": str(SCRIPTS)},
            timeout=120,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        [str(SCRIPTS / "qwen_image.py"), "--json"],  # a usage error's JSON
        [str(SCRIPTS / "production.py"), "status", "film", "--json"],
    ],
    ids=["qwen-error", "status"],
)
def test_a_closed_stdout_ends_quietly(tmp_path, argv):
    import shutil

    shutil.copytree(EXAMPLE, tmp_path / "film")
    done = closed_stdout(argv, tmp_path)
    assert done.returncode == ExitCode.STDOUT_CLOSED == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr and "Exception ignored" not in done.stderr


# ---------------------------------------------------------------- messages that must not mislead


def test_a_symlink_loop_is_named_as_a_loop(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("loop.png", "loop.png")
    os.symlink("gone.png", "dangling.png")
    code, result, _ = run(qwen_image.main, *QWEN, "-r", "loop.png")
    assert code == ExitCode.USAGE and "leads in a circle" in result["error"] and "does not exist" not in result["error"]
    code, result, _ = run(qwen_image.main, *QWEN, "-r", "dangling.png")
    assert "a symbolic link to gone.png, which does not exist" in result["error"]
    code, result, _ = run(qwen_image.main, "--batch", "loop.png")
    assert "leads in a circle" in result["error"]


def test_a_nul_in_a_name_is_named_as_such(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps([{"prompt": "x", "reference": "a\u0000b.png", "output": "o.png"}]))
    job = batch.parse_jobs(qwen_image.build(), tmp_path / "b.json", qwen_image.PATH_OPTIONS, qwen_image.BATCH_ONLY)[0]
    assert isinstance(job, CliError) and "NUL character" in job.message and "outside" not in job.message
    code, result, _ = run(qwen_image.main, *QWEN, "-r", tmp_path / "a\0b.png")
    assert code == ExitCode.USAGE and "NUL character" in result["error"]


def test_a_negative_crf_is_a_bad_argument_not_a_full_disk(tmp_path):
    code, result, _ = run(assemble_video.main, "--clips", tmp_path / "a.mp4", "-o", tmp_path / "f.mp4", "--crf=-1")
    assert code == ExitCode.USAGE and "--crf" in result["error"] and "disk" not in result["error"] + result["fix"]


def test_a_size_derived_from_an_extreme_reference_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "strip.png", (2000, 40))
    code, result, _ = run(qwen_image.main, *QWEN, "-r", "strip.png")
    assert code == ExitCode.USAGE, result
    assert "no size was given" in result["error"] and "2000x40" in result["error"], result["error"]
    assert "--size" in result["fix"]
    assert not (tmp_path / "kf.png").exists()


# ---------------------------------------------------------------- a signal just after success


@pytest.mark.parametrize("action", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_last_commit_is_a_success(tmp_path, inject, action):
    """`approve` writes approvals.json and has nothing left to do: a signal held over that commit used to end
    the run with exit 130/143 ("no partial output was kept") although the approval was recorded."""
    import shutil

    shutil.copytree(EXAMPLE, tmp_path / "film")
    inject("commit:approvals.json", action)
    code, result, err = run(tool.main, "approve", tmp_path / "film", "philosophy")
    assert code == ExitCode.OK and result["approved"][0]["approved"] == "philosophy", err
    assert f"{action} arrived after the outputs were complete" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are back
    code, result, _ = run(tool.main, "status", tmp_path / "film")
    assert any(a["name"] == "philosophy" for a in result["approvals"])


def test_a_signal_after_a_commit_still_stops_the_next_step(tmp_path, inject):
    """Within a run the held signal lands where new work begins (a stage, a batch job), not later."""
    from producer.files import held_signals, outputs

    inject("commit:a.json", "SIGINT")
    with held_signals.one_run(), pytest.raises(KeyboardInterrupt):
        outputs.write_json_atomic(tmp_path / "a.json", {"a": 1})
        assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}  # in place before the signal lands
        with cli.Stopwatch().stage("denoise"):
            pytest.fail("the next stage started although Ctrl-C came before it")
    assert held_signals.signal_after_commit() is None


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1e308", "1e20", "NaN"])
def test_pose_keypoints_that_cannot_be_drawn_are_refused(tmp_path, value):
    """Numbers in a keypoints file reach the drawing too: inf and 1e308 crashed it (OverflowError)."""
    from producer.engines.qwen import pose

    values = ", ".join(["100, 100, 1"] * 17 + [f"{value}, 50, 1"])
    (tmp_path / "k.json").write_text(
        f'{{"canvas_width": 256, "canvas_height": 256, "people": [{{"pose_keypoints_2d": [{values}]}}]}}'
    )
    with pytest.raises(CliError, match="finite numbers within"):
        pose.draw_keypoints_json(tmp_path / "k.json", (256, 256))


def test_every_path_option_names_a_nul_or_a_loop(tmp_path, monkeypatch):
    """The same two messages wherever a path enters: outputs, folders, style, pose, audio, --models-dir."""
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "a.png")
    os.symlink("loop", "loop")
    for bad in ("a\0b", "loop/x"):
        says = "NUL character" if "\0" in bad else "leads in a circle"
        for main, argv in [
            (qwen_image.main, [*QWEN[:2], "-o", bad + ".png"]),
            (qwen_image.main, [*QWEN, "--style-ref", bad]),
            (qwen_image.main, [*QWEN, "-r", "a.png", "--pose", bad]),
            (qwen_image.main, [*QWEN, "--models-dir", bad]),
            (qwen_image.main, ["--batch", bad]),
            (wan_video.main, ["--start-frame", "a.png", "--prompt", "x", "-o", bad + ".mp4"]),
            (assemble_video.main, ["--clips", bad, "-o", "f.mp4"]),
            (assemble_video.main, ["--clips", "a.png", "-o", "f.mp4", "--audio", bad]),
            (tool.main, ["check", bad]),
        ]:
            code, result, _ = run(main, *argv)
            assert code == ExitCode.USAGE and says in result["error"], (bad, argv, result["error"])


def test_an_encoder_failure_that_is_not_a_full_disk_does_not_send_you_to_df(tmp_path):
    """ffmpeg refusing a setting (a CRF it does not take, reached through the library) gives ffmpeg's reason; the
    fix no longer guesses at free disk space (a full disk is recognised by its own message)."""
    from producer.files import video

    with pytest.raises(CliError) as info:
        video.write_mp4([np.zeros((32, 32, 3), np.uint8)] * 3, tmp_path / "a.mp4", fps=16, crf=-5)
    assert "disk" not in info.value.message + info.value.fix and "ffmpeg" in info.value.message
    assert not (tmp_path / "a.mp4").exists()
