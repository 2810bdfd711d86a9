"""Make the stills of a production with Qwen-Image-Edit-2511: assets, layers and keyframes."""

from __future__ import annotations

import argparse
import contextlib
import gc
from dataclasses import replace
from pathlib import Path

from producer import cli
from producer.cli import (
    CliError,
    ExitCode,
    Stopwatch,
    add_memory_args,
    add_output_args,
    build_parser,
    log,
    peak_memory,
    run_main,
    seed_arg,
    text_arg,
)
from producer.engines import judge
from producer.engines.loras import lora_files
from producer.engines.qwen import qwen, qwen_jobs, qwen_load
from producer.facts import hardware
from producer.files import locks, media, provenance
from producer.files.outputs import check_output, refuse_input_as_output
from producer.makers import script_path
from producer.modelfiles import models
from producer.runs import batch, parallel
from producer.sizing import memory

DESCRIPTION = """\
Make one still (or a --batch of them) with Qwen-Image-Edit-2511: character, background, pose, style and
object assets, background and character layers, and composited keyframes. The mode follows the inputs:

  text-to-image  no picture              a new image from the prompt
  edit           one --reference         keep the reference's identity and layout, apply the prompt
  composite      2-3 pictures            e.g. background + character + style asset in one frame
  pose           --pose FILE             put the referenced character into a pose

Pictures are numbered in the order the model gets them: the --reference files as given, then
--style-image, then the pose picture. Refer to them in the prompt as "image 1", "image 2", "image 3"
("Place the character from image 2 in the street of image 1"). At most 3 pictures in all.

Sizes: keyframes for video must come out at the video's frame size: use --preset 480p (832x480) or
720p (1280x720), 480p-portrait / 720p-portrait (480x832 / 720x1280), square (1024x1024); or --size WxH.
Without one: the first reference's aspect at ~1024x1024 pixels, or 1024x1024. Sides round to 16.
References never shift or zoom the result: each picture is fitted to the output's aspect (centre crop,
or --fit pad), then shown to the model at the output's own scale, trimmed by at most 16 px a side to the
model's 32-px grid (outputs above 1024x1024 get references scaled down to that area, same framing).

Pose (--pose): an OpenPose skeleton PNG is used as is; OpenPose keypoints JSON is drawn into a skeleton
(no weights needed); a photo or figure of a person is turned into a skeleton by the OpenPose detector
(weights: setup_diffusers.py --download --only openpose-annotators) where the path needs a skeleton.
Paths, in the order --pose-method auto picks them:
  anypose     the AnyPose LoRA pair for 2511 (installed: qwen-anypose), character + pose picture;
              --control-strength = LoRA scale (default 0.7). Takes a photo as the pose directly.
  native      the skeleton as an extra picture plus a pose instruction (2511 reads keypoint maps);
              nothing to set: --control-strength is an error here.
  controlnet  pose-guided text-to-image on Qwen-Image + ControlNet Union (qwen-image-t2i,
              qwen-controlnet-union): no --reference; --control-strength = conditioning scale (1.0).
Cost per step at 1024x1024: an edit with one reference is 8192 picture tokens; anypose and native add
the pose picture (12288 tokens, ~1.5x or more); controlnet has 4096 plus a 5-block ControlNet but runs
the full schedule (40 steps, CFG: no Lightning for Qwen-Image) and loads a second model (in a batch:
once, after the edit jobs). All three paths run end to end on the tiny stand-in models.

Speed and quality: with the Lightning LoRA installed (qwen-lightning), 4 steps at cfg 1 (--lightning 8
for 8 steps; under auto, --steps other than 4/8 or --cfg > 1 turn it off); otherwise the full schedule,
40 steps with true CFG 4. True CFG runs the model twice a step
and needs a negative prompt: --negative-prompt, the style's constraints.avoid, or " " when neither.
At cfg 1 a style's negative has no effect (reported); --negative-prompt is then an error.
A seed is always chosen, printed and stored; the same seed and settings give the same pixels.

Every PNG carries its recipe (settings, input file hashes, model commit) in its metadata.
Broken output (docs/judging.md): NaN latents, a black, white or flat picture fail the job (exit 1, the
figures in the JSON) and nothing is written; made with --fp8-matmul or --attention, the picture is made
once more without them first, and the recipe records that fallback. --judge NAME=VALUE sets a threshold.
Memory: the prompts are encoded first and the text encoder freed, then the transformer is loaded as the
memory plan says (bf16, fp8 storage or GGUF; group offload on small cards); the plan is logged and in --json.
fp8 storage takes one LoRA set per load: a batch that mixes LoRA sets (Lightning, AnyPose, --lora) reloads
the transformer for each set on fp8 weights (bf16 and GGUF swap LoRAs in place)."""

EPILOG = """\
examples:
  # text-to-image: a character asset
  qwen_image.py --prompt "Full-body character sheet of a red fox ranger, clean white background" -o assets/fox.png
  # edit: keep the character, change the clothes
  qwen_image.py --reference assets/fox.png --prompt "Give the fox a blue raincoat" -o assets/fox-rain.png
  # composite keyframe at the video's frame size (image 1 = street, image 2 = fox)
  qwen_image.py --reference assets/street.png --reference assets/fox.png --preset 480p \\
      --prompt "The fox from image 2 walks down the street of image 1 at dusk" -o keyframes/KF-A.png
  # style asset as a picture, style.json as text and negative prompt
  qwen_image.py --reference assets/fox.png --style-image assets/style.png --style-ref style.json \\
      --prompt "The fox from image 1 painted in the style of image 2" -o assets/fox-styled.png
  # pose: skeleton PNG, keypoints JSON or a photo; AnyPose if installed, else native
  qwen_image.py --reference assets/fox.png --pose poses/jump.json --prompt "mid-jump" -o assets/fox-jump.png
  qwen_image.py --reference assets/fox.png --pose poses/wave.png --pose-method native --prompt "waving" -o a.png
  # pose-guided text-to-image (ControlNet Union on Qwen-Image)
  qwen_image.py --pose poses/run.png --control-strength 0.9 --prompt "A knight running" -o assets/knight.png
  # full schedule with true CFG, a user LoRA, fixed seed
  qwen_image.py --prompt "A misty harbour" --lightning off --cfg 4 --lora loras/ink.safetensors:0.8 --seed 7 -o a.png
  # many stills, one model load: skips outputs that are up to date
  qwen_image.py --batch keyframes.json --json
  # the same on GPUs 0 and 2 only (default: every visible GPU, one worker each)
  qwen_image.py --batch keyframes.json --gpus 0,2

batch file (--batch FILE.json): a list of jobs, or {"defaults": {...}, "jobs": [...]}; keys are the long
option names ("prompt", "reference": ["a.png", "b.png"], "preset", "seed", "output", "overwrite": true);
paths are relative to the batch file. --offload, --weights, --device, --models-dir, --force-memory,
--allow-partial-lora and --overwrite (every job) go on the command line; other options go in the file.
A job whose output exists with the same recipe is skipped (unless "overwrite": true), so an interrupted
batch continues where it stopped; a failing job does not stop the others, except out of memory
(--on-oom stop, the default: reported with the next plan to try; --on-oom retry: reload under that plan and
run the job again) and a full disk; the JSON lists every job. Paths in the file stay inside its production
folder (its own folder, or the one above .production/) unless --allow-outside.

""" + parallel.HELP

PATH_OPTIONS = {"reference", "style-image", "pose", "style-ref", "output", "lora"}
BATCH_ONLY = {"batch", "offload", "weights", "device", "compile", "attention", "models-dir", "force-memory",
              "allow-partial-lora", "json", "quiet", "debug"} | batch.POLICY_OPTIONS
BATCH_ONLY |= parallel.BATCH_OPTIONS  # --gpus, --workers: beside --batch


def build() -> argparse.ArgumentParser:
    p = build_parser("qwen_image.py", DESCRIPTION, EPILOG)
    p.add_argument("-p", "--prompt", type=text_arg,
                   help='what to make or change, e.g. "The fox from image 2 in the street of image 1"')
    p.add_argument("-o", "--output", help="the PNG to write, e.g. keyframes/KF-A.png (its folder must exist)")
    p.add_argument("--batch", metavar="FILE.json", help="run the jobs of a batch file with one model load")
    g = p.add_argument_group("pictures")
    g.add_argument("-r", "--reference", action="append", metavar="IMG",
                   help="a picture to keep or combine (repeat: up to 3 pictures in all), e.g. -r street.png -r fox.png")
    g.add_argument("--style-image", metavar="IMG", help="a style asset, given to the model after the references")
    g.add_argument("--style-ref", metavar="style.json", help="add the style's prompt text and negative prompt")
    g.add_argument("--style-maintain", action=argparse.BooleanOptionalAction, default=True,
                   help="with --style-ref: add its constraints.maintain items to the prompt; --no-style-maintain "
                        "for empty background plates (maintain items usually describe the subject)")
    g.add_argument("--fit", choices=("crop", "pad"), default="crop",
                   help="fit pictures to the output's aspect by centre crop (default) or by padding")
    g = p.add_argument_group("pose")
    g.add_argument("--pose", metavar="FILE", help="skeleton PNG, OpenPose keypoints JSON, or a photo of the pose")
    g.add_argument("--pose-method", choices=qwen_jobs.POSE_METHODS, default="auto",
                   help="anypose, native or controlnet (default auto: the first that applies, see above)")
    g.add_argument("--control-strength", type=qwen_jobs.strength_arg, metavar="S",
                   help="AnyPose LoRA scale (default 0.7) or ControlNet conditioning scale (default 1.0)")
    g = p.add_argument_group("size")
    g.add_argument("--size", type=qwen_jobs.size_arg, metavar="WxH", help="output size, e.g. 832x480")
    g.add_argument("--width", type=qwen_jobs.side_arg, help="output width (with --height)")
    g.add_argument("--height", type=qwen_jobs.side_arg, help="output height (with --width)")
    g.add_argument("--preset", choices=tuple(qwen_jobs.PRESETS),
                   help="the video frame sizes: 480p 832x480, 720p 1280x720, -portrait swapped, square 1024x1024")
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=qwen_jobs.steps_arg, help="denoising steps (default: 4 with Lightning, else 40)")
    g.add_argument("--cfg", type=qwen_jobs.cfg_arg, help="true CFG scale (default: 1 with Lightning, else 4); > 1 doubles the cost")
    g.add_argument("--negative-prompt", type=text_arg, help="what to avoid (needs --cfg > 1)")
    g.add_argument("--seed", type=seed_arg, help="seed (default: a random one, printed and stored)")
    g.add_argument("--lightning", choices=qwen_jobs.LIGHTNING_CHOICES, default="auto",
                   help="the Lightning step-distill LoRA: auto (4 steps when installed), 4, 8 or off")
    g.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]",
                   help="a LoRA for Qwen-Image-Edit (diffusers or ComfyUI keys), e.g. ink.safetensors:0.8; repeatable")
    g.add_argument("--allow-partial-lora", action="store_true",
                   help="load a LoRA even when some of its keys fit nothing (the report lists them)")
    judge.add_args(g)
    add_memory_args(p)
    batch.add_batch_policy_args(p.add_argument_group("batch"))
    g = p.add_argument_group("models")
    cli.add_models_dir_arg(g)
    cli.add_force_memory_arg(g)
    parallel.add_args(p)
    add_output_args(p)
    return p


# ---------------------------------------------------------------- memory plan and model files


def plan_for(args, jobs: list[qwen_jobs.Resolved], kind: str):
    """One plan for every job of a session (sized by its largest job); refused before loading if it cannot fit."""
    if kind == "controlnet" and args.weights in qwen_load.GGUF_FORMS:
        raise CliError(f"--weights {args.weights}: there is no GGUF form of Qwen-Image (the ControlNet path)",
                       "use --weights bf16 or fp8 for ControlNet jobs")
    hardware.check_device(args.device)
    hw = hardware.probe(args.models_dir, args.device)
    snap = qwen_load.any_installed_snapshot(kind)
    largest = max(jobs, key=lambda r: (r.job.width * r.job.height, len(r.job.references)))
    work = memory.qwen_workload(largest.job.width, largest.job.height, len(largest.job.references))
    installed = models.installed_forms("qwen") if kind == "edit" else frozenset({"bf16", "fp8"})
    # the LoRA factors GGUF weights keep: the largest set of the jobs (a batch loads one set at a time)
    footprint = replace(models.footprint("qwen", snap),
                        adapter_params=max(lora_files.adapter_params(r.job.loras) for r in jobs))
    plan = memory.plan_memory(hw, footprint, work, args.offload, args.weights, installed)
    plan = qwen_load.resolve_weights(plan, args.weights, installed)
    cli.refuse_unless_fits(plan, args.force_memory, "the model will not fit this machine")
    log.info("memory: %s", plan.summary())
    return plan, qwen_load.model_files(kind, plan.weights)


def open_session(args, plan, files, images: int = 1) -> qwen.QwenSession:
    from producer.sizing import speed

    levers = speed.choose(args, plan, items=images, family="qwen")
    log.info("loading %s (%s)", files.info["repo"], plan.weights)
    return qwen_load.load_session(files, plan, args.device, allow_partial_lora=args.allow_partial_lora,
                                  quiet=args.quiet, speed=levers)


# ---------------------------------------------------------------- one job


def resolve_job(args) -> qwen_jobs.Resolved:
    if not args.output:
        raise CliError("no output file", "give -o OUT.png")
    check_output(args.output, overwrite=True)  # a folder that exists (whether the file may be replaced: later)
    if Path(args.output).suffix.lower() != ".png":
        raise CliError(f"output {args.output} must be a .png file (the recipe is stored inside it)",
                       "name it e.g. keyframes/KF-A.png")
    if not args.prompt:
        raise CliError("no prompt", 'give --prompt "what to make or change"')
    refuse_input_as_output(args.output, [*(args.reference or []), args.style_image, args.pose], "output",
                           "e.g. assets/fox-v2.png")
    return qwen_jobs.resolve(args)


def make_image(session: qwen.QwenSession, resolved: qwen_jobs.Resolved, fuse: bool, reopen, lock: bool = True) -> dict:
    """Generate, judge (a broken picture is made once more without a suspect speed lever, then refused:
    nothing is written) and write one picture. `reopen(levers)` loads the model again with those levers."""
    held = locks.output_lock(resolved.output) if lock else contextlib.nullcontext()
    current = [session]

    def make():
        current[0].use_loras(resolved.job.loras, fuse)
        made = current[0].generate(resolved.job)
        return made, made.flags

    def again(levers) -> None:
        current[0] = reopen(levers)

    with held:  # one writer per output: a second run on it stops with exit 5
        made, fallback = judge.with_fallback(make, session.speed, again, f"picture {resolved.output}")
        report = current[0].lora_report
        recipe = {**resolved.recipe, "fallback": fallback} if fallback else resolved.recipe
        media.save_png(made.image, resolved.output, recipe)
    log.info("wrote %s (%s, %dx%d, seed %d)", resolved.output, resolved.mode, resolved.job.width,
             resolved.job.height, resolved.job.seed)
    return {"status": "ok", **resolved.report(), "loras": report.to_dict() if report else None,
            "seconds": made.seconds, "decode_tiled": made.decode_tiled,
            "judge": {"broken": [], **({"fallback": fallback} if fallback else {})}}


def run_single(args) -> dict:
    if not args.output:
        raise CliError("no output file", "give -o OUT.png, or --batch FILE.json")
    with locks.output_lock(args.output):  # before loading: a second run on the same output stops at once
        check_output(args.output, args.overwrite)  # under the lock: a run that just finished it is seen
        resolved = resolve_job(args)
        plan, files = plan_for(args, [resolved], resolved.kind)
        resolved.finish_recipe(files.info)
        timer = Stopwatch()
        with cli.naming_plan(lambda: plan):  # out of memory anywhere from here on names this plan
            with timer.stage("load"):
                session = open_session(args, plan, files)
            loaded = [session]

            def reopen(levers) -> qwen.QwenSession:
                judge.drop_levers(args, levers)
                loaded[0] = None
                gc.collect()  # the old model's memory goes back before the new one loads
                loaded[0] = open_session(args, plan, files)
                return loaded[0]

            result = make_image(session, resolved, fuse=True, reopen=reopen, lock=False)
    session = loaded[0]
    result["seconds"] = {**timer.seconds, **session.timer.seconds}
    return {**result, "memory_plan": plan.to_dict(), "model_files": files.info, "speed": session.speed_notes}


# ---------------------------------------------------------------- a batch


class BatchRun(batch.Runner):
    """qwen_image.py's --batch (batch.Runner): resolve every job, then per model: plan, load once, encode every
    prompt, generate each job."""

    up_to_date_reason = "up to date: the output exists with the same recipe"

    def __init__(self, args):
        super().__init__(args)
        self.session: qwen.QwenSession | None = None
        self.session_kind: str | None = None
        self.plans: dict[str, dict] = {}
        self.files: dict[str, dict] = {}
        self.model_files: dict = {}  # kind -> qwen_load's model files (to load the model again)
        self.seconds: dict[str, dict] = {}  # per model: load, text_encode (all prompts), denoise, decode...
        self.fuse = False
        self.plan_of: dict[str, memory.MemoryPlan] = {}  # per model kind, for the prediction

    def resolve(self, job: batch.Job) -> qwen_jobs.Resolved:
        resolved = resolve_job(job.args)
        clash = self.clash(resolved.output)
        if clash is not None:
            raise CliError(f"writes the same output as job {clash} ({resolved.output})", "give each job its own output")
        return resolved

    def order(self, items: list) -> list:
        """The run order: the refused jobs, then per model (edit, then controlnet) the jobs grouped by LoRA set."""
        kinds = {"edit": 0, "controlnet": 1}
        return sorted(items, key=lambda e: (0, e.details.get("job", -1), "") if isinstance(e, CliError) else (
            1 + kinds[self.requests[e.index].kind], 0, str(self.requests[e.index].job.loras)))

    def output(self, request: qwen_jobs.Resolved) -> Path:
        return request.output

    def up_to_date(self, index: int) -> bool:
        resolved = self.requests[index]
        return provenance.up_to_date(resolved.output, resolved.recipe, resolved.seed_given, resolved.overwrite)

    def skip(self, job: batch.Job, reason: str) -> dict:
        resolved = self.requests[job.index]
        return {"status": "skipped", "output": str(resolved.output), "mode": resolved.mode, "reason": reason}

    def start(self, job: batch.Job) -> None:
        resolved = self.requests[job.index]
        if self.session_kind != resolved.kind:
            self._start(resolved.kind)
        if self.session is None and job.index not in self.failed and job.index not in self.skipped:
            # loading failed in an earlier job of this model, which reported why
            raise CliError(f"the {resolved.kind} model is not loaded (an earlier job's error says why)",
                           "fix that error and run the batch again (finished jobs are skipped)", ExitCode.FAILED)

    def make(self, job: batch.Job) -> dict:
        return make_image(self.session, self.requests[job.index], self.fuse, self.reopen, lock=False)

    def reload(self, offload: str) -> None:
        """After out of memory (--on-oom retry): the next job loads the model again under --offload `offload`."""
        self.args.offload = offload
        self.session, self.session_kind = None, None
        gc.collect()

    def reopen(self, levers) -> qwen.QwenSession:
        """A broken picture made with a suspect speed lever: the model again without it, for the jobs left
        (their prompts are encoded already: the embeddings stay with each job)."""
        judge.drop_levers(self.args, levers)
        self.session = None
        gc.collect()
        self.session = open_session(self.args, self.plan, self.model_files[self.session_kind])
        return self.session

    def _start(self, kind: str) -> None:
        """Free the previous model, then plan, check outputs, load and encode every prompt of this kind."""
        if self.session is not None:
            self.session = None
            gc.collect()  # the previous model's memory goes back before the next one loads
        self.session_kind = kind
        group = {i: r for i, r in self.requests.items() if r.kind == kind}
        try:
            plan, files = plan_for(self.args, list(group.values()), kind)
        except CliError as err:
            self.failed.update({i: err for i in group})
            return
        self.plan = self.plan_of[kind] = plan
        self.plans[kind] = plan.to_dict()
        self.files[kind] = files.info
        self.model_files[kind] = files
        for resolved in group.values():
            resolved.finish_recipe(files.info)
        todo = self.sort_out(group)  # one made otherwise is refused, as wan_video.py refuses it
        if not todo:
            return
        self.fuse = len({r.job.loras for r in todo.values()}) == 1
        timer = Stopwatch()
        try:
            with timer.stage("load"):
                self.session = open_session(self.args, plan, files, images=len(todo))
        except CliError as err:  # e.g. a LoRA refused: each job of this model reports it (none crashes later)
            self.failed.update({i: err for i in todo})
            return
        self.session.timer.seconds.update(timer.seconds)
        self.seconds[kind] = self.session.timer.seconds
        self._encode_all(todo)

    def _encode_all(self, todo: dict) -> None:
        for index, resolved in todo.items():
            try:
                self.session.encode([resolved.job])
            except CliError as err:
                self.failed[index] = err
        self.session.release_text_encoder()


def run_batch(args) -> dict:
    runner = BatchRun(args)
    order = runner.order(runner.resolve_all(batch.read_jobs(build, args, PATH_OPTIONS, BATCH_ONLY)))
    result = parallel.run_batch(runner, order)
    result["jobs"].sort(key=lambda j: j.get("job", -1))
    result["memory_plans"] = runner.plans
    result["model_files"] = runner.files
    result["seconds"] = runner.seconds
    result["prediction"] = _prediction(args, result, runner)
    return result


def _prediction(args, result: dict, runner: BatchRun) -> dict | None:
    """Each edit made: its predicted seconds (producer.sizing.estimate) against the measured ones (the speed model
    holds Qwen-Image-Edit figures only, so other kinds are left out)."""
    from producer.sizing import estimate

    made = [(estimate.image_item(runner.requests[j["job"]].job), j["seconds"]) for j in result["jobs"]
            if j["status"] == "ok" and runner.requests[j["job"]].kind == "edit"]
    if "edit" not in runner.plan_of:
        return None
    standin = models.standin_facts(qwen_load.any_installed_snapshot("edit")) is not None
    return estimate.batch_prediction(made, runner.plan_of["edit"], hardware.probe(args.models_dir, args.device), standin)


def run(args) -> dict:
    models.use_models_dir(args.models_dir)
    if not args.batch:
        batch.refuse_policy_without_batch(args)
    result = run_batch(args) if args.batch else run_single(args)
    result.update(peak_memory())
    return result


def describe(result: dict) -> str:
    if "jobs" in result:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(result["counts"].items()))
        return f"batch: {counts}" + (f"\n{result['stopped']}" if result.get("stopped") else "")
    s = result["settings"]
    return (f"wrote {result['output']} ({result['mode']}, {s['width']}x{s['height']}, {s['steps']} steps, "
            f"cfg {s['cfg']:g}, seed {result['seed']})")


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), parallel.entry(run, script_path("qwen_image.py"), argv), argv, describe)

