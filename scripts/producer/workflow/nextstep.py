"""`next`: what to do now, as exact commands, for the current phase only.

The answer has an `action`:
  fix       problems in the phase files (file, line, fix), or jobs their script would refuse
  write     a phase file is not written yet (philosophy.md and style.json, scene-breakdown.md, assets.json)
  generate  jobs to run: a batch file for the script's --batch (.production/next-PHASE.json) and the
            command that runs it; every job also as a stand-alone command
  approve   the phase is complete: show the user its files, and record their answer with `approve`
  retake    (retakes on in settings.json) judging flagged items of this checkpoint: each was kept as a
            variant and given a new seed (nothing approved); ask `next` again
  done      the film is made and approved

Only jobs whose inputs are all ready are planned: a composite waits for its layers, a chained
background for the previous one (the scripts read every picture of a batch before they start). Run
the commands, then ask `next` again until it says approve. A stale file is planned with "overwrite":
true; a file made by hand (no recipe) is never planned. Output folders are created here, so that the
scripts find them.
"""

from __future__ import annotations

import shlex

from producer.files import layout, paths
from producer.files.outputs import write_json_atomic
from producer.production.project import PHASE_FILES, PHASE_NUMBERS, PHASES
from producer.workflow.planner import ASSEMBLE, command, job_argv
from producer.workflow.status import ITEM_PHASES, ItemState, Snapshot, shown

TOOL = "production.py"


REHEARSAL_NOTE = "REHEARSAL on stand-in models (nothing here is real): "


def next_step(snap: Snapshot) -> dict:
    step = _next_step(snap)
    if snap.rehearsal is not None:
        step = {**step, "rehearsal": True, "message": REHEARSAL_NOTE + step["message"]}
    return step


def _next_step(snap: Snapshot) -> dict:
    phase = snap.current_phase()
    base = {"root": str(snap.root), "phase": phase, "phase_number": PHASE_NUMBERS.get(phase)}
    if phase is None:
        return {**base, "action": "done", "message": f"the film is made and approved: {layout.film_path(snap.root)}"}
    if snap.prod.folder_problems:  # before anything is planned or written into one of them
        return {**base, "action": "fix", "message": f"fix {len(snap.prod.folder_problems)} folder(s) that lead "
                "outside the production first", "problems": _listed(snap.prod.folder_problems)}
    every_file = [f for files in PHASE_FILES.values() for f in files]
    if set(every_file) <= set(snap.prod.missing):  # an empty (new) folder: the first files to write, not a fault
        first = list(PHASE_FILES["philosophy"])
        return {**base, "action": "write", "files": first,
                "message": f"write {' and '.join(first)} (SKILL.md Phase 1), then check them: {TOOL} check {snap.root}"}
    problems = _phase_problems(snap, phase)
    if problems:
        return {**base, "action": "fix", "message": f"fix {len(problems)} problem(s) in the phase files first",
                "problems": problems}
    missing = [f for p in PHASES[:PHASES.index(phase) + 1] for f in PHASE_FILES.get(p, ()) if f in snap.prod.missing]
    if missing:
        return {**base, "action": "write", "files": missing,
                "message": f"write {' and '.join(missing)} (SKILL.md Phase {PHASE_NUMBERS[phase]}), then check it: "
                           f"{TOOL} check {snap.root}"}
    if snap.complete(phase):
        flags = _flags_of(snap, phase)  # the judging of this checkpoint's keyframes or clips (producer.workflow.drift)
        return {**base, **(_retake_flagged(snap, flags) or _approve(snap, phase, flags))}
    return {**base, **_generate(snap, phase)}


def _phase_problems(snap: Snapshot, phase: str) -> list[dict]:
    prod = snap.prod
    upto = PHASES[:min(PHASES.index(phase), PHASES.index("assets")) + 1]
    problems = [p for name in upto for p in prod.problems[name]]
    if PHASES.index(phase) >= PHASES.index("assets"):
        problems += prod.settings_problems
    return _listed(problems)


def _listed(problems) -> list[dict]:
    return [{"file": p.file, "line": p.line, "message": p.message, "fix": p.fix} for p in problems]


def _approve(snap: Snapshot, phase: str, flags: list[dict]) -> dict:
    root = snap.root
    files = [layout.relative(root, f) for f in snap.approval_files(phase)]
    show = [layout.relative(root, p) for f in snap.approval_files(phase) for p in _pictures_of(f)]
    items = [s.job.id for s in snap.items(phase) if s.job.script != ASSEMBLE]
    commands = [shlex.join(command(TOOL, ["approve", str(root), phase]))]
    if phase in ITEM_PHASES:
        waiting = [s.job for s in snap.items(phase) if shown(s.job) and s.job.id not in snap.approvals]
        commands += [shlex.join(command(TOOL, ["approve", str(root), j.id])) for j in waiting]
    videos = [f for f in files if f.endswith(".mp4")]
    watch = f" (and give the path of {', '.join(videos)} for the user to watch: you cannot)" if videos else ""
    judged = (f" Judging raised {len(flags)} flag(s) on {len({f['item'] for f in flags})} item(s) (`flags`: figure, "
              "threshold, fix, chart): show the user "
              "each with its chart and say what it means before asking." if flags else "")
    variants = _variants(snap, phase, flags)
    if variants:
        judged += (" Retakes kept variants of some items (`variants`, best first by their figures, each in its "
                   "folder): show them and say which the figures favour; the user chooses.")
    return {"action": "approve", "files": files, "show": show, "approve_commands": commands, "flags": flags,
            "variants": variants,
            "message": f"Phase {PHASE_NUMBERS[phase]} ({phase}) is complete. Open and show the user "
                       f"{', '.join(show)}{watch}, and ask for approval; record a yes with "
                       f"`{TOOL} approve {root} {phase}`"
                       + (" (or one keyframe/clip at a time)" if phase in ITEM_PHASES else "")
                       + ". For changes: edit the plan's files (stale items are planned again)"
                       + (f" or `{TOOL} retake {root} {items[0]}` (any item) for another variant" if items else "")
                       + "." + judged}


def _retake_flagged(snap: Snapshot, flags: list[dict]) -> dict | None:
    """Retakes within the production's budget (producer.workflow.retakes; off by default): the flagged items of this
    checkpoint are kept as variants and moved to a new seed; None when there is nothing (more) to retake."""
    from producer.workflow import retakes

    budget = retakes.budget_from(snap.prod.settings)
    if not (budget.on and flags):
        return None
    flagged: dict[str, list[dict]] = {}
    for flag in flags:
        flagged.setdefault(flag["item"], []).append(flag)
    outputs = {item: snap.states[item].job.output for item in flagged}
    done = retakes.plan(snap.root, outputs, flagged, budget)
    if not done["retaken"]:
        return None
    return {"action": "retake", "retaken": done["retaken"], "spent": done["spent"], "budget": done["budget"],
            "commands": [shlex.join(command(TOOL, ["next", str(snap.root)]))],
            "message": f"judging flagged {', '.join(done['retaken'])}: kept as variants and moved to a new seed "
                       f"({done['spent']} of {done['budget']} retakes used); run `{TOOL} next {snap.root}` to make "
                       "them. Nothing was approved."}


def _variants(snap: Snapshot, phase: str, flags: list[dict]) -> dict:
    from producer.workflow import retakes

    prefix = "keyframe:" if phase == "keyframes" else "clip:"
    current = {s.job.id: [f for f in flags if f["item"] == s.job.id] for s in snap.items(phase)}
    return {item: c for item, c in retakes.proposals(snap.root, current).items() if item.startswith(prefix)}


def _flags_of(snap: Snapshot, phase: str) -> list[dict]:
    """The judging flags of this checkpoint's items (keyframes, clips); none for the other phases."""
    if phase not in ("keyframes", "clips"):
        return []
    from producer.workflow.status import judge_film

    prefix = "keyframe:" if phase == "keyframes" else "clip:"
    return [f for f in judge_film(snap)["flags"] if f["item"].startswith(prefix)]


def _pictures_of(path) -> list:
    """What the user is shown for an approved file: a picture itself; for a video, the PNGs made beside it
    (contact sheet, first and last frame: SKILL.md rule 8), never the MP4 alone."""
    if path.suffix.lower() != ".mp4":
        return [path]
    beside = [path.with_suffix(f".{kind}.png") for kind in ("contact", "first", "last")]
    return [p for p in beside if p.is_file()] or [path]


def _generate(snap: Snapshot, phase: str) -> dict:
    items = snap.items(phase)
    runnable = [s for s in items if s.state in ("missing", "stale") and s.ready]
    errors = [s for s in items if s.state == "error"]
    waiting = [s for s in items if s.state in ("missing", "stale") and not s.ready]
    if not runnable:
        return {"action": "fix", "message": "no job can run: " + "; ".join(
                    f"{s.job.id}: {' '.join(s.reasons)}" for s in errors or waiting),
                "errors": [_item(snap, s) for s in errors], "waiting": [_item(snap, s) for s in waiting]}
    for s in runnable:
        s.job.output.parent.mkdir(parents=True, exist_ok=True)
    jobs = [_job(snap, s) for s in runnable]
    result = {"action": "generate", "jobs": jobs, "waiting": [_item(snap, s) for s in waiting],
              "errors": [_item(snap, s) for s in errors]}
    script = runnable[0].job.script
    if script == ASSEMBLE:
        result["commands"] = [jobs[0]["command"]]  # --json is on every command (SKILL.md)
    else:
        batch_file = layout.state_file(snap.root, f"next-{phase}.json")
        layout.state_dir(snap.root).mkdir(exist_ok=True)
        write_json_atomic(batch_file, {"jobs": [j["batch_job"] for j in jobs]})
        # Pictures the user keeps outside the folder (their own production.py --allow-outside) stay allowed in
        # the batch file. Only then: this tool never widens the confinement by itself.
        outside = any(not paths.inside(snap.root, p) for s in runnable for p in (*s.job.inputs, s.job.output))
        flags = snap.plan.batch_flags.get(script, [])
        if outside and snap.prod.allow_outside and paths.ALLOW_FLAG not in flags:
            flags = flags + [paths.ALLOW_FLAG]
        argv = command(script, ["--batch", str(batch_file), *flags, "--json"])
        result.update(batch_file=str(batch_file), batch_argv=argv, commands=[shlex.join(argv)])
    later = f"; {len(waiting)} more wait for these" if waiting else ""
    result["message"] = (f"run {len(runnable)} {phase} job(s) with {script}{later}, then `{TOOL} next {snap.root}` "
                         "again")
    return result


def _job(snap: Snapshot, s: ItemState) -> dict:
    overwrite = s.state == "stale"
    argv = command(s.job.script, job_argv(s.job, snap.plan, overwrite) + ["--json"])
    batch_job = {**{k: v for k, v in s.job.options.items() if k not in ("production_dir", "clips")},
                 **({"overwrite": True} if overwrite else {})}
    return {**_item(snap, s), "script": s.job.script, "argv": argv, "command": shlex.join(argv),
            "batch_job": batch_job}


def _item(snap: Snapshot, s: ItemState) -> dict:
    return {"id": s.job.id, "label": s.job.label, "output": layout.relative(snap.root, s.job.output),
            "state": s.state, "reasons": s.reasons}

