"""One writer per output: a lock file beside each output while it is being made.

An agent may start a second command before the first has finished. Both would write the same
keyframe or clip; the second now stops at once with a message naming the process that holds the
output. The lock is a small JSON file created atomically (O_EXCL) next to the output; a lock whose
process has died (same host) is stale and taken over, so a crash never blocks the next run.
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

from .cli import CliError, ExitCode
from .outputs import check_output_name, disk_full


def lock_path(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_name(f".{p.name}.lock")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import psutil

        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: being written this instant, or garbage; treated as held unless old
    return holder if isinstance(holder, dict) else {}


def _is_stale(path: Path, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not pid_alive(holder["pid"])
    if not holder:  # unreadable lock: stale once it is older than a minute
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    return False  # another host's lock: cannot check, so respect it


def _try_create(path: Path, info: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except FileNotFoundError:
        raise CliError(f"the folder {path.parent} does not exist", f"create it: mkdir -p {path.parent}") from None
    except OSError as exc:  # read-only or not our folder: nothing could be written there either
        raise CliError(f"cannot write in {path.parent}: {exc.strerror}",
                       "choose an output folder you can write to", ExitCode.FAILED) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if exc.errno == errno.ENOSPC:
            raise disk_full(path) from None
        raise
    return True


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the lock of `output` for the duration of the block; CliError BUSY if another run holds it."""
    path = lock_path(check_output_name(output))
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or " ".join(sys.argv)[:500]}
    for _ in range(3):  # create; or take over a stale lock and retry
        if _try_create(path, info):
            break
        holder = _read_holder(path)
        if holder is None:
            continue  # released between our attempts
        if _is_stale(path, holder):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        raise CliError(
            f"{output} is being made by another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')}: {holder.get('command', '?')})",
            fix="wait for that run to finish (or stop it), then run again; if no such process exists, delete "
                f"{path}", code=ExitCode.BUSY)
    else:
        raise CliError(f"could not take the lock {path}", fix=f"delete {path} if no other run is active",
                       code=ExitCode.BUSY)
    try:
        yield path
    finally:
        if (_read_holder(path) or {}).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.contextmanager
def output_locks(outputs: list[str | os.PathLike], command: str | None = None) -> Iterator[None]:
    """Lock several outputs (a clip and its review files) at once, in a stable order."""
    with contextlib.ExitStack() as stack:
        for out in sorted({str(o) for o in outputs}):
            stack.enter_context(output_lock(out, command))
        yield
