#!/usr/bin/env python3
"""The speed model (scripts/producer/data/speed-model.json) from benchmark results, and predicted vs measured.

    # regenerate the data file from the committed results (later files replace earlier figures of the same plan)
    python bench/speedmodel.py --out scripts/producer/data/speed-model.json \\
        bench/results/2026-11-29-h200.json bench/results/2026-11-29-h200-second/{a,b,c,d,e,f}.json \\
        bench/results/2026-12-05-h100/g1.json bench/results/2026-12-06-h100/{q16,q17,t10,p3a}.json \\
        bench/results/2026-12-06-h100-night/w.json bench/results/2026-12-07-h100/{f,a}.json \\
        bench/results/2026-12-07-h100-evening/qwen-runahead.json bench/results/2026-12-07-h200-night/{r,s,q,cd}.json \\
        bench/results/2026-12-07-h100-late/{s10,e,qc}.json
    # how well the committed model predicts a benchmark run (e.g. a fresh one on another card)
    python bench/speedmodel.py --compare results.json

The data file lists its own sources, so `tests/test_estimate.py` regenerates it from them and fails when the
two differ. Every figure keeps the GPU it was measured on; producer/sizing/estimate.py carries them to other cards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(HERE))

from benchmark import LEVERS, WORKLOADS, cap_gib, has_lever
from load_paces import dequant_compile_s, disk_reads, expert_read_gb_s, lora_fold_mparams_s, refold_share
from producer.sizing import estimate, memory

WRITING = "bench/results/2026-11-29-writing-2core.json"  # per-item writing cost (bench/writing.py)
# The LoRA fold's pace (load_paces.lora_fold_mparams_s): a 1-step run, so none of its figures are an entry.
LORA_FOLD = "bench/results/2026-12-07-h100-late/lora.json"
# Folding a LoRA again without peft (lora_refold) against the whole way, both timed by bench/lora_load.py.
REFOLD = "bench/results/2026-12-07-lora-refold-2core.json"
RESIDENT = estimate.RESIDENT  # the plan every other one is measured against
# Assumptions the results cannot give; each says where its number comes from.
ASSUMPTIONS = {
    # Qwen under a 10 GiB cap on the H200 (bf16 streamed, link-bound): 0.83 s a forward for 40.9 GB of weights,
    # 49 GB/s of PCIe 5.0 x16's 63: 78% of the link's rate.
    "link_efficiency": 0.78,
    # Not measured: a SATA SSD reads ~0.5 GB/s, NVMe 2-7 GB/s; bench/benchmark.py --from-disk measures a disk.
    "disk_read_gb_s": 1.0,
}
NOTES = [
    (
        "forward_s: seconds of one denoiser forward (a CFG step is two) in the steady state, as measured by "
        "bench/benchmark.py with full-size random weights; decode_s per item at the entry's pixels; other_s the "
        "rest of the measured total; cold_extra_s what the first item of a process cost more (pinning, autotuning, "
        "compiling)."
    ),
    (
        "'plain' runs (diffusers' pipeline, bf16, on the GPU) stand for the scripts' resident uncompiled plan: "
        "where both were measured (qwen-3ref-4, qwen-1ref-40) they were within 1%."
    ),
    (
        "Tokens: a forward costs a*t + b*t^2 (token_curves, fitted per family to resident bf16 runs at two sizes "
        "on one card); other sizes are scaled by that curve."
    ),
    (
        "Another GPU: time x ((1 - w) x TFLOP/s ratio + w x GB/s ratio), w = bandwidth_share per stage, fitted from "
        "the same plain runs on cards of equal TFLOP/s and unequal bandwidth (H100 SXM, H200); TFLOP/s and GB/s "
        "from scripts/producer/data/gpus.json."
    ),
    (
        "Streaming plans (group-offload, sequential) go no faster than the denoiser's bytes over the host link at "
        "link_efficiency; both benchmark cards sit on PCIe 5.0 x16."
    ),
    (
        "Partial residency: a streamed forward is the form's resident forward plus the streamed blocks' share of "
        "the measured streaming extra. Where no resident run of a weight form exists but its streamed plan was "
        "measured at several shares of blocks streamed, the form's resident forward is the line through them at "
        "share 0 (config 'fitted at 0 streamed'): GGUF Q8 on the card costs 1.4x bf16 for Qwen."
    ),
    "Qwen's text encoder was not measured: Wan's UMT5 figure scaled by parameters (8.3 B / 5.7 B).",
    (
        "write_s: what each item costs besides generating (judging, colour match, review files, MP4/PNG, recipe) "
        "in a production-3 run's batches on the GPU machine's CPU; without one, bench/writing.py on a 2-core CPU. "
        "Random weights make noisy clips, which x264 encodes slowly: at 832x480x81 on the 2-core machine the MP4 "
        "of a noise clip took 4.17 s, of a slow pan 0.61 s (bench/writing.py), so a real clip's overhead is "
        "likely lower."
    ),
    (
        "written_behind_s: in a Wan --batch each clip's colour match and files are made in the background while "
        "the next clip generates (runs/behind.py); an item then pays what stays in the main thread (write_s less "
        "the colour match and files, from the same runs), and the batch waits once for its last clip's files."
    ),
    (
        "load_gb_s: per family, the bytes a batch reads (denoisers in their form, text encoder and VAE in bf16) "
        "over the seconds a production-3 phase spent besides its items and prompts (reading, placing, setting up), "
        "with the files in the page cache of a machine whose RAM holds them; where RAM cannot hold them beside the "
        "plan, loading goes no faster than disk_read_gb_s (an assumption, not a measurement). expert_read_gb_s: "
        "with one Wan expert in RAM, how fast a clip reads its experts from page-cached files (reading, building, "
        "placing), from the last results that measured it; an expert read is charged at the lower of it and "
        "disk_read_gb_s. lora_fold_mparams_s: millions of a GGUF expert's LoRA factors folded a second (peft's "
        "adapters, the check, the fold) in a load of both experts; with one expert in RAM the first read of each "
        "expert loads its LoRA so, later reads fold it again without peft in refold_share of that time (measured "
        "on a 2-core CPU: bench/lora_load.py's refold_s against its load_loras_s). dequant_compile_s: per family, "
        "the longest a process of the sources spent compiling the GGUF dequantization (its speed note); it happens "
        "at the load, outside the timed items, so a run that compiles it pays it once besides cold_extra_s (a "
        "warm inductor cache shortened it from 6.6 to 4.0 s for Qwen's Q8_0, 2026-12-07-h100-store)."
    ),
]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def compiled_dequantization(notes) -> list[str]:
    """The lever of a run whose GGUF dequantization was compiled (its speed notes say so; runs before that
    lever existed, or with `--compile off`, used diffusers' own)."""
    from producer.sizing.compiled_dequant import NOTE

    return ["compiled-dequantize"] if any(str(n).startswith(NOTE) for n in notes or ()) else []


def entry_of(run: dict, gpu: str, source: str) -> dict | None:
    """One measured plan from one benchmark run (None for failed runs and text-encoder runs)."""
    if run.get("error") or "seconds" not in run or run["workload"] not in WORKLOADS:
        return None
    family, width, height, n, steps, cfg = WORKLOADS[run["workload"]]
    if family not in ("wan", "qwen"):
        return None
    sec = run["seconds"]
    forwards = steps * (2 if cfg else 1)
    denoise = sec["high_expert"] + sec["low_expert"] if family == "wan" else sec["denoise"]
    config = run["config"]
    plan = RESIDENT if config == "plain" else run["plan"].split(",")[0].removeprefix("plan ")
    weights = run.get("weights") or ("bf16" if config == "plain" else run["plan"].split("weights ")[1].split(",")[0])
    lever = LEVERS.get(config, {})
    levers = (["compile"] if lever.get("compile") == "on" else []) + (["fp8-matmul"] if lever.get("fp8_matmul") else [])
    levers += ["dequantize-on-arrival"] if has_lever(config, "-dequant") else []  # opt-in: kept apart
    # the host ran ahead of streamed blocks: recorded since it became the default, named in older configurations
    levers += ["run-ahead"] if run.get("plan_run_ahead", has_lever(config, "-runahead")) else []
    levers += ["lora-adapters"] if has_lever(config, "-lorapeft") else []  # what the scripts no longer do
    levers += compiled_dequantization(run.get("speed"))
    work = memory.wan_workload(width, height, n) if family == "wan" else memory.qwen_workload(width, height, n)
    whole = run.get("measured_steps", steps) == steps  # a scaled run's cold figure covers fewer steps
    share = {"streamed_share": run["streamed_share"]} if "streamed_share" in run else {}  # runs before residency: 1
    return {
        **share,
        "family": family,
        "plan": plan,
        "weights": weights,
        "levers": levers,
        "tokens": work.tokens,
        "cfg": cfg,
        "gpu": gpu,
        "width": width,
        "height": height,
        "frames": n if family == "wan" else 1,
        "references": n if family == "qwen" else 0,
        "pixels": width * height * (n if family == "wan" else 1),
        "forward_s": round(denoise / forwards, 4),
        "decode_s": round(sec["decode"], 3),
        # a run scaled from fewer steps scaled its other stages too: their rest is left out; reading an expert
        # from disk (the plans with one in RAM) is the disk's time, which the estimate adds at the disk's speed
        "other_s": round(max(0.0, sec["total"] - denoise - sec["decode"] - disk_reads(sec)), 3) if whole else 0.0,
        "cold_extra_s": round(max(0.0, run["cold_total"] - sec["total"]), 2) if whole else None,
        "source": source,
        "config": config,
    }


def production_parts(data: dict, gpu: str, source: str) -> tuple[list[dict], list[dict]]:
    """From a production-3 run (bench/batches.py): an entry per phase (its plan, resident or not, measured in
    a real --batch of the scripts) and the phase's load sample ({family, bytes, seconds, overhead_s})."""
    entries, samples = [], []
    for run in data["runs"]:
        for phase in [] if run.get("error") else run.get("phases", []):
            entry = phase_entry(phase, gpu, source, data.get("command", ""), run["config"])
            entries.append(entry)
            fixed = phase["wall_s"] - phase["items"] * (phase["pure_median_s"] + phase["overhead_median_s"])
            text = phase["predicted"].get("text_s") or 0.0
            samples.append({"family": entry["family"], "bytes": estimate.read_bytes(entry["family"], entry["weights"]),
                            "seconds": fixed - entry["cold_extra_s"] - text, "overhead_s": phase["overhead_median_s"],
                            "besides_files_s": _besides_files(phase)})
    return entries, samples


def _besides_files(phase: dict) -> float | None:
    """A phase's median overhead an item without its colour match and files (what stays in the main thread when
    they are written behind, runs/behind.py); None for a phase whose items were already written behind."""
    items = phase["per_item"][1:] or phase["per_item"]
    behind = ("video_encode", "encode")  # results before 2026-12-07 (third session) named it "encode"
    if any(k in i["stages"] for i in items for k in behind) or not all("write" in i["stages"] for i in items):
        return None
    return statistics.median(i["overhead_s"] - i["stages"].get("color_match", 0.0) - i["stages"]["write"] for i in items)


def phase_entry(phase: dict, gpu: str, source: str, command: str, config: str) -> dict:
    from batches import phase_item, phase_size
    from producer.sizing.speed import default_speed

    family = phase["family"]
    item = phase_item(family, *phase_size(phase, command))
    width, height, frames = item.width, item.height, item.frames
    plan = phase["plan"].split(",")[0].removeprefix("plan ")
    weights = phase["plan"].split("weights ")[1].split(",")[0]
    steady = phase["per_item"][1:] or phase["per_item"]
    stages = [item["stages"] for item in steady]
    denoise = [s["high_expert"] + s["low_expert"] if family == "wan" else s["denoise"] for s in stages]
    placement = memory.Placement.of_plan(plan)
    levers = ["compile"] if default_speed("cuda", placement, items=phase["items"], family=family).compile else []
    levers += compiled_dequantization(phase.get("speed"))
    return {
        "family": family, "plan": plan, "weights": weights, "levers": levers, "tokens": item.tokens, "cfg": False,
        "gpu": gpu, "width": width, "height": height, "frames": frames, "references": 0 if family == "wan" else 1,
        "pixels": item.pixels,
        "forward_s": round(statistics.median(denoise) / item.forwards, 4),
        "decode_s": round(statistics.median(s["decode"] for s in stages), 3),
        # the rest of the pure item (Wan: the start frame's encoding and the expert swap)
        "other_s": round(max(0.0, phase["pure_median_s"] - statistics.median(denoise)
                             - statistics.median(s["decode"] for s in stages)), 3),
        "cold_extra_s": round(max(0.0, phase["per_item"][0]["pure_s"] - phase["pure_median_s"]), 2),
        "source": source,
        "config": f"production-3:{config}",
    }


def text_entry(run: dict, gpu: str, source: str) -> dict | None:
    if run.get("error") or WORKLOADS.get(run["workload"], ("",))[0] != "wan-text":
        return None
    streamed = run.get("text_encoder", memory.Placement.GROUP_OFFLOAD)
    placement = memory.Placement.GPU if run["config"] == "plain" else streamed
    return {"placement": placement, "seconds": run["seconds"]["encode"], "gpu": gpu, "source": source}


def fit_curve(points: list[tuple[int, float]]) -> dict:
    """Least squares of s = a*t + b*t^2 (exact through two points)."""
    s11 = sum(t * t for t, _ in points)
    s12 = sum(t**3 for t, _ in points)
    s22 = sum(t**4 for t, _ in points)
    y1 = sum(t * s for t, s in points)
    y2 = sum(t * t * s for t, s in points)
    det = s11 * s22 - s12 * s12
    return {"a": (y1 * s22 - y2 * s12) / det, "b": (s11 * y2 - s12 * y1) / det, "points": sorted(points)}


def token_curves(entries: list[dict]) -> dict:
    curves = {}
    for family in ("wan", "qwen"):
        by_gpu: dict[str, dict[int, float]] = {}
        for e in entries:
            if (e["family"], e["plan"], e["weights"], e["levers"], e["cfg"]) == (family, RESIDENT, "bf16", [], False):
                by_gpu.setdefault(e["gpu"], {})[e["tokens"]] = e["forward_s"]
        gpu, points = max(by_gpu.items(), key=lambda kv: (len(kv[1]), kv[0]))
        if len(points) < 2:
            raise SystemExit(f"{family}: resident runs at two sizes on one card are needed to fit the token curve")
        curves[family] = {**fit_curve(list(points.items())), "gpu": gpu}
    return curves


def bandwidth_share(entries: list[dict]) -> dict:
    """w per stage from pairs of the same plan on two known cards: t1/t2 = (1-w) C2/C1 + w B2/B1."""
    shares: dict[str, list[float]] = {"forward": [], "decode": []}
    same = {}
    for e in entries:
        key = (e["family"], e["plan"], e["weights"], tuple(e["levers"]), e["tokens"], e["cfg"])
        same.setdefault(key, []).append(e)
    for group in same.values():
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                gx, gy = estimate.gpu_spec(x["gpu"]), estimate.gpu_spec(y["gpu"])
                c, b = gy.bf16_tflops / gx.bf16_tflops, gy.gb_per_s / gx.gb_per_s
                if not (gx.known and gy.known) or abs(b - c) < 0.05:
                    continue
                for stage, field in (("forward", "forward_s"), ("decode", "decode_s")):
                    w = (x[field] / y[field] - c) / (b - c)
                    shares[stage].append(min(1.0, max(0.0, w)))
    if not all(shares.values()):
        raise SystemExit("the same plan measured on two cards of different bandwidth is needed for bandwidth_share")
    return {stage: round(sum(ws) / len(ws), 3) for stage, ws in shares.items()}


def _key(e: dict) -> tuple:
    return (e["gpu"], e["family"], e["plan"], e["weights"], tuple(e["levers"]), e["tokens"], e["cfg"])


def fit_resident_forms(read: list[dict]) -> list[dict]:
    """A weight form's resident forward where a streamed plan of it was measured on one card at several
    shares of its blocks streamed (partial residency): the line through (share, forward) taken at share 0.
    For GGUF that is the form's own cost on the card (its dequantization at every call), which the resident
    bf16 figure, used otherwise, leaves out. The newest figure at each share counts."""
    groups: dict[tuple, dict[float, dict]] = {}
    for e in read:
        if e["plan"] == memory.Placement.GROUP_OFFLOAD.plan:
            groups.setdefault(_key(e), {})[e.get("streamed_share", 1.0)] = e
    fitted = []
    for by_share in groups.values():
        if len(by_share) < 2 or max(by_share) - min(by_share) < 0.3:  # too close to tell slope from noise
            continue
        points = sorted(by_share.items())
        xs, ys = [x for x, _ in points], [e["forward_s"] for _, e in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        base = {k: v for k, v in points[0][1].items() if k != "streamed_share"}
        fitted.append({
            **base,
            "plan": RESIDENT,
            "forward_s": round(my - slope * mx, 4),
            "decode_s": round(statistics.fmean(e["decode_s"] for _, e in points), 3),
            "other_s": 0.0,
            "cold_extra_s": None,
            "config": "fitted at 0 streamed from " + ", ".join(f"{e['config']} ({x:.2f})" for x, e in points),
            "source": ", ".join(sorted({e["source"] for _, e in points})),
        })
    return fitted


def build(paths: list[Path]) -> dict:
    entries: dict[tuple, dict] = {}
    text: dict[tuple, dict] = {}
    samples: list[dict] = []
    read: list[dict] = []  # every entry read, also those replaced: the fit of resident forms uses them all
    expert_read = None  # from the last file that measured it: the reading code changed between files
    compile_s: dict[str, float] = {}  # the longest compile of the GGUF dequantization, per family
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        expert_read = expert_read_gb_s(data["runs"]) or expert_read
        for family, seconds in dequant_compile_s(data["runs"]).items():
            compile_s[family] = max(compile_s.get(family, 0.0), seconds)
        gpu = data["environment"].get("gpu", "CPU")
        produced, loads = production_parts(data, gpu, _rel(path))
        samples += loads
        # A later file replaces an earlier figure of the same plan (the code it measured changed); within a
        # file, the run with the most blocks streamed stands for a streamed plan (the others feed the fit).
        runs = sorted(data["runs"], key=lambda r: r.get("streamed_share", 1.0))
        for e in [entry_of(run, gpu, _rel(path)) for run in runs] + produced:
            if e:
                read.append(e)
                entries[_key(e)] = e
        for run in data["runs"]:
            t = text_entry(run, gpu, _rel(path))
            if t:
                text[(gpu, t["placement"])] = t
    for e in fit_resident_forms(read):
        entries.setdefault(_key(e), e)  # a measured resident run of the form stays
    ordered = sorted(
        entries.values(),
        key=lambda e: (e["family"], e["plan"], e["weights"], e["levers"], e["tokens"], e["cfg"], e["gpu"]),
    )
    writing = json.loads((ROOT / WRITING).read_text(encoding="utf-8"))["median_seconds"]
    write = {"wan": writing["clip"]["every_clip"], "qwen": writing["image"]["png"]}
    load, behind = {}, {}
    for family in write:
        mine = [x for x in samples if x["family"] == family]
        if mine:
            write[family] = round(statistics.median(x["overhead_s"] for x in mine), 3)
            rest = [x["besides_files_s"] for x in mine if x["besides_files_s"] is not None]
            behind.update({family: round(statistics.median(rest), 3)} if rest and family == "wan" else {})
            load[family] = round(sum(x["bytes"] for x in mine) / 1e9 / sum(x["seconds"] for x in mine), 2)
        else:  # no production measured: loading is the disk's assumed speed
            load[family] = ASSUMPTIONS["disk_read_gb_s"]
    return {
        "about": "Measured speeds of the generation scripts' plans (bench/speedmodel.py writes this file; "
        "producer/sizing/estimate.py reads it). Do not edit by hand: rerun the command in bench/speedmodel.py.",
        "sources": [_rel(p) for p in paths] + [WRITING, LORA_FOLD, REFOLD],
        "notes": NOTES,
        "assumptions": {
            **ASSUMPTIONS,
            "write_s": write,
            "written_behind_s": behind,
            "load_gb_s": load,
            **({"expert_read_gb_s": expert_read} if expert_read else {}),
            "lora_fold_mparams_s": lora_fold_mparams_s(json.loads((ROOT / LORA_FOLD).read_text())["runs"]),
            "refold_share": refold_share(json.loads((ROOT / REFOLD).read_text())),
            "dequant_compile_s": compile_s,
        },
        "token_curves": token_curves(ordered),
        "bandwidth_share": bandwidth_share(ordered),
        "entries": ordered,
        "text": sorted(text.values(), key=lambda t: (t["placement"], t["gpu"])),
    }


def dumps(model: dict) -> str:
    return json.dumps(model, indent=1, sort_keys=True) + "\n"


def _on_this_disk(model: dict, run: dict) -> dict:
    """The model with the disk speed the run measured (runs reading experts from files record it): the
    assumed 1 GB/s is a user's disk, not the benchmark machine's."""
    measured = (run.get("disk_read") or {}).get("gb_per_s")
    return {**model, "assumptions": {**model["assumptions"], "disk_read_gb_s": measured}} if measured else model


def compare(data: dict, model: dict, source: str = "") -> list[dict]:
    """Each run of benchmark results beside what the speed model predicts for it on the same card (the
    measured total has no output writing, so the prediction's write_s is left out too)."""
    from producer.facts import hardware

    gpu = estimate.gpu_spec(data["environment"].get("gpu"))
    rows = []
    for run in data["runs"]:
        e = entry_of(run, data["environment"].get("gpu", "CPU"), source)
        if e is None or e["plan"] == memory.Placement.CPU.plan:  # the speed model covers GPUs only
            continue
        offload = memory.Placement.of_plan(e["plan"]).offload
        footprint = estimate.FOOTPRINTS[e["family"]]
        work = (
            memory.wan_workload(e["width"], e["height"], e["frames"])
            if e["family"] == "wan"
            else memory.qwen_workload(e["width"], e["height"], e["references"])
        )
        # The machine the run planned for (a capped card for capN and planVxR; a planVxR run's RAM decides
        # whether both Wan experts stay in memory), and the resident blocks it kept (none in runs made
        # before partial residency).
        machine = run.get("machine_gb") or {"vram": cap_gib(run["config"]) or data["environment"].get("gpu_memory_gib", 80),
                                            "ram": 512}
        hw = hardware.from_sizes(machine["vram"], machine["ram"], name=gpu.name)
        plan = memory.plan_memory(hw, footprint, work, offload, e["weights"],
                                  max_resident_blocks=run.get("resident_blocks", 0))
        steps = WORKLOADS[run["workload"]][4]
        item = estimate.Item(e["family"], e["width"], e["height"], steps, e["cfg"], e["frames"], e["references"])
        p = estimate.predict_item(item, plan, gpu, levers=tuple(e["levers"]), model=_on_this_disk(model, run))
        measured = run["seconds"]["total"]
        predicted = None if p.seconds is None else p.seconds - model["assumptions"]["write_s"][e["family"]]
        rows.append({"workload": run["workload"], "config": run["config"], "plan": e["plan"], "weights": e["weights"],
                     **estimate.prediction_error(predicted, measured), "basis": p.basis})
    return rows


def compare_production(data: dict, model: dict) -> list[dict]:
    """Each phase of a production-3 run beside what `production.py estimate` predicts for it (forecast.predict_phase)
    with this model, on the machine the run had: the card (capped under planVxR), its RAM, the batch's choices."""
    import re

    from batches import choices, phase_item, phase_size
    from producer.facts import hardware
    from producer.workflow import forecast

    rows = []
    for run in data["runs"]:
        for phase in [] if run.get("error") else run.get("phases", []):
            family = phase["family"]
            machine = phase["predicted"].get("machine") or dict(
                zip(("vram_gib", "ram_gib"), map(float, re.search(r"(\d+) GiB GPU, (\d+) GiB RAM", phase["plan"]).groups()))
            )
            hw = hardware.from_sizes(machine["vram_gib"], machine["ram_gib"], name=data["environment"]["gpu"],
                                     host_link=tuple(machine["host_link"]) if machine.get("host_link") else None)
            item = phase_item(family, *phase_size(phase, data.get("command", "")))
            predicted = forecast.predict_phase(family, [item] * phase["items"], hw, choices(family, run["config"]), model)
            rows.append({"workload": run["workload"], "config": f"{run['config']}:{phase['phase']}", "plan": family,
                         **estimate.prediction_error(predicted["seconds"], phase["wall_s"]),
                         "basis": predicted["items"][0].basis})
    return rows


def compare_lines(data: dict, model: dict | None = None, source: str = "") -> list[str]:
    lines = []
    model = model or estimate.speed_model()
    for r in compare(data, model, source) + compare_production(data, model):
        err = "-" if r["error"] is None else f"{r['error']:+.1%}"
        lines.append(
            f"{r['workload']:<14} {r['config']:<12} predicted {r['predicted_s']} s, measured {r['measured_s']} s, "
            f"error {err}   ({r['basis']})"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", type=Path, help="benchmark results JSON files, oldest first")
    p.add_argument("--out", type=Path, help="write the speed model here (default: print it)")
    p.add_argument("--compare", type=Path, metavar="RESULTS", help="predicted vs measured for each run of RESULTS")
    args = p.parse_args(argv)
    if args.compare:
        data = json.loads(args.compare.read_text(encoding="utf-8"))
        print("\n".join(compare_lines(data, source=_rel(args.compare))))
        return 0
    if not args.results:
        p.error("give the results files, or --compare RESULTS")
    text = dumps(build(args.results))
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.out)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
