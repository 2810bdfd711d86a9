"""Qwen-Image-Edit-2511 (and Qwen-Image + ControlNet Union) loaded for a memory plan, run stage by stage.

Stages, in this order, so that the 17 GB text encoder and the 41 GB transformer are never needed at once:
1. text encode: every prompt of the run (with its reference pictures, which the vision-language encoder
   reads) is encoded first; then the encoder is freed (`offload.release`);
2. the transformer is loaded (bf16 repo, fp8 storage, or a GGUF file), LoRAs go in, the plan is applied;
3. denoise each job; 4. decode each job with the VAE, tiled when the plan says so, and tiled on a retry
   when an untiled decode runs out of memory (the latents are kept, nothing is denoised twice).
5. judge (producer.engines.judge): NaN latents are flagged before the decode (then skipped), a black, white or flat
   picture after it; the flags go in `Generated.flags` for the script to refuse the picture.

Text-to-image: `QwenImageEditPlusPipeline.__call__(image=None)` fails in diffusers 0.42.1 (its first line
reads `image.size`). So a job without pictures is encoded by the Edit-2511 pipeline's own `encode_prompt`
with no image (its template then carries no "Picture N:" part) and denoised by diffusers'
`QwenImagePipeline` built from the same modules (the 2511 transformer's `zero_cond_t` works with no
condition tokens). Same model, same weights, no fake grey picture.

References: the pipeline resizes each picture to ~1024^2 pixels for the VAE, at the picture's own aspect,
whatever the output size (module constant VAE_IMAGE_SIZE). A reference whose VAE size differs from the
output in aspect or scale is what shifts and zooms Qwen-Edit results. Rule used here (`reference_size`,
`prepare_reference`): every reference is fitted to the *output's* aspect first (centre crop, or pad with
--fit pad), then given to the VAE at the output's own scale, cropped to multiples of 32 (the pipeline's
rounding) by at most 16 px a side, centred. For the usual sizes (832x480, 480x832, 1024x1024, 1344x768)
the reference's latent grid is then exactly the output's. Outputs above the model's reference area
(1024^2) get references scaled down uniformly to that area (same framing, fewer tokens). VAE_IMAGE_SIZE
is set to that exact area for the call and restored after, so the pipeline does not resize again.
Tiny stand-in models carry smaller areas in their marker (`models.standin_facts`), applied the same way.

`QwenSession.from_components(pipe, plan)` + `generate(job)` is the seam the benchmark uses to run
full-size random-weight models through exactly this code, with seconds per stage. Loading from the
Hugging Face cache (which files, which form) is producer.engines.qwen.qwen_load.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from producer.cli import Stopwatch, out_of_memory_error
from producer.engines import judge
from producer.engines.loras import lora
from producer.errors import CliError, ExitCode
from producer.files import media  # producer.sizing.offload imports torch: imported where it is used
from producer.modelfiles import models
from producer.sizing.memory import MemoryPlan, Placement

log = logging.getLogger("producer")

MODEL_REFERENCE_AREA = 1024 * 1024  # diffusers' VAE_IMAGE_SIZE for Edit-2509/2511
MODEL_CONDITION_AREA = 384 * 384  # diffusers' CONDITION_IMAGE_SIZE (what the vision encoder sees)
REFERENCE_MULTIPLE = 32  # the pipeline rounds reference sizes to 32 px (calculate_dimensions)
MAX_PROMPT_TOKENS = 1024  # the Qwen pipelines' max_sequence_length limit


@dataclass(frozen=True)
class Areas:
    """Most pixels a reference gets for the VAE, and what the vision-language encoder sees."""

    reference: int = MODEL_REFERENCE_AREA
    condition: int = MODEL_CONDITION_AREA


def areas_for(snapshot: Path | None) -> Areas:
    facts = models.standin_facts(snapshot) if snapshot else None
    if not facts:
        return Areas()
    return Areas(int(facts.get("qwen_reference_area", MODEL_REFERENCE_AREA)),
                 int(facts.get("qwen_condition_area", MODEL_CONDITION_AREA)))


# ---------------------------------------------------------------- the reference rule


def reference_scale(width: int, height: int, max_area: int) -> float:
    return min(1.0, math.sqrt(max_area / (width * height)))


def reference_size(width: int, height: int, max_area: int) -> tuple[int, int]:
    """The size the VAE sees each reference at, for an output of width x height (see the module doc)."""
    s = reference_scale(width, height, max_area)
    m = REFERENCE_MULTIPLE
    return max(m, int(width * s) // m * m), max(m, int(height * s) // m * m)


def prepare_reference(img: Image.Image, width: int, height: int, fit: str, max_area: int) -> Image.Image:
    """Fit to the output's aspect (crop or pad), scale as the output, centre-crop to the VAE size."""
    fitted = media.fit_image(img, width, height, mode=fit)
    s = reference_scale(width, height, max_area)
    if s < 1.0:
        fitted = fitted.resize((round(width * s), round(height * s)), Image.Resampling.LANCZOS)
    rw, rh = reference_size(width, height, max_area)
    left, top = (fitted.width - rw) // 2, (fitted.height - rh) // 2
    return fitted.crop((left, top, left + rw, top + rh))


# ---------------------------------------------------------------- a job: resolved settings for one image


@dataclass
class Embeds:
    prompt: object
    prompt_mask: object
    negative: object = None
    negative_mask: object = None

    def to(self, device) -> Embeds:
        return Embeds(*(None if t is None else t.to(device)
                        for t in (self.prompt, self.prompt_mask, self.negative, self.negative_mask)))


@dataclass
class QwenJob:
    """Everything one image needs, already resolved (no defaults are chosen here)."""

    prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    scheduler: str = "model"  # registry.QwenSampling.scheduler: "model" (the repo's config) or "lightning"
    negative_prompt: str | None = None  # None: no true CFG (the pipeline runs it only with a negative)
    references: list = field(default_factory=list)  # prepared with prepare_reference, in "image N" order
    control_image: Image.Image | None = None  # ControlNet path only (fitted to width x height)
    control_scale: float = 1.0
    loras: tuple = ()  # lora.LoraSpec, Lightning / AnyPose / the user's
    label: str = ""
    embeds: Embeds | None = None  # filled by QwenSession.encode
    limits: judge.Limits = field(default_factory=judge.Limits)  # broken-output thresholds (--judge)

    @property
    def true_cfg(self) -> bool:
        return self.cfg > 1.0 and self.negative_prompt is not None


@dataclass
class Generated:
    image: Image.Image | None  # None when the latents were broken (not decoded)
    seconds: dict
    decode_tiled: bool
    flags: list = field(default_factory=list)  # judge.Flag: broken output; [] when sound


# ---------------------------------------------------------------- the schedule


def make_scheduler(name: str, base_config):
    """The scheduler a job samples with: the repo's own config ("model"), or that config with the fixed
    shift 3 and no terminal stretch that the Lightning LoRAs were distilled with ("lightning", see
    registry.QWEN_LIGHTNING_SCHEDULER). Built with diffusers' own from_config, so nothing else changes."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from producer.facts import registry

    if name == "model":
        return FlowMatchEulerDiscreteScheduler.from_config(base_config)
    if name == "lightning":
        return FlowMatchEulerDiscreteScheduler.from_config(base_config, **registry.QWEN_LIGHTNING_SCHEDULER)
    raise ValueError(f"unknown Qwen scheduler {name!r}")


def check_schedule(scheduler, steps: int) -> None:
    """Refuse a step count the scheduler cannot sample, from its actual config, before anything runs.

    diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps stretches the schedule when `shift_terminal` is
    set (stretch_shift_to_terminal, schedulers/scheduling_flow_match_euler_discrete.py, diffusers 0.36-0.42):
    scale_factor = (1 - t[-1]) / (1 - shift_terminal), then t = 1 - (1 - t) / scale_factor. With one step the
    pipeline passes the sigmas [1.0], so that is 0 / 0: the only sigma is NaN and the picture comes out black.
    With two or more steps the last sigma is below 1 and the stretch is well defined."""
    terminal = scheduler.config.get("shift_terminal")
    if terminal and steps < 2:
        raise CliError(f"--steps {steps} cannot run on this scheduler: it ends its schedule at sigma {terminal:g} "
                       "(shift_terminal), which takes at least 2 steps",
                       "use --steps 2 or more (the full schedule is 40), or the Lightning LoRA (--lightning 4)")


# ---------------------------------------------------------------- the session


class QwenSession:
    """One loaded model; jobs are encoded, denoised and decoded through it. `kind`: edit | controlnet."""

    def __init__(self, pipe, plan: MemoryPlan, device=None, kind: str = "edit", areas: Areas = Areas(),
                 model_info: dict | None = None, load_denoiser: Callable[[], dict] | None = None,
                 free_text_encoder: bool = True, allow_partial_lora: bool = False, quiet: bool = False,
                 speed=None):
        import torch

        self.pipe, self.plan, self.kind, self.areas = pipe, plan, kind, areas
        self.device = torch.device(device or plan.device)
        self.model_info = model_info or {}
        self._load_denoiser = load_denoiser
        self.free_text_encoder = free_text_encoder
        self.allow_partial_lora = allow_partial_lora
        self.timer = Stopwatch()
        self._placed = False
        self._encoder_placed = False
        self._wanted_loras: tuple = ((), False)
        self._lora_key: tuple | None = None
        self.lora_report: lora.LoraReport | None = None
        self.decode_retiled = False
        self.speed = speed  # producer.sizing.speed.Speed, applied to the transformer once it is placed
        self.speed_notes: list[str] = []
        self._scheduler_config = pipe.scheduler.config  # the repo's own: each job's scheduler starts from it
        pipe.set_progress_bar_config(disable=quiet, leave=False)

    @classmethod
    def from_components(cls, pipe, plan: MemoryPlan, device=None, areas: Areas = Areas(),
                        free_text_encoder: bool = False, **kwargs) -> QwenSession:
        """A session over a pipeline built elsewhere (the benchmark's full-size random-weight models)."""
        kind = "controlnet" if getattr(pipe, "controlnet", None) is not None else "edit"
        return cls(pipe, plan, device, kind, areas, free_text_encoder=free_text_encoder, **kwargs)

    # ------------------------------------------------------------ stage 1: text

    def encode(self, jobs: list[QwenJob]) -> None:
        """Encode every job's prompt (and negative) now; the text encoder can be freed afterwards."""
        import torch

        todo = [job for job in jobs if job.embeds is None]
        if not todo:
            return
        encoder = self.pipe.text_encoder
        if encoder is None:
            raise RuntimeError("the text encoder was freed before every prompt was encoded")
        from producer.sizing import offload

        with self.timer.stage("text_encode"):
            if not self._encoder_placed:
                offload.place_text_encoder(encoder, self.plan.text_encoder, self.device)
                self._encoder_placed = True
            with torch.inference_mode():
                for job in todo:
                    job.embeds = self._encode_job(job)

    def _encode_job(self, job: QwenJob) -> Embeds:
        self._check_prompt_length(job.prompt, job.label)
        pictures = self._condition_images(job)
        prompt, mask = self._encode_text(job.prompt, pictures)
        embeds = Embeds(prompt.cpu(), None if mask is None else mask.cpu())
        if job.true_cfg:
            negative, negative_mask = self._encode_text(job.negative_prompt, pictures)
            embeds.negative, embeds.negative_mask = negative.cpu(), None if negative_mask is None else negative_mask.cpu()
        return embeds

    def _check_prompt_length(self, prompt: str, label: str) -> None:
        tokens = len(self.pipe.tokenizer(prompt).input_ids)
        if tokens > MAX_PROMPT_TOKENS:
            raise CliError(f"{label or 'the'} prompt is {tokens} tokens; the model reads at most {MAX_PROMPT_TOKENS}",
                           "shorten the prompt (the style's additions count too)")

    def _condition_images(self, job: QwenJob) -> list | None:
        """The pictures as the pipeline shows them to the vision-language encoder (same resize as its own)."""
        if self.kind != "edit" or not job.references:
            return None
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        shown = []
        for img in job.references:
            w, h = calculate_dimensions(self.areas.condition, img.width / img.height)
            shown.append(self.pipe.image_processor.resize(img, h, w))
        return shown

    def _encode_text(self, text: str, pictures):
        if self.kind == "edit":
            return self.pipe.encode_prompt(text, image=pictures, device=self.device)
        return self.pipe.encode_prompt(text, device=self.device)

    def release_text_encoder(self) -> None:
        from producer.sizing import offload

        if self.pipe.text_encoder is not None:
            # timed: the first job of a batch on the GPU spent 9-15 s outside every other stage (H100, p3a/p3b)
            with self.timer.stage("free_text_encoder"):
                offload.release(self.pipe, "text_encoder")
            log.info("text encoder freed")

    # ------------------------------------------------------------ stage 2: the denoiser

    def use_loras(self, specs, fuse: bool) -> None:
        """Make `specs` the LoRA set of the next jobs. Loaded when the denoiser is (after the prompts are
        encoded); a batch swaps sets between groups of jobs, so they are fused only when the whole run
        uses one set (fused weights cannot be taken out again)."""
        self._wanted_loras = (tuple(specs), fuse)

    def _sync_loras(self) -> None:
        specs, fuse = self._wanted_loras
        if specs == self._lora_key:
            return
        if self.lora_report is not None and self.lora_report.loras:
            lora.unload_loras(self.pipe, self.lora_report)
        with self.timer.stage("lora_load"):
            self.lora_report = lora.load_loras(self.pipe, list(specs), "qwen", self.allow_partial_lora, fuse)
        self._lora_key = specs

    def _fp8_storage(self) -> bool:
        return self.plan.components["transformer"].weights == "fp8"

    def _reload_denoiser(self) -> None:
        """fp8 storage casts every linear layer, LoRA layers included, once: a LoRA loaded afterwards would be
        stored in fp8 with no casting hook. So a new LoRA set on fp8 weights means a fresh transformer."""
        if self._load_denoiser is None:
            raise CliError("this session's fp8-stored transformer cannot take another LoRA set",
                           "run each LoRA set in its own session, or use bf16 or GGUF weights", ExitCode.FAILED)
        log.warning("fp8 weights cannot take a new LoRA set in place: reloading the transformer (a batch with one "
                    "LoRA set, or GGUF weights, avoids this)")
        from producer.sizing import offload

        for name in ("transformer", "controlnet"):
            offload.release(self.pipe, name)
        self.lora_report, self._lora_key, self._placed = None, None, False

    def _ensure_denoiser(self) -> None:
        if self.pipe.transformer is not None:
            return
        if self._load_denoiser is None:
            raise RuntimeError("the session has no transformer and no way to load one")
        with self.timer.stage("load_transformer"):
            self.pipe.register_modules(**self._load_denoiser())

    def _ensure_placed(self) -> None:
        """Stage 2, once: free the text encoder, load the transformer, put the LoRAs in (fused before fp8
        storage or offloading is set up), then place everything as the plan says."""
        if self._placed and self._wanted_loras[0] != self._lora_key and self._fp8_storage():
            self._reload_denoiser()
        if self._placed:
            self._sync_loras()
            return
        if self.free_text_encoder:
            self.release_text_encoder()
        self._ensure_denoiser()
        self._sync_loras()
        from producer.sizing import offload

        with self.timer.stage("place"):
            offload.apply_plan(self.pipe, self.plan, self.device)
            if self.kind == "controlnet":
                offload.place_module(self.pipe.controlnet, self.plan.components["transformer"].placement, self.device)
            self._speed_up(self.pipe.transformer)
        self._placed = True

    def _speed_up(self, module) -> None:
        if self.speed is None or getattr(module, "_producer_sped_up", False):
            return
        from producer.sizing.speed import apply_speed

        self.speed_notes = apply_speed(module, self.speed, self.device)
        module._producer_sped_up = True

    # ------------------------------------------------------------ stages 3 and 4

    def generate(self, job: QwenJob) -> Generated:
        """Encode (if not done yet), denoise and decode one job; seconds per stage in the result."""
        before = dict(self.timer.seconds)
        self.encode([job])
        self._ensure_placed()
        latents = self.denoise(job)
        flags = judge.check_latents(latents, video=False)
        image, tiled = None, False
        if not flags:  # NaN latents decode to a black picture: not worth the decode's time
            import numpy as np

            image, tiled = self.decode(latents, job)
            flags = judge.check_frames(np.asarray(image.convert("RGB")), job.limits)
        seconds = {k: round(v - before.get(k, 0.0), 3) for k, v in self.timer.seconds.items()
                   if v - before.get(k, 0.0) > 0}
        return Generated(image, seconds, tiled, flags)

    def denoise(self, job: QwenJob):
        import torch

        self._ensure_placed()
        embeds = job.embeds.to(self.device)
        scheduler = make_scheduler(job.scheduler, self._scheduler_config)
        check_schedule(scheduler, job.steps)  # qwen_jobs.check_sampling refuses it earlier, by the registry's name
        self.pipe.scheduler = scheduler
        generator = torch.Generator("cpu").manual_seed(job.seed)  # CPU noise: the same seed gives the same start anywhere
        call = {"prompt_embeds": embeds.prompt, "prompt_embeds_mask": embeds.prompt_mask,
                "negative_prompt_embeds": embeds.negative, "negative_prompt_embeds_mask": embeds.negative_mask,
                "true_cfg_scale": job.cfg, "height": job.height, "width": job.width,
                "num_inference_steps": job.steps, "generator": generator, "output_type": "latent"}
        with self.timer.stage("denoise"), _out_of_memory_is(self.plan, "denoising", job), self._denoisers_in():
            if self.kind == "controlnet":
                return self.pipe(control_image=job.control_image, controlnet_conditioning_scale=job.control_scale,
                                 max_sequence_length=MAX_PROMPT_TOKENS, **call).images
            if job.references:
                with self._reference_areas(job):
                    return self.pipe(image=list(job.references), **call).images
            return self._text_to_image_pipe()(max_sequence_length=MAX_PROMPT_TOKENS, **call).images

    @contextlib.contextmanager
    def _denoisers_in(self):
        """Model offload: the transformer (and ControlNet) sit in RAM and come to the GPU whole while they
        denoise, then go back, so the decode has the card to itself (what the plan counts on).
        `offload.apply_plan` leaves a model-offload denoiser on the CPU: its swap hook serves Wan's two experts."""
        names = [n for n in ("transformer", "controlnet") if getattr(self.pipe, n, None) is not None]
        moving = self.plan.components["transformer"].placement is Placement.MODEL_OFFLOAD and self.device.type != "cpu"
        if moving:
            for name in names:
                getattr(self.pipe, name).to(self.device)
        try:
            yield
        finally:
            if moving:
                for name in names:
                    getattr(self.pipe, name).to("cpu")

    def _text_to_image_pipe(self):
        from diffusers import QwenImagePipeline

        pipe = self.pipe
        t2i = QwenImagePipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=None, tokenizer=pipe.tokenizer,
                                transformer=pipe.transformer)
        t2i.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        return t2i

    @contextlib.contextmanager
    def _reference_areas(self, job: QwenJob):
        """Set the pipeline's reference areas for this call (module constants), then restore them."""
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

        sizes = {(img.width, img.height) for img in job.references}
        if len(sizes) != 1:
            raise ValueError(f"references must be prepared to one size, got {sorted(sizes)}")
        (rw, rh), = sizes
        saved = edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE
        edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = rw * rh, self.areas.condition
        try:
            yield
        finally:
            edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = saved

    def decode(self, latents, job: QwenJob) -> tuple[Image.Image, bool]:
        """Latents -> picture. An untiled decode that runs out of memory is retried tiled (latents kept)."""
        import torch

        vae = self.pipe.vae
        with self.timer.stage("decode"):
            try:
                return self._decode(latents, job), bool(getattr(vae, "use_tiling", False))
            except torch.OutOfMemoryError:
                if getattr(vae, "use_tiling", False):
                    raise _oom_error(self.plan, "decoding (already tiled)", job) from None
            log.warning("out of memory while decoding %dx%d; retrying with a tiled VAE decode", job.width, job.height)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            vae.enable_tiling()
            self.decode_retiled = True
            with _out_of_memory_is(self.plan, "decoding (tiled)", job):
                return self._decode(latents, job), True

    def _decode(self, latents, job: QwenJob) -> Image.Image:
        import torch

        pipe, vae = self.pipe, self.pipe.vae
        with torch.inference_mode():
            unpacked = pipe._unpack_latents(latents, job.height, job.width, pipe.vae_scale_factor).to(
                device=self.device, dtype=vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(unpacked)
            # As QwenImageEditPlusPipeline writes it (divide by 1 / std): the pictures are bit-identical to its.
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(unpacked)
            pixels = vae.decode(unpacked / inv_std + mean, return_dict=False)[0][:, :, 0]
            return pipe.image_processor.postprocess(pixels, output_type="pil")[0]


@contextlib.contextmanager
def _out_of_memory_is(plan: MemoryPlan, stage: str, job: QwenJob):
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        raise _oom_error(plan, stage, job) from None


def _oom_error(plan: MemoryPlan, stage: str, job: QwenJob) -> CliError:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out_of_memory_error(plan, f"while {stage} {job.width}x{job.height}",
                               f"a smaller size than {job.width}x{job.height}, or fewer references")
