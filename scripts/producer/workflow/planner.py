"""Everything a production needs made, as jobs for the generation scripts, in dependency order.

Jobs (ids in brackets; each writes one file):
- assets [asset:KIND/NAME]: text-to-image from the asset's description (qwen_image.py), with the style's
  text (--style-ref style.json) except for poses (a plain figure reads best as a pose). Keypoints-JSON
  poses are written by hand and never planned.
- keyframes, in the order the film first shows them:
  landscape keyframe [keyframe:KF-X]: one edit of its place; character keyframe: the background layer
  [background:KF-X] (the empty set), the character layer [character:KF-X] (the ORIGINAL character asset,
  never a previous keyframe, with the pose and the object) and the composite [keyframe:KF-X] (background
  layer + character layer + style asset).
  Chaining: a keyframe's place is the previous keyframe's background (its layer, or the picture itself
  for a landscape keyframe) when both name the same background asset; otherwise the background asset.
  The style asset (assets.json's first style) is given as --style-image to every picture the film shows.
- clips [clip:scene-NN]: wan_video.py from the scene's start keyframe (image-to-video) or between its
  start and end keyframes (first-last-frame), the motion and camera as the prompt, the scene's duration
  as Wan's frame count (4n+1 at 16 fps: 4 s -> 65 frames), so that no clip warns about rounding.
- film [film]: assemble_video.py on the folder, with the seam review.

Seeds are fixed per production, job and take (producer.workflow.seeds: a salt drawn once per production, the job
id, the take), so planning twice gives the same commands and an unchanged job never goes stale, while two
productions do not share seeds; `production.py retake` moves one job to its next take.

Settings (.production/settings.json, optional): per script, extra options for every job of that
script, e.g. {"qwen_image.py": {"preset": "720p"}, "wan_video.py": {"steps": 6, "distill": "off"}};
"judge" holds the thresholds `status` judges the film by (producer.workflow.drift, docs/judging.md).
Options the script takes for a whole batch only (--offload, --distill...) go on the batch command
line. The planner's own options (prompt, output, seed, pictures) cannot be set there; a size or
length given there replaces the planned one (--size replaces --preset, --frames replaces --duration).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from producer.engines.wan.wan_settings import frames_for_duration
from producer.errors import CliError
from producer.files import layout
from producer.production import prompts
from producer.production.assets import Asset
from producer.production.project import JUDGE, Production
from producer.production.rules import cell_names
from producer.production.scenes import KeyframeRow, Problem
from producer.workflow import seeds

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
QWEN, WAN, ASSEMBLE = "qwen_image.py", "wan_video.py", "assemble_video.py"
KEYFRAME_PRESET = "480p"  # keyframes come out at the video's frame size (832x480), so clips never crop them
ASSET_PRESETS = {"characters": "480p-portrait", "backgrounds": "480p", "poses": "480p-portrait",
                 "styles": "480p", "objects": "square"}
PLANNED = {"prompt", "output", "seed", "reference", "style_image", "style_ref", "no_style_maintain", "pose", "start_frame",
           "end_frame", "overwrite", "batch", "json", "production_dir", "clips"}
INPUT_OPTIONS = ("reference", "style_image", "pose", "style_ref", "start_frame", "end_frame", "clips")
EXCLUSIVE = {"size": ("preset", "width", "height"), "preset": ("size", "width", "height"),
             "width": ("size", "preset"), "height": ("size", "preset"),
             "frames": ("duration",), "duration": ("frames",)}


@dataclass(frozen=True)
class Job:
    id: str
    phase: str  # assets | keyframes | clips | film
    script: str
    output: Path
    options: dict  # the --batch job object: long option names with "_", paths absolute
    inputs: tuple[Path, ...]  # every file it is made from
    label: str
    depends: tuple[str, ...] = ()  # ids of the jobs that make its inputs


@dataclass
class Plan:
    root: Path
    jobs: list[Job]
    batch_flags: dict[str, list[str]] = field(default_factory=dict)  # script -> whole-batch options
    problems: list[Problem] = field(default_factory=list)
    seed_salt: str = ""  # the production's (producer.workflow.seeds)

    def job(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)


def plan_production(prod: Production, takes: dict[str, int], seed_salt: str = "") -> Plan:
    """Every job of the production (its files must have passed the check through the assets phase)."""
    root = prod.root.resolve()
    builder = _Builder(root, prod, takes, seed_salt)
    if prod.assets is not None:
        builder.assets()
        if prod.plan is not None:
            builder.keyframes()
            builder.clips()
            builder.film()
    plan = Plan(root, builder.link(), seed_salt=seed_salt)
    apply_settings(plan, prod.settings)
    return plan


class _Builder:
    def __init__(self, root: Path, prod: Production, takes: dict[str, int], seed_salt: str = ""):
        self.root, self.prod, self.takes, self.seed_salt = root, prod, takes, seed_salt
        self.jobs: list[Job] = []
        self.style_ref = str(root / layout.STYLE)

    def add(self, job_id: str, phase: str, script: str, output: Path, options: dict, label: str) -> None:
        """One job; every path in it is made absolute (the batch file lives in .production/)."""
        seed = {"seed": seeds.seed(self.seed_salt, job_id, self.takes.get(job_id, 0))} if script != ASSEMBLE else {}
        for key in INPUT_OPTIONS:
            if key in options:
                paths = [str(Path(v).resolve()) for v in _as_list(options[key])]
                options[key] = paths if isinstance(options[key], list) else paths[0]
        output = Path(output).resolve()
        options = {**options, **seed, "output": str(output)}
        inputs = tuple(Path(v) for key in INPUT_OPTIONS for v in _as_list(options.get(key)))
        self.jobs.append(Job(job_id, phase, script, output, options, inputs, label))

    # ---------------------------------------------------------------- Phase 2.5

    def assets(self) -> None:
        for asset in self.prod.assets.assets:
            if asset.hand_written:
                continue
            options = {"prompt": prompts.asset_prompt(asset.kind, asset.description), "preset": ASSET_PRESETS[asset.kind]}
            if asset.kind != "poses":
                options["style_ref"] = self.style_ref
            if asset.kind == "backgrounds":
                options["no_style_maintain"] = True  # an empty place: maintain items describe the subject
            self.add(asset.id, "assets", QWEN, asset.path, options, f"{asset.kind[:-1]} {asset.name}")

    # ---------------------------------------------------------------- Phase 3

    def keyframes(self) -> None:
        style = self.prod.assets.style
        previous: dict[str, Path] = {}  # background asset name -> the latest picture of that place
        for row in keyframe_order(self.prod):
            found = self.row_assets(row)
            if found is None or style is None:
                continue  # the check reports the missing asset
            background, character, pose, obj = found
            place = previous.get(background.name, background.path)
            chained = background.name in previous
            if character is None:
                out = layout.keyframe_path(self.root, row.id)
                self.picture(f"keyframe:{row.id}", out, [place] + ([obj.path] if obj else []), style,
                             prompts.background_prompt(background.description, row.description, chained,
                                                       obj.description if obj else None), f"{row.id} (landscape)")
                previous[background.name] = out
                continue
            bg_layer = layout.layer_path(self.root, row.id, "background")
            self.picture(f"background:{row.id}", bg_layer, [place], style,
                         prompts.background_prompt(background.description, None, chained, None),
                         f"{row.id} background layer", style_maintain=False)
            self.character_layer(row, character, pose, obj)
            self.picture(f"keyframe:{row.id}", layout.keyframe_path(self.root, row.id),
                         [bg_layer, layout.layer_path(self.root, row.id, "character")], style,
                         prompts.composite_prompt(row.description), f"{row.id} (composite)")
            previous[background.name] = bg_layer

    def row_assets(self, row: KeyframeRow) -> tuple[Asset, Asset | None, Asset | None, Asset | None] | None:
        """(background, character, pose, object) of a keyframe row; None when one it names is unknown."""
        found = []
        for kind, cell in (("backgrounds", row.background), ("characters", row.character),
                           ("poses", row.pose_asset), ("objects", row.objects)):
            names = cell_names(cell)
            asset = self.prod.assets.get(kind, names[0]) if names else None
            if names and asset is None:
                return None  # the check reports it
            found.append(asset)
        return tuple(found) if found[0] is not None else None

    def picture(self, job_id: str, out: Path, references: list[Path], style: Asset, prompt: str, label: str,
                style_maintain: bool = True) -> None:
        options = {"prompt": prompt, "reference": [str(p) for p in references], "style_image": str(style.path),
                   "style_ref": self.style_ref, "preset": KEYFRAME_PRESET}
        if not style_maintain:
            options["no_style_maintain"] = True  # the empty set: maintain items describe the subject
        self.add(job_id, "keyframes", QWEN, out, options, label)

    def character_layer(self, row: KeyframeRow, character: Asset, pose: Asset | None, obj: Asset | None) -> None:
        options = {"prompt": prompts.character_prompt(character.description, pose.description if pose else None,
                                                      obj.description if obj else None),
                   "reference": [str(character.path)] + ([str(obj.path)] if obj else []),
                   "style_ref": self.style_ref, "preset": KEYFRAME_PRESET}
        if pose is not None:
            options["pose"] = str(pose.path)
        self.add(f"character:{row.id}", "keyframes", QWEN, layout.layer_path(self.root, row.id, "character"),
                 options, f"{row.id} character layer")

    # ---------------------------------------------------------------- Phases 4 and 5

    def clips(self) -> None:
        for scene in sorted(self.prod.plan.scenes, key=lambda s: s.number):
            start, end = scene.start_keyframe, scene.end_keyframe
            if start is None or scene.motion is None:
                continue
            options = {"prompt": prompts.clip_prompt(scene.motion, scene.camera),
                       "start_frame": str(layout.keyframe_path(self.root, start.id)), "style_ref": self.style_ref}
            if end is not None:
                options["end_frame"] = str(layout.keyframe_path(self.root, end.id))
            if scene.duration is not None:  # as frames: a duration rarely lands on Wan's 4n+1 (4 s -> 65 frames)
                options["frames"] = frames_for_duration(scene.duration).count
            mode = f"{start.id} -> {end.id}" if end else f"from {start.id}"
            self.add(clip_id(scene.number), "clips", WAN, layout.clip_path(self.root, scene.number), options,
                     f"scene {scene.number} ({mode})")

    def film(self) -> None:
        clips = [j.output for j in self.jobs if j.phase == "clips"]
        self.add("film", "film", ASSEMBLE, layout.film_path(self.root), {
            "production_dir": str(self.root), "review": True, "clips": [str(c) for c in clips]}, "the assembled film")

    def link(self) -> list[Job]:
        """Fill in each job's dependencies: the jobs that write its inputs."""
        makers = {j.output: j.id for j in self.jobs}
        return [Job(j.id, j.phase, j.script, j.output, j.options, j.inputs, j.label,
                    tuple(dict.fromkeys(makers[p] for p in j.inputs if p in makers))) for j in self.jobs]


def clip_id(number: int) -> str:
    return f"clip:scene-{number:02d}"


def keyframe_order(prod: Production) -> list[KeyframeRow]:
    """The keyframes in the order the film shows them (scene by scene, start before end)."""
    order: list[KeyframeRow] = []
    for scene in sorted(prod.plan.scenes, key=lambda s: s.number):
        for ref in (scene.start_keyframe, scene.end_keyframe):
            row = prod.plan.keyframe(ref.id) if ref else None
            if row is not None and row not in order:
                order.append(row)
    return order


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


# ---------------------------------------------------------------- settings and command lines


def script_module(script: str):
    """The generation script's module (its parser, PATH_OPTIONS and BATCH_ONLY): producer.makers.NAME."""
    from producer.makers import module

    return module(script)


def apply_settings(plan: Plan, settings: dict) -> None:
    """Merge .production/settings.json into the jobs; every job is then parsed by its script's own parser."""
    where = f"{layout.STATE}/settings.json"
    known = {QWEN, WAN, ASSEMBLE}
    for script in settings:
        if script not in known and script != JUDGE:  # the thresholds of status (producer.workflow.drift)
            plan.problems.append(Problem(where, 1, f"{script!r} is not a script the plan runs",
                                         f"use one of {', '.join(sorted(known))}"))
    jobs = []
    reported: dict[str, set[str]] = {}
    for job in plan.jobs:
        extra = {k.replace("-", "_"): v for k, v in settings.get(job.script, {}).items()}
        if job.script in (QWEN, WAN) and "judge" not in extra and _judge_options(settings):
            extra["judge"] = _judge_options(settings)  # the production's frame thresholds reach the scripts too
        batch_only = {o.replace("-", "_") for o in getattr(script_module(job.script), "BATCH_ONLY", ())}
        if "allow_outside" in extra and "allow_outside" not in reported.setdefault(job.script, set()):
            reported[job.script].add("allow_outside")  # a file must not widen the confinement that guards against it
            plan.problems.append(Problem(where, 1, f"{job.script}: 'allow_outside' cannot be set in settings.json",
                                         f"remove it; give `production.py next {plan.root} --allow-outside` yourself "
                                         "to use asset pictures kept outside the folder"))
        extra.pop("allow_outside", None)
        for key in sorted(set(extra) & PLANNED - reported.setdefault(job.script, set())):
            reported[job.script].add(key)  # once per script and key, not once per job
            plan.problems.append(Problem(where, 1, f"{job.script}: {key!r} is set by the plan itself",
                                         f"remove {key!r} (edit the plan's files, or for another seed "
                                         f"`production.py retake {plan.root} {job.id}`)"))
        flags = {k: v for k, v in extra.items() if k in batch_only and k not in PLANNED}
        options = {k: v for k, v in job.options.items() if not any(k in EXCLUSIVE.get(s, ()) for s in extra)}
        options.update({k: v for k, v in extra.items() if k not in batch_only and k not in PLANNED})
        plan.batch_flags[job.script] = _flags(flags)
        jobs.append(Job(job.id, job.phase, job.script, job.output, options, job.inputs, job.label, job.depends))
    plan.jobs = jobs
    for job in plan.jobs:
        try:
            parse_job(plan, job)
        except CliError as err:
            plan.problems.append(Problem(where, 1, f"{job.id}: the options do not parse for {job.script}: {err.message}",
                                         f"fix the {job.script} options; see python {SCRIPTS_DIR / job.script} --help"))
            break


def _judge_options(settings: dict) -> list[str]:
    """The broken-output thresholds of settings.json's "judge" as the scripts' --judge NAME=VALUE options."""
    from producer.engines.judge import Limits

    given = settings.get(JUDGE) or {}
    return [f"{k}={v}" for k, v in given.items() if k in Limits.names()] if isinstance(given, dict) else []


def _flags(options: dict) -> list[str]:
    from producer.runs.batchfile import _option_args

    return [a for key, value in options.items() for v in _as_list(value)
            for a in _option_args(key.replace("_", "-"), v, 0, Path("."), False)]


def job_argv(job: Job, plan: Plan, overwrite: bool = False) -> list[str]:
    """The job as the script's command-line arguments (whole-batch settings included)."""
    from producer.runs.batchfile import job_to_argv

    if job.script == ASSEMBLE:
        opts = {k: v for k, v in job.options.items() if k not in ("production_dir", "clips")}
        argv = [job.options["production_dir"]] + job_to_argv(opts, 0, Path("."), set(), set())
    else:
        argv = job_to_argv(job.options, 0, Path("."), set(), set())
    return argv + plan.batch_flags.get(job.script, []) + (["--overwrite"] if overwrite else [])


def parse_job(plan: Plan, job: Job):
    """argparse.Namespace of a job, parsed by its script's own parser (raises CliError)."""
    return script_module(job.script).build().parse_args(job_argv(job, plan))


def command(script: str, argv: list[str]) -> list[str]:
    return [sys.executable, str(SCRIPTS_DIR / script), *argv]
