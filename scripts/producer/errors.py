"""What every layer may raise: exit codes, and errors that name the fix (CliError).

The bottom of the package: it imports nothing from it, so any module may raise a CliError with an ExitCode.
The scripts turn one into a message on stderr (and one JSON object with --json) through cli.run_main.
"""

from __future__ import annotations

import enum
import errno
import os
from typing import Any


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # generation or an internal step failed
    USAGE = 2  # bad arguments or bad input files
    MISSING_MODEL = 3  # weights not installed: run setup_diffusers.py
    OUT_OF_MEMORY = 4  # GPU or host memory ran out: the message names the next plan to try
    BUSY = 5  # another run holds the lock on this output
    PARTIAL = 6  # a batch finished with some jobs failed (the JSON lists them)
    INTERRUPTED = 130  # Ctrl-C
    STDOUT_CLOSED = 141  # stdout was closed before the report was written (`... | head`): 128 + SIGPIPE
    TERMINATED = 143  # SIGTERM


EXIT_CODE_HELP = (
    "exit codes: 0 ok, 1 generation failed, 2 bad arguments or input, 3 model not installed, "
    "4 out of memory, 5 output locked by another run, 6 batch partly failed, 130 interrupted, "
    "141 stdout closed, 143 terminated"
)


class CliError(Exception):
    """A failure the user can fix: what went wrong, and what to do next."""

    def __init__(self, message: str, fix: str = "", code: ExitCode = ExitCode.USAGE, **details: Any):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = ExitCode(code)
        self.details = details

    def to_dict(self) -> dict:
        d = {"status": "error", "error": self.message, "fix": self.fix, "exit_code": int(self.code)}
        d.update(self.details)
        return d


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that cleanup code (temp files, locks) runs."""


# A file the system refused: what it means for the user, the fix, and whose fault it is.
FILE_ERRORS = {
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter name (at most 255 bytes per file or folder name)",
                         ExitCode.USAGE),
    errno.ENOENT: ("no such file or folder", "check the path", ExitCode.USAGE),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path", ExitCode.USAGE),
    errno.EISDIR: ("it is a folder, not a file", "give a file", ExitCode.USAGE),
    errno.ELOOP: ("a symbolic link leads in a circle", "check the links on the path", ExitCode.USAGE),
    errno.EACCES: ("permission denied", "check the permissions (ls -l), or use another folder", ExitCode.USAGE),
    errno.EPERM: ("operation not permitted", "check the permissions (ls -l), or use another folder", ExitCode.USAGE),
    errno.EROFS: ("the file system is read-only", "write to another folder", ExitCode.FAILED),
}


def missing(path: str | os.PathLike) -> str:
    """Why `path` is not there, for "FILE <reason>" messages: a symlink loop or a dangling link is not simply
    "does not exist", and a name holding a NUL character cannot exist at all."""
    text = os.fspath(path)
    if "\0" in text:
        return "cannot exist: its name contains a NUL character (\\0), which no file name can hold"
    try:
        os.stat(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "cannot be reached: a symbolic link on its path leads in a circle (check the links with ls -l)"
        if exc.errno == errno.ENOTDIR:
            return "cannot exist: a part of its path is a file, not a folder"
        if os.path.islink(text):
            return f"is a symbolic link to {os.readlink(text)}, which does not exist"
    return "does not exist"


def no_folder(folder: str | os.PathLike, label: str = "") -> CliError:
    """The error for an output's folder that is not there. `mkdir -p` is the fix only where nothing is in the
    way: a file at that name, or on the path above it, must be moved first (mkdir would fail on it)."""
    text = os.fspath(folder)
    label = label or f"the folder {text}"
    if os.path.isfile(text):
        return CliError(f"{label} is a file, not a folder",
                        f"move the file {text} out of the way, or write the output into another folder")
    why = missing(text)
    if why != "does not exist":  # a symlink loop, a dangling link, a file on the path above it, a NUL
        return CliError(f"{label} {why}", f"check the path (ls -ld each part of {text}), or write the output "
                        "into another folder")
    return CliError(f"{label} {why}", f"create it: mkdir -p {text}")
