"""Where a production stands: the state of every planned file, each phase, and the user's approvals.

Item states:
  ok        the file exists and its recipe is what its job would record now
  missing   the file is not there yet
  stale     the file exists but something it was made from changed (the reasons say what), or it is
            made from a file that is itself missing or stale (it will change when that one is remade),
            or it is a picture that cannot be read (truncated, damaged): planned again with --overwrite
  provided  the file exists without a recipe: the user made it; it is used as it is and never planned
  unchecked the file exists, its seed and input files are as planned, but the rest of its recipe cannot
            be compared here because the model is not installed on this machine (counted as done)
  error     the job cannot run as planned (its script refuses an input); the reason says why

A phase is complete when its files pass the check and every item of it is ok or provided; it is
approved when a valid approval covers all its files (for keyframes and clips: the phase's own
approval, or one approval per keyframe / clip). The current phase is the first that is not both.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CliError, ExitCode, missing
from producer.files import layout
from producer.files.provenance import recipe_or_damage
from producer.production.project import PHASE_NUMBERS, PHASES, Production, load_production
from producer.workflow import approvals as approvals_mod
from producer.workflow import rehearsal, seeds
from producer.workflow.planner import ASSEMBLE, Job, Plan, command, plan_production
from producer.workflow.recipes import differences, film_differences, model_changes, partial_differences, would_be_recipe

GOOD = ("ok", "provided", "unchecked")
TOOL = "production.py"
ITEM_PHASES = {"keyframes": "keyframe", "clips": "clip"}  # phases approved item by item too


@dataclass
class ItemState:
    job: Job
    state: str
    reasons: list[str] = field(default_factory=list)
    ready: bool = True  # every file it is made from is ok or provided: it can be made now
    notes: list[str] = field(default_factory=list)

    def to_dict(self, root: Path) -> dict:
        return {"id": self.job.id, "phase": self.job.phase, "label": self.job.label,
                "output": layout.relative(root, self.job.output), "state": self.state, "reasons": self.reasons,
                "ready": self.ready, "notes": self.notes}


@dataclass
class Snapshot:
    """Everything `status`, `approve` and `next` need, read from the folder once."""

    prod: Production
    plan: Plan
    states: dict[str, ItemState]
    approvals: dict[str, approvals_mod.Approval]
    dropped: list[approvals_mod.Dropped]
    rehearsal: dict | None = None  # the rehearsal marker (producer.workflow.rehearsal): None for a real production

    @property
    def root(self) -> Path:
        return self.prod.root

    def items(self, phase: str) -> list[ItemState]:
        return [s for s in self.states.values() if s.job.phase == phase]

    def complete(self, phase: str) -> bool:
        files_ok = self.prod.ok_through(min(phase, "assets", key=PHASES.index))
        if phase in ("philosophy", "scenes"):
            return files_ok
        items = self.items(phase)
        return files_ok and bool(items or phase == "assets") and all(s.state in GOOD for s in items)

    def approval_files(self, phase: str) -> list[Path]:
        """The files an approval of this phase covers."""
        root = self.root
        if phase == "philosophy":
            return [root / layout.PHILOSOPHY, root / layout.STYLE]
        if phase == "scenes":
            return [root / layout.SCENE_BREAKDOWN]
        if phase == "assets":
            pictures = [a.path for a in self.prod.assets.assets] if self.prod.assets else []
            return [root / layout.ASSETS, *pictures]
        return [s.job.output for s in self.items(phase) if shown(s.job)]

    def approved(self, phase: str) -> bool:
        files = {layout.relative(self.root, f) for f in self.approval_files(phase)}
        whole = self.approvals.get(phase)
        if whole is not None and files <= set(whole.files):
            return True
        if phase in ITEM_PHASES:
            reviewed = [s.job for s in self.items(phase) if shown(s.job)]
            return bool(reviewed) and all(j.id in self.approvals for j in reviewed)  # keyframe:KF-B, clip:scene-02
        return False

    def current_phase(self) -> str | None:
        """The first phase not both complete and approved; None when the film is done and approved."""
        return next((p for p in PHASES if not (self.complete(p) and self.approved(p))), None)


def shown(job: Job) -> bool:
    """Files the user reviews: not the layers (they are reviewed through their keyframe)."""
    return not job.id.startswith(("background:", "character:"))


def snapshot(root: str | Path, allow_outside: bool = False, with_states: bool = True,
             plan_seeds: bool = False) -> Snapshot:
    """with_states=False skips comparing every output with its job (what `check` does not need); plan_seeds
    stores the production's seed salt on first use (`next`, `retake`: the commands that hand out seeds)."""
    root = Path(root)
    if not root.is_dir():
        raise CliError(f"{root} {missing(root) if not root.exists() else 'is not a folder'}", "give the production folder (the one with philosophy.md)")
    marker = rehearsal.read_marker(root)
    if marker is not None:
        _use_rehearsal_models(root, marker)
    valid, dropped = approvals_mod.valid_approvals(root)
    due = "assets" in approvals_mod.read_approvals(root)
    prod = load_production(root, allow_outside, asset_files_due=due)
    planned = prod.ok_through("scenes")
    salt = seeds.salt(root, create=plan_seeds and not prod.folder_problems) if planned else ""
    plan = plan_production(prod, approvals_mod.read_takes(root), salt) if planned else Plan(root, [])
    prod.settings_problems += plan.problems
    states = job_states(plan, prod, marker is not None) if with_states and prod.ok_through("assets") else {}
    return Snapshot(prod, plan, states, valid, dropped, marker)


def _use_rehearsal_models(root: Path, marker: dict) -> None:
    """A rehearsal's recipes are compared against its own stand-ins, which outlive the run (the demo's too)."""
    from producer.modelfiles import models

    where = marker.get("models_dir") or str(rehearsal.models_dir(root))
    if Path(where).is_dir():
        models.use_models_dir(where)


def job_states(plan: Plan, prod: Production, is_rehearsal: bool = False) -> dict[str, ItemState]:
    states: dict[str, ItemState] = {}
    transitions = _transitions(prod)
    for job in plan.jobs:  # planned in dependency order: every dependency is decided first
        blocked = [d for d in job.depends if states[d].state not in GOOD]
        state = _state(job, plan, blocked, states, transitions, is_rehearsal)
        state.ready = not blocked
        states[job.id] = state
    return states


def _state(job: Job, plan: Plan, blocked: list[str], states: dict[str, ItemState], transitions,
           is_rehearsal: bool = False) -> ItemState:
    if not job.output.exists():
        return ItemState(job, "missing", [f"waits for {', '.join(blocked)}"] if blocked else [])
    recipe, damage = recipe_or_damage(job.output)
    if damage:  # unusable as it is, by hand or not: made again (with --overwrite) like any stale file
        return ItemState(job, "stale", [f"{damage}: it will be made again"])
    if recipe is None:
        return ItemState(job, "provided", ["made without a recipe (by hand?): used as it is, never regenerated"])
    if rehearsal.is_standin_recipe(recipe) and not is_rehearsal:
        return ItemState(job, "stale", [rehearsal.STALE_REASON])
    if blocked:
        return ItemState(job, "stale", [f"made from {d}, which is {states[d].state}" for d in blocked])
    if job.script == ASSEMBLE:
        reasons = film_differences(recipe, job, transitions, plan.root)
        return ItemState(job, "stale" if reasons else "ok", reasons)
    model_reasons, not_here = model_changes(recipe)
    if not_here:  # what the script would resolve here (schedules, LoRAs) depends on models this machine lacks
        return _unchecked(job, recipe, not_here)
    try:
        would = would_be_recipe(job, plan)
    except CliError as err:
        if err.code == ExitCode.MISSING_MODEL:
            return _unchecked(job, recipe, [err.message])
        return ItemState(job, "error", [err.message + (f" (fix: {err.fix})" if err.fix else "")])
    reasons = differences(recipe, would, plan.root) + model_reasons
    return ItemState(job, "stale" if reasons else "ok", reasons)


def _unchecked(job: Job, recipe: dict, notes: list[str]) -> ItemState:
    reasons = partial_differences(recipe, job)
    return ItemState(job, "stale" if reasons else "unchecked", reasons, notes=notes)


def _transitions(prod: Production) -> list[str]:
    if prod.plan is None:
        return []
    scenes = sorted(prod.plan.scenes, key=lambda s: s.number)
    return [s.transition.kind if s.transition else "cut" for s in scenes[:-1]]


# ---------------------------------------------------------------- the report


def status_report(snap: Snapshot, seams: bool = True, judging: bool = True) -> dict:
    root = snap.root
    phases = [{"phase": p, "number": PHASE_NUMBERS[p], "complete": snap.complete(p), "approved": snap.approved(p)}
              for p in PHASES]
    counts = {p: _counts(snap.items(p)) for p in ("assets", "keyframes", "clips", "film")}
    report = {
        "root": str(root), "rehearsal": _rehearsal_note(snap), "current_phase": snap.current_phase(), "phases": phases, "counts": counts,
        "items": [s.to_dict(root) for s in snap.states.values()],
        "missing_files": snap.prod.missing,
        "problems": [_problem(p) for p in snap.prod.all_problems()],
        "warnings": snap.prod.warnings,
        "approvals": [{"name": a.name, "approved_at": a.approved_at, "files": sorted(a.files)}
                      for a in snap.approvals.values()],
        "dropped_approvals": [{"name": d.name, "reason": d.reason} for d in snap.dropped],
        "style_asset": snap.prod.assets.style.name if snap.prod.assets and snap.prod.assets.style else None,
        "notes": sorted({n for s in snap.states.values() if s.state == "unchecked" for n in s.notes}),
        "seams": _seams(snap) if seams else [],
        "judging": judge_film(snap) if judging else None,
    }
    return report


def judge_film(snap: Snapshot) -> dict:
    """Identity, colour and motion of every keyframe and clip that exists (producer.workflow.drift), with a drift chart
    per scene and each flag's figure, threshold and fix (a retake command that runs as printed)."""
    from producer.workflow.drift import limits_from, review_film

    limits, problems = limits_from(snap.prod.settings)

    def retake(item: str) -> str:
        return shlex.join(command(TOOL, ["retake", str(snap.root), item]))

    result = review_film(snap.root, snap.prod, limits, retake)
    return {**result, "problems": problems}


def _rehearsal_note(snap: Snapshot) -> dict | None:
    if snap.rehearsal is None:
        return None
    return {"rehearsal_of": snap.rehearsal.get("rehearsal_of"), "models_dir": snap.rehearsal.get("models_dir"),
            "message": "REHEARSAL on tiny stand-in models: nothing here is a real output, and nothing approved "
                       "here counts for the real production"}


def _counts(items: list[ItemState]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in items:
        out[s.state] = out.get(s.state, 0) + 1
    return out


def _problem(p) -> dict:
    return {"file": p.file, "line": p.line, "message": p.message, "fix": p.fix}


def _seams(snap: Snapshot) -> list[dict]:
    """The seam review of the clips that exist (seams.review_seams), once two neighbours are there."""
    from producer.production.seams import review_seams

    clips = [s for s in snap.items("clips") if s.job.output.exists()]
    if len(clips) < 2 or snap.prod.plan is None:
        return []
    reports = [r.to_dict() for r in review_seams(snap.root) if r.status != "skipped"]
    return [{**r, "commands": _seam_commands(snap, r)} for r in reports]


def _seam_commands(snap: Snapshot, seam: dict) -> list[str]:
    """The advice of a flagged seam as commands that run as printed: another take of a clip, or a trimmed film
    beside the planned one (the 4 frames are an example: the clip's contact sheet shows how many morph)."""
    if seam["status"] != "flagged":
        return []
    root = snap.root
    by_output = {layout.relative(root, s.job.output): s.job.id for s in snap.items("clips")}
    commands = [shlex.join(command(TOOL, ["retake", str(root), by_output[clip]]))
                for clip in (seam["before_clip"], seam["after_clip"]) if clip in by_output]
    if any("--trim-end" in advice for advice in seam["advice"]):
        trimmed = layout.film_path(root).with_name("film-trimmed.mp4")
        commands.append(shlex.join(command(ASSEMBLE, [str(root), "--review", "--output", str(trimmed), "--overwrite",
                                                      "--trim-end", f"{seam['before']}:4"])))
    return commands
