"""Files the user names as input (pictures, LoRAs, batch, style, scene and pose files, clips): refuse
anything but a regular file before it is opened.

Opening a FIFO for reading waits until something writes to it, and reading a device such as /dev/zero
never ends: a run given either would hang with no message. `os.stat` answers without opening, so the
check costs nothing and names what the path is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from producer.errors import CliError, missing

KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` as a Path when it is a regular file (or a symlink to one); else a CliError saying what it is."""
    path = Path(path)
    fix = "check the path (ls -l it), or give the file itself"
    try:
        st = os.stat(path)
    except FileNotFoundError:  # also a dangling symlink: `missing` says which
        raise CliError(f"{what} {path} {missing(path)}", fix) from None
    except PermissionError:
        raise CliError(
            f"{what} {path} cannot be read (permission denied)", f"make it and its folders readable: chmod u+r {path}"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink loop, a file used as a folder
            raise CliError(f"{what} {path} {missing(path)}", fix) from None
        reason = "the name is too long" if exc.errno == errno.ENAMETOOLONG else exc.strerror or str(exc)
        raise CliError(f"{what} {path} cannot be read: {reason}", fix) from None
    except ValueError:  # a NUL byte in the name
        raise CliError(f"{what} {path!r} {missing(path)}", fix) from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{what} {path} is a directory", fix)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in KINDS if test(st.st_mode)), "not a regular file")
        raise CliError(
            f"{what} {path} is {kind}, not a regular file",
            "give a file on disk: reading a pipe or device would wait or run forever",
        )
    return path
