"""Several GPUs: scene-parallel throughput and one clip split over GPUs, with full-size random-weight Wan.

    # scene-parallel: clips per minute on 1, 2 and 4 GPUs; efficiency = throughput(N) / (N x throughput(1))
    python bench/parallel.py scenes --gpus 1,2,4 --clips 16 --workload wan-480p-4 --out scenes.json
    # one clip over GPUs (Ulysses): efficiency = seconds(1) / (N x seconds(N)), denoising and whole clip
    python bench/parallel.py context --gpus 1,2,4 --workload wan-720p-4 --out context.json

Both print a Markdown table for docs/performance.md (and write it with --markdown). The code measured is
the scripts' own: workers launched by torchrun claim clips from the same TCPStore queue as
`wan_video.py --batch` (producer.runs.parallel.run_jobs), and context parallelism is the same session
(producer.engines.wan.context_parallel.ContextParallelWanSession) that `wan_video.py --context-parallel` runs. The
models are the full-size architectures with random weights (bench/fullsize.py), built on each GPU; text
encoding is bypassed with embeddings of the real shape, as in bench/benchmark.py. Loading real weights
from disk is not part of the figures.

Scenes: every worker makes one clip to warm up (cuDNN autotuning), waits for the others, then claims
clips until the queue is empty; throughput is clips over the time from the first start to the last end.
Context: each configuration makes the clip --repeats times in one process group; the last run counts.
`--size tiny --device cpu` runs the same code on the stand-in configs with CPU processes (gloo), so the
benchmark cannot rot; context mode then also reports the largest pixel difference from one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE))

from benchmark import TINY, WORKLOADS, environment


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("scenes", "context"))
    p.add_argument("--gpus", default="1,2", help="GPU counts to compare, e.g. 1,2,4 (the first is the baseline)")
    p.add_argument("--workload", default=None, choices=[w for w in WORKLOADS if w.startswith("wan")],
                   help="default: wan-480p-4 for scenes, wan-720p-4 for context")
    p.add_argument("--clips", type=int, default=None, help="scenes: clips in the queue (default 4 per GPU of the "
                                                            "largest count)")
    p.add_argument("--repeats", type=int, default=2, help="context: runs per configuration, the last counts")
    p.add_argument("--measure-steps", type=int, default=None,
                   help="run only this many denoising steps and scale the denoising time to the full schedule")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, help="JSON results")
    p.add_argument("--markdown", type=Path, help="the table, for docs/performance.md")
    p.add_argument("--rank-child", metavar="RUN_FOLDER", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- the parent: one torchrun per GPU count


def main(argv=None) -> int:
    args = parse_args(argv)
    args.workload = args.workload or ("wan-480p-4" if args.mode == "scenes" else "wan-720p-4")
    if args.rank_child:
        return run_child(args)
    counts = [int(n) for n in args.gpus.split(",")]
    args.clips = args.clips or 4 * max(counts)
    runs = [launch(args, n) for n in counts]
    results = {"mode": args.mode, "workload": args.workload, "size": args.size, "command": " ".join(sys.argv),
               "environment": environment(), "runs": runs}
    table = markdown(results)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all("error" not in r for r in runs) else 1


def launch(args, n: int) -> dict:
    """One configuration: n ranks under torchrun (the scripts' launcher), the ranks' reports gathered."""
    import shutil
    import tempfile

    from producer.runs import parallel

    run_dir = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    store = parallel.start_store()
    devices = tuple(parallel.visible_gpus()[:n]) if args.device == "cuda" else ()
    if args.device == "cuda" and len(devices) < n:
        return {"gpus": n, "error": f"{n} GPUs asked for, {len(devices)} visible"}
    launch = parallel.Launch(args.mode, n, devices)
    argv = _child_argv(args, n)
    started = time.perf_counter()
    try:
        code = parallel.torchrun(Path(__file__).resolve(), [*argv, "--rank-child", str(run_dir)], launch,
                                 {parallel.STORE_ENV: f"127.0.0.1:{store.port}"})
        wall = round(time.perf_counter() - started, 3)
        reports = [json.loads(p.read_text()) for p in sorted((run_dir / "ranks").glob("*.json"))]
        clips = [json.loads(p.read_text()) for p in sorted((run_dir / "jobs").glob("*.json"))]
        if code != 0 or not reports:
            return {"gpus": n, "error": f"torchrun exit code {code}", "wall_s": wall}
        return summarize(args, n, reports, clips, wall)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _child_argv(args, n: int) -> list[str]:
    argv = [args.mode, "--workload", args.workload, "--size", args.size, "--device", args.device,
            "--clips", str(args.clips), "--repeats", str(args.repeats), "--gpus", str(n)]
    return argv + (["--measure-steps", str(args.measure_steps)] if args.measure_steps else [])


def summarize(args, n: int, reports: list[dict], clips: list[dict], wall: float) -> dict:
    if args.mode == "scenes":
        ok = [c for c in clips if c.get("status") == "ok"]
        window = max(c["end"] for c in ok) - min(c["start"] for c in ok) if ok else 0.0
        per_worker = {r["rank"]: sum(1 for c in ok if c.get("worker") == r["rank"]) for r in reports}
        return {"gpus": n, "clips": len(ok), "failed": len(clips) - len(ok), "window_s": round(window, 3),
                "clips_per_min": round(60 * len(ok) / window, 3) if window else None,
                "clip_s": round(sum(c["seconds"]["total"] for c in ok) / len(ok), 3) if ok else None,
                "clips_per_worker": per_worker, "peak_vram_gib": max(r["peak_vram_gib"] or 0 for r in reports),
                "wall_s": wall}
    lead = next(r for r in reports if r["rank"] == 0)
    return {"gpus": n, "seconds": lead["seconds"], "peak_vram_gib": max(r["peak_vram_gib"] or 0 for r in reports),
            "max_pixel_difference": lead.get("max_pixel_difference"), "wall_s": wall}


# ---------------------------------------------------------------- a rank


def run_child(args) -> int:
    from producer import cli
    from producer.files import outputs

    rank = int(os.environ["RANK"])
    report = {"rank": rank}
    if args.mode == "scenes":
        report.update(scenes_child(args, rank))
    else:
        report.update(context_child(args, rank))
    report.update(cli.peak_memory())
    folder = args.rank_child / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    outputs.write_json_atomic(folder / f"{rank}.json", report)
    return 0


def _session(args, device: str, session_class):
    """A full-size (or tiny) random-weight Wan session under this machine's plan, and the clip to make."""
    import fullsize
    import numpy as np
    import torch
    from children import _footprint, _plan
    from diffusers import WanImageToVideoPipeline
    from PIL import Image
    from producer.engines.wan import wan
    from producer.facts import registry
    from producer.sizing import memory

    _, width, height, frames, steps, cfg = WORKLOADS[args.workload]
    if args.size == "tiny":
        width, height, frames = TINY["wan"]
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    parts = fullsize.wan_components(args.size, device, dtype)
    embeds = fullsize.wan_prompt_embeds(args.size, device, dtype)
    negative = fullsize.wan_prompt_embeds(args.size, device, dtype, seed=2) if cfg else None
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=parts["vae"], scheduler=parts["scheduler"],
                                   transformer=parts["transformer"], transformer_2=parts["transformer_2"],
                                   boundary_ratio=registry.WAN.boundary_ratio)
    plan = _plan("wan", _footprint("wan", parts, args.size), memory.wan_workload(width, height, frames), "project")
    session = session_class.from_components(pipe, plan, device, progress=False)
    sampling = replace(registry.WAN.full if cfg else registry.WAN.distilled, steps=args.measure_steps or steps)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    job = wan.ClipJob(image=Image.fromarray(pixels), prompt="bench", width=width, height=height, frames=frames,
                      sampling=sampling, seed=0, negative_prompt="bench negative" if cfg else "")
    session._embeds[job.prompt_key] = (embeds, negative)  # the text encoder is bypassed, as in bench/benchmark.py
    return session, job, steps


def _timed_clip(session, job, steps: int) -> tuple[dict, object]:
    import torch

    def sync():
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)

    sync()
    start = time.perf_counter()
    clip = session.generate(job)
    sync()
    seconds = dict(clip.seconds, total=round(time.perf_counter() - start, 3))
    scale = steps / job.sampling.steps  # --measure-steps: the denoising time scaled to the whole schedule
    if scale != 1:
        for name in ("denoise", "high_expert", "low_expert"):
            seconds[name] = round(seconds[name] * scale, 3)
        seconds["total"] = round(seconds["total"] + clip.seconds["denoise"] * (scale - 1), 3)
    return seconds, clip


def scenes_child(args, rank: int) -> dict:
    """Warm up, wait for every worker, then claim clips from the shared queue until it is empty."""
    from producer.engines.wan import wan
    from producer.runs import batch, parallel

    parallel.pin_gpu()
    device = "cpu" if args.device == "cpu" else "cuda:0"  # this worker's own GPU, as in wan_video.py --batch
    session, job, steps = _session(args, device, wan.WanSession)
    _timed_clip(session, job, steps)
    share = parallel.Share.connect(args.rank_child)
    share.store.add("ready", 1)
    while int(share.store.add("ready", 0)) < int(os.environ["WORLD_SIZE"]):
        time.sleep(0.05)

    def make(_job) -> dict:
        start = time.time()
        seconds, _ = _timed_clip(session, job, steps)
        return {"status": "ok", "seconds": seconds, "start": start, "end": time.time()}

    queue = [batch.Job(i, argparse.Namespace(), {}) for i in range(args.clips)]
    parallel.run_jobs(queue, make, lambda j: f"clip {j.index}", worker_dir=args.rank_child)
    return {"warm": True}


def context_child(args, rank: int) -> dict:
    """The clip --repeats times, split over the ranks (one rank: the plain session, no process group)."""
    import torch
    from producer.engines.wan import context_parallel, wan

    world = int(os.environ["WORLD_SIZE"])
    joined = context_parallel.init_ranks(args.device) if world > 1 else None
    device = joined.device if joined else ("cpu" if args.device == "cpu" else "cuda:0")
    session_class = context_parallel.ContextParallelWanSession if joined else wan.WanSession
    try:
        session, job, steps = _session(args, device, session_class)
        for _ in range(args.repeats):
            seconds, clip = _timed_clip(session, job, steps)
        out = {"seconds": seconds}
        if args.size == "tiny" and rank == 0:  # the same clip in one process, for the pixel difference
            alone, _, _ = _session(args, device, wan.WanSession)
            reference = alone.generate(job).frames
            out["max_pixel_difference"] = round(float(abs(torch.tensor(clip.frames) - torch.tensor(reference))
                                                      .max()) * 255, 3)
        return out
    finally:
        if joined:
            joined.close()


# ---------------------------------------------------------------- reporting


def markdown(results: dict) -> str:
    env = results["environment"]
    head = (f"{results['mode']}, {results['workload']} ({results['size']}), {env.get('gpu', 'CPU')}, "
            f"torch {env['torch']}, diffusers {env.get('diffusers')}, {env['date']}")
    runs = results["runs"]
    base = next((r for r in runs if "error" not in r), None)
    if results["mode"] == "scenes":
        lines = [head, "", "| GPUs | clips | clips/min | efficiency | s per clip | clips per worker | peak VRAM GiB |",
                 "|---|---|---|---|---|---|---|"]
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['gpus']} | failed: {r['error']} | | | | | |")
                continue
            eff = r["clips_per_min"] / (r["gpus"] / base["gpus"] * base["clips_per_min"]) if base else None
            lines.append(f"| {r['gpus']} | {r['clips']} | {r['clips_per_min']} | {eff:.1%} | {r['clip_s']} | "
                         f"{r['clips_per_worker']} | {r['peak_vram_gib']} |")
        return "\n".join(lines)
    columns = ("GPUs", "denoise s", "clip s", "efficiency (denoise)", "efficiency (clip)", "decode s", "peak VRAM GiB",
               "max pixel difference")
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['gpus']} | failed: {r['error']} | | | | | | |")
            continue
        s, b = r["seconds"], base["seconds"]
        scale = r["gpus"] / base["gpus"]
        lines.append(f"| {r['gpus']} | {s['denoise']} | {s['total']} | {b['denoise'] / (scale * s['denoise']):.1%} | "
                     f"{b['total'] / (scale * s['total']):.1%} | {s['decode']} | {r['peak_vram_gib']} | "
                     f"{r.get('max_pixel_difference', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
