"""`approve` and `retake`: the user's word at a checkpoint, and another variant of one item.

Approving is allowed only in order and only for what is complete: `approve DIR assets` needs the
philosophy and the scene plan approved and every asset picture there and up to date. An item
(keyframe:KF-B, clip:scene-02) needs the phase before its own approved and its file up to date.
"""

from __future__ import annotations

import re

from producer.errors import CliError
from producer.files import layout
from producer.production.project import PHASE_FILES, PHASE_NUMBERS, PHASES
from producer.workflow import approvals, seeds
from producer.workflow.status import GOOD, ITEM_PHASES, Snapshot, shown

TOOL = "production.py"


def approve(snap: Snapshot, name: str) -> dict:
    name = normalise(name)
    _require_own_folders(snap)
    if name in PHASES:
        _require_earlier(snap, name)
        _require_complete(snap, name)
        files = snap.approval_files(name)
    else:
        state = snap.states.get(name)
        if state is None or state.job.phase not in ITEM_PHASES or not shown(state.job):
            raise CliError(f"nothing called {name!r} to approve", _what_can_be_approved(snap))
        _require_earlier(snap, state.job.phase)
        if state.state not in GOOD:
            raise CliError(f"{name} is {state.state}" + (f": {'; '.join(state.reasons)}" if state.reasons else ""),
                           f"make it first: {TOOL} next {snap.root}")
        files = [state.job.output]
    approval = approvals.record_approval(snap.root, name, files)
    return {"approved": name, "approved_at": approval.approved_at, "files": approval.files}


def normalise(name: str) -> str:
    """'clip:2' and 'clip:scene-2' -> 'clip:scene-02'; 'KF-B' -> 'keyframe:KF-B'; phases as they are."""
    name = name.strip()
    match = re.fullmatch(r"clip:(?:scene-?)?0*(\d+)", name, re.IGNORECASE)
    if match:
        return f"clip:scene-{int(match.group(1)):02d}"
    if name.lower() in PHASES:
        return name.lower()
    if ":" not in name and re.match(r"^KF[-_]", name, re.IGNORECASE):
        return f"keyframe:{name}"
    return name


def _require_own_folders(snap: Snapshot) -> None:
    """Nothing is recorded or planned while one of the production's own folders leads elsewhere (paths.own_folder)."""
    if snap.prod.folder_problems:
        first = snap.prod.folder_problems[0]
        raise CliError(f"{first.message}; nothing is recorded until it is fixed", first.fix)


def _require_earlier(snap: Snapshot, phase: str) -> None:
    for earlier in PHASES[:PHASES.index(phase)]:
        if not (snap.complete(earlier) and snap.approved(earlier)):
            raise CliError(f"Phase {PHASE_NUMBERS[earlier]} ({earlier}) is not approved yet; phases are approved in "
                           "order", f"finish and approve {earlier} first: {TOOL} next {snap.root}")


def _require_complete(snap: Snapshot, phase: str) -> None:
    upto = PHASES[:PHASES.index(phase) + 1]
    problems = [p for name in upto for p in snap.prod.problems[name]]
    if phase not in ("philosophy", "scenes"):
        problems += snap.prod.settings_problems
    if problems:
        first = problems[0]
        raise CliError(f"{phase} cannot be approved: {len(problems)} problem(s), e.g. {first}",
                       f"fix them first: {TOOL} check {snap.root}")
    if not snap.complete(phase):
        missing = [f for name in upto for f in PHASE_FILES.get(name, ()) if f in snap.prod.missing]
        pending = [f"{s.job.id} ({s.state})" for s in snap.items(phase) if s.state not in GOOD]
        what = ", ".join((missing + pending)[:6]) + (" ..." if len(missing + pending) > 6 else "")
        raise CliError(f"{phase} is not complete: {what or 'nothing has been made yet'}",
                       f"finish it first: {TOOL} next {snap.root}")


def _what_can_be_approved(snap: Snapshot) -> str:
    items = [s.job.id for s in snap.states.values() if s.job.phase in ITEM_PHASES and shown(s.job)]
    return f"approve a phase ({', '.join(PHASES)})" + (f" or an item ({', '.join(items)})" if items else "")


def retake(snap: Snapshot, name: str) -> dict:
    """Move one job to its next take: a new seed, so the item is stale and `next` makes it again."""
    name = normalise(name)
    _require_own_folders(snap)
    state = snap.states.get(name)
    if state is None or state.job.script == "assemble_video.py":
        jobs = [s.job.id for s in snap.states.values() if s.job.id != "film"]
        raise CliError(f"nothing called {name!r} to retake",
                       f"name a planned item: {', '.join(jobs[:12])}{' ...' if len(jobs) > 12 else ''}"
                       if jobs else f"the plan has no items yet: {TOOL} next {snap.root}")
    take = approvals.bump_take(snap.root, name)
    seed = seeds.seed(snap.plan.seed_salt, name, take)
    return {"retake": name, "take": take, "seed": seed, "output": layout.relative(snap.root, state.job.output),
            "message": f"{name} now plans seed {seed} (take {take}); `{TOOL} next {snap.root}` makes it again"}
