"""Paths read from files stay inside the production folder.

A batch file, assets.json or scene-breakdown.md may come from somewhere else (an agent's scratch file,
a shared template, a download). The paths in them name files the scripts read and write, so they must
not reach outside the production folder: no "..", no absolute path elsewhere, no symlink that leads out
(the path is resolved, so a symlinked folder on the way counts where it points). Paths given on the
command line are the user's own and are not confined.

The production folder ("root") of each file:
- assets.json and scene-breakdown.md: the folder they are in;
- a batch file: the folder it is in, or the production above it when that folder is the production's
  state folder (`.production/`, where `production.py next` writes its batch files).
One flag lifts the rule, for files the user trusts: `--allow-outside` (production.py for assets.json,
qwen_image.py and wan_video.py beside --batch).

The production's own folders (keyframes/, scene-XX/, final/, assets/..., .production/: producer.files.layout)
must be inside it too: a symlink that takes one elsewhere is a problem `production.py check` reports, and
no command writes through it (`own_folder`). Only the asset folders may lead elsewhere, with the user's own
--allow-outside (asset pictures kept elsewhere); no tool adds --allow-outside by itself.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePath

from producer.errors import CliError
from producer.files import layout
from producer.files.layout import STATE

ALLOW_FLAG = "--allow-outside"


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether `path` (as given: absolute, or relative to the current folder, like `root`) is inside `root` once
    '..' and symlinks are resolved."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False
    except (OSError, RuntimeError):  # a symlink loop, a name the system refuses: not provably inside
        return False


def leaves_by_name(text: str) -> bool:
    """Lexically outside wherever it is read: an absolute path or one with a '..' part."""
    pure = PurePath(text)
    return pure.is_absolute() or ".." in pure.parts


def batch_root(batch_file: str | os.PathLike) -> Path:
    folder = Path(batch_file).resolve().parent
    return folder.parent if folder.name == STATE else folder


def confine(path: str | os.PathLike, root: str | os.PathLike, what: str, allow_outside: bool = False) -> Path:
    """`root / path`, or CliError when it leads outside `root` (unless allowed)."""
    full = Path(root) / path
    if "\0" in os.fspath(path):  # inside() cannot resolve it, but the name is the problem, not where it leads
        raise CliError(f"{what} {str(path)!r} contains a NUL character, which no file name can hold",
                       "remove the \\0 (\\u0000 in JSON) from the name")
    if allow_outside or inside(root, full):
        return full
    raise CliError(f"{what} {str(path)!r} leads outside the production folder {root}",
                   f"keep the file inside {root} (no '..', no absolute path or symlink elsewhere), or pass "
                   f"{ALLOW_FLAG} if you trust this file")


def folder_leaves(root: str | os.PathLike, folder: str | os.PathLike) -> str | None:
    """Why the production's own `folder` leads outside `root` (a symlink elsewhere, a symlink loop), or None."""
    if inside(root, folder):
        return None
    if _loops(folder):
        return "is a symbolic link that leads in a circle"
    return f"leads outside the production (a symbolic link to {os.path.realpath(folder)})"


def _loops(path: str | os.PathLike) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def folder_problems(root: str | os.PathLike, allow_outside: bool = False) -> list[tuple[str, str]]:
    """(folder relative to root, why) for each of the production's own folders that leads outside it. With
    the user's --allow-outside, asset folders may (asset pictures kept elsewhere); the others never."""
    out = []
    for folder in layout.own_folders(Path(root)):
        name = folder.relative_to(root).as_posix()
        if allow_outside and name.split("/")[0] == "assets":
            continue
        why = folder_leaves(root, folder)
        if why:
            out.append((name, why))
    return out


def own_folder(root: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """`folder` (one of the production's own, e.g. its .production/) before a tool writes into it: CliError
    when it leads outside the production. Nothing lifts this: the production's state stays its own."""
    why = folder_leaves(root, folder) if Path(folder).is_symlink() or Path(folder).exists() else None
    if why:
        raise CliError(f"{folder} {why}; nothing is written through it",
                       f"make {Path(folder).name} a real folder inside {root} (move what it holds there), then run "
                       "the command again")
    return Path(folder)
