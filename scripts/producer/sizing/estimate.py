"""Predicted seconds of one image or clip on this machine, from the benchmark's measured speeds.

The speeds are data, not constants: `data/speed-model.json` holds seconds per denoiser forward, per decode
and per load for each plan the benchmark measured (placement, weight form, levers, tokens, CFG), with the
GPU each was measured on; `bench/speedmodel.py` regenerates it from the results in bench/results/ and a test
keeps the two equal. `data/gpus.json` holds the known GPUs' bf16 TFLOP/s, memory GB/s and host link, each
with its public source.

How a measured figure is carried to another item and another machine (the assumptions, also written in the
data file):
- tokens: a forward costs a*t + b*t^2 seconds for t tokens (linear layers + attention), the curve fitted per
  family to resident runs at two sizes; an entry is scaled by curve(t) / curve(t_measured).
- steps: the forwards of a schedule are steps x (2 with CFG); decode scales with output pixels.
- GPU: time x ((1 - w) x TFLOP/s ratio + w x bandwidth ratio), w the bandwidth share fitted by the generator
  from the same runs on two cards of equal compute and unequal bandwidth (H100 and H200).
- host link: a plan that streams weights each forward can go no faster than its bytes over this machine's
  PCIe link (gen x lanes, at the efficiency measured on the link-bound run). Only the streamed blocks count:
  a plan that keeps some blocks resident (`plan.resident_blocks`) moves `plan.streamed_bytes` a forward.
- partial residency: a streaming plan's measured forward is carried to another share of streamed blocks
  block by block: a resident block costs what it costs in the resident plan, a streamed one what it cost
  streamed in the measured run (its `streamed_share`, 1.0 for runs made before residency).
Pure: nothing here touches torch or the disk beyond reading the two data files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from producer.facts.hardware import Hardware
from producer.sizing import memory
from producer.sizing.placement import Placement

DATA = Path(__file__).resolve().parents[1] / "data"  # scripts/producer/data
SPEED_MODEL = DATA / "speed-model.json"
GPUS = DATA / "gpus.json"
# GB/s per lane and direction after line encoding (PCI-SIG base specifications: 2.5, 5, 8, 16, 32, 64 GT/s).
PCIE_LANE_GB_S = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.877}
RESIDENT = Placement.GPU.plan  # the plan every other one is measured against
NO_GPU = "the speed model covers NVIDIA GPUs only; without one expect hours per item with the real models"
FOOTPRINTS = {"wan": memory.WAN_FOOTPRINT, "qwen": memory.QWEN_FOOTPRINT}


@lru_cache(maxsize=4)
def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def speed_model() -> dict:
    return load_json(SPEED_MODEL)


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float
    gb_per_s: float
    link: tuple[int, int]  # (PCIe generation, lanes)
    known: bool
    source: str

    def to_dict(self) -> dict:
        return asdict(self)


def gpu_spec(name: str | None, table: dict | None = None) -> Gpu:
    """The table's entry for a device name (torch's), or the stated conservative guess."""
    table = table or load_json(GPUS)
    lowered = (name or "").lower()
    for g in table["gpus"]:
        if any(m.lower() in lowered for m in g["match"]):
            return Gpu(g["name"], g["bf16_tflops"], g["gb_per_s"], tuple(g["link"]), True, g["source"])
    u = table["unknown"]
    return Gpu(u["name"], u["bf16_tflops"], u["gb_per_s"], tuple(u["link"]), False, u["source"])


def link_gb_s(link: tuple[int, int], efficiency: float) -> float:
    gen, lanes = link
    return PCIE_LANE_GB_S.get(gen, PCIE_LANE_GB_S[3]) * lanes * efficiency


@dataclass(frozen=True)
class Item:
    """One image (qwen) or clip (wan) as the speed model sees it."""

    family: str
    width: int
    height: int
    steps: int
    cfg: bool
    frames: int = 1  # wan
    references: int = 0  # qwen: pictures given to the edit

    @property
    def tokens(self) -> int:
        if self.family == "wan":
            return memory.wan_workload(self.width, self.height, self.frames).tokens
        return memory.qwen_workload(self.width, self.height, self.references).tokens

    @property
    def forwards(self) -> int:
        return self.steps * (2 if self.cfg else 1)

    @property
    def pixels(self) -> int:
        return self.width * self.height * (self.frames if self.family == "wan" else 1)


@dataclass(frozen=True)
class Prediction:
    seconds: float | None  # one item: denoise + decode + the per-item rest (None: no basis on this machine)
    denoise_s: float = 0.0
    decode_s: float = 0.0
    other_s: float = 0.0  # writing the outputs, reloading experts from disk
    first_extra_s: float = 0.0  # once per run: the measured cold run's extra (pinning, autotuning, compiling)
    basis: str = ""  # the measured entry it was carried from
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def curve(model: dict, family: str, tokens: int) -> float:
    c = model["token_curves"][family]
    return c["a"] * tokens + c["b"] * tokens * tokens


def carry(model: dict, stage: str, measured_on: Gpu, gpu: Gpu) -> float:
    """The factor from a time measured on one GPU to the same work on another."""
    w = model["bandwidth_share"][stage]
    return (1 - w) * measured_on.bf16_tflops / gpu.bf16_tflops + w * measured_on.gb_per_s / gpu.gb_per_s


def _writing(a: dict, family: str, items_in_run: int) -> float:
    """An item's seconds besides generating. A Wan batch writes each clip's files behind the next clip
    (runs/behind.py): an item pays what stays in the main thread, and the batch waits once for the last one's."""
    full, behind = a["write_s"][family], a.get("written_behind_s", {}).get(family)
    if behind is None or items_in_run <= 1:
        return full
    return behind + (full - behind) / items_in_run


def _wanted_levers(plan: memory.MemoryPlan, items: int, family: str, device: str) -> tuple[str, ...]:
    from producer.sizing.speed import default_speed

    placement = plan.components["transformer"].placement
    chosen = default_speed(device, placement, items=items, family=family)  # `auto`, as a run without --compile
    compiled = ("compile",) if chosen.compile else ()
    dequantized = ("compiled-dequantize",) if chosen.compile_dequantize and plan.weights.startswith("gguf") else ()
    return compiled + (("run-ahead",) if plan.run_ahead else ()) + dequantized  # the speed model's order


def find_entry(
    model: dict, item: Item, plan_name: str, weights: str, levers: tuple[str, ...], gpu_name: str
) -> tuple[dict | None, list[str]]:
    """The measured entry closest to this item and plan, and notes on what differs."""
    same_family = [e for e in model["entries"] if e["family"] == item.family]
    notes = []
    for step, pick in enumerate(
        (
            lambda e: e["plan"] == plan_name and e["weights"] == weights,
            lambda e: e["plan"] == plan_name,
            lambda e: e["plan"] == RESIDENT and e["weights"] == "bf16",
        )
    ):
        found = [e for e in same_family if pick(e)]
        if found:
            break
    else:
        return None, [f"no measured speed for {item.family} at all"]
    if step == 1:
        notes.append(f"{weights} weights under {plan_name} were not measured: {found[0]['weights']} used")
    if step == 2:
        notes.append(f"plan {plan_name} ({weights}) was not measured: resident bf16 used, so the time is low")

    def score(e: dict) -> tuple:
        return (
            tuple(e["levers"]) != levers,
            e["cfg"] != item.cfg,
            abs(math.log(item.tokens / e["tokens"])),
            gpu_spec(e["gpu"]).name != gpu_name,
            e["source"],
        )

    best = min(found, key=score)
    if tuple(best["levers"]) != levers:
        notes.append(f"measured with levers {best['levers'] or 'none'}, used for {list(levers) or 'none'}")
    return best, notes


def predict_item(
    item: Item,
    plan: memory.MemoryPlan,
    gpu: Gpu,
    host_link: tuple[int, int] | None = None,
    items_in_run: int = 1,
    levers: tuple[str, ...] | None = None,
    model: dict | None = None,
    position: int | None = None,
) -> Prediction:
    """Seconds of one item under `plan` on `gpu` (steady state: the model is loaded, prompts are encoded).
    `levers`: the speed levers on (default: what the scripts choose for a run of `items_in_run`). `position`:
    the item's index in its run, where the reads that a group of items shares fall on the group's first item
    (with one Wan expert in RAM); without it each item carries an even share of them."""
    model = model or speed_model()
    if plan.device != "cuda":
        return Prediction(None, notes=(NO_GPU,))
    if levers is None:
        levers = _wanted_levers(plan, items_in_run, item.family, plan.device)
    entry, notes = find_entry(model, item, plan.name, plan.weights, levers, gpu.name)
    if entry is None:
        return Prediction(None, notes=tuple(notes))
    measured_on = gpu_spec(entry["gpu"])
    a = model["assumptions"]
    forward = _forward(model, entry, item, gpu)
    streams = plan.placement.streams  # the denoiser's weights cross the host link at every forward
    if streams and Placement.of_plan(entry["plan"]).streams:
        forward = _with_resident_blocks(model, forward, entry, item, plan, gpu, notes)
    link = host_link or gpu.link
    if streams:
        one = FOOTPRINTS[item.family].denoiser_params * memory.BYTES_PER_PARAM[plan.weights]
        floor = (plan.streamed_bytes or one) / 1e9 / link_gb_s(link, a["link_efficiency"])
        if floor > forward:
            notes.append(f"bound by the host link (PCIe {link[0]}.0 x{link[1]}): {floor:.2f} s a forward")
            forward = floor
    decode = entry["decode_s"] * item.pixels / entry["pixels"] * carry(model, "decode", measured_on, gpu)
    other = entry["other_s"] + _writing(a, item.family, items_in_run)
    if plan.experts_in_ram == 1 and item.family == "wan":
        expert = FOOTPRINTS["wan"].denoiser_params * memory.BYTES_PER_PARAM[plan.weights]
        rate = min(a["disk_read_gb_s"], a.get("expert_read_gb_s", math.inf))  # the disk, or what follows the read
        other += 2 * expert / 1e9 / rate * expert_reads(items_in_run, position)
        each = "clip" if items_in_run == 1 else f"group of up to {memory.CLIPS_PER_EXPERT_READ} clips"
        why = "the disk's assumed speed" if rate == a["disk_read_gb_s"] else "measured: reading and setting up an expert"
        notes.append(f"both experts are read from disk for every {each} ({rate} GB/s, {why})")
        again = position is not None and position >= memory.CLIPS_PER_EXPERT_READ  # a read after the first group
        other += 2 * _lora_fold_s(a, plan, notes, again) * expert_reads(items_in_run, position)
    if not gpu.known:
        notes.append(f"{gpu.name}: {gpu.source}")
    denoise = forward * item.forwards
    basis = (
        f"{entry['family']} {entry['plan']} {entry['weights']} at {entry['tokens']} tokens on {entry['gpu']} "
        f"({entry['source']}, {entry['config']}): {entry['forward_s']:.2f} s a forward"
    )
    return Prediction(
        round(denoise + decode + other, 2),
        round(denoise, 2),
        round(decode, 2),
        round(other, 2),
        round((entry.get("cold_extra_s") or 0.0) + _dequant_compile_s(a, item.family, levers, notes), 2),
        basis,
        tuple(notes),
    )


def _dequant_compile_s(a: dict, family: str, levers: tuple[str, ...], notes: list[str]) -> float:
    """Compiling the GGUF dequantization, once a process, where the run takes it: at the load, outside the items the
    benchmark times, so no entry's cold extra holds it (speed model: dequant_compile_s, the longest measured)."""
    seconds = a.get("dequant_compile_s", {}).get(family, 0.0) if "compiled-dequantize" in levers else 0.0
    if seconds:
        notes.append(f"compiling the GGUF dequantization: ~{seconds:g} s once a run (the longest measured; "
                     "inductor's cache on disk shortens a later run's)")
    return seconds


def _lora_fold_s(a: dict, plan: memory.MemoryPlan, notes: list[str], again: bool = False) -> float:
    """Seconds of folding an expert's LoRA factors into it after a read (GGUF experts; their factors are not kept,
    since RAM holds one expert): the first read of each expert loads the LoRA the whole way (lora_fold_mparams_s),
    later ones fold it again from the files without peft (that times refold_share, engines/loras/lora_refold.py);
    0 without a LoRA."""
    rate = a.get("lora_fold_mparams_s")
    if not (plan.adapter_params and plan.weights.startswith("gguf") and rate):
        return 0.0
    share = a.get("refold_share", 1.0) if again else 1.0
    seconds = plan.adapter_params / 1e6 / rate * share
    how = "folded again without peft" if again else \
        "loaded the whole way (a LoRA set's first run on this machine; later runs fold it from the store without peft)"
    notes.append(f"each expert read gets its LoRA {how}: {seconds:.1f} s an expert ({rate} M factors/s measured"
                 + (f", x{share} for folding again" if again else "") + ")")
    return seconds


def expert_reads(items_in_run: int, position: int | None = None) -> float:
    """How many times the item reads both Wan experts, with one in RAM: a batch makes its clips expert by expert,
    reading both once a group of up to CLIPS_PER_EXPERT_READ clips, in the group's first clip (its load and its
    swap: wan.WanSession._by_halves). Without a `position`, the run's reads shared evenly among its items."""
    if position is None:
        return math.ceil(items_in_run / memory.CLIPS_PER_EXPERT_READ) / items_in_run
    return 1.0 if position % memory.CLIPS_PER_EXPERT_READ == 0 else 0.0


def _forward(model: dict, entry: dict, item: Item, gpu: Gpu) -> float:
    """The entry's forward carried to the item's tokens and to this GPU."""
    scale = curve(model, item.family, item.tokens) / curve(model, item.family, entry["tokens"])
    return entry["forward_s"] * scale * carry(model, "forward", gpu_spec(entry["gpu"]), gpu)


def _with_resident_blocks(model: dict, forward: float, entry: dict, item: Item, plan: memory.MemoryPlan, gpu: Gpu,
                          notes: list[str]) -> float:
    """A streamed forward measured with one share of streamed blocks, carried to the plan's share: the
    streamed blocks' extra over the resident forward scales with their number."""
    measured_share = entry.get("streamed_share", 1.0)
    if abs(plan.streamed_share - measured_share) < 1e-9:
        return forward
    resident_entry, _ = find_entry(model, item, RESIDENT, plan.weights, tuple(entry["levers"]), gpu.name)
    if resident_entry is None:
        return forward
    resident = _forward(model, resident_entry, item, gpu)
    notes.append(f"{plan.resident_blocks} of {plan.blocks} blocks resident: the measured streaming extra "
                 f"(at {measured_share:.0%} of the blocks streamed) scaled to {plan.streamed_share:.0%}")
    return resident + max(0.0, forward - resident) * plan.streamed_share / measured_share


def text_seconds(family: str, placement: Placement, gpu: Gpu, model: dict | None = None) -> float:
    """One prompt through the family's text encoder, placed as the plan places it (measured for Wan's UMT5;
    Qwen's is scaled by its parameters, stated in the data's assumptions)."""
    model = model or speed_model()
    entries = [e for e in model["text"] if e["placement"] == placement] or model["text"]
    e = min(entries, key=lambda e: e["seconds"] if placement == Placement.GPU else -e["seconds"])
    factor = FOOTPRINTS[family].text_encoder_params / FOOTPRINTS["wan"].text_encoder_params
    return e["seconds"] * factor * carry(model, "forward", gpu_spec(e["gpu"]), gpu)


def read_seconds(family: str, plan: memory.MemoryPlan, model: dict | None = None, ram_total: int | None = None) -> float:
    """Once per batch: loading the plan's weights (the first item's extra, Prediction.first_extra_s, comes on
    top), at read_rate's speed. With one expert in RAM the experts are read with the clips, once a group
    (predict_item counts them), not here."""
    rate, _ = read_rate(family, plan, model, ram_total)
    return round(read_bytes(family, plan.weights, loads_denoisers(plan)) / 1e9 / rate, 1)


def loads_denoisers(plan: memory.MemoryPlan) -> bool:
    """Whether loading reads the denoisers: not with one Wan expert in RAM, where each is read at its turn."""
    return plan.experts_in_ram >= sum(name.startswith("transformer") for name in plan.components)


def read_rate(family: str, plan: memory.MemoryPlan, model: dict | None = None,
              ram_total: int | None = None) -> tuple[float, str]:
    """GB/s of loading, and why. Where the machine's RAM (`ram_total`) holds the files beside the plan's
    peak, they stay in the page cache between runs and load at the rate measured that way (load_gb_s, per
    family: reading and setting up); otherwise no faster than the disk speed the data assumes."""
    a = (model or speed_model())["assumptions"]
    size = read_bytes(family, plan.weights, loads_denoisers(plan))
    cached, disk = a["load_gb_s"][family], a["disk_read_gb_s"]
    if ram_total is not None and ram_total - plan.peak_ram >= size and cached > disk:
        return cached, (f"{size / 1e9:.0f} GB at {cached} GB/s: RAM holds the files beside the plan, so they "
                        "stay in the page cache between runs (the first run after a reboot reads the disk)")
    rate = min(cached, disk)
    return rate, f"{size / 1e9:.0f} GB at {rate} GB/s (an assumed disk speed; RAM cannot cache the files)"


def read_bytes(family: str, weights: str, denoisers: bool = True) -> int:
    """What a batch loads from disk: its denoisers in their form (unless `denoisers` is False), the text
    encoder and the VAE in bf16."""
    fp = FOOTPRINTS[family]
    form = weights if weights in memory.BYTES_PER_PARAM else "bf16"
    return int(
        len(fp.denoisers) * fp.denoiser_params * memory.BYTES_PER_PARAM[form] * denoisers
        + (fp.text_encoder_params + fp.vae_params) * memory.BYTES_PER_PARAM["bf16"]
    )


def prediction_error(predicted: float | None, measured: float) -> dict:
    """The batch JSON's comparison: (measured - predicted) / predicted."""
    if predicted is None or predicted <= 0:
        return {"predicted_s": None, "measured_s": round(measured, 2), "error": None}
    return {
        "predicted_s": round(predicted, 2),
        "measured_s": round(measured, 2),
        "error": round((measured - predicted) / predicted, 3),
    }


# ---------------------------------------------------------------- after a batch: predicted against measured

SUBSTAGES = ("high_expert", "low_expert", "expert_swap")  # parts of "denoise", not stages beside it
# Later clips' work done in this clip's time: a one-expert batch runs their high-noise halves in an earlier
# clip's "ahead" stage and counts each half in its own clip's denoise as well (engines/wan/wan.py).
OTHERS_WORK = ("ahead",)


def clip_item(req) -> Item:
    """A wan_video.py request (width, height, frames, sampling) as the speed model sees it."""
    return Item("wan", req.width, req.height, req.sampling.steps, req.sampling.guidance > 1, frames=req.frames)


def image_item(job) -> Item:
    """A qwen.QwenJob as the speed model sees it."""
    return Item("qwen", job.width, job.height, job.steps, job.true_cfg, references=len(job.references))


def batch_prediction(
    made: list[tuple[Item, dict]],
    plan: memory.MemoryPlan,
    hw: Hardware,
    standin: bool = False,
    model: dict | None = None,
) -> dict:
    """The batch JSON's `prediction`: the items made, predicted seconds against measured (each item's own stages:
    the later clips' halves it ran ahead count in theirs, not twice), and the error (measured - predicted) /
    predicted."""
    gpu = gpu_spec(hw.gpu_name) if hw.has_gpu else None
    why = "stand-in models: the speed model is for the real ones" if standin else None if gpu else NO_GPU
    rows = []
    for position, (item, seconds) in enumerate(made):
        measured = sum(v for k, v in seconds.items()
                       if k not in SUBSTAGES + OTHERS_WORK and isinstance(v, (int, float)))
        p = (
            Prediction(None)
            if why
            else predict_item(item, plan, gpu, hw.host_link, len(made), model=model, position=position)
        )
        rows.append(prediction_error(p.seconds, measured))
    known = [r for r in rows if r["predicted_s"] is not None]
    total = prediction_error(
        sum(r["predicted_s"] for r in known) if known else None, sum(r["measured_s"] for r in rows)
    )
    return {
        "items": len(rows),
        **total,
        "per_item": rows,
        "gpu": gpu.name if gpu else None,
        "plan": plan.name,
        "weights": plan.weights,
        "note": why,
    }
