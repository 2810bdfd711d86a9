#!/usr/bin/env python3
"""Speed and memory of the generation scripts, with full-size models and random weights.

Every configuration runs in its own process (a fresh CUDA context, its own memory cap and peak
counters) and through the scripts' own code: the memory plan (producer.sizing.memory), its application
(producer.sizing.offload) and the sessions of producer.engines.wan.wan / producer.engines.qwen.qwen (`from_components`). "plain" is
diffusers' pipeline with its defaults, fully on the GPU, measured in the same run for the ratio.
Text encoders are bypassed with precomputed embeddings of the real shapes (timed separately as
`text-encoder` workloads). A smaller card is emulated by capping the process's CUDA memory.

    python bench/benchmark.py --size full --out results.json --markdown results.md \
        --run wan-480p-4:plain,project,cap10 --run qwen-1ref-4:plain,project

The batch workloads (`wan-batch`, `qwen-batch`, `production-3`; bench/batches.py) go further: they install
the full-size models with random weights on disk under the real repo ids (bench/installs.py) and run the
scripts' own `--batch` through their main(), text encoders and loading included, to time each item against
pure generation and each phase against `production.py estimate`'s prediction:

    python bench/benchmark.py --size full --from-disk /tmp/models --out p.json --markdown p.md \
        --run production-3:project

`--size tiny` runs the same code with the stand-in configs on a CPU (the test suite does), so the
benchmark cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE))

GiB = 1024**3

# name -> (family, width, height, frames or references, steps, cfg)
WORKLOADS = {
    "wan-480p-4": ("wan", 832, 480, 81, 4, False),
    "wan-720p-4": ("wan", 1280, 720, 81, 4, False),
    "wan-480p-40": ("wan", 832, 480, 81, 40, True),
    "wan-720p-40": ("wan", 1280, 720, 81, 40, True),
    "qwen-1ref-4": ("qwen", 1024, 1024, 1, 4, False),
    "qwen-3ref-4": ("qwen", 1024, 1024, 3, 4, False),
    "qwen-1ref-40": ("qwen", 1024, 1024, 1, 40, True),
    "qwen-3ref-40": ("qwen", 1024, 1024, 3, 40, True),
    # One prompt through UMT5-XXL (512 tokens), placed as the plan places Wan's text encoder.
    "wan-encode": ("wan-text", 0, 0, 1, 0, False),
}
TINY = {"wan": (64, 64, 9), "qwen": (64, 64)}
# The scripts' own --batch on models installed on disk (bench/batches.py): workload -> its phases, each one batch.
BATCH_WORKLOADS = {"wan-batch": ("clips",), "qwen-batch": ("keyframes",), "production-3": ("keyframes", "clips")}
# Configurations: plain diffusers, the project's default, a lever on top of it, or the default under a cap.
LEVERS = {"project": {}, "compile": {"compile": "on"}, "nocompile": {"compile": "off"},
          "fp8": {"fp8_matmul": True}, "cudnn": {"attention": "_native_cudnn"},
          "flash": {"attention": "_native_flash"}, "fp8+compile": {"fp8_matmul": True, "compile": "on"}}
CAPS = {"cap10": 10, "cap12": 12, "cap16": 16, "cap24": 24, "cap48": 48}
# `planVxR` (e.g. plan10x32): the plan the scripts choose on a machine with V GB of VRAM and R GB of RAM, in
# the weight form it picks (GGUF, fp8 storage or bf16), run under a V GiB cap. Host RAM cannot be capped: the
# measured peak is reported beside R and the plan's prediction. `planVxR-streamall`: the same plan with every
# block streamed (no partial residency), to measure what the resident blocks save in the same run;
# `planVxR-dequant`: the plan with its opt-in lever dequantize_on_arrival (GGUF weights); `planVxR-waitblocks`:
# with the host waiting at every streamed block, as before run_ahead became the default (producer.sizing.run_ahead);
# `planVxR-q4`, `planVxR-q8`: the plan that machine gets when told `--weights gguf-q4` / `gguf-q8` (a form against
# another);
# `planVxR-compdq`: the plan with its GGUF dequantization compiled (compiled_dequant, what `--compile on` does
# where blocks stream), against the plan's own (diffusers' dequantization at every call) in the same run;
# `planVxR-lora` / `-lorapeft`: the plan with the step-distill LoRA, folded into GGUF weights / as adapters
# (bench/loras.py).
PLAN_CONFIG = re.compile(r"^plan(\d+)x(\d+)(-streamall|-dequant|-waitblocks|-q4|-q8|-compdq)?(-lora|-lorapeft)?$")
FORCED_FORMS = {"-q4": "gguf-q4", "-q8": "gguf-q8"}


def plan_machine(config: str) -> tuple[int, int] | None:
    """(VRAM GB, RAM GB) of a `planVxR` configuration, or None for the other configurations."""
    match = PLAN_CONFIG.match(config)
    return (int(match[1]), int(match[2])) if match else None


def has_lever(config: str, suffix: str) -> bool:
    """Does a `planVxR` configuration carry `suffix` (a plan lever, then possibly a LoRA: `plan10x32-dequant-lora`)?"""
    return f"{suffix}-" in f"{config}-"


def cap_gib(config: str) -> int | None:
    machine = plan_machine(config)
    return machine[0] if machine else CAPS.get(config)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--run", action="append", default=[], metavar="WORKLOAD:CONFIG[,CONFIG...]",
                   help=f"workloads: {', '.join([*WORKLOADS, *BATCH_WORKLOADS])}; configs: plain, {', '.join(LEVERS)}, "
                        f"{', '.join(CAPS)}, planVxR (the plan of a V GB VRAM / R GB RAM machine, e.g. plan10x32; "
                        "planVxR-streamall: the same with no resident blocks; planVxR-dequant: with GGUF blocks "
                        "dequantized on arrival; planVxR-waitblocks: with the host waiting at each streamed block "
                        "(the previous way); "
                        "planVxR-q4 / -q8: with that GGUF form asked for; planVxR-compdq: with the GGUF "
                        "dequantization compiled; planVxR-lora / -lorapeft: with the step-distill LoRA folded into "
                        "GGUF weights / as adapters); the batch workloads take project and planVxR")
    p.add_argument("--repeats", type=int, default=2, help="runs per process; the first is reported as cold")
    p.add_argument("--measure-steps", type=int, default=None,
                   help="for long schedules, run only this many steps and extrapolate the rest (stated)")
    p.add_argument("--out", type=Path, default=None, help="JSON results (written after every configuration)")
    p.add_argument("--markdown", type=Path, default=None, help="tables for docs/performance.md")
    p.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    p.add_argument("--deadline", type=int, default=None,
                   help="start no configuration after this many seconds (a device lease ends)")
    p.add_argument("--from-disk", type=Path, default=None, metavar="DIR",
                   help="planVxR Wan runs with GGUF experts read from files in DIR by the scripts' own loader "
                        "(written there once, full size ~9.4 GB an expert): measures load time and the reload "
                        "of one-expert-in-RAM plans against the disk's read speed; the batch workloads install the "
                        "full-size models there (bench/installs.py: Wan ~31 GB, Qwen ~30 GB; one family is removed "
                        "when the disk cannot hold both) and write their outputs there")
    p.add_argument("--batch-items", type=int, default=3,
                   help="items of each batch workload's batch (production-3: its scenes; 3 by default); --repeats "
                        "does not apply to them: the items are the repeats, the first also pays first-use costs")
    p.add_argument("--predict", action="store_true",
                   help="after the runs, print each beside what the speed model (scripts/producer/data/"
                        "speed-model.json) predicts for it on this card, with the error (full size on a GPU)")
    p.add_argument("--install", nargs=3, metavar=("FAMILY", "FORM", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--write-gguf", nargs=2, metavar=("FORM", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--write-lora", nargs=3, metavar=("FAMILY", "WIDE", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "CONFIG"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- the parent: one process per configuration


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_gguf:
        from disk_session import write_gguf_files

        print(json.dumps(write_gguf_files(args, *args.write_gguf)), flush=True)
        return 0
    if args.write_lora:
        from loras import write_lora

        family, wide, path = args.write_lora
        print(json.dumps(write_lora(family, wide == "1", path, args.size)), flush=True)
        return 0
    if args.install:
        import torch
        from installs import install

        family, form, home = args.install
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(install(Path(home), family, form, args.size, device)), flush=True)
        return 0
    if args.child:
        from producer.facts import hardware

        hardware.configure_cuda_allocator()  # as the scripts do
        print(json.dumps(run_child(args, *args.child)), flush=True)
        return 0
    results = {"environment": environment(), "command": " ".join(sys.argv), "runs": []}
    started = time.perf_counter()
    for spec in args.run:
        workload, _, configs = spec.partition(":")
        for config in configs.split(","):
            if args.deadline and time.perf_counter() - started > args.deadline:
                results["runs"].append({"workload": workload, "config": config, "error": "not run (deadline)"})
                continue
            result = _spawn(args, workload, config)
            results["runs"].append(result)
            _print_line(result)
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
    if args.markdown:
        from report import markdown

        args.markdown.write_text(markdown(results))
    if args.predict:
        from speedmodel import compare_lines

        print("\n".join(["predicted (speed model) against measured:", *compare_lines(results)]), flush=True)
    failed = [r for r in results["runs"] if r.get("error")]
    return 1 if failed else 0


def _spawn(args, workload: str, config: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", workload, config, "--size", args.size,
           "--repeats", str(args.repeats)]
    if args.device:
        cmd += ["--device", args.device]
    if args.measure_steps:
        cmd += ["--measure-steps", str(args.measure_steps)]
    if workload in BATCH_WORKLOADS:
        cmd += ["--batch-items", str(args.batch_items)]
    if args.from_disk:
        cmd += ["--from-disk", str(args.from_disk)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cap_gib(config):
        env["PRODUCER_VRAM_CAP_GB"] = str(cap_gib(config))
    if plan_machine(config):  # the scripts' own batches then plan for that machine's RAM (not capped: measured)
        env["PRODUCER_RAM_GB"] = str(plan_machine(config)[1])
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"workload": workload, "config": config, "error": f"timed out after {args.timeout} s"}
    result = _last_result(proc.stdout) if proc.returncode == 0 else {}
    if "seconds" not in result and "phases" not in result:  # failed, or no line of its output was the result
        tail = proc.stderr.strip().splitlines()[-6:] + proc.stdout.strip().splitlines()[-3:]
        return {"workload": workload, "config": config, "error": f"exit code {proc.returncode}: " + " | ".join(tail),
                "wall_s": round(time.perf_counter() - started, 1)}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _last_result(stdout: str) -> dict:
    """The child's result: the last line of its output that is a JSON object ({} if none is)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _print_line(r: dict) -> None:
    if r.get("error"):
        print(f"{r['workload']:14} {r['config']:12} ERROR {r['error'][:300]}", file=sys.stderr, flush=True)
        return
    if "phases" in r:
        for p in r["phases"]:
            print(f"{r['workload']:14} {r['config']:12} {p['phase']:10} {p['wall_s']:8.2f} s (predicted "
                  f"{p['predicted']['total_s']}), per item x{p['item_ratio_median']} of pure generation, "
                  f"overhead {p['overhead_median_s']} s  {p['plan'][:60]}", file=sys.stderr, flush=True)
        return
    print(f"{r['workload']:14} {r['config']:12} {r['seconds']['total']:8.2f} s (cold {r['cold_total']:.2f}) "
          f"VRAM {r['peak_vram_gib']} GiB RAM {r['peak_ram_gib']} GiB  {r.get('plan', '')[:80]}",
          file=sys.stderr, flush=True)


def environment() -> dict:
    import torch

    env = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "python": sys.version.split()[0]}
    if os.environ.get("PRODUCER_LOCK_IN_PLACE"):  # streamed GGUF files locked in place or read (gguf_host)
        env["PRODUCER_LOCK_IN_PLACE"] = os.environ["PRODUCER_LOCK_IN_PLACE"]
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GiB, 1)
        env["gpus_visible"] = torch.cuda.device_count()
        env["host_to_gpu_gb_s"] = host_link_gb_s()
    return env


def host_link_gb_s(size: int = 1 << 30, repeats: int = 3) -> float:
    """This host's pinned host-to-GPU copy rate: the streamed plans are bound by it, and it differs between
    hosts of one GPU model (the Qwen 10 GB plan took 2.73 s on one H100 and 3.21 s on another)."""
    import torch

    host = torch.empty(size, dtype=torch.uint8).pin_memory()
    card = torch.empty_like(host, device="cuda")
    card.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        card.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    rate = repeats * size / (time.perf_counter() - start) / 1e9
    del host, card
    torch.cuda.empty_cache()  # the configurations run in processes of their own, with the card to themselves
    return round(rate, 1)


# ---------------------------------------------------------------- the child: one configuration


def run_child(args, workload: str, config: str) -> dict:
    import torch
    from children import run_qwen, run_wan

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from children import run_wan_text

    if workload in BATCH_WORKLOADS:
        from batches import run_batches

        result = run_batches(args, workload, config, device)
        result.update(workload=workload, config=config, **_peaks(device))
        return result
    family = WORKLOADS[workload][0]
    runner = {"wan": run_wan, "qwen": run_qwen, "wan-text": run_wan_text}[family]
    from ramwatch import RamWatch

    with RamWatch() as ram:
        result = runner(args, workload, config, device)
    result.update(workload=workload, config=config, **_peaks(device), **ram.peaks())
    return result


def _peaks(device: str) -> dict:
    import resource

    import torch

    vram = torch.cuda.max_memory_reserved() / GiB if device == "cuda" else 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    return {"peak_vram_gib": round(vram, 2), "peak_ram_gib": round(rss, 2)}


if __name__ == "__main__":
    sys.exit(main())
