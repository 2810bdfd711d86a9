"""Output files that are never half-written or silently replaced: names checked before any work, a temp
file beside each output renamed into place only when complete (files that belong together: all or none,
with Ctrl-C and SIGTERM held over the renames), a full disk reported with the fix, and temp files of runs
that were killed outright swept away.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

from .cli import CliError, ExitCode

# File systems allow 255 bytes per name. The longest name derived from an output's is a clip's recipe being
# written: NAME.provenance.json (+16 bytes), in a temp file (+17: ".", ".partial-", a pid of up to 7 digits),
# written through its own temp file (+17 again): 50 bytes more than NAME.
MAX_NAME_BYTES = 200


def check_output_name(path: str | os.PathLike, what: str = "output") -> Path:
    """An output must be a file name, short enough for its temp file and lock to fit beside it."""
    p = Path(path)
    if not p.name or p.name == "..":
        raise CliError(f"{what} {str(path)!r} is a folder, not a file", "give a file name, e.g. out/KF-A.png")
    size = len(os.fsencode(p.name))
    if size > MAX_NAME_BYTES:
        raise CliError(f"{what} name {p.name[:40]}... is {size} bytes long; at most {MAX_NAME_BYTES} fit here",
                       "use a shorter file name")
    return p


def check_output(path: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse an existing output (unless --overwrite) or a missing directory, before any work starts."""
    p = check_output_name(path, what)
    if p.is_dir():
        raise CliError(f"{what} {p} is a directory", fix="give a file name, e.g. " + str(p / "out.png"))
    if not p.parent.is_dir():
        raise CliError(f"the folder for {what} {p} does not exist", fix=f"create it: mkdir -p {p.parent}")
    if p.exists() and not overwrite:
        raise CliError(f"{what} {p} already exists", fix="pass --overwrite to replace it, or choose another name")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    The temp name keeps the extension so writers can infer the format. A failure, Ctrl-C or SIGTERM
    removes the temp file, so a truncated file never sits under the final name. Temp files of this output
    left by a run that was killed outright (SIGKILL, power loss) are removed here, once their process is gone.
    """
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """atomic_output for files that belong together (a clip and its recipe): all or none. Every temp file is
    complete before the first rename; the renames (in the order given) run with Ctrl-C and SIGTERM held back
    for those few system calls, so an interruption lands before them or after them."""
    from . import faults

    finals = [Path(p) for p in paths]
    temps = [final.with_name(f".{final.stem}{PARTIAL_MARK}{os.getpid()}{final.suffix}") for final in finals]
    for final in finals:
        _sweep_partials(final)
    try:
        yield temps
        for tmp in temps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        for final in finals:
            faults.at(f"rename:{final.name}")
        with _signals_deferred():
            for tmp, final in zip(temps, finals):
                os.replace(tmp, final)
    except OSError as exc:
        for tmp in temps:
            _remove_quietly(tmp)
        if exc.errno == errno.ENOSPC:
            raise disk_full(output_for(exc.filename) if exc.filename else finals[0]) from None
        raise
    except BaseException:
        for tmp in temps:
            _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them to the handlers that were in place."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it receives Python's signal exceptions)
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda number, frame: caught.append(number)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])


PARTIAL_MARK = ".partial-"


def disk_full(path: str | os.PathLike) -> CliError:
    """The error for a write that ran out of disk space (`disk_full` in --json stops a batch)."""
    return CliError(f"the disk is full while writing {path}", "free disk space and run again; earlier outputs are "
                    "intact (a --batch rerun skips the finished ones)", ExitCode.FAILED, disk_full=True)


def output_for(tmp: str | os.PathLike) -> Path:
    """The output an atomic_output temp file stands for (for messages): .video.partial-12.mp4 -> video.mp4
    (also through nested temps, a writer's own temp inside a caller's)."""
    tmp = Path(tmp)
    stem, mark, rest = tmp.stem.rpartition(PARTIAL_MARK)
    if not (mark and stem.startswith(".") and rest.isdigit()):
        return tmp
    return output_for(tmp.with_name(stem[1:] + tmp.suffix))


def _sweep_partials(final: Path) -> None:
    from .locks import pid_alive

    with contextlib.suppress(OSError):
        for stale in final.parent.glob(f".{glob.escape(final.stem)}{PARTIAL_MARK}*{glob.escape(final.suffix)}"):
            pid = stale.name[len(final.stem) + 1 + len(PARTIAL_MARK):len(stale.name) - len(final.suffix)]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                _remove_quietly(stale)


def _remove_quietly(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
