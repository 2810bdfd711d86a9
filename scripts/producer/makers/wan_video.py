"""Scene clips with Wan 2.2 I2V A14B: image-to-video and first-last-frame, with review images for agents."""

from __future__ import annotations

import argparse
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer import cli
from producer.cli import (
    CliError,
    Stopwatch,
    add_memory_args,
    add_output_args,
    build_parser,
    log,
    run_main,
    seed_arg,
    text_arg,
)
from producer.engines import judge
from producer.engines.wan import wan_settings as ws
from producer.engines.wan.wan_jobs import Load, Request, recipe_for, resolve_load, resolve_request, to_job, up_to_date
from producer.facts import registry
from producer.files import locks, review
from producer.files.outputs import check_output
from producer.makers import clip_files, script_path
from producer.makers.clip_files import write_outputs  # noqa: F401 - a clip's set, as the tests call it
from producer.modelfiles import models
from producer.runs import batch, parallel
from producer.runs.behind import Deferred, WriteBehind

SCRIPT = "wan_video.py"
FPS = registry.WAN.fps

DESCRIPTION = f"""\
Animate approved keyframes into a scene clip with Wan 2.2 I2V A14B (two experts: high-noise, then
low-noise, switched at boundary {registry.WAN.boundary_ratio}).

Modes
  I2V   --start-frame KF.png: the clip starts on the keyframe and moves as --prompt describes.
  FLF   --start-frame A.png --end-frame B.png: the clip starts on A and ends on B (first-last-frame).
        Both keyframes must be the same size (make the end keyframe at the start keyframe's size).

Frames and size
  {registry.WAN.frames} frames at {FPS} fps (~5 s) by default. --frames must be 4n+1 (others are rounded to
  the nearest, with a warning), or give --duration SECONDS. --preset 480p (832x480) or 720p (1280x720)
  turns to the keyframe: landscape, portrait (480x832) or square (480x480), whichever crops least;
  --size WxH takes multiples of 16. A keyframe of another aspect is never stretched: --fit crop
  (default) scales it to cover the frame and cuts the overflow from the centre; --fit pad fits it
  inside and fills the bars with its edge colour.

Speed: step-distill LoRAs
  With a step-distill LoRA installed (--distill auto), a clip takes 4 steps (2 per expert, guidance 1,
  Euler, shift 5) instead of 40 (guidance 3.5/3.5, UniPC, shift 5). lightning: Wan 2.2 Lightning,
  the high-noise file into the high-noise expert and the low-noise file into the low-noise one;
  lightx2v: the Wan 2.1 LightX2V LoRA into both. Strength 1.0 each (this loader applies the file's
  alpha/rank itself; tools that ignore alpha need alpha/rank, e.g. 0.125); --distill-strength HIGH[:LOW].
  Your LoRAs: --lora FILE[:STRENGTH[:high|low|both]] (.safetensors; diffusers, ComfyUI/Kijai/LightX2V,
  musubi key formats; .diff/.diff_b/.diff_m deltas are applied or reported). Every load prints what
  applied to each expert; a LoRA that applies to nothing, or only in part, is an error unless
  --allow-partial-lora.

Outputs (an agent cannot watch a video)
  OUT.mp4 (H.264, yuv420p), OUT.first.png and OUT.last.png (first and last frames), OUT.contact.png
  (8 frames with numbers and times), OUT.mp4.provenance.json (the recipe). --json adds continuity
  figures: first frame vs start keyframe and (FLF) last frame vs end keyframe, as CIEDE2000 colour
  difference, colour cast and SSIM. FLF clips tend to darken or shift colour towards the end:
  --color-match auto (default) pulls an FLF clip's colours back towards its two keyframes when a frame's
  average colour drifts more than 2 delta E from them (I2V clips are left alone); on forces it (I2V:
  towards the start keyframe), off never. The figures are reported before and after; a large change
  (an object crossing the frame also moves the average colour) is warned about.

Broken output (docs/judging.md): NaN latents (checked before the decode), black, white or flat frames,
  a frozen clip and flicker are caught before anything is written: the clip fails (exit 1) with the frame
  numbers in the JSON. Made with --fp8-matmul or --attention, it is made once more without them first, and
  its recipe records the fallback and why. --judge NAME=VALUE overrides a threshold.

Memory: one plan for this machine (GPU, RAM, installed weight forms), printed once; override with
  --offload and --weights. Out of memory at decode retries with VAE tiling, keeping the denoised clip.

Batch: --batch FILE.json runs many clips with one model load: every prompt is encoded first, outputs
  that exist with the same recipe are skipped (unless --overwrite; so an interrupted batch continues where
  it stopped), a failing clip does not stop the others (out of memory does: --on-oom stop reports the next
  plan to try, --on-oom retry reloads under it and runs the clip again; so does a full disk). Paths in the
  file stay inside its production folder (its own folder, or the one above .production/) unless
  --allow-outside. Jobs use this script's option names: {{"start_frame": "keyframes/KF-A.png", "prompt": "...",
  "output": "scene-01/video.mp4"}}; paths are relative to the batch file; {{"defaults": {{...}}, "jobs": [...]}}
  sets options for every job. LoRA, distill and memory options go beside --batch and apply to the whole
  batch (as does --overwrite); clip options go in the file.

{parallel.HELP}{parallel.CONTEXT_HELP}"""

EPILOG = """\
examples:
  # I2V: one keyframe, 81 frames at 16 fps, 480p turned to the keyframe
  wan_video.py --start-frame keyframes/KF-A.png --prompt "she turns her head and smiles, hair moving in the wind" \\
      -o scene-01/video.mp4
  # FLF: from one keyframe to the next, 3 seconds, 720p, fixed seed, report as JSON
  wan_video.py --start-frame keyframes/KF-A.png --end-frame keyframes/KF-B.png --duration 3 --preset 720p \\
      --prompt "the camera dollies forward as she walks to the door" --seed 7 -o scene-02/video.mp4 --json
  # style from style.json, padded instead of cropped, a LoRA on the low-noise expert only
  wan_video.py --start-frame kf.png --prompt "slow pan left" --style-ref style.json --fit pad \\
      --lora my_style.safetensors:0.8:low -o clip.mp4
  # the full 40-step schedule (no distill LoRA), 33 frames
  wan_video.py --start-frame kf.png --prompt "waves roll in" --distill off --frames 33 -o waves.mp4
  # many scenes, one model load (on every GPU of the machine: one worker per GPU)
  wan_video.py --batch clips.json --json
  # the scenes on GPUs 0 and 1 only
  wan_video.py --batch clips.json --gpus 0,1
  # one 720p clip split over 4 GPUs (Ulysses context parallelism)
  wan_video.py --start-frame kf.png --prompt "a slow crane shot" --preset 720p --context-parallel 4 -o clip.mp4"""

PATH_OPTIONS = {"start-frame", "end-frame", "style-ref", "output"}
BATCH_ONLY = {"batch", "distill", "distill-strength", "lora", "allow-partial-lora", "offload", "weights", "device",
              "compile", "attention", "models-dir", "force-memory", "json", "quiet", "debug"} | batch.POLICY_OPTIONS
BATCH_ONLY |= parallel.BATCH_OPTIONS  # --gpus, --workers: beside --batch


def build() -> argparse.ArgumentParser:
    p = build_parser(SCRIPT, DESCRIPTION, EPILOG)
    g = p.add_argument_group("the clip")
    g.add_argument("--start-frame", type=Path, metavar="IMG", help="the keyframe the clip starts on, e.g. keyframes/KF-A.png")
    g.add_argument("--end-frame", type=Path, metavar="IMG", help="the keyframe it ends on (first-last-frame mode)")
    g.add_argument("--prompt", type=text_arg, help='the motion, e.g. "she turns and walks towards the camera"')
    g.add_argument("--negative-prompt", type=text_arg,
                   help='what to avoid, e.g. "blurry, static" (used only with guidance > 1)')
    g.add_argument("--style-ref", type=Path, metavar="STYLE.json", help="add the style's motion and art terms")
    g.add_argument("--seed", type=seed_arg, help="random seed (default: a new one, printed and stored)")
    g.add_argument("-o", "--output", type=Path, metavar="OUT.mp4", help="the clip to write, e.g. scene-01/video.mp4")
    g = p.add_argument_group("frames and size")
    g.add_argument("--frames", type=ws.frames_arg, help=f"frame count, 4n+1 (default {registry.WAN.frames}), e.g. 49")
    g.add_argument("--duration", type=ws.seconds_arg, metavar="SECONDS", help=f"length in seconds at {FPS} fps, e.g. 3")
    g.add_argument("--preset", choices=sorted(registry.WAN.presets), help="480p (default) or 720p, turned to the keyframe")
    g.add_argument("--size", type=ws.size_arg, metavar="WxH", help="exact size, multiples of 16, e.g. 832x480")
    g.add_argument("--fit", choices=("crop", "pad"), default="crop",
                   help="another aspect: crop (cover, centre crop; default) or pad (fit, edge-colour bars)")
    g = p.add_argument_group("sampling (defaults: the registry's schedule for the mode)")
    g.add_argument("--steps", type=ws.steps_arg, help="denoising steps (distilled 4, full 40)")
    g.add_argument("--guidance", type=ws.guidance_arg, help="CFG of the high-noise expert (distilled 1 = off, full 3.5)")
    g.add_argument("--guidance-2", type=ws.guidance_arg, help="CFG of the low-noise expert (distilled 1, full 3.5)")
    g.add_argument("--shift", type=ws.shift_arg, help="flow-matching shift (5)")
    g.add_argument("--color-match", choices=review.COLOR_MATCH_CHOICES, default="auto",
                   help="match colours to the keyframes: auto (FLF clips that drift; default), on, off")
    judge.add_args(g)
    g = p.add_argument_group("LoRAs")
    g.add_argument("--distill", choices=ws.DISTILL_CHOICES, default="auto",
                   help="step-distill LoRA: auto (lightning if installed, else lightx2v, else the full schedule), "
                        "lightning, lightx2v, off")
    g.add_argument("--distill-strength", type=ws.strength_arg, metavar="HIGH[:LOW]",
                   help="distill LoRA strength per expert (default 1.0), e.g. 1.0:0.8")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH[:high|low|both]]",
                   help="a LoRA (.safetensors), repeatable, e.g. style.safetensors:0.8:both")
    g.add_argument("--allow-partial-lora", action="store_true", help="load LoRAs that apply only in part")
    g = p.add_argument_group("batch and models")
    g.add_argument("--batch", type=Path, metavar="FILE.json", help="many clips, one model load (see above)")
    cli.add_models_dir_arg(g)
    cli.add_force_memory_arg(g)
    batch.add_batch_policy_args(g)
    parallel.add_args(p, context_parallel=True)
    add_memory_args(p)
    add_output_args(p)
    return p


# ---------------------------------------------------------------- running


def run(args: argparse.Namespace) -> dict:
    models.use_models_dir(args.models_dir)
    if args.batch:
        return run_batch(args)
    batch.refuse_policy_without_batch(args)
    load = resolve_load(args)
    req = resolve_request(args, distilled=load.distill is not None)
    with locks.output_lock(req.output):  # before loading: a second run on the same clip stops at once (exit 5)
        check_output(req.output, args.overwrite, "output")
        clip_files.check_paths(req, SCRIPT)
        engine = open_engine(args, load, [req])
        recipe = recipe_for(req, load, engine.files, args.fp8_matmul)

        def reopen(levers) -> Engine:
            judge.drop_levers(args, levers)
            engine.session = None
            gc.collect()  # the old model's memory goes back before the new one loads
            load_session(engine, args, load)
            return engine

        with cli.naming_plan(lambda: engine.plan):  # out of memory anywhere from here on names this plan
            result = produce(engine, req, recipe, reopen)
    result["seconds"] = {**engine.session.seconds, **result["seconds"]}  # one clip: loading and encoding are its own
    return {**result, **engine.summary()}


@dataclass
class Engine:
    plan: Any  # producer.sizing.memory.MemoryPlan
    files: Any  # producer.engines.wan.wan_load.WanFiles
    session: Any = None  # producer.engines.wan.wan.WanSession, once loaded

    def summary(self) -> dict:
        out = {"memory_plan": self.plan.to_dict(), "model": self.files.provenance}
        if self.session is not None:
            out.update(loras=self.session.lora_reports, load_seconds=dict(self.session.seconds),
                       speed=self.session.speed_notes)
        return out


def open_engine(args: argparse.Namespace, load: Load, requests: list[Request], session: bool = True) -> Engine:
    """Plan memory for the largest request and refuse a plan that does not fit, before loading anything;
    then load the text encoder and VAE (the experts come at the first clip)."""
    from producer.engines.loras import lora_files
    from producer.engines.wan import wan_load
    from producer.facts import hardware
    from producer.sizing import memory

    hardware.check_device(args.device)  # before the probe asks CUDA about it
    hw = hardware.probe(args.models_dir, args.device)
    workloads = [memory.wan_workload(r.width, r.height, r.frames) for r in requests]
    plan = wan_load.plan_for(hw, wan_load.components_snapshot(), workloads, args.offload, args.weights,
                             lora_files.adapter_params(load.specs))
    log.info("%s", plan.summary())
    biggest = max(requests, key=lambda r: r.width * r.height * r.frames)
    cli.refuse_unless_fits(plan, args.force_memory,
                           f"this machine cannot run Wan 2.2 I2V at {biggest.width}x{biggest.height}x{biggest.frames}")
    engine = Engine(plan, wan_load.locate_files(plan.weights))
    if session:
        with cli.naming_plan(lambda: plan):  # out of memory while loading names this plan
            load_session(engine, args, load)
    return engine


def load_session(engine: Engine, args: argparse.Namespace, load: Load, clips: int = 1) -> None:
    from producer.sizing import speed

    levers = speed.choose(args, engine.plan, items=clips, family="wan")
    session_class = parallel.wan_session_class(args)  # split over the ranks under --context-parallel
    engine.session = session_class.from_files(engine.files, engine.plan, args.device, lora_specs=load.specs,
                                              allow_partial=load.allow_partial, progress=not args.quiet,
                                              speed=levers)


def produce(engine: Engine, req: Request, recipe: dict, reopen) -> dict:
    """Generate one clip, judge it (a broken clip is made once more without a suspect speed lever, then
    refused: nothing is written), and write it with its review files; the result for --json.
    `reopen(levers)` loads the model again with those levers and returns the engine to use."""
    frames, recipe, made = generate(engine, req, recipe, reopen)
    watch = Stopwatch()
    with watch.stage("color_match"):
        frames, matched = review.color_match(clip_files.to_uint8(frames), req.image, req.last_image, req.color_match)
    with watch.stage("write"):
        paths = clip_files.write_outputs(frames, req, recipe)
    return finished(made, paths, matched, watch.seconds)


def produce_behind(engine: Engine, req: Request, recipe: dict, reopen, behind: WriteBehind) -> Deferred:
    """produce() for a batch: the clip's files are finished in the background while the next clip generates
    (runs/behind.py), and put in place by the batch (the Deferred's settle())."""
    frames, recipe, made = generate(engine, req, recipe, reopen)

    def put_in_place(prepared: clip_files.Prepared) -> dict:
        watch = Stopwatch()
        with watch.stage("write"):
            paths = clip_files.put_in_place(prepared, req, recipe)
        return {"status": "ok", **finished(made, paths, prepared.matched, {**prepared.seconds, **watch.seconds}),
                "written_behind": True}

    return behind.defer(lambda: clip_files.prepare(frames, req, recipe), put_in_place, lambda: clip_files.discard(req))


def generate(engine: Engine, req: Request, recipe: dict, reopen) -> tuple[Any, dict, dict]:
    """The clip's frames, its recipe (with a fallback, if one was needed) and its result so far, without the
    clip's other data (latents), which the batch need not keep while its files are written."""
    import torch

    current = [engine]

    def make():
        try:
            clip = current[0].session.generate(to_job(req))
        except torch.OutOfMemoryError:
            raise out_of_memory(current[0].plan, f"{req.width}x{req.height}x{req.frames}") from None
        return clip, clip.flags

    def again(levers) -> None:
        current[0] = reopen(levers)

    clip, fallback = judge.with_fallback(make, engine.session.speed, again, f"clip {req.output}")
    if fallback:
        recipe = {**recipe, "fallback": fallback}
    made = {
        "mode": req.mode, "output": str(req.output), "frames": len(clip.frames), "fps": FPS,
        "duration": round(len(clip.frames) / FPS, 3), "width": req.width, "height": req.height, "seed": req.seed,
        "settings": {**recipe["settings"], "size_rule": req.size_rule,
                     "fit_rule": "cover + centre crop" if req.fit == "crop" else "fit inside + edge-colour bars"},
        "seconds": dict(clip.seconds), "experts": {c: vars(run) for c, run in clip.experts.items()},
        "decode": clip.decode, "notes": req.notes,
        "judge": {"broken": [], **({"fallback": fallback} if fallback else {})},
    }
    return clip.frames, recipe, made


def finished(made: dict, paths: dict, matched: dict, seconds: dict) -> dict:
    """A made clip's result with its files' paths and colour figures."""
    return {**made, **paths, "seconds": {**made["seconds"], **seconds},
            "continuity": matched.get("after", matched["before"]), "color_match": matched}


def out_of_memory(plan, where: str) -> CliError:
    return cli.out_of_memory_error(plan, f"at {where}", "a smaller size (--preset 480p) or fewer frames")


# ---------------------------------------------------------------- batch


def run_batch(args: argparse.Namespace) -> dict:
    """Resolve every job, skip the up-to-date ones, then one model load for the rest (prompts encoded first).
    A warning that every clip would repeat (the same rounding, the same note) is shown once."""
    once = _DistinctWarnings()
    log.addFilter(once)
    try:
        return _run_batch(args)
    finally:
        log.removeFilter(once)


class _DistinctWarnings(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _run_batch(args: argparse.Namespace) -> dict:
    entries = batch.read_jobs(build, args, PATH_OPTIONS, BATCH_ONLY)
    runner = ClipBatch(args, resolve_load(args))
    items = runner.resolve_all(entries)
    if not runner.requests:
        return batch.run_jobs(items, lambda job: {}).to_dict()
    items = runner.prepare(items)
    try:
        result = parallel.run_batch(runner, items)
    finally:
        runner.behind.close()
    return {**result, **runner.engine.summary(), "prediction": _prediction(args, result, runner.requests, runner.engine)}


class ClipBatch(batch.Runner):
    """wan_video.py's --batch (batch.Runner): one model load for every clip, every prompt encoded first."""

    def __init__(self, args: argparse.Namespace, load: Load):
        super().__init__(args)
        self.load = load
        self.engine: Engine | None = None
        self.recipes: dict[int, dict] = {}
        self.behind = WriteBehind()  # each clip's files are finished while the next one generates

    def current_plan(self):
        return self.engine.plan if self.engine is not None else None

    def resolve(self, job: batch.Job) -> Request:
        req = resolve_request(job.args, distilled=self.load.distill is not None)
        clash = self.clash(req.output)
        if clash is not None:
            raise CliError(f"job {job.index} writes {req.output}, like job {clash}", "give each job its own output")
        if not req.output.parent.is_dir():
            check_output(req.output, True, "output")  # names the missing folder
        clip_files.check_paths(req, SCRIPT)
        return req

    def prepare(self, items: list) -> list:
        """Plan memory for every clip, skip the up-to-date ones, refuse the ones made otherwise; then load the
        model and encode the prompts of the clips to make. Returns the items to run."""
        args, load = self.args, self.load
        self.engine = engine = open_engine(args, load, list(self.requests.values()), session=False)
        self.recipes = {i: recipe_for(req, load, engine.files, args.fp8_matmul) for i, req in self.requests.items()}
        to_make = [to_job(req) for req in self.sort_out(self.requests).values()]
        items = [batch.job_error(item.index, self.failed[item.index])  # refused before the run: no job's turn
                 if isinstance(item, batch.Job) and item.index in self.failed else item for item in items]
        if to_make:
            import torch

            with cli.naming_plan(lambda: engine.plan):  # out of memory while loading names this plan
                load_session(engine, args, load, clips=len(to_make))
            try:
                engine.session.encode(to_make)
            except torch.OutOfMemoryError:
                raise out_of_memory(engine.plan, "encoding the prompts") from None
            self.announce(to_make)
        return items

    def announce(self, jobs: list) -> None:
        """Tell the session the clips to come (one expert in RAM: it makes them expert by expert), unless this
        is a scene worker, whose next clips are whichever the other workers leave."""
        if not self.args.parallel_worker:
            self.engine.session.make_in_order(jobs)

    def output(self, request: Request) -> Path:
        return request.output

    def describe(self, job: batch.Job) -> str:
        return f"{self.requests[job.index].output}"

    def up_to_date(self, index: int) -> bool:
        return up_to_date(self.requests[index], self.recipes[index])

    def skip(self, job: batch.Job, reason: str) -> dict:
        if reason == self.up_to_date_reason:
            log.info("  %s is up to date: skipped", self.requests[job.index].output)
        return super().skip(job, reason)

    def make(self, job: batch.Job) -> Deferred:
        return produce_behind(self.engine, self.requests[job.index], self.recipes[job.index], self.reopen, self.behind)

    def reload(self, offload: str) -> None:
        """--on-oom retry: the model again under --offload `offload`, with the prompts of the clips still to make."""
        self.engine.session = None
        gc.collect()  # the old model's memory goes back before the new one loads
        self.args.offload = offload
        left = self.left()
        self.engine = open_engine(self.args, self.load, left, session=False)
        load_session(self.engine, self.args, self.load, clips=len(left))
        jobs = [to_job(req) for req in left]
        self.engine.session.encode(jobs)
        self.announce(jobs)

    def reopen(self, levers) -> Engine:
        """A broken clip made with a suspect speed lever: the model again without it, for the clips left."""
        judge.drop_levers(self.args, levers)
        self.reload(self.args.offload)
        return self.engine


def _prediction(args: argparse.Namespace, result: dict, requests: dict, engine: Engine) -> dict:
    """Each clip made: its predicted seconds (producer.sizing.estimate) against the measured ones."""
    from producer.facts import hardware
    from producer.sizing import estimate

    made = [(estimate.clip_item(requests[j["job"]]), j["seconds"]) for j in result["jobs"] if j["status"] == "ok"]
    return estimate.batch_prediction(made, engine.plan, hardware.probe(args.models_dir, args.device),
                                     models.standin_facts(engine.files.snapshot) is not None)


def describe(result: dict) -> str:
    if "jobs" in result:
        counts = ", ".join(f"{n} {status}" for status, n in result["counts"].items())
        return f"batch: {counts}\n" + "\n".join(
            f"  job {j['job']}: {j['status']} " + j.get("output", j.get("error", j.get("reason", ""))).removeprefix(
                f"job {j['job']}: ") for j in result["jobs"]) + (f"\n{result['stopped']}" if result.get("stopped") else "")
    c = result["continuity"]
    lines = [f"wrote {result['output']} ({result['frames']} frames, {result['duration']} s at {result['fps']} fps, "
             f"{result['width']}x{result['height']}, seed {result['seed']})",
             f"review: {result['first_frame']}, {result['last_frame']}, {result['contact_sheet']}",
             f"first frame vs start keyframe: delta E {c['first_vs_start']['delta_e']}, "
             f"SSIM {c['first_vs_start']['ssim']}"]
    if "last_vs_end" in c:
        lines.append(f"last frame vs end keyframe: delta E {c['last_vs_end']['delta_e']}, SSIM {c['last_vs_end']['ssim']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), parallel.entry(run, script_path(SCRIPT), argv), argv, describe)

