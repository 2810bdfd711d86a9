"""Several GPUs, on the CPU: the launch rules as a table, the merge of per-job results (a dead worker's jobs
are reported), and three real torchrun runs on the stand-ins with CPU processes: a wan_video.py batch over
two workers, a qwen_image.py batch whose worker is killed in the middle of a job, and one clip split over two
processes (Ulysses over gloo) against the same clip made by one process.

The torchrun runs cost ~15 s each (two workers importing torch and diffusers on a CPU); each is shared by
all the assertions about it."""

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.files import video
from producer.makers import qwen_image, wan_video
from producer.runs import parallel, parallel_merge

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def args(**given) -> argparse.Namespace:
    base = {"batch": None, "gpus": None, "workers": None, "device": None, "context_parallel": None}
    return argparse.Namespace(**{**base, **given})


# ---------------------------------------------------------------- the launch rules


@pytest.mark.parametrize("given, visible, jobs, expected", [
    ({}, ["0", "1"], None, None),  # one image or clip: one process
    ({"batch": "b.json"}, [], 5, None),  # no GPU: one process (the plan decides)
    ({"batch": "b.json"}, ["0"], 5, ("scenes", 1, ("0",))),  # one GPU: runs here
    ({"batch": "b.json"}, ["0", "1", "2", "3"], 8, ("scenes", 4, ("0", "1", "2", "3"))),
    ({"batch": "b.json"}, ["0", "1", "2", "3"], 2, ("scenes", 2, ("0", "1"))),  # no more workers than jobs
    ({"batch": "b.json"}, ["0", "1", "2", "3"], None, ("scenes", 4, ("0", "1", "2", "3"))),  # jobs not read yet
    ({"batch": "b.json", "gpus": (1, 3)}, ["4", "5", "6", "7"], 8, ("scenes", 2, ("5", "7"))),  # CUDA_VISIBLE_DEVICES
    ({"batch": "b.json", "workers": 2}, ["0", "1", "2"], 8, ("scenes", 2, ("0", "1"))),
    ({"batch": "b.json", "device": "cuda:1"}, ["0", "1"], 8, None),  # one device, as asked
    ({"batch": "b.json", "device": "cpu", "workers": 2}, [], 8, ("scenes", 2, ())),
    ({"batch": "b.json", "device": "cpu", "workers": 3}, [], 2, ("scenes", 2, ())),
    ({"batch": "b.json", "device": "cpu"}, [], 8, None),
    ({"context_parallel": 2}, ["0", "1", "2"], None, ("context", 2, ("0", "1"))),
    ({"context_parallel": 2, "gpus": (0, 2)}, ["0", "1", "2"], None, ("context", 2, ("0", "2"))),
    ({"context_parallel": 2, "device": "cpu"}, [], None, ("context", 2, ())),
])
def test_launch_rules(given, visible, jobs, expected):
    launch = parallel.decide(args(**given), visible, jobs)
    assert (launch and (launch.mode, launch.workers, launch.devices)) == expected


@pytest.mark.parametrize("given, visible, says", [
    ({"gpus": (0, 1)}, ["0", "1"], "add --batch"),
    ({"batch": "b.json", "workers": 3}, ["0", "1"], "only 2 GPU"),
    ({"batch": "b.json", "workers": 0}, ["0", "1"], "1 or more"),
    ({"batch": "b.json", "gpus": (0, 2)}, ["0", "1"], "GPU 2 does not exist"),
    ({"batch": "b.json", "gpus": (0,)}, [], "no CUDA GPU"),
    ({"batch": "b.json", "device": "cuda:1", "gpus": (0, 1)}, ["0", "1"], "picks one device"),
    ({"batch": "b.json", "device": "cpu", "gpus": (0, 1)}, [], "--gpus with --device cpu"),
    ({"batch": "b.json", "context_parallel": 2}, ["0", "1"], "already runs on every GPU"),
    ({"context_parallel": 1}, ["0", "1"], "2 or more"),
    ({"context_parallel": 4}, ["0", "1"], "needs 4 GPUs; 2 visible"),
    ({"context_parallel": 2}, [], "needs 2 GPUs; 0 visible"),
    ({"context_parallel": 2, "gpus": (0, 1, 2)}, ["0", "1", "2"], "list exactly 2"),
    ({"context_parallel": 2, "workers": 2}, ["0", "1"], "drop --workers"),
])
def test_launch_mistakes_are_refused_with_the_fix(given, visible, says):
    with pytest.raises(CliError) as caught:
        parallel.decide(args(**given), visible, 8)
    assert says in f"{caught.value.message}; {caught.value.fix}" and caught.value.fix


def test_gpu_list_and_help():
    assert parallel.gpu_list("0,2") == (0, 2)
    for bad in ("a", "0,0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parallel.gpu_list(bad)
    text = wan_video.build().format_help()
    assert "--context-parallel" in text and "--gpus" in text and "Several GPUs" in text
    assert "--parallel-worker" not in text  # the workers' own flag is not for people
    assert "--gpus" in qwen_image.build().format_help() and "--context-parallel" not in qwen_image.build().format_help()


def test_a_scene_worker_sees_only_its_own_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setenv("LOCAL_RANK", "1")
    parallel.pin_gpu()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"


def test_the_workers_flag_is_not_an_option(tmp_path, capsys):
    code = qwen_image.main(["--parallel-worker", str(tmp_path), "--prompt", "x", "-o", str(tmp_path / "a.png"),
                            "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == ExitCode.USAGE and "not an option" in result["error"] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- merging the workers' results


class FakeStore:
    def __init__(self, **keys):
        self.keys = keys

    def get(self, key):
        return self.keys.get(key)


def write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_merge_reports_every_job_and_why_it_has_no_result(tmp_path):
    launch = parallel.Launch("scenes", 2, ("5", "7"))
    write(tmp_path / "jobs" / "0.json", {"status": "ok", "job": 0, "output": "a.mp4", "worker": 0})
    write(tmp_path / "jobs" / "1.json", {"status": "skipped", "job": 1, "output": "b.mp4", "worker": 1})
    write(tmp_path / "ranks" / "0.json", {"status": "ok", "worker": 0, "memory_plan": {"name": "resident"},
                                          "jobs": [], "peak_vram_gib": 60.5, "peak_ram_gib": 3.0})
    store = FakeStore(**{"owner/0": "0", "owner/1": "1", "owner/2": "1"})  # job 2 claimed by worker 1, then silence
    result = parallel_merge.merge_scenes(tmp_path, launch, 4, store, torchrun_code=1, seconds=9.0)
    assert [(j["job"], j["status"]) for j in result["jobs"]] == [(0, "ok"), (1, "skipped"), (2, "error"),
                                                                  (3, "not_run")]
    dead = result["jobs"][2]
    assert "worker 1 (GPU 7) stopped while making it" in dead["error"] and "again" in dead["fix"]
    assert dead["worker"] == 1 and "torchrun stops them all" in result["jobs"][3]["reason"]
    assert result["counts"] == {"ok": 1, "skipped": 1, "error": 1, "not_run": 1}
    assert result["exit_code"] == ExitCode.PARTIAL and result["memory_plan"] == {"name": "resident"}
    workers = result["parallel"]["workers"]
    assert [w["jobs"] for w in workers] == [[0], [1, 2]] and workers[1]["status"].startswith("stopped")
    assert (result["peak_vram_gib"], result["peak_ram_gib"]) == (60.5, 3.0)


def test_the_runs_plan_and_lora_report_come_from_a_worker_that_made_something(tmp_path):
    """The split is dynamic: a worker that claimed no job never brought its experts in, so it has no LoRA report;
    the merged result takes the run-wide facts from one that made a clip."""
    write(tmp_path / "jobs" / "0.json", {"status": "ok", "job": 0, "output": "a.mp4", "worker": 1})
    write(tmp_path / "ranks" / "0.json", {"status": "ok", "worker": 0, "jobs": [], "loras": {}})
    write(tmp_path / "ranks" / "1.json", {"status": "ok", "worker": 1, "jobs": [{"job": 0, "status": "ok"}],
                                          "loras": {"transformer": [{"name": "wan-lightning"}]}})
    result = parallel_merge.merge_scenes(tmp_path, parallel.Launch("scenes", 2), 1, FakeStore(**{"owner/0": "1"}),
                                         0, 1.0)
    assert result["loras"] == {"transformer": [{"name": "wan-lightning"}]}


def test_merge_a_batch_stopped_by_one_worker(tmp_path):
    write(tmp_path / "jobs" / "0.json", {"status": "error", "job": 0, "error": "out of memory", "worker": 0})
    write(tmp_path / "ranks" / "0.json", {"status": "ok", "worker": 0})
    write(tmp_path / "ranks" / "1.json", {"status": "ok", "worker": 1})
    store = FakeStore(**{"owner/0": "0", "stop": "the batch stopped at job 0: out of memory"})
    result = parallel_merge.merge_scenes(tmp_path, parallel.Launch("scenes", 2), 2, store, 0, 1.0)
    assert result["jobs"][1] == {"status": "not_run", "job": 1, "reason": "the batch stopped at job 0: out of memory",
                                 "fix": "run the same command again: finished jobs are skipped"}
    assert result["stopped"].startswith("the batch stopped") and result["exit_code"] == ExitCode.PARTIAL


def test_an_error_before_any_job_is_the_runs_own_error(tmp_path):
    for rank in (0, 1):
        write(tmp_path / "ranks" / f"{rank}.json", {"status": "error", "error": "Wan is not installed",
                                                    "fix": "setup_diffusers.py --download", "exit_code": 3})
    with pytest.raises(CliError) as caught:
        parallel_merge.merge_scenes(tmp_path, parallel.Launch("scenes", 2), 3, FakeStore(), 1, 1.0)
    assert caught.value.code == ExitCode.MISSING_MODEL and caught.value.fix == "setup_diffusers.py --download"
    with pytest.raises(CliError) as caught:
        parallel_merge.merge_context(tmp_path, parallel.Launch("context", 2), 1, 1.0)
    assert caught.value.code == ExitCode.MISSING_MODEL
    with pytest.raises(CliError) as caught:
        parallel_merge.merge_context(tmp_path / "nothing", parallel.Launch("context", 2), 137, 1.0)
    assert "stopped before the clip was written" in caught.value.message and "137" in caught.value.message


def test_out_of_memory_on_one_worker_stops_the_batch_on_every_worker(tmp_path, monkeypatch):
    """The job queue itself, with a real TCPStore: worker 0 runs out of memory at job 1 and stops the batch;
    worker 1 then claims nothing; the merge reports the rest as not run, with the reason."""
    from producer.runs import batch

    store = parallel.start_store()
    monkeypatch.setenv(parallel.STORE_ENV, f"127.0.0.1:{store.port}")
    jobs = [batch.Job(i, argparse.Namespace(), {}) for i in range(4)]
    ran = []

    def run_one(job):
        ran.append(job.index)
        if job.index == 1:
            raise CliError("out of memory at 1280x720x81", "retry with --offload group", ExitCode.OUT_OF_MEMORY)
        return {"status": "ok"}

    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        parallel.run_jobs(jobs, run_one, worker_dir=tmp_path)
    assert ran == [0, 1]
    result = parallel_merge.merge_scenes(tmp_path, parallel.Launch("scenes", 2), 4, parallel.StoreView(store), 0, 1.0)
    assert [j["status"] for j in result["jobs"]] == ["ok", "error", "not_run", "not_run"]
    assert result["jobs"][2]["reason"].startswith("the batch stopped at job 1: out of memory")


def test_video_tokens_per_clip():
    from producer.engines.wan import context_parallel as cp
    from producer.engines.wan.wan import ClipJob

    def tokens(w, h, f):
        return cp.tokens(ClipJob(image=None, prompt="", width=w, height=h, frames=f, sampling=None, seed=0), cp.PATCH)

    assert tokens(832, 480, 81) == 21 * 30 * 52 == 32760  # 480p: splits over 2, 4, 5, 8
    assert tokens(1280, 720, 81) == 21 * 45 * 80 == 75600
    assert tokens(64, 64, 9) == 3 * 4 * 4


@pytest.mark.parametrize("offload, refused", [("none", False), ("model", False), ("group", True),
                                              ("sequential", True)])
def test_context_parallel_refuses_only_streamed_experts(offload, refused):
    from producer.engines.wan import context_parallel as cp
    from producer.facts.hardware import from_sizes
    from producer.sizing import memory

    plan = memory.plan_memory(from_sizes(141, 128), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81),
                              offload=offload)
    if not refused:
        cp.refuse_streamed_experts(plan)
        return
    with pytest.raises(CliError, match=f"but plan {plan.name} streams them") as info:
        cp.refuse_streamed_experts(plan)
    assert info.value.code == ExitCode.OUT_OF_MEMORY
    assert f"(transformer: {plan.components['transformer'].placement.value}, " in info.value.message


# ---------------------------------------------------------------- real runs: CPU processes under torchrun


def gradient(path, size=(96, 64)):
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    Image.fromarray((np.stack([xx / w, yy / h, np.full((h, w), 0.5)], -1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def run_folders(tmp_path, monkeypatch):
    """The coordinator's run folders go here, so a test can watch them and see that they are removed."""
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_batch_over_two_workers(standin_hf_home, run_folders, tmp_path, capsys):
    gradient(tmp_path / "kf.png")
    jobs = {"defaults": {"size": "64x64", "frames": 9, "start_frame": "kf.png"},
            "jobs": [{"prompt": f"walk {i}", "seed": i, "output": f"s{i}.mp4"} for i in range(4)]
            + [{"prompt": "x", "start_frame": "missing.png", "output": "bad.mp4"}]}
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    code = wan_video.main(["--batch", str(tmp_path / "clips.json"), "--device", "cpu", "--workers", "2", "--json"])
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1, out  # one JSON object on stdout; the workers' logs went to stderr
    result = json.loads(out)
    assert code == ExitCode.PARTIAL, err
    assert [(j["job"], j["status"]) for j in result["jobs"]] == [(0, "ok"), (1, "ok"), (2, "ok"), (3, "ok"),
                                                                  (4, "error")]
    assert "missing.png" in result["jobs"][4]["error"] and result["counts"] == {"ok": 4, "error": 1}
    for job in result["jobs"][:4]:  # every clip arrived, with its recipe, made by one of the two workers
        assert job["worker"] in (0, 1) and video.probe_video(job["output"])["frames"] == 9
        assert Path(job["output"] + ".provenance.json").is_file()
    workers = result["parallel"]["workers"]
    assert [w["status"] for w in workers] == ["ok", "ok"] and result["parallel"]["mode"] == "scenes"
    assert sorted(job for w in workers for job in w["jobs"]) == [j["job"] for j in result["jobs"] if "worker" in j]
    assert "[worker 0]" in err and "[worker 1]" in err  # both loaded the model (the split itself is dynamic)
    assert result["memory_plan"]["name"] == "cpu" and list(result["loras"]) == ["transformer", "transformer_2"]
    assert list(run_folders.iterdir()) == []  # the run folder is gone


class Watcher:
    """Our stderr during a run: the workers' output passes through it; it notes the pid a fault paused."""

    def __init__(self, real):
        self.real, self.text, self.paused = real, "", threading.Event()

    def write(self, text):
        self.text += text
        if not self.paused.is_set() and re.search(r"fault: paused at \S+ \(pid \d+\)", self.text):
            self.paused.set()
        return self.real.write(text)

    def flush(self):
        self.real.flush()

    def pid(self) -> int:
        return int(re.search(r"fault: paused at \S+ \(pid (\d+)\)", self.text).group(1))


def test_a_killed_workers_jobs_are_reported(standin_hf_home, run_folders, tmp_path, capsys, monkeypatch):
    jobs = {"defaults": {"size": "64x64", "lightning": "off", "cfg": 1, "steps": 2},
            "jobs": [{"prompt": f"a fox {i}", "seed": i, "output": f"k{i}.png"} for i in range(8)]}
    (tmp_path / "stills.json").write_text(json.dumps(jobs))
    # The worker that makes k0.png stops just before renaming it into place; the test kills it there, once the
    # other worker has finished a job of its own.
    monkeypatch.setenv("PRODUCER_FAULT", "rename:k0.png=pause")
    watcher = Watcher(sys.stderr)
    monkeypatch.setattr(sys, "stderr", watcher)

    def kill_when_both_worked():
        deadline = time.monotonic() + 150
        if watcher.paused.wait(150):
            while time.monotonic() < deadline and not list(run_folders.glob("*/jobs/*.json")):
                time.sleep(0.05)
            os.kill(watcher.pid(), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_both_worked, daemon=True)
    killer.start()
    code = qwen_image.main(["--batch", str(tmp_path / "stills.json"), "--device", "cpu", "--workers", "2", "--json"])
    killer.join(5)
    result = json.loads(capsys.readouterr().out)
    assert code == ExitCode.PARTIAL, watcher.text[-3000:]
    first = result["jobs"][0]
    assert first["status"] == "error" and "stopped while making it" in first["error"], first
    assert not (tmp_path / "k0.png").exists()  # killed before the rename: nothing half-written under the name
    survivor = 1 - first["worker"]
    made = [j for j in result["jobs"] if j["status"] == "ok"]
    assert made and all(j["worker"] == survivor and Path(j["output"]).is_file() for j in made)
    assert [j["job"] for j in result["jobs"]] == list(range(8))  # every job reported, in order
    assert {j["status"] for j in result["jobs"]} <= {"ok", "error", "not_run"}
    assert result["parallel"]["workers"][first["worker"]]["status"].startswith("stopped")
    assert result["parallel"]["torchrun_exit_code"] != 0


def test_one_clip_split_over_two_processes_matches_one_process(standin_hf_home, run_folders, tmp_path, capsys):
    gradient(tmp_path / "kf.png")
    clip = ["--start-frame", str(tmp_path / "kf.png"), "--prompt", "a cat turns", "--size", "64x64", "--frames", "9",
            "--device", "cpu", "--json"]
    code = wan_video.main([*clip, "--context-parallel", "2", "-o", str(tmp_path / "split.mp4")])
    out, err = capsys.readouterr()
    split = json.loads(out)
    assert code == 0, err
    assert split["parallel"]["degree"] == 2 and split["parallel"]["attention"] == "ulysses"
    for expert in ("transformer", "transformer_2"):  # both experts really ran split, on both ranks
        assert err.count(f"context parallel: {expert} split over 2 ranks") == 2
    assert "48 video tokens, 24 per rank" in err
    # No --seed was given: the coordinator chose one for every rank. One process with that seed makes the same clip.
    code = wan_video.main([*clip, "--seed", str(split["seed"]), "--quiet", "-o", str(tmp_path / "one.mp4")])
    assert code == 0, capsys.readouterr().err
    frames_split, _ = video.read_video(tmp_path / "split.mp4")
    frames_one, _ = video.read_video(tmp_path / "one.mp4")
    assert frames_split.shape == frames_one.shape == (9, 64, 64, 3)
    # The same clip up to float rounding (split attention sums in another order); another seed or a wrong split
    # differs everywhere. The lossless review PNGs show it within a level or two; H.264 can carry a rounding
    # difference much further at a few pixels (seen at 3, 7 and 15 levels), so the MP4 is compared on average:
    # 0.28 levels seen under xdist (one thread a worker), another seed differs by 22.
    for review in ("last.png", "contact.png"):
        a, b = (np.asarray(Image.open(tmp_path / f"{name}.{review}").convert("RGB"), dtype=int) for name in ("split", "one"))
        assert a.shape == b.shape and np.abs(a - b).max() <= 2, review
    difference = np.abs(frames_split.astype(int) - frames_one.astype(int))
    assert difference.mean() < 1.0
    assert sorted(p.name for p in tmp_path.glob("split*")) == [
        "split.contact.png", "split.first.png", "split.last.png", "split.mp4", "split.mp4.provenance.json"]
    assert list(run_folders.iterdir()) == []  # rank 1's copy went with the run folder


def test_a_worker_whose_claimed_jobs_all_failed_still_did_its_share(tmp_path, monkeypatch):
    """Which worker claims the one bad job depends on timing: a worker left with only that job is not a failed
    worker (its job says why), or the same batch would report a worker 'error' on one run and not another."""
    from producer.runs import batch

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(parallel, "pin_gpu", lambda: None)
    failed = {"status": "error", "job": 4, "exit_code": int(ExitCode.USAGE), "error": "missing.png", "fix": "x"}
    share = batch.BatchResult([failed]).to_dict()
    assert share["status"] == "error"  # as a single process reports a batch whose every job failed
    args = argparse.Namespace(**{parallel.WORKER_DEST: str(tmp_path)})
    parallel._as_worker(lambda _: share, args)
    report = json.loads((tmp_path / "ranks" / "1.json").read_text())
    assert report["status"] == "ok" and report["jobs"] == [failed] and "error" not in report
