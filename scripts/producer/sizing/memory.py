"""The memory plan: one pure function from (hardware, model, workload, overrides) to a plan.

Nothing here touches torch or the disk, so the plan can be computed for any machine (the plan table in
docs/memory-plan.md, `setup_diffusers.py --check`) and unit-tested as a table. `offload.apply_plan`
carries a plan out on a loaded pipeline.

Vocabulary
- placement of a component: a `Placement` (producer.sizing.placement, which also owns the --offload values and
  the plan names): `gpu` (resident), `model_offload` (moved to the GPU whole while it runs), `group_offload`
  (block by block, prefetched on a CUDA stream), `sequential` (layer by layer, no prefetch: the last resort),
  `cpu` (runs on the CPU).
- weights of a denoiser: `bf16`, `fp8` (fp8 storage, bf16 compute: diffusers layerwise casting),
  `gguf-q8`, `gguf-q4` (GGUF files, dequantised per layer), `fp32` (tiny models on a CPU).
- experts_in_ram (Wan): 2 keeps both experts in host RAM; 1 reloads each from disk at its turn.
- resident_blocks: under group offload, how many transformer blocks of each denoiser stay on the GPU (the
  VRAM the working memory leaves, see RESIDENT_FILL); only the others cross the host link at every forward.
- dequantize_on_arrival (opt-in, GGUF under group offload): each streamed block is dequantized to the compute
  dtype on the copy stream as it arrives, beside the previous block's compute, instead of inside every
  linear layer; the blocks in flight then also hold their bf16 form.
- run_ahead (on by default under group offload with streams, where one more block fits): the host no longer
  waits for the GPU at every streamed block (producer.sizing.run_ahead); one more block is then in flight
  (RUN_AHEAD_BLOCKS). A streamed forward then costs 1.00x (Wan Q4) and 1.02x (Qwen Q8) of the same weights held
  on the card, against 1.05x and 1.45x waiting; Qwen's output equalled the held one's exactly (Wan's run-ahead
  form was not compared) (H100, bench/results/2026-12-07-h100-evening).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from producer.facts import registry
from producer.facts.hardware import GiB, Hardware
from producer.sizing.placement import AUTO, FRUGALITY, OFFLOAD_CHOICES, Placement

__all__ = ["OFFLOAD_CHOICES", "Placement"]  # re-exported: the --offload choices and the placement type
WEIGHT_CHOICES = ("auto", "bf16", "fp8", "gguf-q8", "gguf-q4")

# Bytes per parameter of each weight form. GGUF figures are file size / parameters of the published
# files (Wan Q4_K_M 9.65 GB and Qwen Q4_K_M 13.2 GB mix 4- and 6-bit blocks; Q8_0 is 8.5 bits).
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0, "gguf-q8": 1.066, "gguf-q4": 0.67}
# Which forms trade quality for memory, best first. GGUF Q8_0 keeps a scale per 32 weights, so it is
# closer to bf16 than plain fp8 storage (diffusers casts without a scale); fp8 needs no extra download.
QUALITY_ORDER = ("bf16", "gguf-q8", "fp8", "gguf-q4")

RAM_RESERVE = 4 * GiB  # OS, Python, torch and CUDA host state
VRAM_RESERVE = int(0.8 * GiB)  # CUDA context and allocator fragmentation
BLOCKS_IN_FLIGHT = 2  # group offload with streams holds the running block and the prefetched one
RUN_AHEAD_BLOCKS = 1  # run_ahead: also the block before, whose kernels may not have run yet
# One Wan expert in RAM: a batch makes up to this many clips expert by expert, reading each expert once for
# them (producer.engines.wan.halfway; what waits between the halves is counted below).
CLIPS_PER_EXPERT_READ = 8
# What one clip keeps in host memory between its halves, a token (float32): its latents (64 values a token:
# 16 channels at the 1x2x2 patch), the image condition (80: 20 channels) and a multistep scheduler's history
# (up to 3 latents more): 336 values, ~100 MB a 720p clip.
HALFWAY_BYTES_PER_TOKEN = 336 * 4
TEXT_ENCODER_ACTIVATIONS = int(0.5 * GiB)
LOAD_OVERHEAD = int(1.5 * GiB)  # a safetensors shard being read while loading
# Partial residency fills the card with whole blocks up to this share of the plan's VRAM budget (card minus
# VRAM_RESERVE), so that a working-memory estimate 10% low still fits: the issue-16 tolerance between a
# measured peak and its prediction. Measured at 10 GiB before residency: Qwen Q8 streamed reserved 5.37 GiB
# against 5.6 predicted (bench/results/2026-12-06-h200/g2), a Wan Q4 clip 6.47-6.53 GiB against 7.02
# (bench/results/2026-12-05-h100/g1, 2026-12-06-h100/g3).
RESIDENT_FILL = 0.9


@dataclass(frozen=True)
class ModelFootprint:
    """Sizes of one model family's components, as parameter counts (weights form applied later)."""

    family: str  # "wan" or "qwen"
    denoisers: tuple[str, ...]  # ("transformer", "transformer_2") for Wan
    denoiser_params: int  # each
    denoiser_blocks: int
    hidden: int  # transformer width, for activation estimates
    activation_factor: int  # bytes per token = hidden * 2 * factor (fit to measurements, see below)
    text_encoder_params: int
    vae_params: int
    vae_bytes_per_pixel: int  # untiled decode peak per output pixel (per frame for video)
    vae_tiled_bytes: int  # tiled decode peak
    adapter_params: int = 0  # each denoiser's LoRA factors, kept beside GGUF weights (folded_lora) in bf16


# Activation factors, fitted to the peak *reserved* VRAM measured by bench/benchmark.py on an H200
# (docs/performance.md), which is what a card must hold: Wan at 832x480x81 (32,760 tokens) reserved 8.26
# GiB under a 10 GiB cap with group offload (expandable segments) and 62.65 GiB resident, ~6.7-9.5 GiB
# above the weights in flight: ~20 hidden-state copies. Qwen at 1024^2 with one reference (8,704 tokens)
# reserved 43.28 GiB resident and 6.49 GiB streamed, ~4.8 GiB above the weights: ~90 copies of its
# narrower state (three references reserved the same, so the estimate is cautious for them).
WAN_FOOTPRINT = ModelFootprint(
    family="wan", denoisers=registry.WAN_DENOISERS, denoiser_params=registry.WAN_EXPERT_PARAMS,
    denoiser_blocks=registry.WAN_EXPERT_LAYERS, hidden=5120, activation_factor=20,
    text_encoder_params=registry.WAN_TEXT_ENCODER_PARAMS, vae_params=registry.WAN_VAE_PARAMS,
    vae_bytes_per_pixel=6000, vae_tiled_bytes=int(1.5 * GiB))
QWEN_FOOTPRINT = ModelFootprint(
    family="qwen", denoisers=("transformer",), denoiser_params=registry.QWEN_TRANSFORMER_PARAMS,
    denoiser_blocks=registry.QWEN_TRANSFORMER_LAYERS, hidden=3072, activation_factor=90,
    text_encoder_params=registry.QWEN_TEXT_ENCODER_PARAMS, vae_params=registry.QWEN_VAE_PARAMS,
    vae_bytes_per_pixel=2500, vae_tiled_bytes=int(1.0 * GiB))


@dataclass(frozen=True)
class Workload:
    tokens: int  # sequence length of one denoiser forward
    decode_pixels: int  # pixels of one decoded frame


def wan_workload(width: int, height: int, frames: int) -> Workload:
    latent_frames = (frames - 1) // registry.WAN.frame_multiple + 1
    return Workload(tokens=latent_frames * (height // 16) * (width // 16), decode_pixels=width * height)


def qwen_workload(width: int, height: int, references: int) -> Workload:
    # Each reference enters as ~1024^2 of latent tokens whatever the output size; text adds a few hundred.
    target = (height // 16) * (width // 16)
    return Workload(tokens=target + references * 4096 + 512, decode_pixels=width * height)


@dataclass(frozen=True)
class ComponentPlan:
    placement: Placement
    weights: str = "bf16"

    def __str__(self) -> str:
        return f"{self.placement} ({self.weights})"


@dataclass(frozen=True)
class MemoryPlan:
    name: str  # resident | expert-swap | model-offload | group-offload | sequential | cpu
    device: str
    dtype: str  # compute dtype: bfloat16 on accelerators and for real models on a CPU
    components: dict[str, ComponentPlan]
    weights: str  # form of the denoiser weights (bf16, fp8, gguf-q8, gguf-q4, fp32)
    experts_in_ram: int
    vae_tiling: bool
    text_encoder: Placement  # where prompts are encoded: gpu | group_offload | cpu (freed once they are encoded)
    peak_vram: int
    peak_ram: int
    fits: bool
    reason: str
    advice: str = ""  # what to change when it does not fit
    notes: tuple[str, ...] = field(default_factory=tuple)
    resident_blocks: int = 0  # group offload: blocks of each denoiser kept on the GPU, the rest streamed
    blocks: int = 0  # transformer blocks of each denoiser
    streamed_bytes: int = 0  # weights of one denoiser that cross the host link at every forward
    dequantize_on_arrival: bool = False  # GGUF streamed blocks dequantized on the copy stream as they arrive
    run_ahead: bool = False  # streamed blocks without the host's wait at each (producer.sizing.run_ahead)
    adapter_params: int = 0  # each denoiser's LoRA factors the plan counts (ModelFootprint.adapter_params)
    # The peaks of generating alone (denoise and decode, the text encoder freed): what a run that bypasses the
    # text encoder (the benchmark's) is compared with; the peaks above may be the encode stage's.
    generating_vram: int = 0
    generating_ram: int = 0

    @property
    def placement(self) -> Placement:
        """Where the denoisers live (the plan's name says the same: `Placement.of_plan`)."""
        return next(c.placement for name, c in self.components.items() if name.startswith("transformer"))

    @property
    def streamed_share(self) -> float:
        """The share of each denoiser's blocks that cross the host link at every forward (1.0 with none resident)."""
        return 1.0 - self.resident_blocks / self.blocks if self.blocks else 1.0

    def summary(self) -> str:
        parts = [f"plan {self.name}", f"weights {self.weights}"]
        if self.experts_in_ram == 1 and "transformer_2" in self.components:
            parts.append("one expert in RAM at a time")
        if self.resident_blocks:
            parts.append(f"{self.resident_blocks} of {self.blocks} blocks resident")
        if self.dequantize_on_arrival:
            parts.append("dequantized on arrival")
        if self.run_ahead:
            parts.append("host runs ahead")
        parts.append("VAE tiled" if self.vae_tiling else "VAE untiled")
        parts.append(f"peak ~{self.peak_vram / GiB:.1f} GiB VRAM, ~{self.peak_ram / GiB:.1f} GiB RAM")
        return ", ".join(parts) + f": {self.reason}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["components"] = {k: str(v) for k, v in self.components.items()}
        d["peak_vram_gib"] = round(self.peak_vram / GiB, 2)
        d["peak_ram_gib"] = round(self.peak_ram / GiB, 2)
        d["generating_gib"] = {"vram": round(self.generating_vram / GiB, 2), "ram": round(self.generating_ram / GiB, 2)}
        d["streamed_gib_per_forward"] = round(self.streamed_bytes / GiB, 2)
        d["summary"] = self.summary()
        return d


def _bytes(params: int, weights: str) -> int:
    return int(params * BYTES_PER_PARAM[weights])


def denoiser_bytes(model: ModelFootprint, weights: str) -> int:
    """One denoiser's weights in this form, with the LoRA factors that GGUF weights keep (bf16 ones fuse them)."""
    return _bytes(model.denoiser_params, weights) + (2 * model.adapter_params if weights.startswith("gguf") else 0)


def activation_bytes(model: ModelFootprint, work: Workload) -> int:
    return work.tokens * model.hidden * 2 * model.activation_factor


def decode_bytes(model: ModelFootprint, work: Workload, tiled: bool) -> int:
    return model.vae_tiled_bytes if tiled else work.decode_pixels * model.vae_bytes_per_pixel


def _denoise_vram(model: ModelFootprint, place: Placement, weights: str, act: int) -> int:
    """VRAM held while denoising, for one placement of the denoisers."""
    one = denoiser_bytes(model, weights)
    vae = _bytes(model.vae_params, "bf16")
    if place is Placement.GPU:
        return len(model.denoisers) * one + act + vae
    if place is Placement.MODEL_OFFLOAD:
        return one + act + vae
    block = one // model.denoiser_blocks
    if place is Placement.GROUP_OFFLOAD:
        # Embeddings, norms and the head stay outside the blocks: ~1% of the weights.
        return BLOCKS_IN_FLIGHT * block + one // 100 + act + vae
    # sequential: layer by layer; the largest layer is an FFN matrix (~1/6 of a block)
    return block // 6 + one // 100 + act + vae


def block_bytes(model: ModelFootprint, weights: str) -> int:
    """One transformer block of a denoiser in this weight form (the blocks hold ~99% of the weights)."""
    return denoiser_bytes(model, weights) // model.denoiser_blocks


def resident_blocks(model: ModelFootprint, weights: str, working: int, vram_budget: int,
                    limit: int | None = None) -> int:
    """Blocks of each streamed denoiser to keep on the GPU: whole blocks in the room that the plan's working
    memory (`working`: the larger of the streamed denoise peak and the decode) leaves under RESIDENT_FILL of the
    budget, shared by the denoisers (Wan's two experts are placed together), at least one block still streamed.
    Each resident block is a block's bytes that no longer cross the host link at every forward. `limit`
    caps the count (0: stream every block)."""
    room = int(RESIDENT_FILL * vram_budget) - working
    if room <= 0:
        return 0
    per_denoiser = room // block_bytes(model, weights) // len(model.denoisers)
    count = min(per_denoiser, model.denoiser_blocks - 1)
    return count if limit is None else min(count, limit)


def _text_on_gpu(model: ModelFootprint, budget: int) -> bool:
    """Prompts are encoded first and the encoder freed before the denoisers load, so it only has to fit alone."""
    return _bytes(model.text_encoder_params, "bf16") + TEXT_ENCODER_ACTIVATIONS <= budget


def _host_ram(model: ModelFootprint, place: Placement, weights: str, experts_in_ram: int, text_on_gpu: bool,
              work: Workload, resident: int = 0) -> int:
    """Peak host RAM: the larger of the encode stage (text encoder) and the denoise stage."""
    return max(_host_ram_stages(model, place, weights, experts_in_ram, text_on_gpu, work, resident))


def _host_ram_stages(model: ModelFootprint, place: Placement, weights: str, experts_in_ram: int, text_on_gpu: bool,
                     work: Workload, resident: int = 0) -> tuple[int, int]:
    """Host RAM of (the encode stage, the denoise stage). With one expert of several in RAM, a batch also keeps
    the clips of a group between their halves (engines/wan/halfway.py). `resident`: bytes of each streamed
    denoiser's blocks kept on the GPU, which leave host RAM once placed; the last denoiser read still holds
    them until it is placed (each is placed as soon as it is read)."""
    one = denoiser_bytes(model, weights)
    waiting = CLIPS_PER_EXPERT_READ * HALFWAY_BYTES_PER_TOKEN * work.tokens if experts_in_ram < len(model.denoisers) else 0
    # An encoder that fits the GPU loads straight onto it; one that streams from RAM is held there.
    text = LOAD_OVERHEAD if text_on_gpu else _bytes(model.text_encoder_params, "bf16")
    if place is Placement.GPU:
        # Loaded straight onto the GPU; GGUF and fp8 pass through the host one denoiser at a time.
        held = 0 if weights == "bf16" else one
    else:
        held = experts_in_ram * (one - resident) + resident
    if weights == "fp8":
        # fp8 storage is made from the bf16 files: one denoiser exists in bf16 while it is cast.
        held += _bytes(model.denoiser_params, "bf16") - one
    return text + RAM_RESERVE, held + waiting + LOAD_OVERHEAD + RAM_RESERVE


def _candidates(model: ModelFootprint, offload: str, weights: str, installed: frozenset[str] | None):
    """(experts_in_ram, form, placement of the denoisers) in order of preference.

    Both experts in RAM before one (a disk reload per clip is slow); then best quality first; then the
    fastest offload. Sequential offload comes only after every form failed without it.

    With both experts in RAM, streaming them (group offload from page-locked memory) comes before swapping
    whole experts onto the card: measured on one H100 (bench/results/2026-12-05-h100), GGUF Q4 experts
    streamed took 19.84 s a 480p clip (1.14x resident bf16) and swapped 23.55 s (1.36x), since a swap
    moves a whole expert twice a clip and cannot overlap it with compute. An expert alone in RAM is read
    from disk at its turn anyway; it then lives on the card whole if it fits (expert-swap).
    """
    n = len(model.denoisers)
    forms = QUALITY_ORDER if weights == "auto" else (weights,)
    if installed is not None and weights == "auto":
        forms = tuple(f for f in forms if f in installed) or forms
    for offloads in _offload_tiers(offload, n):
        for experts in ((n, 1) if n > 1 else (1,)):
            for form in forms:
                for off in (offloads if experts == n else _swap_first(offloads)):
                    if off is Placement.GPU and experts < n:
                        continue  # resident weights are all loaded; RAM holds none of them
                    yield experts, form, off


def _offload_tiers(offload: str, denoisers: int) -> tuple[tuple[Placement, ...], ...]:
    """The placements to try, fastest first, in two rounds (sequential only when all else failed)."""
    if offload != AUTO:
        return ((Placement.of_offload(offload),),)
    gpu, model, group = Placement.GPU, Placement.MODEL_OFFLOAD, Placement.GROUP_OFFLOAD
    return ((gpu, group, model) if denoisers > 1 else (gpu, group)), (Placement.SEQUENTIAL,)


def _swap_first(offloads: tuple[Placement, ...]) -> tuple[Placement, ...]:
    """One expert in RAM: a whole expert on the card (it is read from disk at its turn) before streaming."""
    return tuple(sorted(offloads, key=lambda off: off is not Placement.MODEL_OFFLOAD))


def plan_memory(hw: Hardware, model: ModelFootprint, work: Workload, offload: str = "auto",
                weights: str = "auto", installed: frozenset[str] | None = None,
                max_resident_blocks: int | None = None, dequantize_on_arrival: bool = False,
                run_ahead: bool = True) -> MemoryPlan:
    """Choose where every component lives and in what form. Pure: same inputs, same plan.

    `installed` narrows automatic weight choices to the forms present on disk (None: any form, which is
    what `setup_diffusers.py` asks when deciding what to download). `max_resident_blocks` caps the blocks a
    group-offload plan keeps on the GPU (None: as many as fit, see `resident_blocks`, except under an explicit
    `offload="group"`, which streams every block: the frugal form an out-of-memory retry asks for; 0: none).
    `dequantize_on_arrival` asks for that lever (GGUF weights streamed; taken only where its VRAM fits under
    RESIDENT_FILL of the budget, before resident blocks are counted); `run_ahead` likewise (streamed on a GPU), on
    unless the caller turns it off (the benchmark's `-waitblocks`).
    """
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload must be one of {OFFLOAD_CHOICES}, not {offload!r}")
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, not {weights!r}")
    if not hw.has_gpu:
        return _cpu_plan(hw, model, weights)
    if max_resident_blocks is None and offload == Placement.GROUP_OFFLOAD.offload:
        max_resident_blocks = 0

    act = activation_bytes(model, work)
    vram_budget = hw.vram_total - VRAM_RESERVE
    text_gpu = _text_on_gpu(model, vram_budget)
    failed = []
    for rank, (experts, form, off) in enumerate(_candidates(model, offload, weights, installed)):
        vram_ok = _denoise_vram(model, off, form, act) <= vram_budget
        ram = _host_ram(model, off, form, experts, text_gpu, work)
        if vram_ok and ram <= hw.ram_total:
            return _build_plan(hw, model, work, experts, form, off, True, True, max_resident_blocks,
                               (dequantize_on_arrival, run_ahead))
        failed.append((not vram_ok, ram, rank, (experts, form, off, vram_ok, False)))
    # Nothing fits: describe the candidate that comes closest (fits the GPU, least RAM, fastest).
    experts, form, off, vram_ok, ram_ok = min(failed)[3]
    ram_ok = _host_ram(model, off, form, experts, text_gpu, work) <= hw.ram_total
    return _build_plan(hw, model, work, experts, form, off, vram_ok, ram_ok, max_resident_blocks,
                       (dequantize_on_arrival, run_ahead))


def _build_plan(hw, model, work, experts, form, off, vram_ok, ram_ok, max_resident=None,
                levers=(False, False)) -> MemoryPlan:
    act = activation_bytes(model, work)
    vram_budget = hw.vram_total - VRAM_RESERVE
    denoise_vram = _denoise_vram(model, off, form, act)
    text_placement = Placement.GPU if _text_on_gpu(model, vram_budget) else Placement.GROUP_OFFLOAD
    resident = denoise_vram - act if off is Placement.GPU else 0
    tiled = resident + decode_bytes(model, work, tiled=False) > vram_budget
    decode_vram = resident + decode_bytes(model, work, tiled)
    kept, one = 0, denoiser_bytes(model, form)
    notes = []
    # What the optional levers may fill: the budget, or less where other programs (a desktop) already hold
    # part of the card; what the streamed plan itself needs is checked against the card as before.
    room_budget = min(vram_budget, hw.vram_free) if hw.vram_free else vram_budget
    # The levers, each taken only where its VRAM fits: dequantizing on arrival (opt-in; the blocks in flight
    # also hold their bf16 form, counted whole for both, a little cautious), then running ahead (the default; one
    # more block, in its bf16 form too when dequantized on arrival).
    limit, streamed_plan = RESIDENT_FILL * room_budget, off is Placement.GROUP_OFFLOAD
    extra = BLOCKS_IN_FLIGHT * block_bytes(model, "bf16")
    dequantize = _lever(levers[0] and streamed_plan and form.startswith("gguf"), denoise_vram + extra <= limit, notes,
                        "no VRAM to dequantize streamed blocks on arrival: dequantized in each layer")
    denoise_vram += extra if dequantize else 0
    extra = RUN_AHEAD_BLOCKS * (block_bytes(model, form) + (block_bytes(model, "bf16") if dequantize else 0))
    run_ahead = _lever(levers[1] and streamed_plan, denoise_vram + extra <= limit, notes,
                       "no VRAM for the host to run ahead of streamed blocks: it waits at each")
    denoise_vram += extra if run_ahead else 0
    if off is Placement.GROUP_OFFLOAD and vram_ok:
        # Partial residency: whole blocks fill what the streamed denoise and the decode leave; they stay on
        # the card through the decode too, so both stages grow by them.
        kept = resident_blocks(model, form, max(denoise_vram, decode_vram), room_budget, max_resident)
        denoise_vram += kept * len(model.denoisers) * block_bytes(model, form)
        decode_vram += kept * len(model.denoisers) * block_bytes(model, form)
    streamed = one - kept * block_bytes(model, form) if off.streams else 0
    text = _bytes(model.text_encoder_params, "bf16")
    encode_vram = (text if text_placement is Placement.GPU else text // 10) + TEXT_ENCODER_ACTIVATIONS
    peak_vram = max(denoise_vram, decode_vram, encode_vram)
    # Chosen counting every weight in RAM; the peak then leaves out the blocks kept on the card.
    encode_ram, denoise_ram = _host_ram_stages(model, off, form, experts, text_placement is Placement.GPU, work,
                                               kept * block_bytes(model, form))
    peak_ram = max(encode_ram, denoise_ram)
    fits = vram_ok and ram_ok

    if experts == 1 and len(model.denoisers) > 1:
        notes.append("each expert is read from disk at its turn (RAM cannot hold both)")
    if form == "fp8":
        notes.append("fp8 weight storage: small numerical change against bf16")
    name = off.plan_name(len(model.denoisers))
    components = {d: ComponentPlan(off, form) for d in model.denoisers}
    components["text_encoder"] = ComponentPlan(text_placement, "bf16")
    components["vae"] = ComponentPlan(Placement.GPU, "bf16")
    return MemoryPlan(name=name, device=hw.device, dtype="bfloat16", components=components, weights=form,
                      experts_in_ram=experts, vae_tiling=tiled, text_encoder=text_placement,
                      peak_vram=int(peak_vram), peak_ram=int(peak_ram), fits=fits,
                      reason=_reason(hw, model, off, form, act, fits, vram_ok, ram_ok, streamed),
                      advice="" if fits else _advice(model, vram_ok, ram_ok, peak_ram), notes=tuple(notes),
                      resident_blocks=kept, blocks=model.denoiser_blocks, streamed_bytes=int(streamed),
                      dequantize_on_arrival=dequantize, run_ahead=run_ahead, adapter_params=model.adapter_params,
                      generating_vram=int(max(denoise_vram, decode_vram)), generating_ram=int(denoise_ram))


def _lever(asked: bool, fits: bool, notes: list, refused: str) -> bool:
    """Whether an opt-in lever that applies to this plan is taken; `refused` goes into the notes when it does
    not fit."""
    if asked and not fits:
        notes.append(refused)
    return asked and fits


def _cpu_plan(hw: Hardware, model: ModelFootprint, weights: str) -> MemoryPlan:
    total = len(model.denoisers) * model.denoiser_params + model.text_encoder_params + model.vae_params
    # Small models (the test stand-ins) run in fp32 on a CPU, where bf16 kernels are patchy; real ones in bf16.
    dtype, form = ("float32", "fp32") if total * 4 <= hw.ram_total // 4 else ("bfloat16", "bf16")
    if weights not in ("auto", "bf16") and form != "fp32":
        form = weights
    need = max(_bytes(model.text_encoder_params, "bf16"),
               len(model.denoisers) * denoiser_bytes(model, form)) + RAM_RESERVE
    if form == "fp32":
        need = total * 4 + RAM_RESERVE // 4
    fits = need <= hw.ram_total
    components = {d: ComponentPlan(Placement.CPU, form) for d in model.denoisers}
    components["text_encoder"] = ComponentPlan(Placement.CPU, "bf16" if form != "fp32" else "fp32")
    components["vae"] = ComponentPlan(Placement.CPU, "bf16" if form != "fp32" else "fp32")
    reason = "no GPU: everything runs on the CPU" + ("" if form == "fp32" else " (hours per item with the real models)")
    return MemoryPlan(name=Placement.CPU.plan, device="cpu", dtype=dtype, components=components, weights=form,
                      experts_in_ram=len(model.denoisers), vae_tiling=False, text_encoder=Placement.CPU, peak_vram=0,
                      peak_ram=int(need), fits=fits, reason=reason, generating_ram=int(need),
                      advice="" if fits else f"needs ~{need / GiB:.0f} GiB of RAM; use a machine with a GPU")


def _reason(hw, model, off, form, act, fits, vram_ok, ram_ok, streamed=0) -> str:
    card = f"{hw.vram_total / GiB:.0f} GiB GPU, {hw.ram_total / GiB:.0f} GiB RAM"
    one = denoiser_bytes(model, form) / GiB
    part = f"{streamed / GiB:.1f} of " if streamed and streamed < one * GiB else ""
    name = off.plan_name(len(model.denoisers))
    what = {
        Placement.GPU: f"all weights stay on the GPU ({len(model.denoisers)} x {one:.1f} GiB {form})",
        Placement.MODEL_OFFLOAD: f"one {one:.1f} GiB expert on the GPU at a time, swapped at the boundary"
                                 if len(model.denoisers) > 1 else
                                 f"the {one:.1f} GiB transformer moves to the GPU for denoising only",
        Placement.GROUP_OFFLOAD: f"{part}{one:.1f} GiB {form} weights stream block by block from RAM "
                                 f"({act / GiB:.1f} GiB activations)",
        Placement.SEQUENTIAL: "layer-by-layer offload (slow): nothing else fits",
    }[off]
    if fits:
        return f"{card}: {what}"
    lacking = [x for x, ok in (("VRAM", vram_ok), ("RAM", ram_ok)) if not ok]
    return f"{card}: does not fit ({' and '.join(lacking)}) even with {name}"


def _advice(model: ModelFootprint, vram_ok: bool, ram_ok: bool, peak_ram: int) -> str:
    tips = []
    if not vram_ok:
        tips.append("use a smaller size (e.g. --preset 480p or fewer frames)" if model.family == "wan"
                    else "use a smaller --size or fewer references")
    if not ram_ok:
        tips.append(f"free RAM or use a machine with >= {peak_ram / GiB:.0f} GiB (GGUF Q4 weights need the least: "
                    "setup_diffusers.py --download)")
    return "; ".join(tips)


def next_offload(plan: MemoryPlan) -> str | None:
    """The next more frugal --offload value after an out-of-memory error, or None at the end of the line (a
    sequential plan, or one on the CPU). A group-offload plan that keeps blocks on the card goes to `group`
    first: every block streamed."""
    current = plan.placement
    if current is Placement.GROUP_OFFLOAD and plan.resident_blocks:
        return current.offload
    i = FRUGALITY.index(current) + 1 if current in FRUGALITY else len(FRUGALITY)
    return FRUGALITY[i].offload if i < len(FRUGALITY) else None


def with_tiling(plan: MemoryPlan) -> MemoryPlan:
    return replace(plan, vae_tiling=True)
