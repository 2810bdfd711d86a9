"""The benchmark's Wan experts on disk: full-size GGUF files written once, and a session whose experts the
scripts' own loader reads from them, its load timed stage by stage (bench/load_stages.py)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import fullsize
import load_stages
import ramwatch
import torch


def gguf_paths(folder: Path, form: str, size: str) -> dict:
    from producer.facts.registry import WAN_DENOISERS

    return {c: folder / f"wan-{size}-{form}-{c}.gguf" for c in WAN_DENOISERS}


def write_gguf_files(args, form: str, folder: str) -> dict:
    """(its own process, so that writing does not count in a run's peak RAM) Both experts of `form` as
    ComfyUI-GGUF files, with the configs beside them that the scripts' loader needs."""
    from children import _dtype

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _dtype(args.size, device)
    parts = fullsize.wan_components(args.size, device, dtype, wide=True)
    written = {}
    for seed, (component, path) in enumerate(gguf_paths(Path(folder), form, args.size).items()):
        module = parts.pop(component)
        fullsize.quantize_like_gguf(module, form, dtype, seed)
        module.save_config(Path(folder) / f"snapshot-{args.size}" / component)
        written[component] = fullsize.write_gguf_expert(module, path, form)
        del module
    return written


def session_from_disk(args, pipe, plan, form: str, device: str, speed, lora_specs):
    """A Wan session whose experts the scripts' own loader (experts.ExpertsOnDisk) reads from GGUF files: the
    load, and for one-expert-in-RAM plans the reload at every clip, are measured as a user meets them."""
    from children import _dtype, _timed
    from producer.engines.wan import experts, wan
    from producer.engines.wan.wan_load import WanFiles
    folder = Path(args.from_disk)
    paths = gguf_paths(folder, form, args.size)
    if not all(p.exists() for p in paths.values()):
        cmd = [sys.executable, str(Path(__file__).with_name("benchmark.py")), "--write-gguf", form, str(folder),
               "--size", args.size, "--device", device]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if device == "cuda":
        torch.cuda.empty_cache()
    disk = {"disk_read": fullsize.read_speed(paths.values())}  # warm page cache, as after a first run
    dtype = _dtype(args.size, device)
    files = WanFiles(folder / f"snapshot-{args.size}", form, paths)
    session = wan.WanSession(pipe, plan, torch.device(device), experts.ExpertsOnDisk(files, dtype, torch.device(device),
                                                                                   plan), progress=False,
                              speed=speed, lora_specs=lora_specs)
    ramwatch.mark("load")
    with load_stages.watched(device) as stages, _timed(device, disk, "load_to_first_step_s"):
        session._experts_for_start()
    disk["load_stages_s"] = load_stages.summary(stages, disk["load_to_first_step_s"])
    # The floor: reading what was loaded (both files, or the first expert's for one-expert-in-RAM plans).
    disk["load_floor_s"] = round(disk["disk_read"]["seconds"] * (1.0 if plan.experts_in_ram == 2 else 0.5), 3)
    return session, disk


@contextmanager
def reads_in_clips(device: str, plan, watch: bool):
    """With one expert in RAM, each clip reads its experts at their turn (`load_experts`, `expert_swap`): yields a
    dict that fills with those reads' load stages (load_stages), summed over the runs; an empty one otherwise."""
    if not (watch and plan.experts_in_ram == 1):
        yield {}
        return
    with load_stages.watched(device) as stages:
        yield stages


def per_clip(stages: dict, clip_seconds: dict, runs: int) -> dict:
    """`reads_in_clips`' stages per clip, against the last clip's own seconds of reading (its `other`: what the
    stages do not name, e.g. freeing the expert before)."""
    whole = clip_seconds.get("load_experts", 0.0) + clip_seconds.get("expert_swap", 0.0)
    return load_stages.summary({k: v / runs for k, v in stages.items()}, whole)
