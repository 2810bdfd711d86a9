"""One Wan expert forward at 480p, profiled, in the forms the plans run: where a GGUF forward's time goes.

The whole-clip runs put the GGUF Q4 experts at ~1.22x plain's denoising whatever the residency
(docs/performance.md), while the dequantization alone (bench/dequant.py) accounts for ~1 s of the ~3 s. This
times one forward of a full-size expert held on the card (nothing streamed) in each form, and from
torch.profiler the GPU's busy time (the sum of its kernels) against the wall time: a forward whose GPU is
idle part of the time is bound by the CPU launching kernels, one that is busy by the kernels themselves (the
top kernels then say which). Forms: bf16; GGUF Q4_K_M (published type map, bench/fullsize.py); the same with
the step-distill LoRA folded into the weights (the scripts) and as peft adapters (before); and the folded form
streamed as the 10 GB plans stream it (`@streamed`), and with each block dequantized on arrival (`@arrival`):
with diffusers' per-block synchronisation (no `record_stream`, offload.py says why) the host waits for every
block, so the GPU's idle share there is what streaming costs beyond the transfers. Host-to-device copies are
counted apart (`copy_s`), since they overlap the kernels.

    python bench/forward_profile.py --out forward.json

`--size tiny` runs the same code on the stand-in config on the CPU (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FORMS = ("bf16", "gguf-q4", "gguf-q4+lora", "gguf-q4+lorapeft", "gguf-q4+lora@streamed", "gguf-q4+lora@arrival")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards after a warm-up one")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _inputs(size: str, device: str, dtype: torch.dtype, text_dim: int) -> dict:
    """What the pipeline hands an expert at 832x480x81 (21 x 60 x 104 latents, 36 channels with the image
    condition; 512 text tokens), or a small clip at tiny size."""
    frames, height, width = (21, 60, 104) if size == "full" else (3, 8, 8)
    gen = torch.Generator(device="cpu").manual_seed(0)
    return {"hidden_states": torch.randn(1, 36, frames, height, width, generator=gen).to(device, dtype),
            "timestep": torch.tensor([750.0], device=device),
            "encoder_hidden_states": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
            "return_dict": False}


def _expert(size: str, form: str, device: str, dtype: torch.dtype):
    """The expert in `form`; `@streamed` / `@arrival`: then streamed block by block from page-locked host memory
    as the scripts' plans stream it (offload.place_module: pinned in place, diffusers' group offloading with
    streams, no resident block), `@arrival` with each block dequantized as it arrives (producer.sizing.arrival)."""
    from producer.sizing import offload
    from producer.sizing.placement import Placement

    form, _, streamed = form.partition("@")
    model, config = _held_expert(size, form, device, dtype)
    if streamed:
        model.to("cpu")
        offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device(device),
                             dequantize_on_arrival=streamed == "arrival")
    return model, config


def _held_expert(size: str, form: str, device: str, dtype: torch.dtype):
    import fullsize
    import loras
    from producer.engines.loras import lora
    from producer.engines.wan.experts import lora_view

    config = fullsize.wan_expert_config(size, wide=form != "bf16")
    torch.manual_seed(0)
    with fullsize._building(device, dtype):
        from diffusers import WanTransformer3DModel

        model = WanTransformer3DModel(**config).eval()
    if form == "bf16":
        return model, config
    fullsize.quantize_like_gguf(model, "gguf-q4", dtype)
    if "+lora" in form:
        path = Path(tempfile.gettempdir()) / f"producer-profile-{size}-lora.safetensors"
        if not path.exists():
            loras.write_lora("wan", size == "tiny", str(path), size)
        lora.FOLD_GGUF = not form.endswith("lorapeft")
        spec = lora.parse_lora_spec(f"{path}:1.0:high", "wan")
        lora.load_loras(lora_view("transformer", model), [spec], "wan", fuse=True)
    return model, config


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model, inputs: dict, device: str, repeats: int) -> dict:
    """Wall seconds of a forward (mean of `repeats` after a warm-up), then one profiled forward: the GPU's
    kernel time against its wall time, and the kernels that took most of it."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(**inputs)
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
        _sync(device)
        wall = (time.perf_counter() - started) / repeats
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            model(**inputs)
            _sync(device)
            profiled = time.perf_counter() - started
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if device == "cuda" else "CPU")]
    busy = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    copies = [e for e in events if "memcpy" in e.key.lower() and "htod" in e.key.lower()]
    events = [e for e in events if e not in copies]
    total = sum(getattr(e, busy) for e in events) / 1e6
    top = sorted(events, key=lambda e: getattr(e, busy), reverse=True)[:10]
    # kernel_s / profiled_forward_s: the share of the forward the GPU was busy (the profiler adds a little)
    return {"forward_s": round(wall, 4), "kernel_s": round(total, 4), "profiled_forward_s": round(profiled, 4),
            "busy": round(total / profiled, 3), "launches": sum(e.count for e in events),
            "copy_s": round(sum(getattr(e, busy) for e in copies) / 1e6, 4),
            "top": [{"name": e.key[:90], "ms": round(getattr(e, busy) / 1e3, 2), "calls": e.count} for e in top]}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = {}
    for form in args.forms.split(","):
        if form not in FORMS:
            print(f"unknown form {form!r}: use {', '.join(FORMS)}", file=sys.stderr)
            return 2
        model, config = _expert(args.size, form, device, dtype)
        rows[form] = measure(model, _inputs(args.size, device, dtype, config["text_dim"]), device, args.repeats)
        print(form, json.dumps({k: v for k, v in rows[form].items() if k != "top"}), flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "size": args.size, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
