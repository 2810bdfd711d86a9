"""One Wan clip request, resolved from a script's arguments without loading a model: the keyframes fitted to
the size, the frames, the sampling schedule (wan_settings), the LoRAs that load with the model, and the recipe
the clip will record. `wan_video.py` runs it; `production.py status` (producer.workflow.recipes) asks it for the recipe a
clip would be made with now. Qwen's counterpart is producer.engines.qwen.qwen_jobs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.engines import judge
from producer.engines.loras import lora
from producer.engines.wan import wan_settings as ws
from producer.errors import CliError
from producer.facts import registry
from producer.files import media, provenance
from producer.files.outputs import check_output_name
from producer.files.style import apply_style, load_style, style_prompts
from producer.modelfiles import models
from producer.values import blank, log, resolve_seed

SCRIPT = "wan_video.py"
FPS = registry.WAN.fps


@dataclass
class Request:
    output: Path
    start: Path
    end: Path | None
    style_ref: Path | None
    image: Any  # the start keyframe fitted to width x height
    last_image: Any
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: int
    sampling: registry.WanSampling
    seed: int
    seed_given: bool
    fit: str
    color_match: str
    overwrite: bool
    size_rule: str
    notes: list[str] = field(default_factory=list)
    limits: judge.Limits = field(default_factory=judge.Limits)

    @property
    def mode(self) -> str:
        return "flf" if self.end else "i2v"


def resolve_request(args: argparse.Namespace, distilled: bool) -> Request:
    for flag, value in (("--start-frame", args.start_frame), ("--prompt", args.prompt), ("--output", args.output)):
        # -o "" parses as Path("."); a prompt of invisible characters only (a zero-width space) is none either
        if value is None or not str(value).strip() or str(value) == "." or (flag == "--prompt" and blank(value)):
            raise CliError(f"{flag} is required", f"e.g. {SCRIPT} --start-frame kf.png --prompt \"she waves\" "
                           "-o scene-01/video.mp4 (or --batch FILE.json)")
    check_output_name(args.output, "--output")  # "/" or "..": no file name to write
    if args.output.suffix.lower() != ".mp4":
        raise CliError(f"--output {args.output} must be an .mp4 file", f"e.g. -o {args.output.with_suffix('.mp4')}")
    notes: list[str] = []
    prompt, negative = args.prompt, args.negative_prompt or ""
    if args.style_ref:
        prompt, negative = apply_style(prompt, negative, style_prompts(load_style(args.style_ref), "video"))
    start = media.load_image(args.start_frame)
    end = media.load_image(args.end_frame) if args.end_frame else None
    if end is not None and end.size != start.size:
        raise CliError(f"the start frame is {start.width}x{start.height} but the end frame is {end.width}x{end.height}; "
                       "a first-last-frame clip needs both keyframes at one size",
                       f"make the end keyframe {start.width}x{start.height} (generate it at the start keyframe's size, "
                       "or crop it to that aspect and resize it)")
    frames = ws.resolve_frames(args.frames, args.duration)
    sampling = ws.resolve_sampling(distilled, args.steps, args.guidance, args.guidance_2, args.shift)
    unused_negative = args.negative_prompt and sampling.guidance <= 1
    for note in (frames.note, "" if frames.count <= ws.TRAINED_FRAMES else
                 f"{frames.count} frames: Wan 2.2 was trained on {ws.TRAINED_FRAMES}; longer clips tend to loop "
                 "or degrade (split the scene instead)",
                 "--negative-prompt has no effect at guidance 1 (the distilled schedule runs no unconditional pass); "
                 "raise --guidance, or use --distill off" if unused_negative else ""):
        if note:
            log.warning("warning: %s", note)
            notes.append(note)
    width, height, size_rule = ws.resolve_size(args.size, args.preset, start.size)
    return Request(
        output=args.output, start=args.start_frame, end=args.end_frame, style_ref=args.style_ref,
        image=media.fit_image(start, width, height, args.fit),
        last_image=media.fit_image(end, width, height, args.fit) if end is not None else None,
        prompt=prompt, negative_prompt=negative, width=width, height=height, frames=frames.count, sampling=sampling,
        seed=resolve_seed(args.seed), seed_given=args.seed is not None, fit=args.fit, color_match=args.color_match,
        overwrite=args.overwrite, size_rule=size_rule, notes=notes, limits=judge.parse_limits(args.judge))


# ---------------------------------------------------------------- what loads with the model


@dataclass
class Load:
    distill: str | None  # registry entry
    specs: list  # lora.LoraSpec: distill first, then the user's
    allow_partial: bool


def resolve_load(args: argparse.Namespace) -> Load:
    installed = {name for name in ws.DISTILL_ENTRIES.values() if models.is_present(registry.get(name))}
    distill = ws.choose_distill(args.distill, installed)
    if distill is None and args.distill_strength:
        raise CliError("--distill-strength is set but no step-distill LoRA is used",
                       "drop --distill-strength, or use --distill lightning / lightx2v")
    if distill is None and args.distill == "auto":
        log.warning("no step-distill LoRA installed: running the full %d-step schedule with CFG (about 10x slower; "
                    "a job's --steps sets fewer steps of the same schedule); for 4 distilled steps install one: %s",
                    registry.WAN.full.steps, models.setup_command("wan-lightning"))
    specs = lora.registry_lora_specs(distill, strength=args.distill_strength) if distill else []
    specs += [lora.parse_lora_spec(text, "wan") for text in args.lora]
    return Load(distill, specs, args.allow_partial_lora)


def recipe_for(req: Request, load: Load, files, fp8_matmul: bool = False) -> dict:
    s = req.sampling
    settings = {
        "mode": req.mode, "prompt": req.prompt, "negative_prompt": req.negative_prompt, "width": req.width,
        "height": req.height, "frames": req.frames, "fps": FPS, "fit": req.fit, "steps": s.steps,
        "guidance": s.guidance, "guidance_2": s.guidance_2, "shift": s.shift, "scheduler": s.scheduler,
        "boundary_ratio": registry.WAN.boundary_ratio, "seed": req.seed, "color_match": req.color_match,
        "distill": load.distill,
        "loras": [{"name": spec.name, "strength": spec.strength, "experts": list(spec.components)}
                  for spec in load.specs],
    }
    if fp8_matmul:  # changes the numbers: a recorded setting (and part of the recipe key) when on
        settings["matmul"] = "fp8"
    inputs = {"start_frame": req.start, "end_frame": req.end, "style_ref": req.style_ref,
              "loras": [spec.path for spec in load.specs]}
    model = {key: files.provenance[key] for key in ("repo", "revision") if key in files.provenance}
    recipe = provenance.make_recipe(SCRIPT, settings, inputs, model, standin=models.made_on_standins(model))
    # The weight form (bf16, fp8, GGUF) follows each machine's memory plan: recorded, but outside the recipe's
    # key, so a batch rerun on another machine does not remake its clips (the project's status check agrees).
    weights = {key: value for key, value in files.provenance.items() if key not in model}
    if weights:
        recipe["weights"] = weights
    return recipe


def to_job(req: Request):
    from producer.engines.wan.wan import ClipJob  # torch and diffusers: only when a clip is made

    return ClipJob(image=req.image, last_image=req.last_image, prompt=req.prompt, negative_prompt=req.negative_prompt,
                   width=req.width, height=req.height, frames=req.frames, sampling=req.sampling, seed=req.seed,
                   limits=req.limits)


def up_to_date(req: Request, recipe: dict) -> bool:
    """True: skip; False: make; raises for an output made otherwise (provenance.up_to_date, the rule of both)."""
    return provenance.up_to_date(req.output, recipe, req.seed_given, req.overwrite)
