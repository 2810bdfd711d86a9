"""Locks the operating system releases (producer.files.locks): a second run is refused with the holder named, a
dead holder's lock is free at once, and processes starting together never hold one lock at the same time."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from producer import cli
from producer.files import locks

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def python(code: str, *args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_second_holder_is_refused_with_the_first_named(tmp_path):
    out = tmp_path / "kf.png"
    with locks.output_lock(out, command="qwen_image.py --output kf.png"):
        assert locks.lock_path(out).is_file()
        with pytest.raises(cli.CliError) as info:
            with locks.output_lock(out):
                pass
        assert info.value.code == cli.ExitCode.BUSY
        assert f"pid {os.getpid()}" in info.value.message and "qwen_image.py" in info.value.message
    assert not locks.lock_path(out).exists(), "the lock file goes when the run ends"


def test_lock_is_released_on_failure(tmp_path):
    out = tmp_path / "clip.mp4"
    with pytest.raises(KeyboardInterrupt):
        with locks.output_lock(out):
            raise KeyboardInterrupt
    assert not locks.lock_path(out).exists()
    with locks.output_lock(out):
        pass


HOLD = """
    import sys, time
    from producer.files import locks
    with locks.output_lock(sys.argv[1], command="wan_video.py -o clip.mp4"):
        print("held", flush=True)
        time.sleep(60)
"""


def test_a_lock_whose_holder_was_killed_is_free_at_once(tmp_path):
    out = tmp_path / "clip.mp4"
    holder = python(HOLD, out)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(cli.CliError, match=f"pid {holder.pid} .*wan_video.py -o clip.mp4") as info:
            with locks.output_lock(out):
                pass
        assert info.value.code == cli.ExitCode.BUSY and locks.lock_path(out).exists()
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays, the kernel's lock does not
        holder.wait(timeout=30)
        assert locks.lock_path(out).exists()
        with locks.output_lock(out):  # no waiting, no take-over rule
            assert locks.read_holder(locks.lock_path(out))["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait()


COUNT = """
    import sys
    from pathlib import Path
    from producer.files import locks
    root, rounds = Path(sys.argv[1]), int(sys.argv[2])
    sys.stdin.readline()  # every process starts counting at the same moment
    for _ in range(rounds):
        with locks.state_lock(root):
            counter = root / ".production" / "counter"
            inside = root / ".production" / "inside"
            assert not inside.exists(), "two processes hold the lock at once"
            inside.touch()
            value = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(value + 1))
            inside.unlink()
"""


def test_processes_starting_together_never_hold_the_lock_at_once(tmp_path):
    """Eight processes each increment a counter file 25 times under the production's lock: a lost update
    (two holders at once, or a holder that removed the lock file while another used a new one) shows as
    a count under 200, or as the 'inside' marker seen by a second holder."""
    procs = [python(COUNT, tmp_path, 25, stdin=subprocess.PIPE) for _ in range(8)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    assert (tmp_path / ".production" / "counter").read_text() == "200"
    assert not locks.state_lock_path(tmp_path).exists()


def test_the_state_lock_nests_in_one_process(tmp_path):
    with locks.state_lock(tmp_path):
        with locks.state_lock(tmp_path):
            assert locks.state_lock_path(tmp_path).exists()
        assert locks.state_lock_path(tmp_path).exists(), "the outer block still holds it"
    assert not locks.state_lock_path(tmp_path).exists()


def test_several_outputs_lock_together(tmp_path):
    outs = [tmp_path / "v.mp4", tmp_path / "v.first.png"]
    with locks.output_locks(outs):
        assert all(locks.lock_path(o).exists() for o in outs)
    assert not any(locks.lock_path(o).exists() for o in outs)


def test_a_full_disk_while_taking_a_lock_names_the_output(tmp_path, monkeypatch):
    from producer.files import faults

    monkeypatch.setenv(faults.ENV, "lock:clip.mp4=ENOSPC")
    faults.reset()
    with pytest.raises(cli.CliError) as info:
        with locks.output_lock(tmp_path / "clip.mp4"):
            pass
    faults.reset()
    assert info.value.message == f"the disk is full while writing {tmp_path / 'clip.mp4'}"
    assert info.value.details["disk_full"] and not locks.lock_path(tmp_path / "clip.mp4").exists()


TRY_ONCE = """
    import os, sys, time
    from pathlib import Path
    from producer import cli
    from producer.files import locks
    out, marks = Path(sys.argv[1]), Path(sys.argv[2])
    unlink = Path.unlink

    def slow_unlink(self, *args, **kwargs):  # a process descheduled just before it removes a lock file
        if self.name.endswith(".lock"):
            time.sleep(0.3)
        return unlink(self, *args, **kwargs)

    Path.unlink = slow_unlink
    sys.stdin.readline()
    try:
        with locks.output_lock(out):
            others = list(marks.iterdir())
            (marks / f"holding-{os.getpid()}").touch()
            time.sleep(1)
            print("held", "with" if others or len(list(marks.iterdir())) > 1 else "alone", flush=True)
            os.remove(marks / f"holding-{os.getpid()}")
    except cli.CliError as err:
        print("busy" if err.code == cli.ExitCode.BUSY else err.message, flush=True)
"""


def test_runs_starting_together_beside_a_dead_runs_lock_file_get_one_holder(tmp_path):
    """The lock file of a run that was killed (SIGKILL: it could not remove it) and six runs starting at once:
    one holds the output, the others are told it is busy; never two holders at the same time (a pid file
    with a take-over rule let two take over the same stale file)."""
    out, marks = tmp_path / "clip.mp4", tmp_path / "marks"
    marks.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    locks.lock_path(out).write_text(f'{{"pid": {int(dead.stdout)}, "host": "{os.uname().nodename}"}}')
    procs = [python(TRY_ONCE, out, marks, stdin=subprocess.PIPE) for _ in range(6)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    said = sorted(proc.communicate(timeout=120)[0].strip() for proc in procs)
    assert "held with" not in said, said
    assert said.count("held alone") >= 1 and set(said) <= {"held alone", "busy"}, said


def test_a_file_system_without_locks_stops_the_run_rather_than_run_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(*_args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(cli.CliError, match=f"the file system of {tmp_path} cannot lock files"):
        with locks.output_lock(tmp_path / "clip.mp4"):
            pass
