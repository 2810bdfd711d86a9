"""From qwen_image.py's arguments to a resolved job: mode, size, pictures, prompts, sampling, LoRAs, recipe.

Every default is chosen here, in one place, and reported; nothing here loads a model. The rules:

Mode (from the inputs): no picture -> text-to-image; one --reference -> edit; 2-3 pictures -> composite;
--pose -> pose. Pictures are numbered in the order the model gets them: the --reference files as given,
then --style-image, then the pose picture (pose modes). Prompts refer to them as "image 1", "image 2"...

Size: --size WxH, --width/--height, or --preset (480p = 832x480, 720p = 1280x720, -portrait swaps them,
square = 1024x1024). Without one: the first reference's aspect at about 1024x1024 pixels, or 1024x1024.
Sides are rounded to multiples of 16 (with a warning); at least MIN_SIDE, at most MAX_PIXELS, aspect at
most MAX_ASPECT:1. Every picture is fitted to the output as `qwen.prepare_reference` says.

Sampling: --lightning auto uses the Lightning 4-step LoRA (cfg 1) when it is installed and --steps/--cfg do
not ask for something else (--steps 8 picks the 8-step file; --cfg > 1 or other steps turn it off);
otherwise the model's full schedule (40 steps, true CFG 4). With the Lightning LoRA the job samples on the
schedule it was distilled with (fixed shift 3, no terminal stretch: registry.QWEN_LIGHTNING_SCHEDULER);
without it on the repo's own scheduler, which needs at least 2 steps. True CFG needs a negative prompt: the
user's, the style's constraints.avoid, or " " when neither. At cfg <= 1 a --negative-prompt is an error
(it could not act) and a style's negative is reported as unused.

Pose paths (--pose-method auto picks the first that applies): `anypose` (the AnyPose LoRA pair, when
installed, with a --reference), `native` (the skeleton as an extra picture and a pose instruction, with a
--reference), `controlnet` (Qwen-Image + ControlNet Union: pose-guided text-to-image, no --reference).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from producer.engines import judge
from producer.engines.loras import lora
from producer.engines.qwen import qwen, qwen_load
from producer.errors import CliError, ExitCode
from producer.facts import registry
from producer.files import media, provenance
from producer.files.style import apply_style, join_negative, load_style, style_prompts
from producer.modelfiles import models
from producer.values import blank, log, number_arg, resolve_seed

SCRIPT = "qwen_image.py"
MIN_SIDE = 64
MAX_PIXELS = 2048 * 2048  # 4 MP: beyond the model's training sizes, and ~4x its reference token count
MAX_SIDE = MAX_PIXELS // MIN_SIDE  # the longest side any allowed size can have
side_arg = number_arg(1, MAX_SIDE, whole=True)
MAX_ASPECT = 3.0
PRESETS = {"480p": (832, 480), "720p": (1280, 720), "480p-portrait": (480, 832), "720p-portrait": (720, 1280),
           "square": (1024, 1024)}
LIGHTNING_CHOICES = ("auto", "4", "8", "off")
POSE_METHODS = ("auto", "anypose", "native", "controlnet")
CONTROLNET_SCALE = 1.0  # InstantX/Qwen-Image-ControlNet-Union card: controlnet_conditioning_scale 1.0 in its examples
MAX_CONTROL_STRENGTH = 2.0
MAX_STEPS = 200  # 5x the full schedule: more only costs time
MAX_CFG = 20.0  # Qwen runs at 4; far above, images burn
# argparse types for those numbers: nan, inf or out of range is refused while the arguments are read
steps_arg = number_arg(1, MAX_STEPS, whole=True)
cfg_arg = number_arg(0, MAX_CFG)
strength_arg = number_arg(0, MAX_CONTROL_STRENGTH, above=True)
# Pose instructions put before the user's prompt. Our wording: no public source gives one (the AnyPose card only
# says it takes the character picture and a pose picture); docs/real-models.md says so too. Edit to taste.
POSE_INSTRUCTION = {
    "anypose": "Make the person in image 1 do the exact same pose as the person in image {pose}.",
    "native": "Make the person in image 1 take exactly the pose shown by the OpenPose skeleton in image {pose} "
              "(coloured limbs on black: a pose map, not part of the picture).",
}


@dataclass
class Resolved:
    """One job, ready to run: the model job, where it goes, and what is reported and recorded."""

    job: qwen.QwenJob
    kind: str  # edit | controlnet (which model runs it)
    mode: str  # text-to-image | edit | composite | pose
    output: Path
    overwrite: bool
    seed_given: bool
    settings: dict
    inputs: dict
    images: list[dict]
    notes: list[str] = field(default_factory=list)
    recipe: dict | None = None

    def finish_recipe(self, model_info: dict) -> dict:
        self.recipe = provenance.make_recipe(SCRIPT, self.settings, self.inputs, model_info,
                                             standin=models.made_on_standins(model_info))
        return self.recipe

    def report(self) -> dict:
        return {"output": str(self.output), "mode": self.mode, "model": self.kind, "seed": self.job.seed,
                "settings": self.settings, "images": self.images, "notes": self.notes}


# ---------------------------------------------------------------- sizes


def size_arg(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().replace("*", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give WIDTHxHEIGHT, e.g. 832x480") from None
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"{value!r}: width and height must be 1 to {MAX_SIDE}")
    return w, h


def resolve_size(args, first_picture: Image.Image | None) -> tuple[int, int, list[str]]:
    given = [name for name, v in (("--size", args.size), ("--preset", args.preset),
                                  ("--width/--height", args.width or args.height)) if v]
    if len(given) > 1:
        raise CliError(f"{' and '.join(given)} both set the size", "give one of them")
    if (args.width is None) != (args.height is None):
        raise CliError("--width and --height go together", "give both, or --size WxH, or --preset 480p")
    if args.size:
        w, h = args.size
    elif args.preset:
        w, h = PRESETS[args.preset]
    elif args.width:
        w, h = args.width, args.height
    elif first_picture is not None:
        s = math.sqrt(qwen.MODEL_REFERENCE_AREA / (first_picture.width * first_picture.height))
        w, h = first_picture.width * s, first_picture.height * s
        return check_size(round(w), round(h), f"no size was given, so the size follows the first picture "
                          f"({first_picture.width}x{first_picture.height}): ")
    else:
        w, h = registry.QWEN.default_size
    return check_size(round(w), round(h))


def check_size(w: int, h: int, derived: str = "") -> tuple[int, int, list[str]]:
    """`derived`: how the size was chosen when the user gave none; then the message says so and the fix is to
    give one (the pictures are fitted to it by --fit)."""
    give = "pass --size WxH (e.g. --size 1024x1024) or --preset 720p; the pictures are fitted to it (--fit crop|pad)"
    if w <= 0 or h <= 0:
        raise CliError(f"size {w}x{h} must be positive", "give a size such as 832x480 or --preset 480p")
    asked = f"{w}x{h}"  # as given (or derived): the messages name it, not its snapped form
    snapped = media.snap_size(w, h, registry.QWEN.size_multiple)
    w, h = snapped.width, snapped.height
    if min(w, h) < MIN_SIDE:
        raise CliError(f"{derived}size {asked}: each side must be at least {MIN_SIDE}",
                       give if derived else "give a larger size")
    if w * h > MAX_PIXELS:
        raise CliError(f"size {w}x{h} is {w * h / 1e6:.1f} MP; the limit is {MAX_PIXELS / 1e6:.1f} MP",
                       "generate at most ~2048x2048 (e.g. --preset 720p) and upscale afterwards")
    if max(w / h, h / w) > MAX_ASPECT:
        raise CliError(f"{derived}size {w}x{h} is wider than {MAX_ASPECT:g}:1", give if derived else
                       "the model is trained up to about 21:9; generate a less extreme aspect and crop afterwards")
    return w, h, [snapped.note] if snapped.note else []


# ---------------------------------------------------------------- pictures


def load_pictures(args) -> list[tuple[str, Path, Image.Image]]:
    """(role, path, image) for each --reference and the --style-image, in that order."""
    pictures = [("reference", Path(p), media.load_image(p)) for p in args.reference or []]
    if args.style_image:
        pictures.append(("style image", Path(args.style_image), media.load_image(args.style_image)))
    return pictures


def resolve_pose_method(args, references: int) -> str | None:
    if not args.pose:
        if args.pose_method != "auto":
            raise CliError(f"--pose-method {args.pose_method} needs --pose", "add --pose SKELETON.png (or .json, or a photo)")
        return None
    method = args.pose_method
    anypose = models.is_present(registry.get("qwen-anypose"))
    controlnet = all(models.is_present(registry.get(n)) for n in ("qwen-image-t2i", "qwen-controlnet-union"))
    if method == "auto":
        if references:
            return "anypose" if anypose else "native"
        if controlnet:
            return "controlnet"
        raise CliError("--pose without --reference needs the pose-guided text-to-image path (Qwen-Image + "
                       "ControlNet Union), which is not installed",
                       "add --reference CHARACTER.png to pose a character, or install it: "
                       + models.setup_command("qwen-image-t2i", "qwen-controlnet-union"), ExitCode.MISSING_MODEL)
    if method in ("anypose", "native") and not references:
        raise CliError(f"--pose-method {method} poses a character: it needs --reference CHARACTER.png",
                       "add --reference, or use --pose-method controlnet for pose-guided text-to-image")
    if method == "controlnet" and references:
        raise CliError("--pose-method controlnet is text-to-image on Qwen-Image: it takes no --reference/--style-image",
                       "drop the pictures, or use --pose-method anypose/native to pose the referenced character")
    if method == "anypose" and not anypose:
        models.locate(registry.get("qwen-anypose"))  # raises MISSING_MODEL with the setup command
    if method == "controlnet" and not controlnet:
        for name in ("qwen-image-t2i", "qwen-controlnet-union"):
            models.locate(registry.get(name))
    return method


def pose_picture(pose_input, method: str):
    """What the chosen path shows the model: AnyPose takes a pose picture as it is (a photo too); the
    native and ControlNet paths need a skeleton, so a photo goes through the OpenPose detector."""
    from producer.engines.qwen import pose as posemod

    if method == "anypose" or pose_input.is_skeleton:
        return pose_input
    return posemod.detect_skeleton(pose_input)


# ---------------------------------------------------------------- sampling and prompts


def resolve_sampling(args, kind: str) -> tuple[str, registry.QwenSampling, list[str]]:
    """(lightning "4" | "8" | "off", the sampling with the user's steps and cfg, notes)."""
    notes = []
    lightning = args.lightning
    if kind == "controlnet":
        if lightning in ("4", "8"):
            raise CliError("the Lightning LoRA is made for Qwen-Image-Edit-2511, not for Qwen-Image (the ControlNet "
                           "path)", "drop --lightning (the ControlNet path runs the full schedule)")
        lightning = "off"
    installed = models.is_present(registry.get("qwen-lightning"))
    if lightning == "auto":
        fits = (args.steps in (None, 4, 8)) and (args.cfg is None or args.cfg <= 1.0)
        lightning = str(args.steps or 4) if installed and fits else "off"
        if not installed:
            notes.append("Lightning LoRA not installed: full schedule, 40 steps with CFG (" +
                         models.setup_command("qwen-lightning") + " gives 4 steps without CFG: 20x fewer passes)")
    elif lightning != "off" and not installed:
        models.locate(registry.get("qwen-lightning"))  # MISSING_MODEL with the setup command
    # With the LoRA on, its distillation schedule (registry.QWEN_LIGHTNING_SCHEDULER) whatever the step count.
    base = registry.QWEN.full if lightning == "off" else getattr(registry.QWEN, f"lightning_{lightning}")
    sampling = replace(base, steps=args.steps if args.steps is not None else base.steps,
                       cfg=args.cfg if args.cfg is not None else base.cfg)
    check_sampling(sampling)
    return lightning, sampling, notes


def check_sampling(sampling: registry.QwenSampling) -> None:
    steps, cfg = sampling.steps, sampling.cfg
    if not 1 <= steps <= MAX_STEPS:
        raise CliError(f"--steps {steps} is outside 1..{MAX_STEPS}", "Lightning uses 4 or 8, the full schedule 40")
    if steps < 2 and sampling.scheduler == "model":
        # The repos' own scheduler stretches the schedule so that its last sigma is shift_terminal (0.02): with a
        # single sigma the stretch divides 0 by 0, and the one step would run at sigma NaN (a black picture).
        # Refused here, before loading; qwen.check_schedule refuses it again from the loaded config (the source).
        raise CliError("--steps 1 cannot run on the model's full schedule: its scheduler ends the schedule at "
                       "sigma 0.02, which takes at least 2 steps",
                       "use --steps 2 or more (the full schedule is 40), or the Lightning LoRA (--lightning 4)")
    if not 0.0 <= cfg <= MAX_CFG:
        raise CliError(f"--cfg {cfg:g} is outside 0..{MAX_CFG:g}", "1 turns true CFG off; the model's default is 4")


def resolve_prompts(args, pose_method: str | None, pose_index: int | None, cfg: float):
    """(prompt, negative or None, style path or None, notes)."""
    notes = []
    prompt = " ".join((args.prompt or "").split())
    if blank(prompt):  # whitespace only, or only invisible characters such as a zero-width space
        raise CliError("the prompt is empty", 'give --prompt "what to make or change"')
    if pose_method in POSE_INSTRUCTION:
        prompt = POSE_INSTRUCTION[pose_method].format(pose=pose_index) + " " + prompt
    style_negative = ""
    if args.style_ref:
        style = load_style(args.style_ref)
        additions = style_prompts(style, "image", include_maintain=args.style_maintain)
        prompt, _ = apply_style(prompt, None, additions)
        style_negative = additions.negative
    if cfg <= 1.0:
        if args.negative_prompt:
            raise CliError(f"--negative-prompt needs true CFG (--cfg > 1), but cfg is {cfg:g} (Lightning runs at 1)",
                           "add --cfg 4 (each step then costs twice as much; --lightning off for the full "
                           "schedule), or drop --negative-prompt")
        if style_negative:
            notes.append("the style's negative prompt (constraints.avoid) has no effect at cfg 1 (Lightning): "
                         "add --cfg 4 --lightning off to apply it (twice the cost per step)")
        return prompt, None, notes
    negative = join_negative(args.negative_prompt, style_negative)
    if not negative:
        negative = " "  # the pipeline runs true CFG only when a negative prompt is given
    return prompt, negative, notes


def resolve_control_strength(args, pose_method: str | None) -> float | None:
    value = args.control_strength
    if value is None:
        return None
    if pose_method is None:
        raise CliError("--control-strength applies to pose conditioning only", "add --pose, or drop it")
    if pose_method == "native":
        raise CliError("--control-strength has nothing to set on the native pose path: the skeleton is an ordinary "
                       "picture there, with no strength", "use --pose-method anypose (LoRA scale) or controlnet "
                       "(conditioning scale), or drop --control-strength")
    if not 0.0 < value <= MAX_CONTROL_STRENGTH:
        raise CliError(f"--control-strength {value:g} is outside 0..{MAX_CONTROL_STRENGTH:g}",
                       "AnyPose works at about 0.7, the ControlNet at about 1.0")
    return value


def resolve_loras(args, lightning: str, pose_method: str | None, strength: float | None) -> list:
    specs = []
    if lightning != "off":
        specs += lora.registry_lora_specs("qwen-lightning", steps=int(lightning))
    if pose_method == "anypose":
        specs += lora.registry_lora_specs("qwen-anypose", strength=strength)
    specs += [lora.parse_lora_spec(text, "qwen") for text in args.lora or []]
    return specs


# ---------------------------------------------------------------- everything together


def resolve(args) -> Resolved:
    """Check every input and choose every setting for one job (a CliError names the problem and the fix)."""
    from producer.engines.qwen import pose as posemod

    pictures = load_pictures(args)
    pose_method = resolve_pose_method(args, sum(1 for role, _, _ in pictures if role == "reference"))
    if pose_method == "controlnet" and pictures:
        raise CliError("--pose-method controlnet is text-to-image on Qwen-Image: it takes no --style-image",
                       "drop --style-image, or use --pose-method anypose/native with a --reference")
    kind = "controlnet" if pose_method == "controlnet" else "edit"
    roles = [role for role, _, _ in pictures] + (["pose"] if args.pose and kind == "edit" else [])
    if len(roles) > registry.QWEN.max_references:
        raise CliError(f"{len(roles)} pictures ({', '.join(roles)}); the model takes at most "
                       f"{registry.QWEN.max_references}", "combine some of them into one picture first, or drop one")
    lightning, sampling, sampling_notes = resolve_sampling(args, kind)
    steps, cfg = sampling.steps, sampling.cfg
    width, height, notes = resolve_size(args, pictures[0][2] if pictures else None)
    output = Path(args.output)
    pose_input = None
    if args.pose:  # after the cheap checks: a photo may need the pose detector
        pose_input = pose_picture(posemod.load_pose(args.pose, (width, height)), pose_method)
        notes += pose_input.notes
    shown = list(pictures) + ([("pose", Path(args.pose), pose_input.image)] if kind == "edit" and pose_input else [])
    strength = resolve_control_strength(args, pose_method)
    prompt, negative, prompt_notes = resolve_prompts(args, pose_method, len(shown), cfg)
    specs = resolve_loras(args, lightning, pose_method, strength)
    areas = qwen.areas_for(qwen_load.any_installed_snapshot(kind))
    references = [qwen.prepare_reference(img, width, height, args.fit, areas.reference) for _, _, img in shown]
    control = media.fit_image(pose_input.image, width, height, mode=args.fit) if kind == "controlnet" else None
    seed = resolve_seed(args.seed)
    job = qwen.QwenJob(prompt=prompt, width=width, height=height, steps=steps, cfg=cfg, seed=seed,
                       scheduler=sampling.scheduler, negative_prompt=negative, references=references,
                       control_image=control, control_scale=strength if strength is not None else CONTROLNET_SCALE, loras=tuple(specs),
                       label=output.name, limits=judge.parse_limits(getattr(args, "judge", None)))
    images = [{"image": i, "role": role, "path": str(path)} for i, (role, path, _) in enumerate(shown, 1)]
    mode = "pose" if pose_method else {0: "text-to-image", 1: "edit"}.get(len(pictures), "composite")
    settings = _settings(job, mode, kind, lightning, pose_method, args, images, areas)
    inputs = {"references": [str(p) for r, p, _ in pictures if r == "reference"], "style_image": args.style_image,
              "pose": args.pose, "style": args.style_ref, "loras": [str(s.path) for s in specs]}
    all_notes = notes + sampling_notes + prompt_notes
    for note in all_notes:
        log.info("note: %s", note)
    return Resolved(job, kind, mode, output, args.overwrite, args.seed is not None, settings, inputs, images,
                    all_notes)


def _settings(job: qwen.QwenJob, mode: str, kind: str, lightning: str, pose_method, args, images, areas) -> dict:
    ref = [job.references[0].width, job.references[0].height] if job.references else None
    return {"mode": mode, "model": kind, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
            "width": job.width, "height": job.height, "steps": job.steps, "cfg": job.cfg, "true_cfg": job.true_cfg,
            "seed": job.seed, "lightning": lightning, "pose_method": pose_method,
            "control_strength": _control_strength(job, pose_method), "fit": args.fit,
            "reference_size": ref, "reference_area_cap": areas.reference if job.references else None,
            "images": [{"image": i["image"], "role": i["role"]} for i in images],
            "loras": [{"name": s.name, "strength": s.strength} for s in job.loras],
            # Recorded only when it is not the repo's own, so outputs of the full schedule keep their recipe key;
            # Lightning outputs made before the distillation schedule was used are stale, as they should be.
            **({"scheduler": _SCHEDULER_RECORD[job.scheduler]} if job.scheduler != "model" else {}),
            # fp8 matmuls change the numbers: a recorded setting (and part of the recipe key) when on
            **({"matmul": "fp8"} if getattr(args, "fp8_matmul", False) else {})}


_SCHEDULER_RECORD = {"lightning": "FlowMatchEulerDiscrete, fixed shift 3, no terminal stretch (Qwen-Image-Lightning)"}


def _control_strength(job: qwen.QwenJob, pose_method) -> float | None:
    if pose_method == "controlnet":
        return job.control_scale
    if pose_method == "anypose":
        return next(s.strength for s in job.loras if s.name.startswith("qwen-anypose"))
    return None
