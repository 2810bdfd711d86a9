"""Write-behind (producer/runs/behind.py): a batch job's files are finished in the background while the next job
generates, and put in place by the main thread once that job is made; failures, a full disk and Ctrl-C keep
the batch's promises (every job reported, nothing half-written, a made clip's files in place)."""

import json
import threading

import numpy as np
import pytest
from producer.cli import CliError, ExitCode
from producer.files import locks, video
from producer.runs import batch
from producer.runs.behind import WriteBehind
from test_wan_video import FAST, files_in, gradient, run


def jobs(n):
    return [batch.Job(i, None, {}) for i in range(n)]


class Recorder:
    """run_one for batch.run_jobs whose jobs finish in the background, logging what happens in which thread."""

    def __init__(self, fail_in_background=(), fail_in_place=None, interrupt_at=None):
        self.events: list[str] = []
        self.behind = WriteBehind()
        self.fail_in_background = set(fail_in_background)
        self.fail_in_place = fail_in_place  # job index -> the CliError its commit raises
        self.interrupt_at = interrupt_at
        self.abandoned: list[int] = []

    def run_one(self, job):
        if job.index == self.interrupt_at:
            raise KeyboardInterrupt
        self.events.append(f"make {job.index}")

        def prepare():
            assert threading.current_thread() is not threading.main_thread()
            if job.index in self.fail_in_background:
                raise RuntimeError(f"encoder failed for job {job.index}")
            return job.index

        def put_in_place(prepared):
            assert threading.current_thread() is threading.main_thread()
            if self.fail_in_place and job.index in self.fail_in_place:
                raise self.fail_in_place[job.index]
            self.events.append(f"in place {prepared}")
            return {"status": "ok"}

        return self.behind.defer(prepare, put_in_place, lambda: self.abandoned.append(job.index))


def test_a_jobs_files_are_put_in_place_once_the_next_job_is_made():
    rec = Recorder()
    result = batch.run_jobs(jobs(3), rec.run_one)
    rec.behind.close()
    assert rec.events == ["make 0", "make 1", "in place 0", "make 2", "in place 1", "in place 2"]
    assert [(j["job"], j["status"]) for j in result.jobs] == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert result.to_dict()["exit_code"] == ExitCode.OK


def test_a_failure_in_the_background_is_that_jobs_failure_and_the_batch_goes_on():
    rec = Recorder(fail_in_background={1})
    result = batch.run_jobs(jobs(3), rec.run_one)
    assert [j["status"] for j in result.jobs] == ["ok", "error", "ok"]
    assert "encoder failed for job 1" in result.jobs[1]["error"] and result.jobs[1]["job"] == 1
    assert rec.abandoned == [1]  # its temp file is removed
    assert result.to_dict()["exit_code"] == ExitCode.PARTIAL


def test_a_full_disk_putting_files_in_place_stops_the_batch_and_drops_the_next_clip():
    full = CliError("the disk is full while writing s0.mp4", "free some space", disk_full=True)
    rec = Recorder(fail_in_place={0: full})
    result = batch.run_jobs(jobs(4), rec.run_one)
    assert [j["status"] for j in result.jobs] == ["error", "not_run", "not_run", "not_run"]
    assert result.jobs[0]["disk_full"] and "stopped at job 0" in result.stopped.message
    assert rec.abandoned == [1]  # made, but its files would meet the same full disk
    assert rec.events == ["make 0", "make 1"]


def test_ctrl_c_during_the_next_job_still_puts_the_made_jobs_files_in_place():
    rec = Recorder(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        batch.run_jobs(jobs(4), rec.run_one)
    assert rec.events == ["make 0", "make 1", "in place 0", "in place 1"]


class LockedRunner(batch.Runner):
    """A Runner whose jobs finish in the background: the output's lock stays held until its files are in place."""

    def __init__(self, tmp_path):
        super().__init__(type("Args", (), {"on_oom": "stop"})())
        self.tmp_path = tmp_path
        self.behind = WriteBehind()
        self.seen_busy: list[int] = []

    def output(self, request):
        return self.tmp_path / f"c{request}.mp4"

    def up_to_date(self, index):
        return False

    def make(self, job):
        if job.index:  # the previous job's output is still locked while this one generates
            try:
                with locks.output_lock(self.output(job.index - 1)):
                    pass
            except CliError as err:
                assert err.code == ExitCode.BUSY
                self.seen_busy.append(job.index - 1)
        return self.behind.defer(lambda: None, lambda _: {"status": "ok"}, lambda: None)


def test_the_output_lock_is_held_until_the_files_are_in_place(tmp_path):
    runner = LockedRunner(tmp_path)
    runner.requests = {0: 0, 1: 1, 2: 2}
    result = batch.run_jobs(jobs(3), runner.run_one)
    assert runner.seen_busy == [0, 1] and runner.done == {0, 1, 2}
    assert [j["status"] for j in result.jobs] == ["ok"] * 3
    with locks.output_lock(tmp_path / "c2.mp4"):  # released after the batch
        pass


# ---------------------------------------------------------------- the real script, on the stand-ins


def clip_batch(tmp_path, n=3):
    gradient(tmp_path / "kf-a.png")
    jobs = {"defaults": {"size": "64x64", "frames": 9, "start_frame": "kf-a.png"},
            "jobs": [{"prompt": f"shot {i}", "output": f"b{i}.mp4", "seed": i} for i in range(n)]}
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    return tmp_path / "clips.json"


def test_a_batchs_clips_are_written_behind_and_match_a_single_run(standin_hf_home, tmp_path, capsys):
    code, result, err = run(capsys, "--batch", clip_batch(tmp_path), "--json", "--quiet")
    assert code == 0, err
    for job in result["jobs"]:
        assert job["status"] == "ok" and job["written_behind"]
        assert {"color_match", "video_encode", "write", "denoise"} <= set(job["seconds"])
        assert job["continuity"]["first_vs_start"]["ssim"] is not None
    assert files_in(tmp_path) == sorted(["clips.json", "kf-a.png"] + [
        f"b{i}{suffix}" for i in range(3) for suffix in (".mp4", ".first.png", ".last.png", ".contact.png",
                                                         ".mp4.provenance.json")])
    code, alone, err = run(capsys, "--start-frame", tmp_path / "kf-a.png", "--prompt", "shot 1", "-o",
                           tmp_path / "alone.mp4", "--seed", "1", *FAST)
    assert code == 0, err
    assert np.array_equal(video.read_video(tmp_path / "alone.mp4")[0], video.read_video(tmp_path / "b1.mp4")[0])
    assert alone["continuity"] == result["jobs"][1]["continuity"]
    recipe = json.loads((tmp_path / "b1.mp4.provenance.json").read_text())
    assert recipe == json.loads((tmp_path / "alone.mp4.provenance.json").read_text())


def test_a_full_disk_in_a_batch_leaves_no_temp_file_and_stops(standin_hf_home, tmp_path, capsys, inject):
    inject("commit:b0.mp4.provenance.json", "ENOSPC")
    code, result, err = run(capsys, "--batch", clip_batch(tmp_path), "--json", "--quiet")
    assert code == ExitCode.FAILED, err
    assert [j["status"] for j in result["jobs"]] == ["error", "not_run", "not_run"]
    assert result["jobs"][0]["disk_full"]
    assert files_in(tmp_path) == ["clips.json", "kf-a.png"]  # b1, made meanwhile, is dropped with its temp file


def test_ctrl_c_in_the_next_clip_keeps_the_clip_made_before_it(standin_hf_home, tmp_path, capsys, inject):
    inject("lock:b1.mp4", "SIGINT")  # job 1 starts while job 0's files are being finished
    code, _, err = run(capsys, "--batch", clip_batch(tmp_path), "--json", "--quiet")
    assert code == ExitCode.INTERRUPTED, err
    # (b1's lock file may stay where Ctrl-C came as it was taken: locks.py's locks are never stale)
    assert [n for n in files_in(tmp_path) if n != ".b1.mp4.lock"] == sorted(["clips.json", "kf-a.png", "b0.mp4", "b0.first.png", "b0.last.png",
                                         "b0.contact.png", "b0.mp4.provenance.json"])
    assert len(video.read_video(tmp_path / "b0.mp4")[0]) == 9


def test_a_scene_worker_writes_behind_too_and_records_each_job_once_its_files_are_in_place(tmp_path, monkeypatch):
    """A scene worker (runs/parallel.py) claims its jobs one at a time from the shared queue; its clips' files
    are finished behind its next clip as well, and each job is recorded for the merge once they are in place."""
    from producer.runs import parallel

    store = parallel.start_store()
    monkeypatch.setenv(parallel.STORE_ENV, f"127.0.0.1:{store.port}")
    monkeypatch.setenv("RANK", "0")
    rec = Recorder()
    record = parallel.Share.record
    monkeypatch.setattr(parallel.Share, "record",
                        lambda self, index, outcome: rec.events.append(f"recorded {index}") or record(self, index, outcome))
    result = parallel.run_jobs(jobs(3), rec.run_one, worker_dir=tmp_path)
    assert rec.events == ["make 0", "make 1", "in place 0", "recorded 0", "make 2", "in place 1", "recorded 1",
                          "in place 2", "recorded 2"]
    assert [(j["job"], j["status"], j["worker"]) for j in result.jobs] == [(0, "ok", 0), (1, "ok", 0), (2, "ok", 0)]
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["0.json", "1.json", "2.json"]


def test_ctrl_c_during_a_commit_stops_the_batch_with_every_made_clip_in_place(standin_hf_home, tmp_path, capsys,
                                                                             inject):
    """Ctrl-C while clip 0's files are renamed (after clip 1 is made): held until they are in place, it stops
    the batch at the next job's start; clip 1, made by then, has its files put in place before the run ends."""
    inject("commit:b0.mp4", "SIGINT")
    code, _, err = run(capsys, "--batch", clip_batch(tmp_path), "--json", "--quiet")
    assert code == ExitCode.INTERRUPTED, err
    made = [f"b{i}{suffix}" for i in (0, 1) for suffix in (".mp4", ".first.png", ".last.png", ".contact.png",
                                                           ".mp4.provenance.json")]
    assert files_in(tmp_path) == sorted(["clips.json", "kf-a.png", *made])  # no temp file, journal or lock
    assert all(len(video.read_video(tmp_path / f"b{i}.mp4")[0]) == 9 for i in (0, 1))
