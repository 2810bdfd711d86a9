"""Replacing a set of files that belong together (outputs.atomic_outputs): the whole old set or the whole new
set, at every point of the commit, under every fault the hook injects (producer.files.faults): a full disk, a
failing disk, an error, Ctrl-C or SIGTERM (held until the set is in place), SIGKILL (the next write, or
`outputs.recover`, puts the old set back). Then the same through the three scripts' own writers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from producer import cli
from producer.files import faults, outputs

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NAMES = ["a.first.png", "a.mp4", "a.mp4.provenance.json"]  # a clip's set, in its order of renaming
OLD = {name: f"old {name}".encode() for name in NAMES}
NEW = {name: f"new {name}".encode() for name in NAMES}
ERRORS = ["ENOSPC", "EIO", "error"]


def commit_points(names, output, replacing=True):
    """Every point of a commit of `names`, in the order a run passes them."""
    return ([f"fsync:{n}" for n in names] + ([f"backup:{n}" for n in names] if replacing else [])
            + [f"journal:{output}"] + [f"commit:{n}" for n in names] + [f"committed:{output}"])


POINTS = commit_points(NAMES, "a.mp4")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def write_set(folder: Path, content: dict[str, bytes]) -> None:
    with outputs.atomic_outputs(*(folder / n for n in NAMES), output=folder / "a.mp4") as temps:
        for tmp, name in zip(temps, NAMES):
            tmp.write_bytes(content[name])


def error_type(action: str):
    return {"ENOSPC": cli.CliError, "EIO": OSError, "error": RuntimeError}[action]


@pytest.mark.parametrize("action", ERRORS)
def test_an_error_at_any_point_of_a_commit_keeps_the_old_set(tmp_path, inject, action):
    for point in POINTS:
        for name in NAMES:
            (tmp_path / name).write_bytes(OLD[name])
        inject(point, action)
        with pytest.raises(error_type(action)) as info:
            write_set(tmp_path, NEW)
        assert files(tmp_path) == OLD, point  # every file of the old set, and nothing else (no temp, no journal)
        if action == "ENOSPC":  # the output asked for, and the file of its set, never a temp or journal file
            what = "" if point.endswith(":a.mp4") else f" (its {point.partition(':')[2]})"
            assert info.value.message == f"the disk is full while writing {tmp_path / 'a.mp4'}{what}", point


@pytest.mark.parametrize("action", ERRORS)
def test_an_error_in_a_first_write_leaves_nothing(tmp_path, inject, action):
    for point in commit_points(NAMES, "a.mp4", replacing=False):
        inject(point, action)
        with pytest.raises(error_type(action)):
            write_set(tmp_path, NEW)
        assert files(tmp_path) == {}, point


@pytest.mark.parametrize("action", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_commit_lands_once_the_new_set_is_in_place(tmp_path, inject, action):
    raised = KeyboardInterrupt if action == "SIGINT" else cli.Terminated
    for point in POINTS[len(NAMES):]:  # from the first backup on: inside the commit
        for name in NAMES:
            (tmp_path / name).write_bytes(OLD[name])
        inject(point, action)
        with cli._sigterm_raises(), pytest.raises(raised):
            write_set(tmp_path, NEW)
        assert files(tmp_path) == NEW, point


def test_a_signal_before_the_commit_keeps_the_old_set(tmp_path, inject):
    for point in POINTS[:len(NAMES)]:
        for name in NAMES:
            (tmp_path / name).write_bytes(OLD[name])
        inject(point, "SIGINT")
        with pytest.raises(KeyboardInterrupt):
            write_set(tmp_path, NEW)
        assert files(tmp_path) == OLD, point


KILLED = """
    import sys
    from pathlib import Path
    from producer.files import outputs
    folder, names = Path(sys.argv[1]), sys.argv[2:]
    with outputs.atomic_outputs(*(folder / n for n in names), output=folder / "a.mp4") as temps:
        for tmp, name in zip(temps, names):
            tmp.write_bytes(f"new {name}".encode())
"""


def test_a_run_killed_at_any_point_of_a_commit_is_rolled_back_by_the_next(tmp_path):
    """SIGKILL cannot be held or caught: the journal left behind lets the next write of the set (`recover` of
    each file) put the old set back, and remove temp files and kept old files of the dead process. Before that, a reader never sees an old clip under a new recipe: the recipe is
    renamed last."""
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    for point in POINTS:
        for name in NAMES:
            (tmp_path / name).write_bytes(OLD[name])
        killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path), *NAMES],
                                env={**env, faults.ENV: f"{point}=SIGKILL"}, capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        seen = {n: (tmp_path / n).read_bytes() for n in NAMES}
        if seen["a.mp4.provenance.json"] == NEW["a.mp4.provenance.json"]:
            assert seen["a.mp4"] == NEW["a.mp4"], point
        if point.startswith(("backup:", "journal:", "commit:", "committed:")) and point != "backup:a.first.png":
            assert any(".old-" in n for n in files(tmp_path)), point  # what the roll-back needs is there
        for name in NAMES:  # as the next write of the set does first
            outputs.recover(tmp_path / name)
        assert files(tmp_path) == OLD, point
    write_set(tmp_path, NEW)  # and the next write goes through
    assert files(tmp_path) == NEW


def test_the_next_write_of_the_set_rolls_a_killed_commit_back_first(tmp_path):
    for name in NAMES:
        (tmp_path / name).write_bytes(OLD[name])
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS), faults.ENV: "commit:a.mp4=SIGKILL"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path), *NAMES], env=env)
    assert (tmp_path / "a.first.png").read_bytes() == NEW["a.first.png"]  # half done
    assert list(tmp_path.glob(".a.mp4.commit-*.json"))  # the journal of the killed commit
    later = {n: f"later {n}".encode() for n in NAMES}
    write_set(tmp_path, later)
    assert files(tmp_path) == later


# ---------------------------------------------------------------- through the scripts' writers


def gradient(path: Path) -> Path:
    yy, xx = np.mgrid[0:64, 0:96]
    Image.fromarray((np.stack([xx / 96, yy / 64, np.full((64, 96), 0.5)], -1) * 255).astype(np.uint8)).save(path)
    return path


def wan_request(tmp_path: Path, seed: int):
    from producer.makers import wan_video

    args = wan_video.build().parse_args(["--start-frame", str(gradient(tmp_path / "kf.png")), "--prompt", "waves",
                                         "--seed", str(seed), "--size", "64x64", "--frames", "9",
                                         "-o", str(tmp_path / "v.mp4"), "--overwrite"])
    return wan_video.resolve_request(args, distilled=True)


def wan_frames(shade: int) -> np.ndarray:
    return np.full((9, 64, 64, 3), shade, np.uint8)


WAN_SET = ["v.first.png", "v.last.png", "v.contact.png", "v.mp4", "v.mp4.provenance.json"]


def test_wan_replacing_a_clip_keeps_the_whole_old_set_at_every_fault(tmp_path, inject):
    """wan_video.py's writer (review PNGs, clip, recipe) at every point of its commit, with every error."""
    from producer.makers import wan_video

    req = wan_request(tmp_path, 1)
    wan_video.write_outputs(wan_frames(40), req, {"settings": {"seed": 1}})
    old = files(tmp_path)
    assert set(WAN_SET) < set(old)
    for point in commit_points(WAN_SET, "v.mp4"):
        for action in ERRORS:
            inject(point, action)
            with pytest.raises(error_type(action)):
                wan_video.write_outputs(wan_frames(200), req, {"settings": {"seed": 2}})
            assert files(tmp_path) == old, (point, action)
    for point in commit_points(WAN_SET, "v.mp4")[len(WAN_SET):]:
        inject(point, "SIGINT")
        with pytest.raises(KeyboardInterrupt):
            wan_video.write_outputs(wan_frames(200), req, {"settings": {"seed": 2}})
        now = files(tmp_path)
        assert all(now[n] != old[n] for n in WAN_SET) and set(now) == set(old), point  # the whole new set
        wan_video.write_outputs(wan_frames(40), req, {"settings": {"seed": 1}})
        assert files(tmp_path) == old  # (the writer is deterministic: the old set again, for the next point)


def run(main, *argv) -> tuple[int, dict, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    assert "Traceback" not in err.getvalue()
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}, err.getvalue()


@pytest.mark.usefixtures("standin_hf_home")
def test_wan_overwrite_interrupted_or_out_of_disk_keeps_the_old_clip_with_its_recipe(tmp_path, inject):
    """The whole script: `--overwrite` meets a full disk between the clip's rename and its recipe's (the old
    code had already deleted the recipe and replaced the review PNGs), then Ctrl-C at the same point: held until
    the new set is in place, after which the run has nothing left to do, so it succeeds."""
    from producer.makers import wan_video

    start = gradient(tmp_path / "kf.png")
    argv = ["--start-frame", start, "--prompt", "waves", "-o", tmp_path / "v.mp4", "--size", "64x64", "--frames", 9,
            "--quiet", "--json"]
    assert run(wan_video.main, *argv, "--seed", 1)[0] == 0
    old = files(tmp_path)
    inject("commit:v.mp4.provenance.json", "ENOSPC")
    code, result, err = run(wan_video.main, *argv, "--seed", 2, "--overwrite")
    assert code == cli.ExitCode.FAILED and result["disk_full"], err
    assert result["error"] == f"the disk is full while writing {tmp_path / 'v.mp4'} (its v.mp4.provenance.json)"
    assert files(tmp_path) == old
    inject("commit:v.mp4", "SIGINT")
    code, result, err = run(wan_video.main, *argv, "--seed", 2, "--overwrite")
    assert code == cli.ExitCode.OK and "SIGINT arrived after the outputs were complete" in err, err
    now = files(tmp_path)
    assert all(now[n] != old[n] for n in WAN_SET) and json.loads(now["v.mp4.provenance.json"])["settings"]["seed"] == 2
    assert set(now) == set(old)  # no temp file, journal or lock


@pytest.mark.usefixtures("standin_hf_home")
def test_qwen_replacing_a_picture_keeps_the_old_one_at_every_fault(tmp_path, inject):
    from producer.makers import qwen_image

    argv = ["--prompt", "a red fox", "-o", tmp_path / "kf.png", "--lightning", "off", "--cfg", 1, "--steps", 2,
            "--size", "64x64", "--quiet", "--json", "--overwrite"]
    assert run(qwen_image.main, *argv, "--seed", 1)[0] == 0
    old = files(tmp_path)
    for point, action in [("fsync:kf.png", "ENOSPC"), ("commit:kf.png", "EIO")]:  # the points of a set of one
        inject(point, action)
        code, result, err = run(qwen_image.main, *argv, "--seed", 2)
        assert code == cli.ExitCode.FAILED and files(tmp_path) == old, (point, action, err)
        if action == "ENOSPC":
            assert result["error"] == f"the disk is full while writing {tmp_path / 'kf.png'}"
    inject("commit:kf.png", "SIGTERM")  # held over the rename; then nothing is left to do: a success
    code, _, err = run(qwen_image.main, *argv, "--seed", 2)
    assert code == cli.ExitCode.OK and files(tmp_path)["kf.png"] != old["kf.png"], err
    assert set(files(tmp_path)) == set(old)


FILM_SET = ["film.contact.png", "film.mp4", "film.mp4.provenance.json"]


def clips(folder: Path) -> list[Path]:
    from producer.files import video

    paths = []
    for i in range(2):
        paths.append(folder / f"c{i}.mp4")
        video.write_mp4([np.full((32, 32, 3), 40 * i, np.uint8)] * 3, paths[-1], fps=16)
    return paths


def test_assemble_replacing_a_film_keeps_the_whole_old_set_at_every_fault(tmp_path, inject):
    """assemble_video.py: contact sheet, film and recipe at every point of the commit; then the rerun."""
    from producer.makers import assemble_video

    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["--clips", *clips(tmp_path), "-o", folder / "film.mp4", "--json"]
    assert run(assemble_video.main, *argv)[0] == 0
    old = files(folder)
    assert sorted(old) == sorted(FILM_SET)
    for i, point in enumerate(commit_points(FILM_SET, "film.mp4")):
        action = ERRORS[i % len(ERRORS)]  # every point, each error in turn (an encode each: kept short)
        inject(point, action)
        code, result, err = run(assemble_video.main, *argv, "--title", "new", "--overwrite")
        assert code == cli.ExitCode.FAILED and files(folder) == old, (point, action, err)
        if action == "ENOSPC":
            assert result["error"].startswith(f"the disk is full while writing {folder / 'film.mp4'}"), point
    inject("commit:film.mp4", "SIGINT")  # held until the set is in place; the film is complete: a success
    code, _, err = run(assemble_video.main, *argv, "--title", "new", "--overwrite")
    assert code == cli.ExitCode.OK and "SIGINT arrived after the outputs were complete" in err, err
    now = files(folder)
    assert sorted(now) == sorted(FILM_SET) and all(now[n] != old[n] for n in FILM_SET)


def test_assemble_interrupted_before_its_commit_leaves_no_contact_sheet_and_the_rerun_runs(tmp_path, inject):
    """The contact sheet used to be renamed before the film: Ctrl-C there left it, and the rerun refused."""
    from producer.makers import assemble_video

    argv = ["--clips", *clips(tmp_path), "-o", tmp_path / "film.mp4", "--json"]
    inject("rename:film.mp4.provenance.json", "SIGINT")
    code, _, err = run(assemble_video.main, *argv)
    assert code == cli.ExitCode.INTERRUPTED, err
    assert sorted(files(tmp_path)) == ["c0.mp4", "c1.mp4"]
    faults.reset()
    os.environ.pop(faults.ENV)
    code, _, err = run(assemble_video.main, *argv)
    assert code == 0, err
    assert sorted(files(tmp_path)) == ["c0.mp4", "c1.mp4", *FILM_SET]


def test_a_full_disk_while_downloading_names_the_file_not_the_cache_blob(tmp_path):
    import errno

    from producer.modelfiles import download

    blob = tmp_path / "blobs" / "0123abcd.incomplete"
    with pytest.raises(cli.CliError) as info:
        with download._disk_full_message(blob, "high_noise_model/diffusion_pytorch_model.safetensors of Wan-AI/x"):
            raise OSError(errno.ENOSPC, "No space left on device", str(blob))
    assert info.value.message.startswith("the disk filled up while downloading high_noise_model/")
    assert "0123abcd" not in info.value.message and info.value.details["disk_full"]
