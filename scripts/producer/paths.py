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
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from .cli import CliError
from .layout import STATE

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
    if allow_outside or inside(root, full):
        return full
    raise CliError(f"{what} {str(path)!r} leads outside the production folder {root}",
                   f"keep the file inside {root} (no '..', no absolute path or symlink elsewhere), or pass "
                   f"{ALLOW_FLAG} if you trust this file")
