"""Ctrl-C and SIGTERM from outside, and a real second run, against wan_video.py in its own process.

Each test starts the script on the stand-ins with PRODUCER_FAULT="POINT=pause" (producer.files.faults): when
the run reaches POINT it prints "fault: paused at POINT (pid N)" and waits. The test then signals it from
outside, as a terminal (Ctrl-C is SIGINT) or a process manager (SIGTERM) would, and checks what it left:
the documented exit code, a message with a fix and no traceback, no file under a final name for the
interrupted clip, no temp file, no lock, finished clips intact. One test per stage: loading, denoising
(with a second run on the same output while the first holds it), decoding, writing (a batch, then its
rerun), and a SIGKILL in the middle of replacing a clip's set. These cost a Python start-up each (~6 s of
imports), so there are only these five.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from producer.cli import ExitCode
from producer.files import locks, provenance, video
from producer.makers import wan_video

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "wan_video.py"
FAST = ["--size", "64x64", "--frames", "9", "--quiet", "--json"]


def keyframe(folder: Path) -> Path:
    yy, xx = np.mgrid[0:64, 0:96]
    path = folder / "kf.png"
    Image.fromarray((np.stack([xx / 96, yy / 64, np.full((64, 96), 0.5)], -1) * 255).astype(np.uint8)).save(path)
    return path


def start_paused(argv: list, point: str, hf_home: Path) -> tuple[subprocess.Popen, str]:
    """The script in its own process, stopped at `point`; returns it and its stderr so far."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PRODUCER_FAULT": f"{point}=pause"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, argv)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(240, proc.kill)  # a run that never reaches the point does not hang the suite
    watchdog.start()
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("fault: paused at"):
            break
    watchdog.cancel()
    assert proc.poll() is None, f"the run ended before {point}: {''.join(seen)}"
    return proc, "".join(seen)


def stop(proc: subprocess.Popen, signum: int) -> tuple[int, dict, str]:
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "error:" in err and "fix:" in err, err
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name or p.name.endswith(".lock")
                  or ".commit-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("point,signum", [("stage:load_experts", signal.SIGINT), ("stage:decode", signal.SIGINT)])
def test_a_signal_while_loading_or_decoding_leaves_no_clip(point, signum, standin_install, tmp_path):
    argv = ["--start-frame", keyframe(tmp_path), "--prompt", "waves", "--seed", 1, "-o", tmp_path / "v.mp4", *FAST]
    proc, _ = start_paused(argv, point, standin_install.hf_home)
    assert locks.lock_path(tmp_path / "v.mp4").exists()  # held while the run works
    code, result, _ = stop(proc, signum)
    assert code == ExitCode.INTERRUPTED and "interrupted (Ctrl-C)" in result["error"]
    assert not (tmp_path / "v.mp4").exists() and leftovers(tmp_path) == []


def test_sigterm_while_denoising_and_a_second_run_meanwhile(standin_hf_home, tmp_path, capsys):
    argv = ["--start-frame", keyframe(tmp_path), "--prompt", "waves", "--seed", 1, "-o", tmp_path / "v.mp4", *FAST]
    proc, _ = start_paused(argv, "stage:denoise", standin_hf_home)
    # An agent starts the same command again before the first has finished: refused at once, the holder named.
    code = wan_video.main([str(a) for a in argv])
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == ExitCode.BUSY and f"pid {proc.pid}" in second["error"] and "wan_video.py" in second["error"]
    assert "wait for that run to finish" in second["fix"]
    code, result, _ = stop(proc, signal.SIGTERM)
    assert code == ExitCode.TERMINATED and "terminated (SIGTERM)" in result["error"]
    assert not (tmp_path / "v.mp4").exists() and leftovers(tmp_path) == []  # the lock went with the run


def test_sigterm_while_writing_a_batch_then_the_rerun_continues(standin_hf_home, tmp_path, capsys):
    keyframe(tmp_path)
    jobs = [{"start_frame": "kf.png", "prompt": f"clip {i}", "seed": i, "output": f"c{i}.mp4", "size": "64x64",
             "frames": 9} for i in range(2)]
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    argv = ["--batch", tmp_path / "clips.json", "--quiet", "--json"]
    # c1.mp4 and its recipe are complete in their temp files, about to be renamed: the worst moment.
    proc, _ = start_paused(argv, "rename:c1.mp4", standin_hf_home)
    code, _, _ = stop(proc, signal.SIGTERM)
    assert code == ExitCode.TERMINATED
    finished = (tmp_path / "c0.mp4").read_bytes()
    assert video.probe_video(tmp_path / "c0.mp4")["frames"] == 9 and provenance.read_recipe(tmp_path / "c0.mp4")
    assert not (tmp_path / "c1.mp4").exists() and leftovers(tmp_path) == []
    assert not list(tmp_path.glob("c1.*"))  # a clip's set (review PNGs, clip, recipe) goes in whole or not at all
    code = wan_video.main([str(a) for a in argv])  # the same command: no --overwrite needed
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and [j["status"] for j in rerun["jobs"]] == ["skipped", "ok"]
    assert (tmp_path / "c0.mp4").read_bytes() == finished and video.probe_video(tmp_path / "c1.mp4")["frames"] == 9


def test_a_run_killed_while_replacing_a_clip_is_rolled_back_by_the_next(standin_hf_home, tmp_path, capsys):
    """SIGKILL between the clip's rename and its recipe's (nothing can hold SIGKILL back): the new clip sits
    beside the old recipe, which no longer matches it (status: stale, never the old approval), and the
    commit's journal is left. The next run on the clip puts the old set back before it writes its own."""
    argv = ["--start-frame", keyframe(tmp_path), "--prompt", "waves", "-o", tmp_path / "v.mp4", *FAST]
    assert wan_video.main([str(a) for a in [*argv, "--seed", 1]]) == 0
    capsys.readouterr()
    old = {p.name: p.read_bytes() for p in tmp_path.glob("v.*")}
    env = {**os.environ, "HF_HOME": str(standin_hf_home), "HF_HUB_OFFLINE": "1",
           "PRODUCER_FAULT": "commit:v.mp4.provenance.json=SIGKILL"}
    env.pop("HF_HUB_CACHE", None)
    killed = subprocess.run([sys.executable, str(SCRIPT), *map(str, argv), "--seed", "2", "--overwrite"], env=env,
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "v.mp4").read_bytes() != old["v.mp4"]  # renamed before the kill
    assert (tmp_path / "v.mp4.provenance.json").read_bytes() == old["v.mp4.provenance.json"]  # the old recipe
    assert provenance.read_recipe(tmp_path / "v.mp4")["settings"]["seed"] == 1  # so the new clip reads as stale
    from producer.files import outputs

    assert locks.lock_path(tmp_path / "v.mp4").exists()  # left by the killed run, and free:
    with locks.output_lock(tmp_path / "v.mp4"):  # the next run takes it at once,
        outputs.recover(tmp_path / "v.mp4")  # and the first thing its write of the clip does
    assert {p.name: p.read_bytes() for p in tmp_path.glob("v.*")} == old and leftovers(tmp_path) == []
