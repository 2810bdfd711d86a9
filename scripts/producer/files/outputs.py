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
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from producer.errors import CliError, ExitCode, missing, no_folder
from producer.files import faults, held_signals
from producer.values import load_json

# File systems allow 255 bytes per name. The longest name derived from an output's is a clip's recipe being
# written: NAME.provenance.json (+16 bytes), in a temp file (+17: ".", ".partial-", a pid of up to 7 digits),
# written through its own temp file (+17 again): 50 bytes more than NAME.
MAX_NAME_BYTES = 200


def check_output_name(path: str | os.PathLike, what: str = "output") -> Path:
    """An output must be a file name, short enough for its temp file and lock to fit beside it."""
    p = Path(path)
    if not p.name or p.name == "..":
        raise CliError(f"{what} {str(path)!r} is a folder, not a file", "give a file name, e.g. out/KF-A.png")
    if "\0" in str(p):
        raise CliError(f"{what} {str(path)!r} {missing(p)}", "remove the \\0 from the name")
    size = len(os.fsencode(p.name))
    if size > MAX_NAME_BYTES:
        raise CliError(f"{what} name {p.name[:40]}... is {size} bytes long; at most {MAX_NAME_BYTES} fit here",
                       "use a shorter file name")
    return p


def refuse_input_as_output(output: str | os.PathLike, inputs, what: str, example: str) -> None:
    """--overwrite replaces an earlier output, never a file the output is made from: that file would be gone,
    and the output's recipe would name content that no longer exists (stale for good)."""
    for path in filter(None, inputs):
        with contextlib.suppress(OSError):
            if os.path.samefile(path, output):
                raise CliError(f"{what} {output} would replace {path}, one of its own inputs",
                               f"write it to another file ({example}), and rename it afterwards if you like")


def check_output(path: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse an existing output (unless --overwrite) or a missing directory, before any work starts."""
    p = check_output_name(path, what)
    if p.is_dir():
        # the example keeps the output's own kind (a clip's "video.mp4" folder: video.mp4/out.mp4, not out.png)
        raise CliError(f"{what} {p} is a directory", fix="give a file name, e.g. " + str(p / ("out" + (p.suffix or ".png"))))
    if not p.parent.is_dir():
        raise no_folder(p.parent, f"the folder for {what} {p}")
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
def atomic_outputs(*paths: str | os.PathLike, output: str | os.PathLike | None = None) -> Iterator[list[Path]]:
    """atomic_output for a set of files that belong together (a clip, its review pictures and its recipe):
    the whole old set or the whole new set, never a mix. Every temp file is complete (and synced) before
    `commit` replaces the set; a failure or an interruption before that leaves the old set untouched.

    Give the files in the order they are to be renamed, the one that says "done" (the recipe) last: a reader
    that looks in during the renames, or after a SIGKILL there, sees an output whose recipe predates it,
    never an old output under a new recipe. `output` (default: the first path) is what messages name."""
    finals = [Path(p) for p in paths]
    named = Path(output) if output is not None else finals[0]
    temps = [temp_path(final) for final in finals]
    held_signals.deliver_late_signal()  # new work: a signal held since the last commit stops the run before it
    for final in finals:
        recover(final)
    _open_sets.append(named)
    try:
        yield temps
        for final in finals:
            faults.at(f"rename:{final.name}")  # every temp complete, nothing renamed yet
        commit(list(zip(temps, finals)), named)
    except OSError as exc:
        _remove_all(temps)
        if exc.errno == errno.ENOSPC:
            raise disk_full(named, exc.filename) from None
        raise
    except CliError as err:
        _remove_all(temps)
        if err.details.get("disk_full"):  # a writer's own atomic_output inside ours named its temp: name ours
            raise disk_full(named, getattr(err, "failed_file", None)) from None
        raise
    except BaseException:
        _remove_all(temps)
        raise
    finally:
        _open_sets.pop()


_open_sets: list[Path] = []  # the sets being made now, outermost first (a writer's own file inside ours)


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.stem}{PARTIAL_MARK}{os.getpid()}{final.suffix}")


# ---------------------------------------------------------------- the commit of a set of files
#
# 1. sync every temp file; 2. keep each file about to be replaced under a second name (a hard link, so the
# final name never goes missing); 3. write the journal: which temp goes where, and which old file was kept
# where; 4. rename the temps in order; 5. sync the folder, remove the journal: the new set is in place;
# 6. remove the kept old files. An error in 2-5 puts the old set back at once; a process killed in 3-5
# leaves the journal, and the next write of any file of the set (or `recover`) puts the old set back.
# Ctrl-C and SIGTERM are held over 2-6 (a few system calls), so they land before the commit or after it.

JOURNAL_MARK = ".commit-"
KEPT_MARK = ".old-"


def commit(pairs: list[tuple[Path, Path]], output: Path) -> None:
    """Replace each final by its temp file: all of them, or (an error) none of them."""
    for tmp, _ in pairs:
        faults.at(f"fsync:{output_for(tmp).name}", tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    if len(pairs) == 1:  # one rename is all or nothing by itself
        (tmp, final), = pairs
        with held_signals.deferred(outermost=len(_open_sets) <= 1):
            faults.at(f"commit:{final.name}", final)
            os.replace(tmp, final)
        return
    with held_signals.deferred(outermost=len(_open_sets) <= 1):
        journal = _journal_path(output)
        entries: list[dict] = []
        try:
            for tmp, final in pairs:
                entries.append({"temp": str(tmp), "final": str(final), "kept": _keep_old(final)})
            faults.at(f"journal:{output.name}", journal)
            _write_journal(journal, entries)
            for tmp, final in pairs:
                faults.at(f"commit:{final.name}", final)
                os.replace(tmp, final)
            faults.at(f"committed:{output.name}", journal)
            _sync_folders(final for _, final in pairs)
            journal.unlink()
        except BaseException:
            _roll_back(entries)
            _remove_quietly(journal)
            raise
        for entry in entries:
            if entry["kept"]:
                with contextlib.suppress(OSError):  # a leftover is swept by the next write of this output
                    Path(entry["kept"]).unlink()


def recover(final: str | os.PathLike) -> list[Path]:
    """Put back the old set of a commit that a killed process left half done (its journal names `final`), and
    remove temp files of dead processes beside `final`. Returns the journals rolled back."""
    final = Path(final)
    rolled = []
    with contextlib.suppress(OSError):
        for journal in final.parent.glob(f".*{JOURNAL_MARK}*.json"):
            pid = _journal_pid(journal)
            if pid == os.getpid() or pid_alive(pid):
                continue  # a live run is in the middle of its commit (under the output's lock, not ours)
            entries = _read_journal(journal)
            if entries is None and journal.name.startswith(f".{final.name}{JOURNAL_MARK}"):
                _remove_quietly(journal)  # torn while it was written: nothing was renamed yet
                continue
            if entries is None or not any(Path(e["final"]) == final for e in entries):
                continue
            _roll_back(entries)
            _remove_quietly(journal)
            rolled.append(journal)
    _sweep_partials(final)
    return rolled


def _journal_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{JOURNAL_MARK}{os.getpid()}.json")


def _keep_old(final: Path) -> str | None:
    """A second name for the file about to be replaced (None: there is none), for a roll-back."""
    if not final.exists():
        return None
    kept = final.with_name(f".{final.stem}{KEPT_MARK}{os.getpid()}{final.suffix}")
    _remove_quietly(kept)
    try:
        faults.at(f"backup:{final.name}", kept)
        try:
            os.link(final, kept)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            shutil.copy2(final, kept)  # a file system without hard links (FAT, some network shares)
    except BaseException:
        _remove_quietly(kept)  # a copy cut short
        raise
    return str(kept)


def _write_journal(journal: Path, entries: list[dict]) -> None:
    """Written in place and synced before the first rename: a journal torn by a crash while it was being
    written is unreadable, and then no file had been renamed yet (recover removes it)."""
    with open(journal, "x", encoding="utf-8") as fh:
        json.dump({"entries": entries}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _sync_folders([journal])


def _read_journal(journal: Path) -> list[dict] | None:
    try:
        entries = load_json(journal.read_text(encoding="utf-8"))["entries"]
        return [e for e in entries if isinstance(e, dict) and {"temp", "final", "kept"} <= set(e)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _roll_back(entries: list[dict]) -> None:
    """Undo the renames of a commit, entry by entry (each step can be repeated: a roll-back that was itself
    interrupted is finished by the next one)."""
    for entry in entries:
        temp, final = Path(entry["temp"]), Path(entry["final"])
        kept = Path(entry["kept"]) if entry["kept"] else None
        if kept and _same_file(kept, final):  # not replaced yet (rename would do nothing: one file, two names)
            kept.unlink()
        elif kept:
            with contextlib.suppress(FileNotFoundError):  # gone: already put back
                os.replace(kept, final)
        elif not temp.exists():  # there was no old file and the new one was renamed into place: remove it
            _remove_quietly(final)
        _remove_quietly(temp)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sync_folders(paths) -> None:
    """Make the renames themselves durable (power loss), where the system allows syncing a folder."""
    if sys.platform == "win32":
        return
    for folder in {Path(p).parent for p in paths}:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove_all(paths) -> None:
    for p in paths:
        _remove_quietly(p)


PARTIAL_MARK = ".partial-"


def disk_full(path: str | os.PathLike, failed: str | os.PathLike | None = None) -> CliError:
    """The error for a write that ran out of disk space (`disk_full` in --json stops a batch). `path` is the
    output the user asked for; `failed`, the file being written then, is named too when it is another file
    of the same set (a review picture, a recipe), never as a temp, lock or journal file."""
    path = output_for(path)
    part = output_for(failed) if failed else path
    also = f" (its {part.name})" if part != path and part.parent == path.parent and not part.name.startswith(".") \
        else ""
    err = CliError(f"the disk is full while writing {path}{also}", "free disk space and run again; earlier outputs "
                   "are intact (a --batch rerun skips the finished ones)", ExitCode.FAILED, disk_full=True)
    err.failed_file = part  # for a caller that writes this file as part of its own set
    return err


def output_for(tmp: str | os.PathLike) -> Path:
    """The output an atomic_output temp file (or an old file kept for a roll-back) stands for, for messages:
    .video.partial-12.mp4 -> video.mp4 (also through nested temps, a writer's own temp inside a caller's)."""
    tmp = Path(tmp)
    for mark in (PARTIAL_MARK, KEPT_MARK):
        stem, found, rest = tmp.stem.rpartition(mark)
        if found and stem.startswith(".") and rest.isdigit():
            return output_for(tmp.with_name(stem[1:] + tmp.suffix))
    return tmp


def _sweep_partials(final: Path) -> None:
    """Remove the temp files, and old files kept for a roll-back, that a killed run left beside `final`."""
    with contextlib.suppress(OSError):
        for mark in (PARTIAL_MARK, KEPT_MARK):
            for stale in final.parent.glob(f".{glob.escape(final.stem)}{mark}*{glob.escape(final.suffix)}"):
                pid = stale.name[len(final.stem) + 1 + len(mark):len(stale.name) - len(final.suffix)]
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                    _remove_quietly(stale)


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


def _journal_pid(journal: Path) -> int:
    pid = journal.stem.rpartition(JOURNAL_MARK)[2]
    return int(pid) if pid.isdigit() else 0


def _remove_quietly(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


def json_text(obj: Any, **options) -> str:
    """JSON that UTF-8 can carry: readable non-ASCII text, but \\u escapes when a string holds a lone
    surrogate (a file name that is not valid UTF-8, as Python decodes it); both read back the same."""
    text = json.dumps(obj, ensure_ascii=False, default=str, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, default=str, **options)
    return text


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json_text(obj, indent=2) + "\n", encoding="utf-8")
