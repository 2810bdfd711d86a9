"""Wan 2.2 I2V A14B under a memory plan: load, encode, denoise expert by expert, decode.

Stages, each timed (`Clip.seconds`):
1. encode: the text encoder is loaded alone (placed per `plan.text_encoder`), every prompt of the run or
   batch is encoded, and the encoder is freed before any expert is read, so host RAM never holds both.
2. experts: each expert is brought in from the diffusers repo (bf16, or fp8 storage through diffusers'
   layerwise casting) or from its GGUF file (with the repo's config, so diffusers does not take it for
   Wan 2.1), gets its own LoRAs (fused unless quantized), then its fp8 casting, then its placement. One
   expert at a time, so fp8 casting never holds two bf16 experts. With `plan.experts_in_ram == 1` only one
   expert is ever in memory: the high-noise expert runs its steps, is freed at the boundary step, and the
   low-noise expert is read for the rest (a `callback_on_step_end` does the swap).
3. denoise to latents (`output_type="latent"`), counting steps and forward time per expert with hooks.
4. decode ourselves: an out-of-memory error at decode keeps the latents and retries with VAE tiling,
   then on the CPU; a finished denoise is never thrown away.
5. judge (producer.engines.judge): NaN or infinite latents are flagged before the decode (which is then skipped:
   it would only give black frames), black, white, flat, frozen and flickering frames after it; the flags
   go in `Clip.flags` for the script to refuse the clip.

The seam the benchmark uses: `WanSession.from_components(pipe, plan)` runs prebuilt components (e.g.
full-size models with random weights) through exactly this code; `generate(job)` returns the frames,
seconds per stage and the steps each expert ran.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
)

from producer.cli import Stopwatch
from producer.engines import judge
from producer.engines.loras import lora, lora_refold
from producer.engines.wan import halfway
from producer.engines.wan.experts import ExpertCounter, ExpertRun, ExpertsInMemory, ExpertsOnDisk, lora_view
from producer.engines.wan.wan_load import DENOISERS, WanFiles
from producer.errors import CliError
from producer.facts import registry
from producer.modelfiles import models
from producer.sizing import memory, offload, speed
from producer.sizing.placement import Placement

log = logging.getLogger("producer")

EXPERT_NAMES = {"transformer": "high_expert", "transformer_2": "low_expert"}
# Wan2.2 `wan/configs/shared_config.py`: text_len 512; diffusers' WanImageToVideoPipeline default max_sequence_length.
MAX_SEQUENCE_LENGTH = 512  # UMT5 prompts are padded to 512 tokens, as in training and the pipeline's own call


# ---------------------------------------------------------------- schedules


class DistillEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """Euler on the schedule the Wan step-distill LoRAs were trained with.

    Lightning / LightX2V sample at timesteps 1000, 750, 500, 250 shifted by 5, i.e. sigmas
    [1, 0.9375, 0.8333, 0.625]: two steps on each expert with boundary 0.9. The stock scheduler's
    `set_timesteps(4)` spaces the *already shifted* training sigmas instead and gives 1000, 909, 717, 24,
    and the Wan pipeline calls `set_timesteps(num_inference_steps)` without sigmas. So when no sigmas are
    given this uses the evenly spaced unshifted sigmas linspace(1, 0, n + 1)[:-1] and lets diffusers shift them.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None and num_inference_steps:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def make_scheduler(sampling: registry.WanSampling, base_config: Any):
    """The scheduler for a schedule: official UniPC (flow matching), or the distill Euler one."""
    if sampling.scheduler == "unipc":
        # The repo's scheduler config says flow_shift 3.0; Wan2.2 `wan_i2v_A14B.py` samples at sample_shift 5.0
        # (registry.WAN.full.shift), with `wan/image2video.py`'s flow-matching UniPC.
        return UniPCMultistepScheduler.from_config(base_config, prediction_type="flow_prediction",
                                                   use_flow_sigmas=True, flow_shift=sampling.shift)
    if sampling.scheduler == "euler":
        # LightX2V `configs/wan22/wan_moe_i2v_distill.json`: denoising_step_list [1000, 750, 500, 250], shift 5.
        return DistillEulerScheduler(num_train_timesteps=1000, shift=sampling.shift)
    raise ValueError(f"unknown scheduler {sampling.scheduler!r}")


# ---------------------------------------------------------------- one clip


@dataclass
class ClipJob:
    """A clip with every setting resolved (see wan_settings)."""

    image: Any  # PIL start keyframe, already width x height
    prompt: str
    width: int
    height: int
    frames: int
    sampling: registry.WanSampling
    seed: int
    negative_prompt: str = ""
    last_image: Any = None  # PIL end keyframe (first-last-frame mode)
    limits: judge.Limits = field(default_factory=judge.Limits)  # broken-output thresholds (--judge)

    @property
    def cfg(self) -> bool:
        return self.sampling.guidance > 1

    @property
    def prompt_key(self) -> tuple:
        return (self.prompt, self.negative_prompt if self.cfg else "", self.cfg)


@dataclass
class Clip:
    frames: np.ndarray | None  # N x H x W x 3 float in [0, 1]; None when the latents were broken (not decoded)
    latents: torch.Tensor
    seconds: dict[str, float]
    experts: dict[str, ExpertRun]
    decode: str  # whole | tiled | tiled on the CPU | skipped
    flags: list[judge.Flag] = field(default_factory=list)  # broken output (producer.engines.judge); [] when sound


# ---------------------------------------------------------------- the session


class WanSession:
    """One loaded model, many clips. Build with `from_files` (the scripts) or `from_components` (benchmark)."""

    def __init__(self, pipe: WanImageToVideoPipeline, plan: memory.MemoryPlan, device: torch.device, experts,
                 lora_specs=(), allow_partial: bool = False, progress: bool = True, speed=None):
        self.pipe, self.plan, self.device, self._experts = pipe, plan, torch.device(device), experts
        self.speed = speed  # producer.sizing.speed.Speed, applied to each expert once it is placed
        self._speed_notes: dict[str, list[str]] = {}  # per expert, from its first placing (see speed_notes)
        self.dtype = offload.torch_dtype(plan.dtype)
        self._lora_specs, self._allow_partial = list(lora_specs), allow_partial
        self.lora_reports: dict[str, list[dict]] = {}
        self._refolds: dict[str, Any] = {}  # one expert in RAM: how a re-read expert gets its LoRAs (lora_refold)
        self.counters = {c: ExpertCounter(self.device) for c in DENOISERS}
        self.boundary_ratio = pipe.config.boundary_ratio or registry.WAN.boundary_ratio
        self._scheduler_config = pipe.scheduler.config
        self._embeds: dict[tuple, tuple] = {}
        self._upcoming: list[ClipJob] = []  # make_in_order
        self._halfway: dict[tuple, halfway.Halfway] = {}
        self.seconds: dict[str, float] = {}  # load and encode, once per session
        pipe.set_progress_bar_config(disable=not progress, leave=False)
        self._place_vae()

    # -------------------------------------------------------- building

    @classmethod
    def from_files(cls, files: WanFiles, plan: memory.MemoryPlan, device=None, **kwargs) -> WanSession:
        """Load the text encoder (placed per plan), tokenizer, VAE and scheduler; experts come at generate()."""
        from transformers import UMT5EncoderModel

        device = torch.device(device or plan.device)
        dtype = offload.torch_dtype(plan.dtype)
        if not kwargs.get("progress", True):
            _quiet_loading()
        watch = Stopwatch()
        with watch.stage("load_text_encoder"):
            direct = plan.text_encoder is Placement.GPU and device.type == "cuda"
            models.refuse_pickled_weights(files.snapshot)  # and use_safetensors=True: a pickle is never opened
            text_encoder = UMT5EncoderModel.from_pretrained(files.snapshot, subfolder="text_encoder", dtype=dtype,
                                                            use_safetensors=True,
                                                            **({"device_map": {"": device}} if direct else {}))
            if not direct:
                offload.place_text_encoder(text_encoder, plan.text_encoder, device)
            pipe = WanImageToVideoPipeline.from_pretrained(files.snapshot, text_encoder=text_encoder,
                                                           transformer=None, transformer_2=None, dtype=dtype,
                                                           use_safetensors=True)
        session = cls(pipe, plan, device, ExpertsOnDisk(files, dtype, device, plan), **kwargs)
        session.seconds.update(watch.seconds)
        return session

    @classmethod
    def from_components(cls, pipe: WanImageToVideoPipeline, plan: memory.MemoryPlan, device=None,
                        **kwargs) -> WanSession:
        """Run prebuilt components through this code: the experts are taken out of `pipe` and brought in per
        plan (LoRAs, fp8 casting, placement) like loaded ones; the text encoder is placed per plan."""
        device = torch.device(device or plan.device)
        experts = {c: getattr(pipe, c) for c in DENOISERS}
        for c in DENOISERS:
            setattr(pipe, c, None)
        if pipe.text_encoder is not None:
            offload.place_text_encoder(pipe.text_encoder, plan.text_encoder, device)
        return cls(pipe, plan, device, ExpertsInMemory(experts), **kwargs)

    def _place_vae(self) -> None:
        self.pipe.vae.to(self.device)
        if self.plan.vae_tiling:
            self.pipe.vae.enable_tiling()

    # -------------------------------------------------------- prompts

    def encode(self, jobs: list[ClipJob]) -> None:
        """Encode every prompt the jobs need, then free the text encoder (call once with all jobs)."""
        todo = list(dict.fromkeys(j.prompt_key for j in jobs if j.prompt_key not in self._embeds))
        if not todo:
            return
        if self.pipe.text_encoder is None:
            raise RuntimeError("the text encoder was freed already: pass every job to encode() first")
        for prompt, negative, cfg in todo:
            self._check_prompt_length(prompt, "the")
            if cfg:
                self._check_prompt_length(negative, "the negative")
        watch = Stopwatch()
        with watch.stage("encode"), torch.no_grad():
            for prompt, negative, cfg in todo:
                self._embeds[(prompt, negative, cfg)] = self.pipe.encode_prompt(
                    prompt, negative if cfg else None, do_classifier_free_guidance=cfg,
                    max_sequence_length=MAX_SEQUENCE_LENGTH, device=self.device, dtype=self.dtype)
        # timed: a batch spent seconds before its first clip outside every stage (H100, p3b: ~3 s)
        with watch.stage("free_text_encoder"):
            offload.release(self.pipe, "text_encoder")
        for stage in ("encode", "free_text_encoder"):
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + watch.seconds[stage], 3)
        log.info("encoded %d prompt(s) in %.1f s; text encoder freed", len(todo), watch.seconds["encode"])

    def _check_prompt_length(self, text: str, label: str) -> None:
        """UMT5 reads 512 tokens; the pipeline would cut the rest (often the style's additions) silently."""
        tokens = len(self.pipe.tokenizer(text or "").input_ids)
        if tokens > MAX_SEQUENCE_LENGTH:
            raise CliError(f"{label} prompt is {tokens} tokens; Wan's text encoder reads at most {MAX_SEQUENCE_LENGTH}",
                           "shorten the prompt (the style's additions count too)")

    # -------------------------------------------------------- experts

    @property
    def one_expert_at_a_time(self) -> bool:
        return self.plan.experts_in_ram < len(DENOISERS)

    def _placement(self, component: str) -> Placement:
        placement = self.plan.components[component].placement
        # Alone in memory, an expert that would be swapped onto the GPU simply lives there.
        return Placement.GPU if placement is Placement.MODEL_OFFLOAD and self.one_expert_at_a_time else placement

    def _bring_in(self, component: str) -> None:
        if getattr(self.pipe, component) is not None:
            return
        placement = self._placement(component)
        module = self._experts.get(component, on_host=placement is not Placement.GPU)
        if not getattr(module, "_producer_prepared", False):
            self._load_loras(component, module)
            if self.plan.components[component].weights == "fp8":
                module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=self.dtype)
            self.counters[component].attach(module)
            module._producer_prepared = True
        setattr(self.pipe, component, module)
        if placement is Placement.GPU:
            module.to(self.device)
        elif not getattr(module, "_producer_placed", False):
            module.to("cpu")  # offloading starts from host memory (prebuilt experts may sit on the GPU)
            offload.place_denoiser(module, placement, self.device, self.plan)
            module._producer_placed = True
        if placement is Placement.MODEL_OFFLOAD and all(getattr(self.pipe, c) is not None for c in DENOISERS):
            offload.install_expert_swap(self.pipe, self.device)
        if self.speed is not None and not getattr(module, "_producer_sped_up", False):
            self._speed_notes.setdefault(component, speed.apply_speed(module, self.speed, self.device))
            module._producer_sped_up = True

    @property
    def speed_notes(self) -> list[str]:
        """What the speed levers did, for the report: each expert's notes from its first placing, where a compile's
        seconds are (the other expert, or a read again, finds the code compiled already)."""
        return list(dict.fromkeys(n for c in DENOISERS for n in self._speed_notes.get(c, [])))

    def _let_go(self, component: str) -> None:
        module = getattr(self.pipe, component)
        if module is None:
            return
        if self._experts.keeps_modules:
            setattr(self.pipe, component, None)
            if self._placement(component) is Placement.GPU:
                module.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            del module
            # One expert in RAM: the other expert is read next, into the chunks this one leaves.
            offload.release(self.pipe, component, keep_pinned=self.one_expert_at_a_time)

    def _load_loras(self, component: str, module: torch.nn.Module) -> None:
        specs = [replace(s, components=(component,)) for s in self._lora_specs if component in s.components]
        if not specs:
            return
        reloading = component in self.lora_reports  # one expert in RAM: read again for every clip
        refold = self._refolds.get(component)
        if reloading and refold is not None and lora_refold.refold(lora_view(component, module), refold):
            return  # folded again from the files as the first load folded them, without peft
        with _log_level(logging.WARNING if reloading else None):  # the report was printed at the first load
            report = lora.load_loras(lora_view(component, module), specs, "wan", allow_partial=self._allow_partial,
                                     fuse=True, refoldable=self.one_expert_at_a_time)
        self.lora_reports.setdefault(component, report.to_dict()["loras"])
        self._refolds[component] = report._refolds.get(component)

    def _experts_for_start(self) -> None:
        if self.one_expert_at_a_time:
            self._let_go("transformer_2")
            self._bring_in("transformer")
        else:
            for component in DENOISERS:
                self._bring_in(component)

    def _boundary(self, scheduler) -> float:
        """The timestep where the low-noise expert takes over, for `scheduler`."""
        return self.boundary_ratio * scheduler.config.num_train_timesteps

    def _swap_at_boundary(self, watch: Stopwatch):
        boundary = self._boundary(self.pipe.scheduler)

        def callback(pipe, i, t, callback_kwargs):
            timesteps = pipe.scheduler.timesteps
            if i + 1 < len(timesteps) and t >= boundary > timesteps[i + 1]:
                with watch.stage("expert_swap"):
                    self._let_go("transformer")
                    self._bring_in("transformer_2")
            return callback_kwargs

        return callback

    def loaded_experts(self) -> list[str]:
        return [c for c in DENOISERS if getattr(self.pipe, c) is not None]

    # -------------------------------------------------------- generating

    def make_in_order(self, jobs: list[ClipJob]) -> None:
        """The clips this session will make, in this order. With one expert in RAM, a clip's high-noise half
        then runs together with those of the clips after it (up to memory.CLIPS_PER_EXPERT_READ in all) while
        that expert is loaded."""
        self._upcoming = list(jobs) if self.one_expert_at_a_time else []
        self._halfway.clear()

    def generate(self, job: ClipJob) -> Clip:
        """Denoise one clip to latents, then decode. Prompts are encoded here if encode() did not see them."""
        self.encode([job])
        watch = Stopwatch()
        for counter in self.counters.values():
            counter.reset()
        high = None
        if self._made_by_halves(job):
            latents, high = self._by_halves(job, watch)
        else:
            with watch.stage("load_experts"):
                self._experts_for_start()
            self.pipe.scheduler = make_scheduler(job.sampling, self._scheduler_config)
            callback = self._swap_at_boundary(watch) if self.one_expert_at_a_time else None
            with watch.stage("denoise"):
                latents = self.pipe(**self._call(job), output_type="latent", callback_on_step_end=callback).frames
        flags = judge.check_latents(latents, video=True)
        frames, how = None, "skipped"
        if not flags:  # NaN latents decode to black frames: not worth the decode's time
            with watch.stage("decode"):
                frames, how = self.decode(latents)
            flags = judge.check_frames(frames, job.limits)
        experts = {c: self.counters[c].result() for c in DENOISERS}
        experts["transformer"] = high or experts["transformer"]
        seconds = dict(watch.seconds)
        seconds.update({EXPERT_NAMES[c]: run.seconds for c, run in experts.items()})
        return Clip(frames=frames, latents=latents, seconds=seconds, experts=experts, decode=how, flags=flags)

    def _call(self, job: ClipJob) -> dict:
        """The pipeline call for a clip (the same noise on every device: a CPU generator)."""
        prompt_embeds, negative_embeds = self._embeds[job.prompt_key]
        return {"image": job.image, "last_image": job.last_image, "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_embeds if job.cfg else None, "height": job.height,
                "width": job.width, "num_frames": job.frames, "num_inference_steps": job.sampling.steps,
                "guidance_scale": job.sampling.guidance, "guidance_scale_2": job.sampling.guidance_2,
                "generator": torch.Generator("cpu").manual_seed(job.seed)}

    def _by_halves(self, job: ClipJob, watch: Stopwatch):
        """The clip's low-noise half from where its high-noise half stopped (run now, with those of the next
        clips, unless an earlier clip ran it). Returns the latents and the high-noise expert's run."""
        if halfway.job_key(job) not in self._halfway:
            with watch.stage("load_experts"):
                self._let_go("transformer_2")
                self._bring_in("transformer")
            self._first_halves(job, watch)
        half = self._halfway.pop(halfway.job_key(job))
        with watch.stage("denoise"):  # the swap inside it, as in a whole clip
            with watch.stage("expert_swap"):
                self._let_go("transformer")
                self._bring_in("transformer_2")
            latents = halfway.second_half(self.pipe, self._call(job), half, self.device)
        watch.seconds["denoise"] = round(watch.seconds["denoise"] + half.seconds, 3)
        return latents, half.high

    def _made_by_halves(self, job: ClipJob) -> bool:
        """Announced in a one-expert batch (make_in_order), with steps on both sides of the expert boundary."""
        if not any(halfway.job_key(j) == halfway.job_key(job) for j in self._upcoming):
            return False
        scheduler = make_scheduler(job.sampling, self._scheduler_config)
        return halfway.crosses(scheduler, job.sampling.steps, self._boundary(scheduler))

    def _first_halves(self, job: ClipJob, watch: Stopwatch) -> None:
        """The high-noise halves of `job` and of the clips after it that wait for theirs (prompts encoded)."""
        keys = [halfway.job_key(j) for j in self._upcoming]
        later = self._upcoming[keys.index(halfway.job_key(job)) + 1:]
        group = [job] + [j for j in later if halfway.job_key(j) not in self._halfway and j.prompt_key in self._embeds
                         and self._made_by_halves(j)][:memory.CLIPS_PER_EXPERT_READ - 1]
        for other in group:
            self.pipe.scheduler = make_scheduler(other.sampling, self._scheduler_config)
            self.counters["transformer"].reset()
            started = time.perf_counter()
            try:  # this clip's half counts in its denoise; later clips' halves in this one's "ahead"
                with watch.stage("ahead") if other is not job else contextlib.nullcontext():
                    half = halfway.first_half(self.pipe, self._call(other), self._boundary(self.pipe.scheduler))
            except torch.OutOfMemoryError:
                if other is job:
                    raise
                log.warning("out of memory running a later clip's high-noise steps ahead; it runs at its turn")
                _free_cuda()
                break
            half.high, half.seconds = self.counters["transformer"].result(), time.perf_counter() - started
            self._halfway[halfway.job_key(other)] = half

    # -------------------------------------------------------- decoding

    def decode(self, latents: torch.Tensor) -> tuple[np.ndarray, str]:
        """Latents -> N x H x W x 3 floats in [0, 1]. Out of memory: tiling, then the CPU; latents are kept."""
        vae = self.pipe.vae
        try:
            return self._decode_on(latents, self.device), "tiled" if vae.use_tiling else "whole"
        except torch.OutOfMemoryError:
            _free_cuda()
            if not vae.use_tiling:
                log.warning("out of memory decoding %s untiled; retrying with VAE tiling (the denoised latents are "
                            "kept)", "x".join(map(str, latents.shape[-3:])))
                vae.enable_tiling()
                try:
                    return self._decode_on(latents, self.device), "tiled"
                except torch.OutOfMemoryError:
                    _free_cuda()
        log.warning("out of memory decoding with tiling; decoding on the CPU (slow; the latents are kept)")
        vae.to("cpu")
        try:
            return self._decode_on(latents, torch.device("cpu")), "tiled on the CPU"
        finally:
            vae.to(self.device)

    def _decode_on(self, latents: torch.Tensor, device: torch.device) -> np.ndarray:
        vae = self.pipe.vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=device, dtype=vae.dtype).view(shape)
        # Written as WanImageToVideoPipeline writes it (divide by 1 / std), so the frames are bit-identical to its.
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device, dtype=vae.dtype).view(shape)
        with torch.no_grad():
            video = vae.decode(latents.to(device=device, dtype=vae.dtype) / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="np")[0]


@contextlib.contextmanager
def _log_level(level: int | None):
    previous = log.level
    if level is not None and log.getEffectiveLevel() < level:
        log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


def _quiet_loading() -> None:
    """No "Loading weights" bars (--quiet): they come from diffusers and transformers, not our logger."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
