"""What one benchmark process runs: plain diffusers, or the scripts' own sessions under a plan."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import disk_session
import fullsize
import loras
import numpy as np
import ramwatch
import torch
from benchmark import FORCED_FORMS, LEVERS, TINY, WORKLOADS, cap_gib, has_lever, plan_machine
from PIL import Image
from producer.sizing.placement import Placement

GiB = 1024**3


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _keyframe(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _dtype(size: str, device: str) -> torch.dtype:
    return torch.float32 if size == "tiny" and device == "cpu" else torch.bfloat16


def _shape(args, workload: str):
    family, width, height, count, steps, cfg = WORKLOADS[workload]
    if args.size == "tiny":
        width, height, *rest = TINY[family] + (count,)
        count = rest[-1] if family == "qwen" else TINY["wan"][2]
    measured = min(steps, args.measure_steps) if args.measure_steps else steps
    return width, height, count, steps, measured, cfg


def _apply_cap(config: str, device: str) -> None:
    """Emulate a smaller card: cap this process's CUDA memory (after the models were built on the GPU)."""
    if cap_gib(config) and device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(cap_gib(config) * GiB / total)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class StageTimer:
    """Seconds in each denoiser's forwards and in the VAE decode, via hooks (plain diffusers has no stages)."""

    def __init__(self, device: str):
        self.device, self.seconds, self._start = device, {}, {}

    def watch(self, module, name: str, method: str = "forward") -> None:
        original = getattr(module, method)

        def timed(*a, **k):
            _sync(self.device)
            start = time.perf_counter()
            out = original(*a, **k)
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            return out

        setattr(module, method, timed)


@contextmanager
def _timed(device: str, into: dict, name: str):
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    into[name] = round(time.perf_counter() - start, 3)


def _plan(family: str, footprint, work, config: str, device: str):
    """The plan of the scripts: for `planVxR` the one they choose on that machine (any weight form, as
    `setup_diffusers.py` plans downloads), otherwise on this one with bf16 weights (the earlier tables)."""
    from producer.facts import hardware
    from producer.sizing import memory

    machine = plan_machine(config)
    hw = hardware.probe(device=device)
    if machine is None:
        return memory.plan_memory(hw, footprint, work, weights="bf16" if hw.has_gpu else "auto")
    chosen = _machine_plan(family, config)
    if device == "cpu":  # the tiny run on a CPU: that plan's weight form, computed on the CPU
        return replace(memory.plan_memory(hw, footprint, work), weights=chosen.weights)
    return chosen


def _machine_plan(family: str, config: str):
    """The plan the scripts choose for the full-size model on the `planVxR` machine (None otherwise)."""
    from producer.facts import hardware
    from producer.sizing import memory, plan_table

    machine = plan_machine(config)
    if machine is None:
        return None
    footprint, work = plan_table.TABLE_WORKLOADS[family][1:]
    footprint = replace(footprint, adapter_params=loras.plan_params(family, config))
    form = next((f for suffix, f in FORCED_FORMS.items() if has_lever(config, suffix)), "auto")
    return memory.plan_memory(hardware.from_sizes(*machine), footprint, work, weights=form,
                              max_resident_blocks=0 if has_lever(config, "-streamall") else None,
                              dequantize_on_arrival=has_lever(config, "-dequant"),
                              run_ahead=not has_lever(config, "-waitblocks"))


def _form(family: str, config: str) -> str:
    plan = _machine_plan(family, config)
    return plan.weights if plan else "bf16"


def _expected(family: str, config: str, encoding: bool = False) -> dict:
    """The full-size plan's own prediction, reported beside the measured peaks (planVxR configurations): the
    peaks of generating, the stages a generation run has (its prompts are embeddings, no text encoder runs),
    or with `encoding` (a text encoder run) the plan's whole peaks; and those whole peaks, which may be the
    text encoder's stage."""
    from producer.sizing import memory

    plan = _machine_plan(family, config)
    if plan is None:
        return {}
    machine = plan_machine(config)
    vram, ram = (plan.peak_vram, plan.peak_ram) if encoding else (plan.generating_vram, plan.generating_ram)
    return {"machine_gb": {"vram": machine[0], "ram": machine[1]}, "weights": plan.weights,
            "predicted_vram_gib": round(vram / GiB, 2), "predicted_ram_gib": round(ram / GiB, 2),
            # what the measured process itself should hold: the plan's RAM_RESERVE is for the OS as well as the
            # process's own base (torch, CUDA host state), which the measured peak includes
            "predicted_ram_process_gib": round((ram - memory.RAM_RESERVE) / GiB, 2),
            "plan_peak_gib": {"vram": round(plan.peak_vram / GiB, 2), "ram": round(plan.peak_ram / GiB, 2)},
            "plan_fits": plan.fits, "plan_dequantize_on_arrival": plan.dequantize_on_arrival,
            "plan_run_ahead": plan.run_ahead}


def _to_form(modules: list, form: str, dtype: torch.dtype) -> dict:
    """Bring denoisers built in bf16 into the plan's weight form: GGUF blocks with the published type maps
    (fullsize.quantize_like_gguf); fp8 storage is applied by the scripts' own offload.apply_plan. Returns the
    bytes of each GGML type, to compare with the published files."""
    if form not in fullsize.GGUF_FORMS:
        return {}
    sizes: dict[str, int] = {}
    for seed, module in enumerate(modules):
        for name, count in fullsize.quantize_like_gguf(module, form, dtype, seed)[1].items():
            sizes[name] = sizes.get(name, 0) + count
    return {"gguf_block_bytes": sizes}


def _footprint(family: str, modules: dict, size: str):
    from producer.sizing import memory

    base = memory.WAN_FOOTPRINT if family == "wan" else memory.QWEN_FOOTPRINT
    if size == "full":
        return base
    params = sum(p.numel() for p in modules["transformer"].parameters())
    return replace(base, denoiser_params=params, denoiser_blocks=len(modules["transformer"].blocks
                                                                     if family == "wan" else
                                                                     modules["transformer"].transformer_blocks),
                   text_encoder_params=1_000_000, vae_params=sum(p.numel() for p in modules["vae"].parameters()))


def _speed(config: str, device: str, placement: Placement):
    from producer.sizing import speed

    lever = LEVERS.get(config, {})
    chosen = speed.default_speed(device, placement, lever.get("compile", "auto"), lever.get("fp8_matmul", False),
                                 lever.get("attention"))
    if has_lever(config, "-compdq"):  # the plan with its GGUF dequantization compiled (`--compile on`)
        return replace(chosen, compile_dequantize=device == "cuda")
    return chosen


def _levers(modules, speed, device: str) -> list[str]:
    from producer.sizing.speed import apply_speed

    notes = []
    for module in modules:
        notes = apply_speed(module, speed, device)
    return notes


@contextmanager
def _pipeline_areas(areas):
    """The reference areas of the edit pipeline (module constants), as the session sets them."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    saved = edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE
    edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = areas.reference, areas.condition
    try:
        yield
    finally:
        edit_plus.VAE_IMAGE_SIZE, edit_plus.CONDITION_IMAGE_SIZE = saved


def _extrapolate(seconds: dict, names: tuple, steps: int, measured: int) -> dict:
    """Scale the denoise stages from `measured` steps to `steps` (stated in the result)."""
    if measured == steps:
        return seconds
    out = dict(seconds)
    for name in names:
        if name in out:
            out[name] = round(out[name] * steps / measured, 3)
    return out


def _steady_runs(generate, repeats: int, device: str):
    """Run `generate` `repeats` times: (first run's seconds, last run's seconds, last run's result)."""
    runs = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        out = generate()
        _sync(device)
        runs.append((time.perf_counter() - start, out))
    return runs[0][0], runs[-1][0], runs[-1][1]


def _scaled_seconds(stages: dict, total: float, denoise_stages: tuple, steps: int, measured: int) -> dict:
    """A session's stage seconds with denoising scaled to the whole schedule, and the total to match."""
    seconds = _extrapolate(dict(stages), denoise_stages, steps, measured)
    seconds["total"] = round(total + seconds.get("denoise", 0) - stages.get("denoise", 0), 3)
    return seconds


def _result(seconds: dict, cold: float, plan, extra: dict, steps: int, measured: int) -> dict:
    seconds = {k: round(v, 3) for k, v in seconds.items()}
    if plan is not None and plan.streamed_bytes:  # the speed model scales streamed runs by this share
        extra = {"resident_blocks": plan.resident_blocks, "streamed_share": round(plan.streamed_share, 4), **extra}
    return {"seconds": seconds, "cold_total": round(cold, 3), "plan": plan.summary() if plan else "diffusers defaults",
            "steps": steps, "measured_steps": measured, **extra}


# ---------------------------------------------------------------- Wan


def run_wan(args, workload: str, config: str, device: str) -> dict:
    from diffusers import WanImageToVideoPipeline
    from producer.engines.wan import wan
    from producer.facts import registry
    from producer.sizing import memory

    width, height, frames, steps, measured, cfg = _shape(args, workload)
    dtype = _dtype(args.size, device)
    form = _form("wan", config)
    parts = fullsize.wan_components(args.size, device, dtype, wide=form in fullsize.GGUF_FORMS)
    embeds = fullsize.wan_prompt_embeds(args.size, device, dtype)
    negative = fullsize.wan_prompt_embeds(args.size, device, dtype, seed=2) if cfg else None
    image = _keyframe(width, height)
    sampling = (registry.WAN.full if cfg else registry.WAN.distilled)
    sampling = replace(sampling, steps=measured)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=parts["vae"], scheduler=parts["scheduler"],
                                   transformer=parts["transformer"], transformer_2=parts["transformer_2"],
                                   boundary_ratio=registry.WAN.boundary_ratio)
    if config == "plain":
        return _wan_plain(pipe, image, embeds, negative, width, height, frames, sampling, steps, device, args.repeats)
    lora_specs = loras.session_specs(args, "wan", config, device, wide=form in fullsize.GGUF_FORMS)
    plan = _plan("wan", _footprint("wan", parts, args.size), memory.wan_workload(width, height, frames), config,
                 device)
    from_disk = bool(args.from_disk) and form in fullsize.GGUF_FORMS
    if from_disk:  # the session reads its own experts from files: the built ones go before anything is measured
        pipe.transformer = pipe.transformer_2 = parts["transformer"] = parts["transformer_2"] = None
        built = {}
    else:
        built = _to_form([pipe.transformer, pipe.transformer_2], form, dtype)
        for name in registry.WAN_DENOISERS:
            if plan.components[name].placement is not Placement.GPU:
                fullsize.move_to_host(getattr(pipe, name))
    _apply_cap(config, device)
    speed_choice = _speed(config, device, plan.components["transformer"].placement)
    before = None
    if speed_choice.fp8_matmul and not from_disk:
        before = _wan_probe(pipe.transformer, embeds, width, height, frames)
    notes = [] if from_disk else _levers([pipe.transformer, pipe.transformer_2], speed_choice, device)
    extra = {} if before is None else {"fp8_vs_bf16": fullsize.numerical_difference(
        _wan_probe(pipe.transformer, embeds, width, height, frames), before)}
    extra.update(built, **_expected("wan", config))
    if from_disk:
        session, disk = disk_session.session_from_disk(args, pipe, plan, form, device, speed_choice, lora_specs)
        extra.update(disk)
    else:
        session = wan.WanSession.from_components(pipe, plan, device, progress=False, lora_specs=lora_specs)
    job = wan.ClipJob(image=image, prompt="bench", width=width, height=height, frames=frames, sampling=sampling,
                      seed=0, negative_prompt="bench negative" if cfg else "")
    ramwatch.mark_session_stages(session, "wan")
    session._embeds[job.prompt_key] = (embeds, negative)  # the text encoder is bypassed (timed on its own)
    extra["peak_vram_before_decode_gib"] = _peak_before(session, "decode", device)
    with disk_session.reads_in_clips(device, plan, from_disk) as reads:
        cold, total, clip = _steady_runs(lambda: session.generate(job), args.repeats, device)
    if reads:  # where a clip's reads of its experts go (one expert in RAM), for the next lever
        extra["clip_read_stages_s"] = disk_session.per_clip(reads, clip.seconds, args.repeats)
    seconds = _scaled_seconds(clip.seconds, total, ("denoise", "high_expert", "low_expert"), steps, measured)
    experts = {k: {"steps": v.steps, "forwards": v.forwards} for k, v in clip.experts.items()}
    notes = session.speed_notes if from_disk else notes  # the session applied them to the experts it read
    extra.update(loras.reported(session.lora_reports))
    return _result(seconds, cold, plan, {"experts": experts, "decode": clip.decode, "speed": notes, **extra},
                   steps, measured)


def _wan_probe(transformer, embeds, width: int, height: int, frames: int) -> torch.Tensor:
    """One forward of the high-noise expert on fixed random latents, so that a lever that changes the numbers
    (fp8 matmuls) can be compared with bf16 on the same weights."""
    gen = torch.Generator("cpu").manual_seed(3)
    shape = (1, transformer.config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    latents = torch.randn(shape, generator=gen).to(embeds.device, embeds.dtype)
    timestep = torch.tensor([500.0], device=embeds.device)
    with torch.no_grad():
        return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds,
                           return_dict=False)[0].float()


def _wan_plain(pipe, image, embeds, negative, width, height, frames, sampling, steps, device, repeats) -> dict:
    pipe.to(device)
    timer = StageTimer(device)
    timer.watch(pipe.transformer, "high_expert")
    timer.watch(pipe.transformer_2, "low_expert")
    timer.watch(pipe.vae, "decode", "decode")
    pipe.set_progress_bar_config(disable=True)
    peak = _peak_before(pipe.vae, "decode", device)
    totals = []
    for _ in range(repeats):
        timer.seconds.clear()
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            pipe(image=image, prompt_embeds=embeds, negative_prompt_embeds=negative, height=height, width=width,
                 num_frames=frames, num_inference_steps=sampling.steps, guidance_scale=sampling.guidance,
                 guidance_scale_2=sampling.guidance_2, generator=torch.Generator("cpu").manual_seed(0),
                 output_type="np")
        _sync(device)
        totals.append(time.perf_counter() - start)
    seconds = _extrapolate(dict(timer.seconds), ("high_expert", "low_expert"), steps, sampling.steps)
    seconds["total"] = round(totals[-1] + sum(seconds[k] - timer.seconds[k] for k in ("high_expert", "low_expert")), 3)
    return _result(seconds, totals[0], None, {"peak_vram_before_decode_gib": peak}, steps, sampling.steps)


def _peak_before(owner, method: str, device: str) -> dict:
    """Record the peak reserved VRAM reached before each call of owner.method (the decode): with the peak of
    the whole run it tells whether denoising or decoding set it. Filled in as the runs go."""
    record = {}
    original = getattr(owner, method)

    def wrapped(*a, **k):
        if device == "cuda":
            record["gib"] = round(torch.cuda.max_memory_reserved() / GiB, 2)
        return original(*a, **k)

    setattr(owner, method, wrapped)
    return record


# ---------------------------------------------------------------- Wan's text encoder


def run_wan_text(args, workload: str, config: str, device: str) -> dict:
    """Encode one 512-token prompt with UMT5-XXL placed as the plan places it (on the GPU, or streamed from
    host RAM under the cap); the scripts encode every prompt of a batch this way, then free the encoder."""
    from producer.sizing import offload

    dtype = _dtype(args.size, device)
    encoder = fullsize.umt5_encoder(args.size, device, dtype)
    plan = _machine_plan("wan", config)
    placement = plan.text_encoder if plan else Placement.GPU
    gen = torch.Generator("cpu").manual_seed(0)
    ids = torch.randint(0, encoder.config.vocab_size, (1, fullsize.WAN_TEXT_TOKENS), generator=gen).to(device)

    def encode():
        with torch.no_grad():
            return encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state

    reference = encode().float().cpu()  # where it was built, to check that the placement changes nothing
    if placement is not Placement.GPU:
        fullsize.move_to_host(encoder)
    _apply_cap(config, device)
    offload.place_text_encoder(encoder, placement, torch.device(device))
    cold, total, out = _steady_runs(encode, args.repeats, device)
    extra = {"text_encoder": placement, "vs_unplaced": fullsize.numerical_difference(out.float().cpu(), reference),
             **_expected("wan", config, encoding=True)}
    return {"seconds": {"encode": round(total, 3), "total": round(total, 3)}, "cold_total": round(cold, 3),
            "plan": plan.summary() if plan else "on the GPU", "steps": 0, "measured_steps": 0, **extra}


# ---------------------------------------------------------------- Qwen


def run_qwen(args, workload: str, config: str, device: str) -> dict:
    from diffusers import QwenImageEditPlusPipeline
    from producer.engines.qwen import qwen
    from producer.sizing import memory

    width, height, refs, steps, measured, cfg = _shape(args, workload)
    dtype = _dtype(args.size, device)
    form = _form("qwen", config)
    parts = fullsize.qwen_components(args.size, device, dtype, wide=form in fullsize.GGUF_FORMS)
    embeds, mask = fullsize.qwen_prompt_embeds(args.size, refs, device, dtype)
    neg, neg_mask = fullsize.qwen_prompt_embeds(args.size, refs, device, dtype, seed=2) if cfg else (None, None)
    references = [_keyframe(width, height, seed=i) for i in range(refs)]
    pipe = QwenImageEditPlusPipeline(scheduler=parts["scheduler"], vae=parts["vae"], text_encoder=None,
                                     tokenizer=None, processor=None, transformer=parts["transformer"])
    areas = qwen.Areas(reference=64 * 64, condition=32 * 32) if args.size == "tiny" else qwen.Areas()
    if config == "plain":
        return _qwen_plain(pipe, references, embeds, mask, neg, neg_mask, width, height, measured, steps, cfg,
                           device, args.repeats, areas)
    lora_specs = loras.session_specs(args, "qwen", config, device, wide=form in fullsize.GGUF_FORMS)
    plan = _plan("qwen", _footprint("qwen", parts, args.size), memory.qwen_workload(width, height, refs), config,
                 device)
    built = _to_form([pipe.transformer], form, dtype)
    if plan.components["transformer"].placement is not Placement.GPU:
        fullsize.move_to_host(pipe.transformer)
    _apply_cap(config, device)
    notes = _levers([pipe.transformer], _speed(config, device, plan.components["transformer"].placement), device)
    session = qwen.QwenSession.from_components(pipe, plan, device, areas, quiet=True)
    session.use_loras(lora_specs, fuse=True)
    job = qwen.QwenJob(prompt="bench", width=width, height=height, steps=measured, cfg=4.0 if cfg else 1.0, seed=0,
                       negative_prompt="bench negative" if cfg else None, references=references,
                       embeds=qwen.Embeds(embeds, mask, neg, neg_mask))
    ramwatch.mark_session_stages(session, "qwen")
    cold, total, generated = _steady_runs(lambda: session.generate(job), args.repeats, device)
    seconds = _scaled_seconds(generated.seconds, total, ("denoise",), steps, measured)
    extra = {"speed": notes, **built, **_expected("qwen", config), **loras.reported(session.lora_report)}
    return _result(seconds, cold, plan, extra, steps, measured)


def _qwen_plain(pipe, references, embeds, mask, neg, neg_mask, width, height, measured, steps, cfg, device,
                repeats, areas) -> dict:

    pipe.to(device)
    timer = StageTimer(device)
    timer.watch(pipe.transformer, "denoise")
    timer.watch(pipe.vae, "decode", "decode")
    pipe.set_progress_bar_config(disable=True)
    totals = []
    with _pipeline_areas(areas):
        for _ in range(repeats):
            timer.seconds.clear()
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                pipe(image=references, prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt_embeds=neg,
                     negative_prompt_embeds_mask=neg_mask, true_cfg_scale=4.0 if cfg else 1.0, height=height,
                     width=width, num_inference_steps=measured, generator=torch.Generator("cpu").manual_seed(0))
            _sync(device)
            totals.append(time.perf_counter() - start)
    seconds = _extrapolate(dict(timer.seconds), ("denoise",), steps, measured)
    seconds["total"] = round(totals[-1] + seconds["denoise"] - timer.seconds["denoise"], 3)
    return _result(seconds, totals[0], None, {}, steps, measured)
