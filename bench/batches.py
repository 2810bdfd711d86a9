"""The scripts' real `--batch` on full-size random weights: per-item time against pure generation (issue 16),
and a 3-scene production's predicted time against the measured one (issue 21).

Workloads (benchmark.BATCH_WORKLOADS): `wan-batch` (N clips), `qwen-batch` (N pictures), `production-3` (the
keyframes of 3 scenes, then their 3 clips from those keyframes: each phase one batch, as `production.py next`
runs it). Configurations: `project` (the plan the scripts choose on this card) and `planVxR` (that machine's
plan: its --offload and weight form passed to the script, CUDA memory capped at V GiB; host RAM cannot be
capped, but the script is told R GB (PRODUCER_RAM_GB), so it chooses that machine's plan, e.g. one expert in
RAM; the measured RAM peak is reported against it).

What runs: the models are installed once into the --from-disk folder (bench/installs.py; in a process of
their own at full size, so that writing them counts in no peak), then the script's own main(argv) runs in
this process with `--batch FILE --json --models-dir DIR --weights FORM --offload X --workers 1`, as a user
runs it. The clock is around each job (producer.runs.batch._attempt, the GPU synchronised at its end) and around
main(); the scripts' own stage clock is made to synchronise the GPU at each stage's start and end (see
synced_stages), so that pure generation is all of the GPU's generating work.

Per item: `wall` (from the job's start to the next job's start; the last: to its files written. A clip's
files are finished in the background while the next clip generates and put in place after it, runs/behind.py,
so each item's wall holds its own generation and the previous item's wait and commit), `pure` (denoise + decode from the script's own
stage seconds, an expert swap left out), `load` (the first job's reading of the denoisers: once a batch),
`overhead` = wall - pure - load (keyframes in, judging, colour match, review files, MP4/PNG, recipe, and
for one-expert-in-RAM plans the re-reading of experts), `ratio` = (wall - load) / pure: issue 16's goal is
<= 1.10. Per phase: the batch's whole wall time (plan, text encoder, prompts, denoisers, items) against
producer.workflow.forecast.predict_phase, what `production.py estimate` predicts for that phase on this machine
with the same choices: issue 21's goal is within 20 %.

The items have the step-distilled shape (4 steps, no CFG: the speed model's `-4` workloads) given as
--steps 4 and guidance 1, since no Lightning LoRA is installed (on GGUF experts the scripts fold it into the
weights each layer dequantizes: its cost per step is what the single runs' `planVxR-lora` measure). Judge thresholds are set so that random pictures
are never refused (the checks still run and cost what they cost): a refused item would write nothing.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import installs
import numpy as np
import torch
from benchmark import BATCH_WORKLOADS, plan_machine
from PIL import Image

PHASE_FAMILY = {"keyframes": "qwen", "clips": "wan"}
SIZES = {"full": {"qwen": (832, 480), "wan": (832, 480, 81)}, "tiny": {"qwen": (64, 64), "wan": (32, 32, 5)}}
REFERENCE_SIDE = {"full": 1024, "tiny": 64}  # the asset each keyframe edits (Qwen's reference area is 1024^2)
SCHEDULE = {"qwen": {"steps": 4, "cfg": 1}, "wan": {"steps": 4, "guidance": 1, "guidance_2": 1}}
# No threshold a random picture can cross: every check runs, none refuses (black: 99 % below 0; white: above 256).
NEVER_REFUSE = [
    "black_level=0",
    "white_level=256",
    "uniform_spread=0",
    "frozen_share=0",
    "flicker_ratio=1e9",
    "flicker_floor=1e9",
]
LOAD_STAGES = ("load_experts", "load_transformer", "place", "lora_load")  # the first job's: the load once


def run_batches(args, workload: str, config: str, device: str) -> dict:
    if config != "project" and plan_machine(config) is None:
        raise SystemExit(f"{workload}: configs are project or planVxR (the script's own plans), not {config}")
    from children import _apply_cap

    _apply_cap(config, device)  # planVxR: the CUDA memory capped at V GiB, as the script's plan is told
    home = Path(args.from_disk) if args.from_disk else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    folder = home / f"production-{workload}-{config}"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "assets").mkdir(parents=True)
    side = REFERENCE_SIDE[args.size]
    _picture(side, side, 0).save(folder / "assets" / "reference.png")
    phases, written = [], []
    for phase in BATCH_WORKLOADS[workload]:
        family = PHASE_FAMILY[phase]
        choice = choices(family, config)
        written.append(_install(args, family, choice["weights"], home, device))
        gc.collect()
        phases.append(run_phase(args, phase, family, folder, home, choice, device))
    total = sum(p["wall_s"] for p in phases)
    predicted = [p["predicted"]["total_s"] for p in phases]
    from producer.sizing import estimate

    production = estimate.prediction_error(None if None in predicted else sum(predicted), total)
    return {
        "seconds": {"total": round(total, 3)},
        "plan": "; ".join(p["plan"] for p in phases),
        "phases": phases,
        "production": production,
        "installs": written,
        "weights_made": installs.HOW_MADE,
        **_machine(config),
    }


def choices(family: str, config: str) -> dict:
    """--offload and --weights for the script: auto and the installed GGUF Q4 under `project`; the machine's
    plan under planVxR (a non-GGUF form becomes Q4: only GGUF denoisers fit the disk beside the rest)."""
    from children import _machine_plan

    plan = _machine_plan(family, config)
    if plan is None:
        return {"offload": "auto", "weights": "gguf-q4"}
    form = plan.weights if plan.weights in ("gguf-q4", "gguf-q8") else "gguf-q4"
    # The --offload value that asks for this plan: auto for group offloading (`group` streams every block;
    # auto under the V GiB cap keeps the blocks that fit, as on that machine), none asks for cpu.
    offload = "auto" if plan.placement.offload in (None, "group") else plan.placement.offload
    return {"offload": offload, "weights": form, "machine_plan": plan.summary()}


def _machine(config: str) -> dict:
    machine = plan_machine(config)
    return {"machine_gb": {"vram": machine[0], "ram": machine[1]}} if machine else {}


def _picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _install(args, family: str, form: str, home: Path, device: str) -> dict:
    """At full size in a process of its own (its memory is not the batch's); tiny models in this one."""
    if args.size == "tiny":
        return installs.install(home, family, form, args.size, device)
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("benchmark.py")),
        "--install",
        family,
        form,
        str(home),
        "--size",
        args.size,
        "--device",
        device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"installing {family} {form} failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- one phase: one batch


def jobs_for(phase: str, family: str, folder: Path, size: str, count: int) -> list[dict]:
    """The batch file's jobs: keyframes edit the reference asset; clips start on the keyframes (those the
    keyframes phase made, or random ones written here when it did not run)."""
    if family == "qwen":
        w, h = SIZES[size]["qwen"]
        return [
            {
                "reference": "assets/reference.png",
                "prompt": f"scene {i + 1}, keyframe",
                "size": f"{w}x{h}",
                "output": f"keyframes/KF-{i + 1}.png",
                "seed": i,
                "judge": NEVER_REFUSE,
                **SCHEDULE["qwen"],
            }
            for i in range(count)
        ]
    w, h, frames = SIZES[size]["wan"]
    (folder / "keyframes").mkdir(exist_ok=True)
    (folder / "clips").mkdir(exist_ok=True)
    for i in range(count):
        keyframe = folder / "keyframes" / f"KF-{i + 1}.png"
        if not keyframe.exists():
            _picture(w, h, i + 1).save(keyframe)
    return [
        {
            "start_frame": f"keyframes/KF-{i + 1}.png",
            "prompt": f"scene {i + 1}, the camera moves",
            "size": f"{w}x{h}",
            "frames": frames,
            "output": f"clips/scene-{i + 1}.mp4",
            "seed": i,
            "judge": NEVER_REFUSE,
            **SCHEDULE["wan"],
        }
        for i in range(count)
    ]


def run_phase(args, phase: str, family: str, folder: Path, home: Path, choice: dict, device: str) -> dict:
    from producer.makers import qwen_image, wan_video
    from producer.runs import batch

    (folder / "keyframes").mkdir(exist_ok=True)
    jobs = jobs_for(phase, family, folder, args.size, args.batch_items)
    batch_file = folder / f"{phase}.json"
    batch_file.write_text(json.dumps({"jobs": jobs}, indent=1))
    argv = [
        "--batch",
        str(batch_file),
        "--json",
        "--models-dir",
        str(home),
        "--weights",
        choice["weights"],
        "--offload",
        choice["offload"],
        "--workers",
        "1",
        "--quiet",
    ] + (["--device", "cpu"] if device == "cpu" else [])
    marks: dict[int, tuple[float, float]] = {}
    original, settle = batch._attempt, batch._settle

    def timed(job, *rest):
        start = time.perf_counter()
        try:
            return original(job, *rest)
        finally:
            _sync(device)
            marks[job.index] = (start, time.perf_counter())

    def timed_settle(pending, *rest):  # a clip written behind: its files are in place here (runs/behind.py)
        job = pending[-1][1] if pending else None
        settle(pending, *rest)
        if job is not None:
            marks[job.index] = (marks[job.index][0], time.perf_counter())

    out = io.StringIO()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batch._attempt, batch._settle = timed, timed_settle
    from ramwatch import RamWatch

    try:
        _sync(device)
        begin = time.perf_counter()
        with contextlib.redirect_stdout(out), synced_stages(device), RamWatch() as ram:
            code = (wan_video if family == "wan" else qwen_image).main(argv)
        _sync(device)
        wall = time.perf_counter() - begin
    finally:
        batch._attempt, batch._settle = original, settle
    report = json.loads(out.getvalue())
    if code != 0:
        failed = [j.get("error") for j in report.get("jobs", []) if j.get("status") != "ok"]
        raise SystemExit(f"{phase}: the batch exited {code}: {report.get('error') or failed}")
    measured = measure(report["jobs"], marks, begin, wall)
    predicted = _predicted(family, jobs, home, choice, device)
    plans = report.get("memory_plans", {}).get("edit") or report.get("memory_plan")
    result = {
        "phase": phase,
        "family": family,
        "items": len(jobs),
        "size": jobs[0]["size"],  # the speed model reads the items' size from here (bench/speedmodel.py)
        **({"frames": jobs[0]["frames"]} if family == "wan" else {"references": 1}),
        "plan": plans["summary"],
        "peak_vram_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if device == "cuda" else 0.0,
        # this phase's host RAM (anonymous + shared: what has to fit; the mapped model files are page cache)
        # beside the plan's prediction: the real loading path, models read from files
        **{k: v for k, v in ram.peaks().items() if k in ("peak_ram_anon_gib", "file_pages_at_anon_peak_gib")},
        "predicted_ram_gib": plans.get("peak_ram_gib"),
        "predicted_vram_gib": plans.get("peak_vram_gib"),
        **measured,
        "predicted": predicted,
        "script_prediction": report.get("prediction"),
        # the batch's own load figures: Wan's text encoder load and prompts; Qwen's stages summed over the batch
        "script_seconds": report.get("load_seconds") or report.get("seconds"),
        "speed": report.get("speed", []),  # the levers the script applied (the speed model keys entries by them)
    }
    result["errors"] = {k: _error(predicted.get(f"{k}_s"), measured[f"{k}_s"]) for k in ("load_text", "items", "total")}
    if "machine_plan" in choice:
        result["machine_plan"] = choice["machine_plan"]
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


@contextlib.contextmanager
def synced_stages(device: str):
    """The scripts' stage clock (producer.cli.Stopwatch) with the GPU synchronised as each stage starts and ends.
    Unsynchronised, work still queued at the end of Qwen's denoise stage (its pipeline returns before the GPU is
    done) would be counted in no stage, i.e. as overhead. Wan's experts synchronise around every forward already."""
    from producer import cli

    original = cli.Stopwatch.stage

    @contextlib.contextmanager
    def stage(self, name: str):
        _sync(device)
        with original(self, name):
            yield
            _sync(device)

    cli.Stopwatch.stage = stage
    try:
        yield
    finally:
        cli.Stopwatch.stage = original


def _error(predicted, measured: float) -> float | None:
    from producer.sizing import estimate

    return estimate.prediction_error(predicted, measured)["error"]


def measure(jobs: list[dict], marks: dict, begin: float, wall: float) -> dict:
    """Per item and per phase from the batch's JSON and the clock around each job (see the module doc)."""
    rows = []
    ordered = sorted(jobs, key=lambda j: marks[j["job"]][0])
    for n, j in enumerate(ordered):
        start, end = marks[j["job"]]
        if n + 1 < len(ordered):  # to the next item's start: with write-behind that includes this one's files
            end = marks[ordered[n + 1]["job"]][0]
        s = j["seconds"]
        pure = s["denoise"] - s.get("expert_swap", 0.0) + s["decode"]
        load = sum(s.get(k, 0.0) for k in LOAD_STAGES) if not rows else 0.0
        item = end - start
        rows.append(
            {
                "job": j["job"],
                "wall_s": round(item, 3),
                "pure_s": round(pure, 3),
                "load_s": round(load, 3),
                "overhead_s": round(item - pure - load, 3),
                "ratio": round((item - load) / pure, 3),
                "stages": s,  # the script's own (wan: color_match and write are part of the overhead)
            }
        )
    before = marks[rows[0]["job"]][0] - begin  # planning, the text encoder's load, every prompt
    steady = rows[1:] or rows  # the first item pays first-use costs (allocator, autotuning) as well
    return {
        "wall_s": round(wall, 3),
        "before_first_item_s": round(before, 3),
        "load_text_s": round(before + rows[0]["load_s"], 3),
        "items_s": round(sum(r["wall_s"] - r["load_s"] for r in rows), 3),
        "total_s": round(wall, 3),
        "per_item": rows,
        "item_ratio_median": round(statistics.median(r["ratio"] for r in steady), 3),
        # all items together: a one-expert-in-RAM batch runs later clips' high-noise halves inside the first
        # clip's time (its "ahead" stage), which the per-item ratios split unevenly
        "items_ratio": round(sum(r["wall_s"] - r["load_s"] for r in rows) / sum(r["pure_s"] for r in rows), 3),
        "overhead_median_s": round(statistics.median(r["overhead_s"] for r in steady), 3),
        "pure_median_s": round(statistics.median(r["pure_s"] for r in steady), 3),
    }


def phase_item(family: str, size: str, frames: int | None):
    """One job of a phase as the speed model sees it (estimate.Item): the batch's schedule, no CFG."""
    from producer.sizing import estimate

    w, h = (int(v) for v in size.split("x"))
    steps = SCHEDULE[family]["steps"]
    return (estimate.Item("wan", w, h, steps, False, frames=frames) if family == "wan"
            else estimate.Item("qwen", w, h, steps, False, references=1))


def phase_size(phase: dict, command: str) -> tuple[str, int | None]:
    """A recorded phase's item size ("WxH") and frames (Wan); runs before they were recorded: the --size default."""
    size = SIZES["tiny" if "--size tiny" in command else "full"][phase["family"]]
    if "size" in phase:
        return phase["size"], phase.get("frames")
    return f"{size[0]}x{size[1]}", size[2] if phase["family"] == "wan" else None


def _predicted(family: str, jobs: list[dict], home: Path, choice: dict, device: str) -> dict:
    """What `production.py estimate` predicts for this phase on this machine (producer.workflow.forecast.predict_phase)
    with the batch's choices; the models installed in `home` are the ones it sees."""
    from producer.facts import hardware
    from producer.workflow import forecast

    items = [phase_item(family, job["size"], job.get("frames")) for job in jobs]
    hw = hardware.probe(str(home), device)
    p = forecast.predict_phase(family, items, hw, choice)
    per_item = [i.seconds for i in p["items"]]
    known = None not in per_item
    load_text = p["load_seconds"] + p["text_seconds"] if known else None
    return {
        "plan": p["plan"].summary(),
        "load_text_s": None if load_text is None else round(load_text, 2),
        "load_s": p["load_seconds"],
        "text_s": p["text_seconds"],
        "items_s": round(sum(per_item), 2) if known else None,
        "total_s": p["seconds"],
        "per_item_s": per_item,
        "basis": p["items"][0].basis,
        "notes": list(p["items"][0].notes),
        # what the prediction was made for (bench/speedmodel.py --compare predicts it again from these)
        "machine": {"vram_gib": round(hw.vram_total / 2**30, 2), "ram_gib": round(hw.ram_total / 2**30, 2),
                    "host_link": hw.host_link},
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
