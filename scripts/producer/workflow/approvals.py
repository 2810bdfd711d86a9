"""The user's approvals and retakes, kept in files so that a fresh agent can pick a production up.

.production/approvals.json
    {"version": 1, "approvals": {"philosophy": {"approved_at": "...", "files": {"philosophy.md": SHA256, ...}},
                                 "keyframe:KF-B": {...}, ...}}
An approval names what was approved (a phase, or one keyframe or clip) and the sha256 of every file
it covered. It holds only while every one of those files is unchanged: `valid_approvals` drops the
others (and says which file changed), so an edit after the user said yes always goes back to the user.

.production/takes.json
    {"keyframe:KF-B": 1, ...}
Seeds are derived from an item's id and its take number (0 unless retaken): re-planning gives the same
seeds, so nothing goes stale by itself; `retake` asks for another variant of one item.

Every change of these files reads, changes and writes them under the production's lock
(locks.state_lock): two commands at once take turns, and neither loses the other's update.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from producer.errors import CliError
from producer.files.layout import state_dir, state_file
from producer.files.locks import state_lock
from producer.files.outputs import atomic_output, write_json_atomic
from producer.files.provenance import file_digest
from producer.values import load_json

APPROVALS = "approvals.json"
TAKES = "takes.json"
VERSION = 1


@dataclass(frozen=True)
class Approval:
    name: str  # "philosophy" | ... | "keyframe:KF-B" | "clip:scene-02"
    approved_at: str
    files: dict[str, str]  # path relative to the production folder -> sha256 at approval


@dataclass(frozen=True)
class Dropped:
    name: str
    reason: str  # which file changed or went missing


def _read(path: Path, what: str) -> dict:
    if not path.is_file():
        return {}
    try:
        data = load_json(path.read_text(encoding="utf-8-sig"))  # a BOM from an editor is no reason to refuse it
    except (OSError, ValueError) as exc:
        raise CliError(f"{path} cannot be read ({exc})", f"fix or delete it; it holds the production's {what}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} is not a JSON object", f"fix or delete it; it holds the production's {what}")
    return data


def read_approvals(root: Path) -> dict[str, Approval]:
    path = state_file(root, APPROVALS)
    data = _read(path, "approvals")
    given = data.get("approvals") or {}
    if not isinstance(given, dict):  # a hand edit: iterating it would crash every command
        raise CliError(f"{path}: \"approvals\" is {type(given).__name__}, not an object of approvals",
                       'fix it to {"version": 1, "approvals": {NAME: {...}}}, or delete the file and approve again')
    out = {}
    for name, entry in given.items():
        if isinstance(entry, dict) and isinstance(entry.get("files"), dict):
            out[name] = Approval(name, str(entry.get("approved_at", "")), dict(entry["files"]))
    return out


@contextlib.contextmanager
def all_or_none(root: Path) -> Iterator[None]:
    """Several approvals in one command are recorded together, or (one of them refused) none of them. The
    production's lock is held throughout, so the undo never takes back another command's approval."""
    with state_lock(root):
        yield from _all_or_none(Path(root))


def _all_or_none(root: Path) -> Iterator[None]:
    path = state_file(root, APPROVALS)
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException as exc:
        now = path.read_bytes() if path.is_file() else None
        if now != before and before is None:
            path.unlink()
        elif now != before:
            with atomic_output(path) as tmp:
                tmp.write_bytes(before)
        if isinstance(exc, CliError):
            raise CliError(f"{exc.message} (nothing of this command was recorded)", exc.fix, exc.code,
                           **exc.details) from None
        raise


def record_approval(root: Path, name: str, files: list[Path]) -> Approval:
    """Write an approval of `files` (paths inside root) under `name`, replacing an older one."""
    root = Path(root)
    digests = {_rel(root, f): file_digest(f) for f in sorted(files)}
    approval = Approval(name, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), digests)
    with state_lock(root):
        current = {n: a for n, a in read_approvals(root).items() if n != name}
        current[name] = approval
        _write(root, current)
    return approval


def remove_approvals(root: Path, names: list[str]) -> None:
    with state_lock(root):
        current = read_approvals(root)
        if any(n in current for n in names):
            _write(root, {n: a for n, a in current.items() if n not in names})


def _write(root: Path, approvals: dict[str, Approval]) -> None:
    state_dir(root).mkdir(exist_ok=True)
    write_json_atomic(state_file(root, APPROVALS), {"version": VERSION, "approvals": {
        n: {"approved_at": a.approved_at, "files": a.files} for n, a in sorted(approvals.items())}})


def valid_approvals(root: Path) -> tuple[dict[str, Approval], list[Dropped]]:
    """(approvals whose files are all unchanged, approvals dropped because a file changed or went missing)."""
    valid, dropped = {}, []
    for name, approval in read_approvals(root).items():
        reason = _changed(Path(root), approval)
        if reason:
            dropped.append(Dropped(name, reason))
        else:
            valid[name] = approval
    return valid, dropped


def _changed(root: Path, approval: Approval) -> str | None:
    for rel, digest in approval.files.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} is gone"
        if file_digest(path) != digest:
            return f"{rel} changed after it was approved"
    return None


def _rel(root: Path, path: Path) -> str:
    target = Path(path).resolve()
    try:
        return target.relative_to(root.resolve()).as_posix()
    except ValueError:
        pass
    if Path(path).absolute().parent.resolve().is_relative_to(root.resolve()):  # the production's own name for it
        raise CliError(f"{path} is a link to {target}, outside the production folder {root}: an approval records "
                       "the production's own files", f"put the file itself there, then approve again: "
                       f"cp --remove-destination {shlex.quote(str(target))} {shlex.quote(str(path))}") from None
    # the planner's outputs are resolved, so a clip that links out of the production arrives here as its target
    raise CliError(f"{path} is outside the production folder {root}",
                   "approve files of this production only; where one of its files is a link to this one, put the "
                   "file itself in its place (cp --remove-destination TARGET LINK), then approve again") from None


# ---------------------------------------------------------------- takes and seeds


def read_takes(root: Path) -> dict[str, int]:
    data = _read(state_file(root, TAKES), "retakes")
    return {k: v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}


def bump_take(root: Path, item: str) -> int:
    with state_lock(root):
        takes = read_takes(root)
        takes[item] = takes.get(item, 0) + 1
        write_json_atomic(state_file(root, TAKES), dict(sorted(takes.items())))
    return takes[item]


def derive_seed(item: str, take: int = 0) -> int:
    """A fixed seed per item and take: the first 4 bytes of sha256("item#take"), 0 .. 2^32-1.

    Derived rather than random so the same plan always gives the same commands; derived from the item's
    id (not its position) so adding a scene does not change the seeds of the others."""
    return int.from_bytes(hashlib.sha256(f"{item}#{take}".encode()).digest()[:4], "big")
