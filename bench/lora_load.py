"""The CPU side of loading the step-distill LoRA into a GGUF expert: the scripts' `load_loras` (read and check the
file, peft's adapters, the check of what loaded, the fold into the GGUF weights) on a Wan expert of `--blocks`
full-width blocks (Q4_K_M, the published type map) with a LoRA of the real layout and rank (bench/loras.py).

A real expert has 40 blocks; the load is per layer, so it scales with the blocks. Both files are written
once into `--folder`. `--scripts DIR` loads another checkout's `scripts/` (an earlier commit, to compare):

    python bench/lora_load.py --blocks 8 --out lora-load.json
    git worktree add /tmp/before <commit> && python bench/lora_load.py --scripts /tmp/before/scripts --out before.json

Each repeat also folds the LoRA again into another freshly read expert from the first load's Refold
(engines/loras/lora_refold.py: what a re-read expert gets with one expert in RAM), timed as `refold_s`, and
loads it into a third one with the first load kept in the store of folds (engines/loras/lora_store.py: what a
later run gets), timed as `stored_s`. Each repeat starts with an empty store, in `--folder`.
`--size tiny` runs the same on the stand-in config (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--blocks", type=int, default=8, help="transformer blocks of the expert (a real one has 40)")
    p.add_argument("--repeats", type=int, default=3, help="loads timed, each into a freshly read expert")
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "producer-lora-load")
    p.add_argument("--scripts", type=Path, default=Path(__file__).resolve().parents[1] / "scripts",
                   help="the scripts/ folder whose loader is timed (default: this checkout's)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _files(size: str, blocks: int, folder: Path) -> tuple[Path, Path, Path]:
    """(the GGUF expert, its config folder, the LoRA file), written once."""
    import fullsize
    import loras
    import torch
    from diffusers import WanTransformer3DModel
    from producer.testing import standin_loras

    config = {**fullsize.wan_expert_config(size, wide=True), "num_layers": blocks}
    folder = folder / f"wan-{size}-{blocks}"
    expert, snapshot, lora = folder / "expert.gguf", folder / "snapshot", folder / "lora.safetensors"
    if not expert.exists():
        with fullsize._building("cpu", torch.bfloat16):
            model = WanTransformer3DModel(**config).eval()
        fullsize.quantize_like_gguf(model, "gguf-q4", torch.bfloat16)
        model.save_config(snapshot / "transformer")
        fullsize.write_gguf_expert(model, expert, "gguf-q4")
    if not lora.exists():
        with torch.device("meta"):
            shapes = WanTransformer3DModel(**config)
        state = standin_loras.wan_lightx2v_lora(shapes, rank=loras.RANK, alpha=None, head="diff", dtype=torch.bfloat16)
        standin_loras.save_lora({k: v * loras.UP_SCALE if "lora_up" in k else v for k, v in state.items()}, lora)
    return expert, snapshot, lora


def measure(expert: Path, snapshot: Path, lora_path: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each `load_loras` into a freshly read expert (the read itself not timed), of each fold
    again into another one from the first load's Refold (what a re-read expert gets with one expert in RAM;
    none where the scripts have no lora_refold), and of each load with the first one in the store of folds
    (a later run; none where the scripts have no lora_store)."""
    import dataclasses
    import inspect
    import os
    import shutil

    import torch
    from diffusers import WanTransformer3DModel
    from producer.engines.loras import lora
    from producer.engines.wan.experts import lora_view
    from producer.sizing import gguf_host

    spec = dataclasses.replace(lora.parse_lora_spec(f"{lora_path}:1.0:high", "wan"), components=("transformer",))
    # as a session with one expert in RAM loads it (an older checkout, --scripts, has no refold)
    refoldable = {"refoldable": True} if "refoldable" in inspect.signature(lora.load_loras).parameters else {}
    stored = (lora_path.parent / "assets") if (Path(lora.__file__).with_name("lora_store.py")).exists() else None
    if stored is not None:
        os.environ["HF_ASSETS_CACHE"] = str(stored)

    def fresh():
        return gguf_host.load_gguf(WanTransformer3DModel, expert, snapshot, "transformer", torch.bfloat16, True)

    times: dict[str, list[float]] = {"load": [], "refold": [], "stored": []}
    for _ in range(repeats):
        if stored is not None:
            shutil.rmtree(stored, ignore_errors=True)
        model = fresh()
        started = time.perf_counter()
        report = lora.load_loras(lora_view("transformer", model), [spec], "wan", fuse=True, **refoldable)
        times["load"].append(time.perf_counter() - started)
        assert report.loras[0].experts[0].lora_modules_applied > 0
        del model
        refold = getattr(report, "_refolds", {}).get("transformer")
        if refold is not None:
            from producer.engines.loras import lora_refold

            model = fresh()
            started = time.perf_counter()
            assert lora_refold.refold(lora_view("transformer", model), refold)
            times["refold"].append(time.perf_counter() - started)
            del model
        if stored is not None:
            model, peft_loads = fresh(), lora._load_plan
            lora._load_plan = None  # a load that went through peft now fails: the store must serve it
            started = time.perf_counter()
            try:
                lora.load_loras(lora_view("transformer", model), [spec], "wan", fuse=True, **refoldable)
            finally:
                lora._load_plan = peft_loads
            times["stored"].append(time.perf_counter() - started)
            del model
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.scripts / "producer").is_dir():
        print(f"{args.scripts} has no producer package: give the scripts/ folder of a checkout", file=sys.stderr)
        return 2
    sys.path[:0] = [str(args.scripts), str(Path(__file__).resolve().parent)]
    import torch

    expert, snapshot, lora_path = _files(args.size, args.blocks, args.folder)
    times = measure(expert, snapshot, lora_path, args.repeats)
    result = {"size": args.size, "blocks": args.blocks, "scripts": str(args.scripts), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_loras_s": [round(s, 3) for s in times["load"]],
              "median_s": round(statistics.median(times["load"]), 3)}
    for name in ("refold", "stored"):
        if times[name]:
            result.update({f"{name}_s": [round(s, 3) for s in times[name]],
                           f"{name}_median_s": round(statistics.median(times[name]), 3)})
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
