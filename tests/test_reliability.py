"""Faults injected into real runs on the stand-ins, in-process: Ctrl-C and SIGTERM at every stage, out of
memory in a batch (stop and retry), a full disk at every writer. After each: the documented exit code, no
file under a final name that is not complete, no temp file or lock left, earlier outputs intact, and a
rerun that finishes the job (a batch skips what was finished).

The signals are real (producer.files.faults sends them to this process at the named point); the subprocess
tests in test_interruptions.py send them from outside and add a real second run.
"""

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from producer.cli import ExitCode
from producer.files import faults, provenance, video
from producer.makers import qwen_image, wan_video

pytestmark = pytest.mark.usefixtures("standin_hf_home", "real_signals")

WAN_FAST = ["--size", "64x64", "--frames", "9", "--quiet", "--json"]
QWEN_FAST = ["--lightning", "off", "--cfg", "1", "--steps", "2", "--size", "64x64", "--quiet", "--json"]
EXIT = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}


@pytest.fixture
def real_signals(monkeypatch):
    """Ctrl-C raises KeyboardInterrupt, as in any Python script (a test runner may have changed that)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    faults.reset()
    yield
    signal.signal(signal.SIGINT, previous)
    faults.reset()


def inject(monkeypatch, point: str, action: str) -> None:
    monkeypatch.setenv(faults.ENV, f"{point}={action}")
    faults.reset()


def leftovers(folder: Path) -> list[str]:
    """Temp files and locks: nothing of the kind may survive a run, however it ended."""
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name or p.name.endswith(".lock"))


def complete_pngs(folder: Path) -> None:
    for png in folder.rglob("*.png"):
        with Image.open(png) as im:
            im.load()  # a truncated file raises here


def run(main, *argv) -> tuple[int, dict, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    lines = out.getvalue().strip().splitlines()
    assert "Traceback" not in err.getvalue()
    return code, json.loads(lines[-1]) if lines else {}, err.getvalue()


def gradient(path: Path) -> Path:
    yy, xx = np.mgrid[0:64, 0:96]
    Image.fromarray((np.stack([xx / 96, yy / 64, np.full((64, 96), 0.5)], -1) * 255).astype(np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- interruption at every stage

# The subprocess tests (test_interruptions.py) signal Wan from outside at load_experts, denoise, decode and the
# clip's rename; these cover the other points of a Wan run, and Qwen's stages.
WAN_POINTS = [("stage:load_text_encoder", "SIGINT"), ("rename:video.first.png", "SIGTERM"),
              ("rename:video.mp4.provenance.json", "SIGINT")]
QWEN_POINTS = [("stage:load", "SIGTERM"), ("stage:text_encode", "SIGINT"), ("stage:denoise", "SIGTERM"),
               ("stage:decode", "SIGINT"), ("rename:kf.png", "SIGTERM")]


def test_wan_interrupted_at_every_stage_keeps_nothing_partial(tmp_path, monkeypatch):
    start = gradient(tmp_path / "kf.png")
    scene = tmp_path / "scene-01"
    scene.mkdir()
    argv = ["--start-frame", start, "--prompt", "waves", "--seed", 3, "-o", scene / "video.mp4", *WAN_FAST]
    for point, action in WAN_POINTS:
        inject(monkeypatch, point, action)
        code, result, err = run(wan_video.main, *argv)
        assert code == EXIT[getattr(signal, action)], (point, err)
        assert result["status"] == "error" and "no partial output" in result["error"]
        assert not (scene / "video.mp4").exists()
        assert leftovers(tmp_path) == [], point
        complete_pngs(scene)  # review PNGs written before the clip are whole; a rerun replaces them
        # (test_interruptions.py reruns such a clip without --overwrite)


def test_qwen_interrupted_at_every_stage_keeps_nothing_partial(tmp_path, monkeypatch):
    argv = ["--prompt", "a red fox", "--seed", 1, "-o", tmp_path / "kf.png", *QWEN_FAST]
    for point, action in QWEN_POINTS:
        inject(monkeypatch, point, action)
        code, result, err = run(qwen_image.main, *argv)
        assert code == EXIT[getattr(signal, action)] and "no partial output" in result["error"], (point, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == [], point  # no PNG, no temp file, no lock
    monkeypatch.delenv(faults.ENV)
    assert run(qwen_image.main, *argv)[0] == 0


def qwen_batch(folder: Path, names="abc") -> list:
    jobs = [{"prompt": f"picture {name}", "seed": i, "output": f"{name}.png"} for i, name in enumerate(names)]
    defaults = {"cfg": 1, "steps": 2, "size": "64x64", "lightning": "off"}
    (folder / "jobs.json").write_text(json.dumps({"defaults": defaults, "jobs": jobs}))
    return ["--batch", folder / "jobs.json", "--quiet", "--json"]


def test_an_interrupted_batch_continues_where_it_stopped(tmp_path, monkeypatch):
    argv = qwen_batch(tmp_path)
    inject(monkeypatch, "rename:b.png", "SIGINT")
    code, _, err = run(qwen_image.main, *argv)
    assert code == ExitCode.INTERRUPTED and "--batch runs continue where they stopped" in err
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png"] and leftovers(tmp_path) == []
    first = (tmp_path / "a.png").read_bytes()
    monkeypatch.delenv(faults.ENV)
    code, result, err = run(qwen_image.main, *argv)
    assert code == 0, err
    assert [j["status"] for j in result["jobs"]] == ["skipped", "ok", "ok"]
    assert (tmp_path / "a.png").read_bytes() == first  # finished work is never redone or touched


def first_call_says_missing(real):
    """As if the output did not exist yet when the batch was planned (another run was still making it)."""
    calls = []

    def check(*a, **k):
        calls.append(1)
        return False if len(calls) == 1 else real(*a, **k)

    return check


def test_a_batch_output_another_run_made_meanwhile_is_not_made_again(tmp_path, monkeypatch):
    argv = qwen_batch(tmp_path, names="a")
    assert run(qwen_image.main, *argv)[0] == 0
    made = (tmp_path / "a.png").read_bytes()
    start = qwen_image.BatchRun._start

    def planned_before_the_other_run_finished(self, kind):
        (tmp_path / "a.png").rename(tmp_path / "elsewhere")  # not there yet while the batch plans...
        start(self, kind)
        (tmp_path / "elsewhere").rename(tmp_path / "a.png")  # ...there when its turn comes

    monkeypatch.setattr(qwen_image.BatchRun, "_start", planned_before_the_other_run_finished)
    code, result, err = run(qwen_image.main, *argv)
    assert code == 0 and result["jobs"][0]["status"] == "skipped" and "meanwhile" in result["jobs"][0]["reason"], err
    assert (tmp_path / "a.png").read_bytes() == made


def test_a_wan_clip_another_run_made_meanwhile_is_not_made_again(tmp_path, monkeypatch):
    gradient(tmp_path / "kf.png")
    jobs = [{"start_frame": "kf.png", "prompt": "waves", "seed": 1, "output": "c0.mp4", "size": "64x64", "frames": 9}]
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    argv = ["--batch", tmp_path / "clips.json", "--quiet", "--json"]
    assert run(wan_video.main, *argv)[0] == 0
    made = (tmp_path / "c0.mp4").read_bytes()
    monkeypatch.setattr(wan_video, "up_to_date", first_call_says_missing(wan_video.up_to_date))
    monkeypatch.setattr(wan_video, "produce", lambda *a: pytest.fail("the clip was made twice"))
    code, result, err = run(wan_video.main, *argv)
    assert code == 0 and result["jobs"][0]["status"] == "skipped" and "meanwhile" in result["jobs"][0]["reason"], err
    assert (tmp_path / "c0.mp4").read_bytes() == made


# ---------------------------------------------------------------- out of memory in a batch


def oom_on_seed(monkeypatch, seed: int, times: int = 1) -> list:
    """The Qwen transformer runs out of memory for the job with `seed`, the first `times` times it denoises."""
    from diffusers import QwenImageTransformer2DModel
    from producer.engines.qwen import qwen

    current, failures = {}, []
    denoise, forward = qwen.QwenSession.denoise, QwenImageTransformer2DModel.forward

    def tracking_denoise(self, job):
        current["seed"] = job.seed
        return denoise(self, job)

    def failing_forward(self, *a, **k):
        if current.get("seed") == seed and len(failures) < times:
            failures.append(seed)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return forward(self, *a, **k)

    monkeypatch.setattr(qwen.QwenSession, "denoise", tracking_denoise)
    monkeypatch.setattr(QwenImageTransformer2DModel, "forward", failing_forward)
    return failures


def test_out_of_memory_stops_a_batch_with_the_plan_and_the_rerun_finishes_it(tmp_path):
    argv = qwen_batch(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        oom_on_seed(patch, seed=1)
        code, result, err = run(qwen_image.main, *argv)
    assert code == ExitCode.OUT_OF_MEMORY
    a, b, c = result["jobs"]
    assert a["status"] == "ok" and c["status"] == "not_run" and "job 1" in c["reason"]
    assert b["exit_code"] == ExitCode.OUT_OF_MEMORY and b["memory_plan"]["name"] == "cpu" and "next_offload" in b
    assert "with plan cpu" in b["error"] and "--on-oom retry" in b["fix"] and "stopped at job 1" in result["stopped"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png"] and leftovers(tmp_path) == []
    code, result, err = run(qwen_image.main, *argv)
    assert code == 0 and [j["status"] for j in result["jobs"]] == ["skipped", "ok", "ok"], err


def test_on_oom_retry_reloads_under_the_next_plan_and_runs_the_job_again(tmp_path, monkeypatch):
    from producer.engines.qwen import qwen_load
    from producer.sizing import memory

    argv = qwen_batch(tmp_path)
    failures = oom_on_seed(monkeypatch, seed=1)
    # A CPU has no more frugal plan than "cpu"; name one so that the reload path runs (a GPU plan has one).
    monkeypatch.setattr(memory, "next_offload", lambda plan: "sequential" if plan.name == "cpu" else None)
    loads = []
    load_session = qwen_load.load_session
    monkeypatch.setattr(qwen_load, "load_session", lambda *a, **k: loads.append(1) or load_session(*a, **k))
    code, result, err = run(qwen_image.main, *argv, "--on-oom", "retry")
    assert code == 0, err
    assert [j["status"] for j in result["jobs"]] == ["ok", "ok", "ok"] and failures == [1] and len(loads) == 2
    assert "reloading with --offload sequential" in err


def test_wan_batch_out_of_memory_retry_reloads_and_reencodes(tmp_path, monkeypatch):
    from diffusers import WanTransformer3DModel
    from producer.engines.wan import wan
    from producer.sizing import memory

    gradient(tmp_path / "kf.png")
    jobs = [{"start_frame": "kf.png", "prompt": "waves", "seed": 1, "output": "c0.mp4", "size": "64x64", "frames": 9}]
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    raised, sessions = [], []
    forward, from_files = WanTransformer3DModel.forward, wan.WanSession.from_files.__func__

    def failing_forward(self, *a, **k):
        if not raised:  # the clip's first step, once
            raised.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, *a, **k)

    def counted(cls, *a, **k):
        sessions.append(1)
        return from_files(cls, *a, **k)

    monkeypatch.setattr(WanTransformer3DModel, "forward", failing_forward)
    monkeypatch.setattr(wan.WanSession, "from_files", classmethod(counted))
    # A CPU has no more frugal plan than "cpu"; name one so that the reload path runs (a GPU plan has one).
    monkeypatch.setattr(memory, "next_offload", lambda plan: "sequential" if plan.name == "cpu" else None)
    code, result, err = run(wan_video.main, "--batch", tmp_path / "clips.json", "--on-oom", "retry", "--quiet",
                            "--json")
    assert code == 0, err
    assert [j["status"] for j in result["jobs"]] == ["ok"] and raised == [1] and len(sessions) == 2
    assert "reloading with --offload sequential" in err and leftovers(tmp_path) == []
    assert video.probe_video(tmp_path / "c0.mp4")["frames"] == 9


def test_out_of_memory_where_no_stage_catches_it_still_names_the_plan(tmp_path, monkeypatch):
    from producer.sizing import offload

    def placing_runs_out(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB (simulated)")

    monkeypatch.setattr(offload, "apply_plan", placing_runs_out)  # loading the transformer onto the card
    code, result, err = run(qwen_image.main, "--prompt", "a fox", "-o", tmp_path / "kf.png", *QWEN_FAST)
    assert code == ExitCode.OUT_OF_MEMORY and "with plan cpu" in result["error"], err
    assert result["memory_plan"]["name"] == "cpu" and "next_offload" in result and "smaller size" in result["fix"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_on_oom_and_allow_outside_belong_to_batches(tmp_path):
    for main, extra in ((qwen_image.main, ["--on-oom", "retry"]), (wan_video.main, ["--allow-outside"])):
        code, result, _ = run(main, "--prompt", "x", "-o", tmp_path / "x.png", *extra, "--json")
        assert code == ExitCode.USAGE and "applies to --batch runs only" in result["error"]


# ---------------------------------------------------------------- a full disk


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_stops_a_batch_keeps_the_previous_pngs_and_the_rerun_finishes(tmp_path, monkeypatch):
    argv = qwen_batch(tmp_path)
    (tmp_path / "b.png").write_bytes(b"an older picture, kept until a new one is complete")
    before = (tmp_path / "b.png").read_bytes()
    save = Image.Image.save

    def full_at_b(self, fp, *a, **k):
        if Path(fp).name.startswith(".b."):
            Path(fp).write_bytes(b"\x89PNG half")  # some bytes reach the temp file, then the disk is full
            enospc()
        return save(self, fp, *a, **k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "save", full_at_b)
        code, result, err = run(qwen_image.main, *argv, "--overwrite")
    assert code == ExitCode.FAILED, err
    assert [j["status"] for j in result["jobs"]] == ["ok", "error", "not_run"]
    assert result["jobs"][1]["disk_full"] and "free disk space" in result["jobs"][1]["fix"]
    assert (tmp_path / "b.png").read_bytes() == before and leftovers(tmp_path) == []
    code, result, err = run(qwen_image.main, *argv)
    assert code == ExitCode.PARTIAL and [j["status"] for j in result["jobs"]] == ["skipped", "error", "ok"], err
    assert "exists but was made with other settings" in result["jobs"][1]["error"]  # the older b.png is not ours


FAKE_FFMPEG = """#!/bin/sh
# ffmpeg, except that encoding meets a full disk: it writes a little, then fails as ffmpeg does.
case "$*" in *rawvideo*) ;; *) exec {real} "$@";; esac
for last; do :; done
printf partial > "$last"
echo "[out#0/mp4] Error writing trailer: No space left on device" >&2
exit 1
"""


def test_disk_full_writing_an_mp4_keeps_the_previous_clip(tmp_path, monkeypatch):
    start = gradient(tmp_path / "kf.png")
    old = tmp_path / "v.mp4"
    video.write_mp4([np.zeros((64, 64, 3), np.uint8)] * 2, old, fps=16)
    before = old.read_bytes()
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(FAKE_FFMPEG.format(real=video.ffmpeg_exe()))
    fake.chmod(0o755)
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
    code, result, err = run(wan_video.main, "--start-frame", start, "--prompt", "waves", "-o", old, "--overwrite",
                            *WAN_FAST)
    assert code == ExitCode.FAILED and result["disk_full"], err
    assert result["error"] == f"the disk is full while writing {old}"  # the output's name, not the temp file's
    assert old.read_bytes() == before and leftovers(tmp_path) == []


def recipes_hit_a_full_disk(monkeypatch):
    """Every JSON temp file (a recipe being written) meets a full disk; other writes go through."""
    write_text = Path.write_text

    def full_for_json(self, *a, **k):
        if self.suffix == ".json" and ".partial-" in self.name:
            enospc()
        return write_text(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_for_json)


def test_disk_full_writing_a_clips_recipe_leaves_no_clip_without_it(tmp_path, monkeypatch):
    start = gradient(tmp_path / "kf.png")
    argv = ["--start-frame", start, "--prompt", "waves", "--seed", 3, "-o", tmp_path / "v.mp4", *WAN_FAST]
    recipes_hit_a_full_disk(monkeypatch)
    code, result, err = run(wan_video.main, *argv)
    assert code == ExitCode.FAILED and "disk is full" in result["error"], err
    # No clip without its recipe (the same command then runs again without --overwrite), nothing half-written.
    assert not (tmp_path / "v.mp4").exists() and leftovers(tmp_path) == []


def test_disk_full_writing_a_films_recipe_leaves_no_film_without_it(tmp_path, monkeypatch):
    from producer.makers import assemble_video

    clips = []
    for i in range(2):
        clips.append(tmp_path / f"c{i}.mp4")
        video.write_mp4([np.full((32, 32, 3), 40 * i, np.uint8)] * 3, clips[-1], fps=16)
    recipes_hit_a_full_disk(monkeypatch)
    code, result, err = run(assemble_video.main, "--clips", *clips, "-o", tmp_path / "film.mp4", "--json")
    assert code == ExitCode.FAILED and "disk is full" in result["error"], err
    assert not (tmp_path / "film.mp4").exists() and leftovers(tmp_path) == []


def test_disk_full_writing_project_state_keeps_the_old_file(tmp_path, monkeypatch):
    import os
    import shutil

    from producer.commands import production

    sample = Path(__file__).resolve().parents[1] / "examples" / "lighthouse"
    root = tmp_path / "film"
    shutil.copytree(sample, root, ignore=shutil.ignore_patterns(".production"))
    assert run(production.main, "approve", root, "philosophy", "--json")[0] == 0
    state = root / ".production" / "approvals.json"
    before = state.read_bytes()
    monkeypatch.setattr(os, "fsync", enospc)
    code, result, err = run(production.main, "approve", root, "scenes", "--json")
    assert code == ExitCode.FAILED and "disk is full" in result["error"] and "Traceback" not in err
    assert state.read_bytes() == before and leftovers(root) == []


# ---------------------------------------------------------------- the writing primitives


def test_a_clip_and_its_recipe_are_renamed_together_even_when_ctrl_c_lands_between(tmp_path, monkeypatch):
    from producer.files import outputs

    replace, renamed = os.replace, []

    def replace_then_ctrl_c(src, dst):
        replace(src, dst)
        renamed.append(Path(dst).name)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the two renames

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), outputs.atomic_outputs(tmp_path / "v.mp4",
                                                              tmp_path / "v.mp4.provenance.json") as (clip, recipe):
        clip.write_bytes(b"clip")
        recipe.write_text("{}")
    assert renamed == ["v.mp4", "v.mp4.provenance.json"]  # held back until both were in place, then delivered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4", "v.mp4.provenance.json"]


def test_temp_files_of_a_killed_run_are_swept_by_the_next_write(tmp_path):
    import subprocess
    import sys

    from producer.files import outputs

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    killed = tmp_path / f".kf.partial-{dead}.png"  # left by a run that got SIGKILL
    alive = tmp_path / f".kf.partial-{os.getppid()}.png"  # another run, still writing
    killed.write_bytes(b"half")
    alive.write_bytes(b"half")
    with outputs.atomic_output(tmp_path / "kf.png") as tmp:
        tmp.write_bytes(b"whole")
    assert not killed.exists() and alive.exists() and (tmp_path / "kf.png").read_bytes() == b"whole"


def test_the_longest_output_name_allowed_fits_every_file_derived_from_it(tmp_path):
    from producer import cli
    from producer.files import outputs

    name = "v" * (outputs.MAX_NAME_BYTES - 4) + ".mp4"
    outputs.check_output_name(tmp_path / name)
    with outputs.atomic_outputs(tmp_path / name, provenance.sidecar_path(tmp_path / name)) as (clip, recipe):
        clip.write_bytes(b"clip")
        outputs.write_json_atomic(recipe, {"recipe": 1})  # a temp file inside a temp file: the longest name there is
    with pytest.raises(cli.CliError, match="at most 200"):
        outputs.check_output_name(tmp_path / ("v" + name))


def test_state_and_picture_metadata_carry_a_file_name_that_is_not_utf8(tmp_path):
    """A folder named with bytes that are not UTF-8 (Python holds them as lone surrogates) once crashed
    `rehearse --into` writing its marker: JSON on disk and in a PNG now escapes them and reads back the same."""
    from producer.files import media, outputs

    name = os.fsdecode(b"\xebHX")
    state = tmp_path / "state.json"
    outputs.write_json_atomic(state, {"root": f"/films/{name}", "title": "café"})
    assert json.loads(state.read_text(encoding="utf-8")) == {"root": f"/films/{name}", "title": "café"}
    outputs.write_json_atomic(state, {"title": "café"})
    assert "café" in state.read_text(encoding="utf-8")  # readable where nothing needs escaping
    picture = media.save_png(Image.new("RGB", (8, 8)), tmp_path / "p.png", {"output": name})
    assert media.read_png_metadata(picture) == {"output": name}
