"""`production.py estimate DIR`: the time, disk and memory of everything a production still has to make.

What remains is what `status` calls missing or stale (the jobs `next` would run). Each job is parsed by its
script's own parser and resolved as the script would (size, frames, references, steps, CFG); the memory plan
is the scripts' (producer.sizing.memory, for the real models, once per phase as a batch plans once); the seconds
come from the measured speeds (producer.sizing.estimate). Where the plan does not fit (VRAM, RAM, disk) the report
says so and which change would make it fit, each checked with the same plan function.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from producer.errors import CliError
from producer.facts import registry
from producer.facts.hardware import GiB, Hardware
from producer.modelfiles import lora_sizes, models, needs
from producer.modelfiles.install import human_bytes
from producer.sizing import estimate, memory
from producer.workflow.planner import WAN, parse_job

REMAINING = ("missing", "stale")
PHASE_FAMILY = {"assets": "qwen", "keyframes": "qwen", "clips": "wan"}
DISTILL = {"wan": ("wan-lightning", "wan21-lightx2v"), "qwen": ("qwen-lightning",)}
# Output sizes, as multiples of the raw RGB bytes (width x height x 3 per picture or frame): a PNG of a
# generated picture keeps about half; an H.264 MP4 at the scripts' crf 18 about 1/30 (~3 MB for a 5 s
# 832x480 clip); a clip also writes three review PNGs (first and last frame, contact sheet) and the film
# re-encodes every clip once more.
PNG_RATIO, MP4_RATIO, REVIEW_PICTURES = 0.5, 1 / 30, 3
RECIPE_BYTES = 8_000


def estimate_production(snap, hw: Hardware, complete: set[str], model: dict | None = None) -> dict:
    """The report of `production.py estimate`. `complete`: the registry entries installed completely (what a
    download would still fetch); the rest is read from the snapshot and the plans (and the output disk's free space)."""
    model = model or estimate.speed_model()
    gpu = estimate.gpu_spec(hw.gpu_name) if hw.has_gpu else None
    todo = [s for s in snap.states.values() if s.state in REMAINING]
    notes: list[str] = []
    phases, items, problems, faster = [], [], [], []
    for phase in ("assets", "keyframes", "clips"):
        jobs = [s.job for s in todo if s.job.phase == phase]
        if not jobs:
            continue
        family = PHASE_FAMILY[phase]
        resolved = [(job, *_resolve(snap.plan, job, family, notes)) for job in jobs]
        report, made = _phase(phase, family, resolved, hw, model)
        phases.append(report)
        items += made
        problems += _memory_problems(phase, family, resolved, hw, report["_plan"])
        faster += _faster(phase, family, resolved, hw, gpu, model, report)
    film = any(s.job.phase == "film" for s in todo)
    disk = _disk(snap.root, items, film, hw, complete, {PHASE_FAMILY[p["phase"]] for p in phases})
    problems += disk.pop("problems")
    known = [p["seconds"] for p in phases]
    total = None if not phases or None in known else round(sum(known), 1)
    plans = [p.pop("_plan") for p in phases]
    slowest = max((i for i in items if i["seconds"] is not None), key=lambda i: i["seconds"], default=None)
    if not snap.prod.ok_through("assets"):
        notes.append("nothing is planned until the phase files pass `check` through assets.json")
    if gpu is not None and not gpu.known:
        notes.append(f"{hw.gpu_name} is not in the GPU table: {gpu.source}")
    if any(models.standin_facts(snap) for family in ("wan", "qwen") for snap in _present(family) if snap):
        notes.append("the installed models are stand-ins: the times are those of the real models")
    return {
        "root": str(snap.root),
        "machine": hw.describe(),
        "gpu": gpu.to_dict() if gpu else None,
        "host_link": list(hw.host_link or gpu.link) if gpu else None,
        "counts": {
            "images": sum(1 for i in items if i["family"] == "qwen"),
            "clips": sum(1 for i in items if i["family"] == "wan"),
            "film": int(film),
        },
        "phases": phases,
        "total_seconds": total,
        "total": _duration(total),
        "slowest": slowest,
        "disk": disk,
        "peak_vram_gib": round(max((p.peak_vram for p in plans), default=0) / GiB, 1),
        "peak_ram_gib": round(max((p.peak_ram for p in plans), default=0) / GiB, 1),
        "fits": not problems,
        "problems": problems,
        "faster": faster,
        "items": items,
        "errors": [{"id": s.job.id, "reasons": s.reasons} for s in snap.states.values() if s.state == "error"],
        "notes": list(dict.fromkeys(notes)),
    }


# ---------------------------------------------------------------- one job as the speed model sees it


def _installed(names: tuple[str, ...], family: str, notes: list[str]) -> bool:
    """Is a step-distill LoRA there (as the scripts see it: present on disk)? Before any download, the default
    one (`setup_diffusers.py --download`) brings it, so it is assumed."""
    if any(models.is_present(registry.get(n)) for n in names):
        return True
    if not _present(family):
        notes.append(
            f"{family}: models not installed yet; assumed as `setup_diffusers.py --download` brings them "
            "(with the step-distill LoRA)"
        )
        return True
    return False


def _present(family: str) -> list:
    """The snapshots of the family's installed diffusers folders (what its configs come from)."""
    entries = [registry.get(n) for n in needs.CONFIG_ENTRIES[family]]
    return [models.snapshot_dir(e) for e in entries if models.is_present(e)]


def _resolve(plan, job, family: str, notes: list[str]) -> tuple[estimate.Item, dict]:
    """(the item, the batch-wide options: offload and weights, and the LoRA factors the job keeps beside GGUF
    weights: its step-distill LoRA and its own --lora files)."""
    args = parse_job(plan, job)
    batch = {"offload": args.offload, "weights": args.weights, "adapter_params": _user_lora_params(args, family)}
    if job.script == WAN:
        from producer.engines.wan.wan_settings import DISTILL_ENTRIES, resolve_frames

        w, h = args.size or registry.WAN.presets[args.preset or "480p"]
        frames = resolve_frames(args.frames, args.duration).count
        distilled = args.distill != "off" and (args.distill != "auto" or _installed(DISTILL["wan"], "wan", notes))
        if distilled:
            batch["adapter_params"] += lora_sizes.entry_params(DISTILL_ENTRIES.get(args.distill) or _wan_distill())
        base = registry.WAN.distilled if distilled else registry.WAN.full
        guidance = args.guidance if args.guidance is not None else base.guidance
        return estimate.Item("wan", w, h, args.steps or base.steps, guidance > 1, frames=frames), batch
    from producer.engines.qwen.qwen_jobs import PRESETS

    pictures = len(args.reference or []) + bool(args.style_image) + bool(args.pose)
    if args.size or args.preset or args.width:
        w, h = args.size or PRESETS.get(args.preset) or (args.width, args.height)
    else:
        w, h = registry.QWEN.default_size  # from a picture: its shape at about this area
    lightning = args.lightning
    if lightning == "auto":
        fits = args.steps in (None, 4, 8) and (args.cfg is None or args.cfg <= 1)
        lightning = str(args.steps or 4) if fits and _installed(DISTILL["qwen"], "qwen", notes) else "off"
    if lightning != "off":
        batch["adapter_params"] += lora_sizes.entry_params(DISTILL["qwen"][0], int(lightning))
    if _anypose(args):
        batch["adapter_params"] += lora_sizes.entry_params("qwen-anypose")
    base = registry.QWEN.full if lightning == "off" else getattr(registry.QWEN, f"lightning_{lightning}")
    cfg = args.cfg if args.cfg is not None else base.cfg
    return estimate.Item("qwen", w, h, args.steps or base.steps, cfg > 1, references=pictures), batch


def _wan_distill() -> str:
    """The distill entry `--distill auto` loads: the first installed, else the one a download brings."""
    return next((n for n in DISTILL["wan"] if models.is_present(registry.get(n))), DISTILL["wan"][0])


def _anypose(args) -> bool:
    from producer.engines.qwen.qwen_jobs import resolve_pose_method

    try:
        return resolve_pose_method(args, len(args.reference or [])) == "anypose"
    except CliError:  # the script refuses this job with its own message
        return False


def _user_lora_params(args, family: str) -> int:
    """The factors of the job's own --lora files (headers read; a missing file counts 0: the script says so)."""
    from producer.engines.loras import lora, lora_files

    try:
        specs = [lora.parse_lora_spec(text, family, must_exist=False) for text in args.lora or []]
    except CliError:
        return 0
    return lora_files.adapter_params(specs)


# ---------------------------------------------------------------- a phase: one batch, one load


def _plan(family: str, items: list[estimate.Item], hw: Hardware, batch: dict, weights: str | None = None):
    work = _largest(family, items)
    installed = models.installed_forms(family) or None
    footprint = replace(estimate.FOOTPRINTS[family], adapter_params=batch.get("adapter_params", 0))
    return memory.plan_memory(hw, footprint, work, batch["offload"], weights or batch["weights"], installed)


def _largest(family: str, items: list[estimate.Item]) -> memory.Workload:
    works = [
        memory.wan_workload(i.width, i.height, i.frames)
        if family == "wan"
        else memory.qwen_workload(i.width, i.height, i.references)
        for i in items
    ]
    return memory.Workload(max(w.tokens for w in works), max(w.decode_pixels for w in works))


def predict_phase(
    family: str, items: list[estimate.Item], hw: Hardware, batch: dict, model: dict | None = None
) -> dict:
    """One phase as one batch (one plan, one load): the plan, each item's Prediction, and the seconds of the
    load (reading the weights + the first item's extra), of encoding the prompts and of the whole phase (None
    where there is no basis). `batch`: the batch-wide {"offload", "weights"} choices. The benchmark compares
    this with a measured batch (bench/batches.py)."""
    model = model or estimate.speed_model()
    gpu = estimate.gpu_spec(hw.gpu_name) if hw.has_gpu else None
    plan = _plan(family, items, hw, batch)
    seconds = [
        estimate.predict_item(item, plan, gpu, hw.host_link, len(items), model=model, position=i)
        if gpu
        else estimate.Prediction(None, notes=(estimate.NO_GPU,))
        for i, item in enumerate(items)
    ]
    known = None not in [p.seconds for p in seconds]
    load = estimate.read_seconds(family, plan, model, hw.ram_total) + seconds[0].first_extra_s if known else None
    text = estimate.text_seconds(family, plan.text_encoder, gpu, model) * len(items) if known and gpu else None
    total = round(load + text + sum(p.seconds for p in seconds), 1) if known else None
    basis = estimate.read_rate(family, plan, model, hw.ram_total)[1] if known else None
    return {"plan": plan, "items": seconds, "load_seconds": load, "load_basis": basis, "text_seconds": text,
            "seconds": total}


def _batch(resolved: list) -> dict:
    """The batch-wide choices: the first job's offload and weights (a batch loads once), the largest LoRA set."""
    return {**resolved[0][2], "adapter_params": max(batch["adapter_params"] for _, _, batch in resolved)}


def _phase(phase: str, family: str, resolved: list, hw: Hardware, model: dict) -> tuple[dict, list[dict]]:
    items = [item for _, item, _ in resolved]
    predicted = predict_phase(family, items, hw, _batch(resolved), model)
    plan, load, text, total = (predicted[k] for k in ("plan", "load_seconds", "text_seconds", "seconds"))
    made = []
    for (job, item, _), p in zip(resolved, predicted["items"]):
        made.append(
            {
                "id": job.id,
                "phase": phase,
                "family": family,
                "width": item.width,
                "height": item.height,
                "frames": item.frames if family == "wan" else None,
                "references": item.references if family == "qwen" else None,
                "steps": item.steps,
                "cfg": item.cfg,
                "seconds": p.seconds,
                "notes": list(p.notes),
                "basis": p.basis,
            }
        )
    known = total is not None
    return {
        "phase": phase,
        "family": family,
        "items": len(items),
        "plan": plan.summary(),
        "fits": plan.fits,
        "load_seconds": round(load, 1) if known else None,
        "load_basis": predicted["load_basis"],
        "text_seconds": round(text, 1) if known else None,
        "seconds": total,
        "time": _duration(total),
        "_plan": plan,
    }, made


def _memory_problems(phase: str, family: str, resolved: list, hw: Hardware, plan: memory.MemoryPlan) -> list[dict]:
    if plan.fits:
        return []
    items = [item for _, item, _ in resolved]
    batch = _batch(resolved)
    lacking = (
        " and ".join(
            x
            for x, need, have in (("VRAM", plan.peak_vram, hw.vram_total), ("RAM", plan.peak_ram, hw.ram_total))
            if need > have
        )
        or "memory"
    )
    fixes = []
    for form in memory.QUALITY_ORDER:
        if form != plan.weights and _plan(family, items, hw, batch, form).fits:
            fixes.append(
                f"another weight form: --weights {form} beside --batch "
                f"(python scripts/setup_diffusers.py --download --weights {form})"
            )
            break
    if family == "wan" and any(i.width * i.height > 832 * 480 for i in items):
        small = [replace(i, width=832, height=480) for i in items]
        if _plan(family, small, hw, batch).fits:
            fixes.append('480p instead of 720p: {"wan_video.py": {"preset": "480p"}} in .production/settings.json')
    if family == "wan" and any(i.frames > 49 for i in items):
        short = [replace(i, frames=min(i.frames, 49)) for i in items]
        if _plan(family, short, hw, batch).fits:
            fixes.append("shorter scenes (at most 3 s, 49 frames) in scene-breakdown.md")
    if not fixes:
        fixes.append(plan.advice or "a machine with more memory (SETUP.md, memory tiers)")
    return [
        {
            "what": lacking,
            "phase": phase,
            "message": f"{phase}: the memory plan does not fit: {plan.reason}",
            "fixes": fixes,
        }
    ]


def _faster(phase: str, family: str, resolved: list, hw: Hardware, gpu, model: dict, report: dict) -> list[dict]:
    """Lightning for a phase that runs the full schedule: the time it would take instead."""
    items = [item for _, item, _ in resolved]
    if gpu is None or report["seconds"] is None or not any(i.cfg for i in items):
        return []
    fast = registry.WAN.distilled if family == "wan" else registry.QWEN.lightning_4
    plan = report["_plan"]

    def seconds(its: list[estimate.Item]) -> float:
        return sum(estimate.predict_item(i, plan, gpu, hw.host_link, len(its), model=model).seconds for i in its)

    quick = report["seconds"] - seconds(items) + seconds([replace(i, steps=fast.steps, cfg=False) for i in items])
    return [
        {
            "phase": phase,
            "seconds": round(quick, 1),
            "time": _duration(quick),
            "how": f"Lightning, {fast.steps} steps without CFG: {models.setup_command(DISTILL[family][0])}",
        }
    ]


# ---------------------------------------------------------------- disk


def _output_bytes(item: dict) -> int:
    raw = item["width"] * item["height"] * 3
    if item["family"] == "qwen":
        return int(raw * PNG_RATIO) + RECIPE_BYTES
    return int(raw * item["frames"] * MP4_RATIO + REVIEW_PICTURES * raw * PNG_RATIO) + RECIPE_BYTES


def _disk(root: Path, items: list[dict], film: bool, hw: Hardware, complete: set[str], families: set[str]) -> dict:
    outputs = sum(_output_bytes(i) for i in items)
    if film:  # the film re-encodes every clip of the production, made now or before
        outputs += sum(
            int(i["width"] * i["height"] * 3 * i["frames"] * MP4_RATIO) for i in items if i["family"] == "wan"
        )
    free_here = shutil.disk_usage(root).free
    needed = [n for f in sorted(families) for n in needs.family_need(f, hw, complete).names]
    lacking = [n for n in dict.fromkeys(needed) if n not in complete]
    download = needs.download_bytes(lacking, complete)
    problems = []
    if outputs > free_here:
        per_clip = max((_output_bytes(i) for i in items if i["family"] == "wan"), default=0)
        problems.append(
            {
                "what": "disk",
                "phase": "outputs",
                "message": f"the outputs need ~{human_bytes(outputs)} and {root} has {human_bytes(free_here)} free",
                "fixes": [
                    f"free {human_bytes(outputs - free_here)} or more",
                    f"fewer scenes (each clip needs ~{human_bytes(per_clip)})",
                ],
            }
        )
    if download > hw.disk_free:
        advice, command = needs.download_advice(hw, lacking, complete)
        problems.append({"what": "disk", "phase": "models", "message": advice, "fixes": [command]})
    return {
        "outputs_bytes": outputs,
        "outputs": human_bytes(outputs),
        "free_for_outputs_bytes": free_here,
        "models_to_download": lacking,
        "download_bytes": download,
        "download": human_bytes(download),
        "free_for_models_bytes": hw.disk_free,
        "problems": problems,
    }


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


# ---------------------------------------------------------------- setup_diffusers.py --check


def one_of_each(hw: Hardware, plans: dict, model: dict | None = None) -> dict:
    """The predicted seconds of the scripts' default image and clip on this machine, under the plans
    `setup_diffusers.py --check` shows (family -> MemoryPlan), with the schedule they would run."""
    gpu = estimate.gpu_spec(hw.gpu_name) if hw.has_gpu else None
    out = {}
    for family, plan in plans.items():
        notes: list[str] = []
        if family == "wan":
            distilled = _installed(DISTILL["wan"], "wan", notes)
            base = registry.WAN.distilled if distilled else registry.WAN.full
            w, h = registry.WAN.presets["480p"]
            item = estimate.Item("wan", w, h, base.steps, base.guidance > 1, frames=registry.WAN.frames)
            what = f"one clip, {w}x{h}x{item.frames}"
        else:
            base = registry.QWEN.lightning_4 if _installed(DISTILL["qwen"], "qwen", notes) else registry.QWEN.full
            w, h = registry.QWEN.default_size
            item = estimate.Item("qwen", w, h, base.steps, base.cfg > 1, references=1)
            what = f"one image, {w}x{h} from 1 reference"
        p = (
            estimate.predict_item(item, plan, gpu, hw.host_link, model=model)
            if gpu
            else estimate.Prediction(None, notes=(estimate.NO_GPU,))
        )
        out[family] = {
            "what": f"{what}, {item.steps} steps" + (" with CFG" if item.cfg else ""),
            "seconds": p.seconds,
            "notes": list(dict.fromkeys(notes + list(p.notes))),
            "basis": p.basis,
        }
    return out
