"""One writer per output: a second run is refused with the holder named; stale locks are taken over."""

import json
import os
import subprocess
import sys

import pytest

from producer import cli, locks


def test_second_holder_is_refused_with_the_first_named(tmp_path):
    out = tmp_path / "kf.png"
    with locks.output_lock(out, command="qwen_image.py --output kf.png"):
        assert locks.lock_path(out).is_file()
        with pytest.raises(cli.CliError) as info:
            with locks.output_lock(out):
                pass
        assert info.value.code == cli.ExitCode.BUSY
        assert str(os.getpid()) in info.value.message and "qwen_image.py" in info.value.message
    assert not locks.lock_path(out).exists(), "the lock is released when the run ends"


def test_lock_is_released_on_failure(tmp_path):
    out = tmp_path / "clip.mp4"
    with pytest.raises(KeyboardInterrupt):
        with locks.output_lock(out):
            raise KeyboardInterrupt
    assert not locks.lock_path(out).exists()


def test_a_dead_process_lock_is_taken_over(tmp_path):
    out = tmp_path / "clip.mp4"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    locks.lock_path(out).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with locks.output_lock(out):
        holder = json.loads(locks.lock_path(out).read_text())
        assert holder["pid"] == os.getpid()


def test_another_live_process_blocks(tmp_path):
    out = tmp_path / "clip.mp4"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        locks.lock_path(out).write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(),
                                                    "command": "wan_video.py"}))
        with pytest.raises(cli.CliError, match=f"pid {child.pid}"):
            with locks.output_lock(out):
                pass
        assert locks.lock_path(out).exists(), "someone else's lock is never removed"
    finally:
        child.kill()
        child.wait()


def test_several_outputs_lock_together(tmp_path):
    outs = [tmp_path / "v.mp4", tmp_path / "v.first.png"]
    with locks.output_locks(outs):
        assert all(locks.lock_path(o).exists() for o in outs)
    assert not any(locks.lock_path(o).exists() for o in outs)
