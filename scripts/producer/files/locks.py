"""One writer per output, and one at a time on a production's own files: locks the operating system releases.

An agent may start a second command before the first has finished. Both would write the same keyframe or
clip; the second now stops at once with a message naming the process that holds the output. Two
`production.py approve` or `retake` commands on one production take turns on its `.production/` files
instead of losing each other's updates.

Each lock is a `filelock.FileLock` (flock on POSIX, LockFileEx on Windows) on a file beside what it guards
(`.NAME.lock` beside an output, `.production/.state.lock`). The kernel releases it when its process ends,
however it ends (SIGKILL, a crash), so a lock is never stale and nothing is taken over: a pid file with a
take-over rule cannot be made race-free. Once it holds the lock, the holder writes its pid, host, start time
and command into the lock file, for the message a second run gets. The holder removes the file before it
releases the lock; a waiter that opened the removed file sees it unlinked and tries again (filelock checks).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from producer.errors import CliError, ExitCode, no_folder
from producer.files.outputs import check_output_name, disk_full, pid_alive  # noqa: F401 (locks.pid_alive)
from producer.files.paths import own_folder
from producer.values import load_json

STATE_LOCK = ".state.lock"
STATE_WAIT_SECONDS = 60  # approve and retake hold the production's lock for well under a second each
_held_here: dict[str, int] = {}  # state locks this process holds, with how deep (an approval inside all_or_none)


def lock_path(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_name(f".{p.name}.lock")


def state_lock_path(root: str | os.PathLike) -> Path:
    from producer.files.layout import state_dir

    return state_dir(Path(root)) / STATE_LOCK


def read_holder(path: str | os.PathLike) -> dict:
    """What the holder of a lock wrote about itself ({} while it has not written yet, or no holder)."""
    try:
        holder = load_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the lock of `output` for the duration of the block; CliError BUSY at once if another run holds it."""
    path = lock_path(check_output_name(output))
    with _hold(path, output, command, 0, f"{output} is being made by another run"):
        yield path


@contextlib.contextmanager
def output_locks(outputs: list[str | os.PathLike], command: str | None = None) -> Iterator[None]:
    """Lock several outputs (a clip and its review files) at once, in a stable order."""
    with contextlib.ExitStack() as stack:
        for out in sorted({str(o) for o in outputs}):
            stack.enter_context(output_lock(out, command))
        yield


@contextlib.contextmanager
def state_lock(root: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the production's own lock around a read-modify-write of its `.production/` files. Waits for another
    command that holds it (they are short); nested use in one process holds it once."""
    path = state_lock_path(root)
    own_folder(root, path.parent).mkdir(exist_ok=True)  # never through a .production/ that leads elsewhere
    with _hold(path, path.parent / "approvals.json", command, STATE_WAIT_SECONDS,
               f"the files of {root} have been in use by another command for {STATE_WAIT_SECONDS} s", nest=True):
        yield path


@contextlib.contextmanager
def _hold(path: Path, guarded: str | os.PathLike, command: str | None, wait: float, busy_text: str,
          nest: bool = False) -> Iterator[None]:
    key = str(path.absolute())
    if nest and key in _held_here:  # this process holds it already (the outer block releases it)
        _held_here[key] += 1
        try:
            yield
        finally:
            _held_here[key] -= 1
        return
    lock = _acquire(path, guarded, command, wait, busy_text)
    if nest:
        _held_here[key] = 1
    try:
        yield
    finally:
        _held_here.pop(key, None)
        with contextlib.suppress(OSError):  # removed while still held (see the module's note)
            path.unlink()
        lock.release()


def _acquire(path: Path, guarded: str | os.PathLike, command: str | None, wait: float, busy_text: str):
    import filelock

    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or " ".join(sys.argv)[:500]}

    failed: list[OSError] = []

    def write_holder(fd: int) -> None:
        from producer.files import faults

        try:
            faults.at(f"lock:{Path(guarded).name}", path)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as exc:  # reported once the lock is held, so that its file can go with it
            failed.append(exc)

    if not path.parent.is_dir():  # filelock would create the missing folders: never make folders for a typo
        raise no_folder(path.parent)
    lock = filelock.FileLock(path, timeout=wait, on_acquired=write_holder)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise busy(busy_text, path) from None
    except OSError as exc:
        failed.append(exc)
    else:
        if failed:
            with contextlib.suppress(OSError):
                path.unlink()
            lock.release()
    if not failed:
        return lock
    exc = failed[0]
    if isinstance(exc, FileNotFoundError):
        raise no_folder(path.parent) from None
    if exc.errno == errno.ENOSPC:
        raise disk_full(guarded) from None
    if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):  # no flock here: never run unlocked
        raise CliError(f"the file system of {path.parent} cannot lock files ({exc.strerror or exc})",
                       "write the outputs to a local folder", ExitCode.FAILED) from None
    # read-only or not our folder: nothing could be written there either
    raise CliError(f"cannot write in {path.parent}: {exc.strerror or exc}",
                   "choose an output folder you can write to", ExitCode.FAILED) from None


def busy(text: str, path: Path) -> CliError:
    holder = {}
    for _ in range(20):  # the holder writes about itself just after it takes the lock
        holder = read_holder(path)
        if holder:
            break
        time.sleep(0.05)
    return CliError(
        f"{text} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('started', '?')}: {holder.get('command', '?')})",
        fix="wait for that run to finish (or stop it), then run again", code=ExitCode.BUSY)
